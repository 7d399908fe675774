"""``python -m smoothce eval``: metrics of saved logits, streamed from disk.

The logits and labels files (``.npy``) are memory-mapped and processed in chunks along
a batch axis, so files larger than memory work: each chunk adds its sums (smoothed
loss, NLL, correct predictions, calibration bins) and the metrics are formed at the
end. Nothing but the current chunk's work is in memory. A per-sample prior file
(``--prior``, the logits' shape) is cut chunk for chunk with the logits.

Every problem with the files or arguments is an :class:`EvalError` with a one-line
message saying what is wrong with which file: missing, a directory, empty, not a .npy
file, a .npz archive, a damaged header, Python objects (never unpickled), truncated,
too large to map, no rows, or a counted row of logits without a softmax (a NaN or
``+inf`` logit, or only ``-inf``: the file is corrupt, and the first such row is named
in the file's coordinates). Rows whose label is ``ignore_index`` are never looked at.
The check for bad rows costs nothing extra: the calibration step already computes every
row's confidence, which is NaN exactly for those rows.
"""

from __future__ import annotations

import errno
import math
import re
import struct
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ._validation import check_axis, classes_last
from .calibration import _check_bins
from .metrics import Accumulator, accumulate

__all__ = ["EvalError", "Report", "evaluate_files"]

#: Logits per chunk: 2**22 float32 values are 16 MiB.
CHUNK_ELEMENTS = 1 << 22

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
#: NumPy's own limit on a .npy header (``np.load``'s ``max_header_size``). A numeric
#: array's header is under 200 bytes; anything near this is damaged or hostile.
_MAX_HEADER = 10_000


class EvalError(ValueError):
    """A problem with the files or arguments, reported as a one-line message."""


@dataclass
class Report:
    """The metrics of one evaluation."""

    logits: str
    labels: str
    elements: int
    counted: int
    num_classes: int
    epsilon: float
    smoothed_loss: float
    nll: float
    perplexity: float
    accuracy: float
    ece: float
    bins: int
    # A linear head's hidden states (``eval --classifier``): ``logits`` is then the
    # path of the hidden states, and these name the head's files.
    classifier: str | None = None
    bias: str | None = None
    softcap: float | None = None

    @classmethod
    def of(
        cls, m: Any, logits: str, labels: str, elements: int, num_classes: int,
        epsilon: float, bins: int, *, classifier: str | None = None,
        bias: str | None = None, softcap: float | None = None,
    ) -> Report:  # fmt: skip
        """The report of :class:`~smoothce.metrics.Metrics` ``m``, whichever path
        computed them (memory map, Dask, hidden states); a run in which every label was
        ignored has nothing to report and is an error."""
        if m.counted == 0:
            raise EvalError("no element to evaluate: every label equals ignore_index.")
        return cls(
            logits=logits, labels=labels, elements=elements, counted=m.counted,
            num_classes=num_classes, epsilon=float(epsilon), smoothed_loss=m.loss,
            nll=m.nll, perplexity=m.perplexity, accuracy=m.accuracy, ece=m.ece, bins=bins,
            classifier=classifier, bias=bias, softcap=softcap,
        )  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        fields = asdict(self)
        if self.classifier is None:
            for key in ("classifier", "bias", "softcap"):
                del fields[key]
            return fields
        return {"hidden": fields.pop("logits"), **fields}

    def format(self) -> str:
        inputs = [("logits", self.logits)]
        if self.classifier is not None:
            inputs = [("hidden states", self.logits), ("classifier", self.classifier)]
            if self.bias is not None:
                inputs.append(("bias", self.bias))
            if self.softcap is not None:
                inputs.append(("softcap", f"{self.softcap:g}"))
        rows = [
            *inputs,
            ("labels", self.labels),
            ("elements", f"{self.elements} ({self.counted} counted), {self.num_classes} classes"),
            (f"smoothed loss (epsilon={self.epsilon:g})", f"{self.smoothed_loss:.6f}"),
            ("NLL (cross-entropy)", f"{self.nll:.6f}"),
            ("perplexity", f"{self.perplexity:.6g}"),
            ("accuracy", f"{self.accuracy:.4%}"),
            (f"ECE ({self.bins} bins)", f"{self.ece:.6f}"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _size(nbytes: int) -> str:
    """``nbytes`` for people: 800 bytes, 3.2 MiB, 16.0 GiB."""
    i = min((max(nbytes, 1).bit_length() - 1) // 10, 4)  # the power of 1024
    unit = ("bytes", "KiB", "MiB", "GiB", "TiB")[i]
    return f"{nbytes} bytes" if i == 0 else f"{nbytes / 1024**i:.1f} {unit}"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _read_header(p: Path, path: str, what: str) -> tuple[tuple[int, ...], np.dtype[Any], int]:
    """``(shape, dtype, data offset)`` from a .npy header, or an :class:`EvalError`
    saying what the file is instead."""
    name = f"{what} file {path!r}"
    try:
        with p.open("rb") as f:
            head = f.read(12)
            if not head:
                raise EvalError(f"{name} is empty (0 bytes), not a .npy array.")
            if head.startswith(_ZIP_MAGIC):
                raise EvalError(f"{name} is a .npz archive (several arrays); give one .npy.")
            if not head.startswith(_NPY_MAGIC) or len(head) < 10:
                raise EvalError(
                    f"{name} is not a .npy file (it does not start with the .npy signature); "
                    "save the array with numpy.save."
                )
            # Check the header's length before NumPy reads it: over its limit NumPy's
            # message advises allow_pickle=True, which is never the answer here.
            major = head[6]
            if major == 1:
                header_len = struct.unpack("<H", head[8:10])[0]
            elif major in (2, 3) and len(head) == 12:
                header_len = struct.unpack("<I", head[8:12])[0]
            else:
                raise EvalError(f"{name} has an unknown .npy format version {major}.")
            if header_len > _MAX_HEADER:
                raise EvalError(
                    f"{name} has a .npy header of {header_len} bytes, more than NumPy reads "
                    f"({_MAX_HEADER}); a numeric array needs under 200, so the file is damaged."
                )
            f.seek(0)
            version = np.lib.format.read_magic(f)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read(f, max_header_size=_MAX_HEADER)
            offset = f.tell()
    except EvalError:
        raise
    except OSError as exc:
        raise EvalError(f"{name} cannot be read: {exc.strerror or _one_line(exc)}.") from None
    except ValueError as exc:  # a malformed header
        raise EvalError(f"{name} has a damaged .npy header: {_one_line(exc)}") from None
    if dtype.hasobject:
        raise EvalError(
            f"{name} holds Python objects (dtype {dtype}), which only unpickling could "
            "load; save a numeric array."
        )
    return shape, dtype, offset


def _load(path: str, what: str) -> np.ndarray:
    """Memory-map the .npy file at ``path``, or raise an :class:`EvalError` saying what
    is wrong with it (``what`` names the file: logits, labels, prior)."""
    p = Path(path)
    name = f"{what} file {path!r}"
    if p.is_dir():
        raise EvalError(f"{name} is a directory; give a .npy file.")
    if not p.exists():
        raise EvalError(f"{name} does not exist.")
    if not p.is_file():
        raise EvalError(f"{name} is not a regular file.")
    shape, dtype, offset = _read_header(p, path, what)
    nbytes = math.prod(shape) * dtype.itemsize
    present = p.stat().st_size - offset
    if present < nbytes:
        raise EvalError(
            f"{name} is truncated: its header describes {nbytes} bytes of data "
            f"(shape {shape}, {dtype}) but {present} follow."
        )
    try:
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
    except (OSError, MemoryError) as exc:
        if isinstance(exc, MemoryError) or exc.errno == errno.ENOMEM:
            raise EvalError(
                f"not enough memory to map {name} ({_size(nbytes)}): the address space is "
                "limited (ulimit -v?)."
            ) from None
        raise EvalError(f"{name} cannot be read: {exc.strerror or _one_line(exc)}.") from None
    except ValueError as exc:
        raise EvalError(f"{name} is not a readable .npy array: {_one_line(exc)}") from None
    if not isinstance(arr, np.ndarray):  # the header was checked; np.load is typed Any
        raise EvalError(f"{name} is not a .npy array.")
    return arr


def _first_bad_row(
    zc: np.ndarray, yc: np.ndarray, ax: int, ignore_index: int | None
) -> tuple[tuple[int, ...], int | None, float] | None:
    """Where the first counted row of the chunk without a softmax is: ``(its batch
    position in the chunk, the class of its first NaN or +inf logit or None when the row
    is all -inf, that logit)``, or None when every counted row has a softmax."""
    z = classes_last(np.asarray(zc), ax)
    bad = np.isnan(z).any(axis=-1) | np.isposinf(z).any(axis=-1) | np.isneginf(z).all(axis=-1)
    if ignore_index is not None:
        bad &= np.asarray(yc) != ignore_index
    if not bad.any():
        return None
    pos = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), bad.shape))
    row = z[pos]
    hits = np.flatnonzero(np.isnan(row) | np.isposinf(row))
    if hits.size == 0:
        return pos, None, -math.inf
    k = int(hits[0])
    return pos, k, float(row[k])


def _bad_row_error(
    logits_path: str, row: list[int], k: int | None, value: float, ax: int
) -> EvalError:
    """The message for a counted row without a softmax at batch position ``row`` (in
    the file's coordinates; empty for 1-D logits), found by :func:`_first_bad_row`."""
    where = f"row {row}" if row else "its only row"  # 1-D logits: one row
    if k is None:
        return EvalError(
            f"logits file {logits_path!r} has a row of only -inf logits: {where} "
            "has no softmax, so the file is corrupt."
        )
    index = [*row[:ax], k, *row[ax:]]
    return EvalError(
        f"logits file {logits_path!r} has a non-finite logit in {where}: "
        f"logits{index} = {value!r}; NaN and +inf logits have no softmax, so the "
        "file is corrupt."
    )


def _layout(
    logits_path: str,
    labels_path: str,
    logits_shape: tuple[int, ...],
    labels_shape: tuple[int, ...],
    labels_dtype: np.dtype[Any],
    axis: int,
) -> tuple[int, tuple[int, ...]]:
    """``(class axis, batch shape)`` of the two arrays, or the :class:`EvalError` of
    a scalar, a bad ``axis``, no class, labels that are not class indices or of the
    wrong shape, or no rows. Checked on the arrays' headers, before any chunk: a
    message names the files' shapes, never a chunk's."""
    ndim = len(logits_shape)
    if ndim == 0:
        raise EvalError(f"logits must have a class axis; {logits_path!r} holds a scalar.")
    try:
        ax = check_axis(axis, ndim)
    except (TypeError, ValueError) as exc:
        raise EvalError(str(exc)) from None
    if logits_shape[ax] == 0:
        raise EvalError(
            f"logits must have at least one class along axis {ax}; {logits_path!r} has "
            f"shape {logits_shape}."
        )
    batch = logits_shape[:ax] + logits_shape[ax + 1 :]
    if labels_dtype.kind not in "iu":
        # Probability targets (or anything else) have no accuracy or calibration.
        raise EvalError(
            f"labels must be integer class indices of shape {batch} (the shape of the "
            f"logits, {logits_shape}, without the class axis {ax}); {labels_path!r} holds "
            f"{labels_dtype} values of shape {labels_shape}."
        )
    if labels_shape != batch:
        raise EvalError(
            f"labels must have the shape of the logits without the class axis {ax}, "
            f"{batch}; {labels_path!r} has shape {labels_shape}."
        )
    if math.prod(batch) == 0:
        raise EvalError(
            f"logits file {logits_path!r} has no rows (shape {logits_shape}); nothing to evaluate."
        )
    return ax, batch


def _prior_axis(
    prior_path: str,
    prior_shape: tuple[int, ...],
    logits_shape: tuple[int, ...],
    ax: int,
    c: int | None,
) -> int | None:
    """The prior's axis that runs along the logits' chunked axis ``c`` (the prior is
    cut along it, chunk for chunk with the logits), or None when the prior is the same
    for every chunk (a class prior, or one broadcast along ``c``); or the
    :class:`EvalError` of a shape that is neither ``(K,)`` nor broadcastable to the
    logits' (checked on the header, so the message names the file's shape)."""
    K = logits_shape[ax]
    lead = len(logits_shape) - len(prior_shape)
    fits = lead >= 0 and all(
        p in (1, n) for p, n in zip(prior_shape, logits_shape[lead:], strict=True)
    )
    if prior_shape != (K,) and not fits:
        raise EvalError(
            f"prior must have shape ({K},), one value per class, or the shape of the "
            f"logits, {logits_shape}, one distribution per row (or a shape that broadcasts "
            f"to it); {prior_path!r} has shape {prior_shape}."
        )
    if prior_shape == (K,) or c is None or c < lead or prior_shape[c - lead] == 1:
        return None
    return c - lead


_POSITION = re.compile(r"(labels|prior)\[([0-9, ]+)\]|(batch position )\[([0-9, ]+)\]")


def _shift_positions(message: str, start: int, c_lab: int, prior_axis: int | None) -> str:
    """A chunk's validation message with its positions moved to the files'
    coordinates: ``start`` added along the chunked axis, ``c_lab`` for ``labels[...]``
    and ``batch position [...]`` (a row of the prior), ``prior_axis`` for
    ``prior[...]`` (None: the prior is not cut, its positions are the file's)."""

    def shift(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        idx = [int(i) for i in (match.group(2) or match.group(4)).split(",")]
        axis = prior_axis if name == "prior" else c_lab
        if axis is not None and axis < len(idx):
            idx[axis] += start
        return f"{name}{idx}"

    return _POSITION.sub(shift, message)


def named_prior(value: str) -> bool:
    """Whether the ``--prior`` value ``value`` names a prior, rather than a file."""
    return value in ("uniform", "others")


def _prior(
    value: str | None, logits_shape: tuple[int, ...], ax: int, c: int | None
) -> tuple[Any, int | None]:
    """``(prior, the prior's chunked axis)``: a name as it is, or the memory-mapped
    .npy file (read chunk by chunk, like the logits) and its axis along the logits'
    chunked axis ``c`` (None: the same prior for every chunk)."""
    if value is None or named_prior(value):
        return value, None
    u = _load(value, "prior")
    return u, _prior_axis(value, u.shape, logits_shape, ax, c)


class _Progress:
    """A one-line progress bar on a terminal stream, redrawn in place."""

    def __init__(self, total: int, stream: TextIO | None) -> None:
        self.total, self.stream, self.done = total, stream, 0

    def advance(self, n: int) -> None:
        if self.stream is None:
            return
        self.done += n
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * int(30 * frac)
        print(f"\r  [{bar:<30}] {frac:6.1%} of {self.total} elements", end="", file=self.stream)
        if self.done >= self.total:
            print(file=self.stream)
        self.stream.flush()


def evaluate_files(
    logits_path: str,
    labels_path: str,
    *,
    epsilon: float = 0.0,
    axis: int = -1,
    ignore_index: int | None = None,
    prior: str | None = None,
    bins: int = 15,
    progress: bool | None = None,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> Report:
    """Stream the two files and compute the metrics (see the module docstring).

    ``prior`` is None, ``"uniform"``, ``"others"`` or the path of a .npy file: a class
    prior (K,), or per-sample priors of the logits' shape (or one that broadcasts to
    it), memory-mapped and cut into the logits' chunks.

    ``progress=None`` shows a bar on standard error for logits of more than 256 MiB when
    standard error is a terminal; True or False force it either way.
    """
    z = _load(logits_path, "logits")
    y = _load(labels_path, "labels")
    ax, batch = _layout(logits_path, labels_path, z.shape, y.shape, y.dtype, axis)
    K = z.shape[ax]
    try:
        bins = _check_bins(bins)
    except (TypeError, ValueError) as exc:
        raise EvalError(str(exc)) from None
    # Chunks run along the first batch axis (the labels' axis `c_lab`, the prior's `c_u`).
    c = 0 if ax != 0 else 1
    c_lab = c if c < ax else c - 1
    u, c_u = _prior(prior, z.shape, ax, c if z.ndim > 1 else None)
    n_along = z.shape[c] if z.ndim > 1 else 1
    per_index = max(1, z.size // max(n_along, 1))
    step = max(1, chunk_elements // per_index)
    if progress is None:
        progress = z.nbytes > (256 << 20) and sys.stderr.isatty()
    bar = _Progress(int(np.prod(batch)) if batch else 1, sys.stderr if progress else None)
    total: Accumulator | None = None
    for start in range(0, n_along, step):
        if z.ndim > 1:
            # Slices are views into the memory maps: the chunk is read once, by the
            # computations themselves, not first copied out.
            span = slice(start, min(start + step, n_along))
            zc = z[(slice(None),) * c + (span,)]
            yc = y[(slice(None),) * c_lab + (span,)]
            uc = u if c_u is None else u[(slice(None),) * c_u + (span,)]
        else:
            zc, yc, uc = np.asarray(z), np.asarray(y), u
        try:
            # Every metric of the chunk from one accumulator (smoothce.metrics): the
            # loss, the NLL, the top-1 prediction and the confidence share their work.
            acc = accumulate(
                zc, yc, epsilon, axis=ax, prior=uc, ignore_index=ignore_index, top_k=1,
                n_bins=bins,
            )  # fmt: skip
        except (TypeError, ValueError) as exc:
            message = str(exc)
            if z.ndim > 1:
                message = _shift_positions(message, start, c_lab, c_u)
            raise EvalError(message) from None
        if acc.undefined:
            # A counted row without a softmax (NaN loss): find it (only now) and name it
            # in the file's coordinates: the chunk's position along axis c is offset.
            found = _first_bad_row(zc, yc, ax, ignore_index)
            assert found is not None  # acc.undefined counts exactly these rows
            pos, k, value = found
            row = list(pos)
            if z.ndim > 1:
                row[c_lab] += start
            raise _bad_row_error(logits_path, row, k, value, ax)
        total = acc if total is None else total.merge(acc)
        bar.advance(int(yc.size))
    assert total is not None
    elements = int(np.prod(batch)) if batch else 1
    return Report.of(total.result(), logits_path, labels_path, elements, K, epsilon, bins)
