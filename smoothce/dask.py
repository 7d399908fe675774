r"""The losses and metrics on Dask arrays: data beyond one machine's memory.

``pip install "smoothce[dask]"`` (Dask's arrays, ``distributed`` and Zarr). The
functions take Dask arrays chunked along the batch axes, map smoothce's engine over
the blocks, and return lazy Dask results: ``.compute()`` gives the value, on any
scheduler (threads, processes, a ``distributed.Client``).

* ``reduction="none"`` and the gradients keep the chunks of the logits.
* ``"sum"`` and ``"mean"`` are global reductions. Each block contributes its exact
  partial sums (:mod:`smoothce._exact`); the partials are merged without rounding
  and divided by the global mean denominator once. The result does not depend on
  the number of workers or the order in which blocks finish, and agrees with the
  in-memory function to float64 rounding.
* :func:`evaluate` maps :func:`smoothce.metrics.accumulate` over the blocks and
  merges the :class:`~smoothce.metrics.Accumulator`\ s: only those (a few hundred
  bytes per block) travel between machines.

The class axis must lie in one chunk: a block is a set of whole rows. Logits chunked
along it are rechunked (with a :class:`dask.array.PerformanceWarning` above
:data:`RECHUNK_WARN_BYTES`); store such data with whole rows per chunk instead.

Validation: everything that needs no data (dtypes, shapes, ``axis``, ``epsilon``,
``reduction``, NumPy ``weight`` and ``prior``) is checked when the graph is built,
with the messages of the in-memory functions. Values (labels, Dask priors and
probability targets) are checked per block when computed, with the same messages
and positions in the whole array; with several bad labels the first in C order is
reported, as in memory (reductions carry errors through the merge tree; array
results first check the labels alone).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt

try:
    import dask
    import dask.array as da
    from dask.array.core import PerformanceWarning
    from dask.delayed import Delayed
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "smoothce.dask needs Dask: pip install 'smoothce[dask]' (dask[array], distributed, zarr)."
    ) from exc

from . import metrics as _metrics
from ._engine import run
from ._exact import ExactSum, exact_sums
from ._loss import cross_entropy as _np_cross_entropy
from ._loss import cross_entropy_with_grad as _np_cross_entropy_with_grad
from ._scaling import Scaling, loss_unit
from ._validation import Problem, _check_ignore_index, check_class_indices, prepare
from .calibration import _check_bins

__all__ = ["cross_entropy", "cross_entropy_grad", "cross_entropy_with_grad", "evaluate"]

#: Rechunking the class axis into one chunk moves every block; above this many bytes
#: of logits it warns (:class:`dask.array.PerformanceWarning`).
RECHUNK_WARN_BYTES = 256 << 20

_SPLIT_EVERY = 8


# -- setup: eager checks and aligned blocks ------------------------------------------
class _Setup:
    """The Dask inputs of one call, validated and aligned block for block."""

    def __init__(
        self,
        logits: Any,
        labels: Any,
        epsilon: Any,
        *,
        axis: Any,
        reduction: Any,
        prior: Any,
        weight: Any,
        ignore_index: Any,
        num_classes: Any,
        metrics: bool = False,
    ) -> None:
        z = logits if isinstance(logits, da.Array) else da.asarray(logits)
        y = labels if isinstance(labels, da.Array) else da.asarray(labels)
        if isinstance(prior, da.Array) and prior.ndim == 1:
            prior = np.asarray(prior.compute())  # a class prior: K numbers, used by every block
        # Everything that needs no data is checked now, on stand-ins that have the
        # shapes and dtypes of the real arrays but no memory (zero strides). A Dask
        # per-sample prior stands in as the uniform 1/K; its values are checked per block.
        stand_prior = prior
        if isinstance(prior, da.Array):
            K = z.shape[axis] if isinstance(axis, int) and -z.ndim <= axis < z.ndim else 1
            stand_prior = np.broadcast_to(np.asarray(1.0 / max(K, 1), prior.dtype), prior.shape)
        kwargs: dict[str, Any] = dict(
            axis=axis,
            reduction=reduction,
            prior=stand_prior,
            weight=weight,
            ignore_index=ignore_index,
            num_classes=num_classes,
        )
        # Integer labels are checked for ignore_index's type only: comparing the
        # stand-in with it would allocate a mask of the whole batch.
        _check_ignore_index(ignore_index)
        if y.dtype.kind in "iu":
            kwargs["ignore_index"] = None
        p = prepare(_stand_in(z), _stand_in(y), epsilon, **kwargs)
        if metrics and p.probabilistic:
            _metrics._reject_probabilities(y.dtype)
        if not p.batch_shape:
            raise ValueError(
                "smoothce.dask needs a batch axis (logits with at least 2 dimensions); "
                f"got logits of shape {z.shape}. Use smoothce.cross_entropy."
            )
        self.p = p
        self.ax = p.axis
        self.epsilon = p.epsilon
        self.original_chunks = z.chunks
        if z.numblocks[self.ax] > 1:
            z = _rechunk_classes(z, self.ax)
        self.z = z
        batch_chunks = tuple(c for i, c in enumerate(z.chunks) if i != self.ax)
        self.y = y.rechunk(z.chunks if p.probabilistic else batch_chunks)
        # A per-sample prior travels with the blocks; a class prior (K,), a name or
        # None is the same for every block.
        self.prior_blocks: da.Array | None = None
        self.prior = prior
        if p.prior.kind == "sample":
            self.prior_blocks = da.broadcast_to(da.asarray(prior), z.shape).rechunk(z.chunks)
            self.prior = None
        self.weight = weight
        self.ignore_index = ignore_index
        self.num_classes = num_classes
        self.reduction = p.reduction

    def block_indices(self) -> list[tuple[int, ...]]:
        return list(np.ndindex(*self.z.numblocks))

    def offsets(self, index: tuple[int, ...]) -> tuple[int, ...]:
        """Start of block ``index`` along each logits axis."""
        return tuple(sum(c[:i]) for c, i in zip(self.z.chunks, index, strict=True))

    def delayed_blocks(self) -> list[tuple[tuple[int, ...], Any, Any, Any]]:
        """``(index, logits block, labels block, prior block)`` as Delayed values."""
        zd = self.z.to_delayed()
        yd = self.y.to_delayed()
        ud = None if self.prior_blocks is None else self.prior_blocks.to_delayed()
        out = []
        for idx in self.block_indices():
            yi = idx if self.p.probabilistic else _drop(idx, self.ax)
            out.append((idx, zd[idx], yd[yi], None if ud is None else ud[idx]))
        return out

    def label_blocks(self) -> list[tuple[tuple[int, ...], Any]]:
        """``(offsets over the logits axes, Delayed block)`` of the integer labels."""
        yd = self.y.to_delayed()
        out = []
        for idx in np.ndindex(*self.y.numblocks):
            offsets = tuple(sum(c[:i]) for c, i in zip(self.y.chunks, idx, strict=True))
            out.append(((*offsets[: self.ax], 0, *offsets[self.ax :]), yd[idx]))
        return out

    def label_check(self) -> Any:
        """Delayed first bad label (:class:`_Bad`, or None), checked before any block.

        The blocks of array results (gradients, ``"none"``) wait for it, so with
        several bad labels the error names the first in C order, as in memory.
        Reductions need no such wait: their errors travel through the merge tree.
        """
        if self.p.probabilistic:
            return None
        ignore = self.ignore_index if self.ignore_index is None else int(self.ignore_index)
        parts = [
            dask.delayed(_check_labels, pure=True)(self.p.num_classes, ignore, yb, off, self.ax)
            for off, yb in self.label_blocks()
        ]
        level = parts
        while len(level) > 1:
            level = [
                dask.delayed(_earliest, pure=True)(level[i : i + _SPLIT_EVERY])
                for i in range(0, len(level), _SPLIT_EVERY)
            ]
        return dask.delayed(_earliest, pure=True)(level)


def _stand_in(a: Any) -> Any:
    """A read-only NumPy array of ``a``'s shape and dtype that occupies no memory."""
    if not isinstance(a, da.Array):
        return a
    return np.broadcast_to(np.zeros((), dtype=a.dtype), a.shape)


def _drop(idx: tuple[int, ...], ax: int) -> tuple[int, ...]:
    return idx[:ax] + idx[ax + 1 :]


def _rechunk_classes(z: da.Array, ax: int) -> da.Array:
    """Put the class axis in one chunk, letting Dask size the batch chunks."""
    if z.nbytes > RECHUNK_WARN_BYTES:
        warnings.warn(
            f"logits are chunked along the class axis {ax} ({z.numblocks[ax]} chunks); "
            "smoothce.dask needs whole rows per block and rechunks them, which moves "
            f"all {z.nbytes / 2**20:.0f} MiB of logits between workers. Store the logits "
            "with the class axis in one chunk to avoid this.",
            PerformanceWarning,
            stacklevel=4,
        )
    spec = {i: (-1 if i == ax else "auto") for i in range(z.ndim)}
    return z.rechunk(spec)


# -- errors with positions in the whole array ------------------------------------
_POSITION = re.compile(r"(labels|prior)\[([0-9, ]+)\]|(batch position )\[([0-9, ]+)\]")


def _globalize(message: str, offsets: tuple[int, ...], ax: int) -> str:
    """Shift the positions in a validation message from the block to the array."""

    def shift(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        numbers = match.group(2) or match.group(4)
        idx = [int(s) for s in numbers.split(",")]
        # Positions over every logits axis, or over the batch axes only.
        base = offsets if len(idx) == len(offsets) else _drop(offsets, ax)
        if len(idx) != len(base):
            return match.group(0)
        return f"{name}{[i + o for i, o in zip(idx, base, strict=True)]}"

    return _POSITION.sub(shift, message)


class _Bad:
    """A validation error found in a block, carried to the end of a reduction.

    Reductions merge these instead of raising at once, and the earliest position (C
    order) wins: with several bad labels, the message names the one the in-memory
    function names, whichever block a worker reached first.
    """

    def __init__(self, position: tuple[int, ...], message: str) -> None:
        self.position, self.message = position, message

    def raise_(self) -> None:
        raise ValueError(self.message)


class _Located:
    """``func`` with the validation errors of the whole array, not of the block.

    ``as_value=True`` returns them as :class:`_Bad` (reductions merge them); else they
    are raised. ``check``, the first bad label of the whole array if any (from
    :meth:`_Setup.label_check`), is raised before any work. A class rather than a
    closure: tasks are pickled to the workers by reference.
    """

    def __init__(
        self, offsets: tuple[int, ...], ax: int, func: Callable[..., Any], as_value: bool = False
    ) -> None:
        self.offsets, self.ax, self.func, self.as_value = offsets, ax, func, as_value

    def __call__(self, check: _Bad | None, *args: Any) -> Any:
        if check is not None:
            check.raise_()
        try:
            return self.func(*args)
        except ValueError as exc:
            message = _globalize(str(exc), self.offsets, self.ax)
            if not self.as_value:
                raise ValueError(message) from None
            found = _POSITION.search(message)
            numbers = None if found is None else found.group(2) or found.group(4)
            return _Bad(() if numbers is None else _ints(numbers), message)


def _ints(numbers: str) -> tuple[int, ...]:
    return tuple(int(i) for i in numbers.split(","))


def _check_labels(
    K: int, ignore_index: int | None, y: np.ndarray, offsets: tuple[int, ...], ax: int
) -> _Bad | None:
    """The first bad label of a block (global position), or None."""
    try:
        check_class_indices(np.asarray(y), K, ignore_index)
    except ValueError as exc:
        message = _globalize(str(exc), offsets, ax)
        found = _POSITION.search(message)
        return _Bad(() if found is None else _ints(found.group(2)), message)
    return None


def _earliest(parts: Sequence[Any]) -> _Bad | None:
    """The error that comes first in C order, or None."""
    bad = [p for p in parts if isinstance(p, _Bad)]
    return min(bad, key=lambda p: p.position) if bad else None


# -- block functions (module level: they are pickled to the workers) ---------------
def _block_problem(s: dict[str, Any], z: np.ndarray, y: np.ndarray, u: Any) -> Problem:
    return prepare(
        z,
        y,
        s["epsilon"],
        axis=s["axis"],
        reduction="none",
        prior=s["prior"] if u is None else u,
        weight=s["weight"],
        ignore_index=s["ignore_index"],
        num_classes=s["num_classes"],
    )


def _loss_part(
    s: dict[str, Any], z: np.ndarray, y: np.ndarray, u: Any = None
) -> tuple[ExactSum, ExactSum]:
    """``(exact loss sum, exact mean denominator)`` of one block.

    The sum is in the engine's weight units, as the engine's own: :func:`_finish_loss`
    scales the merged sum once (scaling each element would round each one, which
    for subnormal products is most of their digits).
    """
    p = _block_problem(s, z, y, u)
    rows = _metrics.engine_rows(p, 1.0, s["workers"])  # engine units
    (total,) = exact_sums(rows.reshape(-1))
    return total, _metrics._exact_denominator(p)


def _den_part(s: dict[str, Any], y: np.ndarray) -> ExactSum:
    """The mean denominator of one labels block (no logits needed)."""
    if s["probabilistic"]:
        # Probability targets (the logits' shape): the mean is over the elements,
        # weights or not; the targets themselves are checked with their logits.
        return ExactSum((y.size // max(1, y.shape[s["ax"]])) << 1126)
    K = s["K"]
    z = np.broadcast_to(np.zeros((), np.float64), (*y.shape, K))
    p = prepare(
        z, y, 0.0, axis=-1, reduction="none", prior=None, weight=s["weight"],
        ignore_index=s["ignore_index"], num_classes=None,
    )  # fmt: skip
    return _metrics._exact_denominator(p)


def _merge(parts: Sequence[Any]) -> Any:
    """Merge exact partials (or tuples of them); an error wins, the earliest first."""
    bad = _earliest(parts)
    if bad is not None:
        return bad
    total = parts[0]
    for part in parts[1:]:
        total = (
            tuple(a + b for a, b in zip(total, part, strict=True))
            if isinstance(total, tuple)
            else total + part
        )
    return total


def _tree(parts: list[Any]) -> Any:
    """Merge Delayed partials in a fixed tree (``_SPLIT_EVERY`` at a time)."""
    level = parts
    while len(level) > 1:
        level = [
            dask.delayed(_merge, pure=True)(level[i : i + _SPLIT_EVERY])
            for i in range(0, len(level), _SPLIT_EVERY)
        ]
    return level[0]


def _finish_loss(part: Any, reduction: str, dtype: np.dtype[Any], scale: float) -> Any:
    """The reduced loss from the merged ``(sum, denominator)`` in engine units, times
    ``scale`` (:func:`~smoothce._scaling.loss_unit`) once, as
    :meth:`~smoothce._scaling.Scaling.reduce` does in memory."""
    if isinstance(part, _Bad):
        part.raise_()
    total, den = part
    if reduction == "sum" or not total.finite:
        value = total.value()
    else:
        # A mean over nothing (zero total weight) is 0.0, as in memory.
        value = total.ratio(den) if den.units > 0 else 0.0
    value *= scale  # a Python float: overflow gives inf, underflow 0, silently
    return dtype.type(value)


def _den_value(den: Any) -> float:
    if isinstance(den, _Bad):
        den.raise_()
    value: float = den.value()
    return value


def _grad_block(
    s: dict[str, Any], z: np.ndarray, y: np.ndarray, u: Any, den: Any
) -> tuple[Any, np.ndarray]:
    """Loss part and gradient of one block, in one pass of the engine.

    ``"mean"`` scales by the *global* denominator ``den``; the loss part is the exact
    ``(sum, denominator)`` pair for ``"sum"``/``"mean"`` and the element losses for
    ``"none"``.
    """
    reduction = s["reduction"]
    if reduction == "none":
        loss, grad = _np_cross_entropy_with_grad(
            z, y, s["epsilon"], axis=s["axis"], reduction="none",
            prior=s["prior"] if u is None else u, weight=s["weight"],
            ignore_index=s["ignore_index"], num_classes=s["num_classes"],
            workers=s["workers"],
        )  # fmt: skip
        return loss, grad
    p = _block_problem(s, z, y, u)
    grad = np.empty(p.logits_shape, dtype=p.grad_dtype)
    g_moved = np.moveaxis(grad, p.axis, -1)
    # The gradient in true units (the engine's weight units for a weighted mean of
    # integer labels, whose denominator is in those units too) with the *global*
    # denominator, computed from the labels first; the loss part in engine units
    # (unit 1), scaled once by `_finish_loss` after the merge.
    dens = (float(den), 1.0) if reduction == "mean" else None
    scaling = replace(Scaling.of(p, reduction, dens), unit=1.0)
    rows = None
    if s["want_loss"]:
        rows = np.zeros(p.batch_shape, dtype=np.float64)
    run(p, scaling, want_loss=s["want_loss"], grad=g_moved, loss_rows=rows, workers=s["workers"])
    part = None
    if rows is not None:
        (total,) = exact_sums(rows)
        part = (total, _metrics._exact_denominator(p))
    return part, grad


def _accumulate_block(
    s: dict[str, Any], z: np.ndarray, y: np.ndarray, u: Any = None
) -> _metrics.Accumulator:
    return _metrics.accumulate(
        z, y, s["epsilon"], axis=s["axis"], prior=s["prior"] if u is None else u,
        weight=s["weight"], ignore_index=s["ignore_index"], top_k=s["top_k"],
        n_bins=s["n_bins"], workers=s["workers"],
    )  # fmt: skip


def _settings(st: _Setup, workers: Any, **extra: Any) -> dict[str, Any]:
    return dict(
        epsilon=st.epsilon,
        axis=st.ax,
        ax=st.ax,
        prior=st.prior,
        weight=st.weight,
        ignore_index=st.ignore_index,
        num_classes=st.num_classes,
        workers=workers,
        K=st.p.num_classes,
        probabilistic=st.p.probabilistic,
        reduction=st.reduction,
        **extra,
    )


# -- public functions --------------------------------------------------------------
_DASK_PARAMETERS = """
    logits : dask.array.Array or array_like, shape (..., K, ...)
        Logits chunked along the batch axes; the class axis ``axis`` should be one
        chunk (else it is rechunked).
    labels : dask.array.Array or array_like
        Class indices (the shape of ``logits`` without the class axis) or probability
        targets (the shape of ``logits``); rechunked to the blocks of ``logits``.
    epsilon, axis, reduction, weight, ignore_index, num_classes
        As in :func:`smoothce.cross_entropy`.
    prior : None, "uniform", "others" or array_like
        As in :func:`smoothce.cross_entropy`; a per-sample prior may be a Dask array.
    workers : int, default 1
        Threads of the engine *within* a block (Dask runs blocks in parallel)."""


def _doc(func: Any) -> Any:
    func.__doc__ = func.__doc__.replace("{parameters}", _DASK_PARAMETERS.strip("\n"))
    return func


def _loss_graph(st: _Setup, workers: Any) -> da.Array:
    s = _settings(st, workers)
    parts = [
        dask.delayed(_Located(st.offsets(idx), st.ax, _loss_part, True), pure=True)(
            None, s, zb, yb, ub
        )
        for idx, zb, yb, ub in st.delayed_blocks()
    ]
    total = dask.delayed(_finish_loss, pure=True)(
        _tree(parts), st.reduction, st.p.scalar_dtype, loss_unit(st.p, st.reduction)
    )
    return da.from_delayed(total, shape=(), dtype=st.p.scalar_dtype)


def _pairs(st: _Setup, workers: Any, want_loss: bool) -> dict[tuple[int, ...], Any]:
    """Delayed ``(loss part, gradient block)`` per block: one engine pass for both.

    Delayed tasks, not a ``map_blocks`` array: Dask's graph optimisation would fuse
    a blockwise layer into each of its two consumers and run every block twice.
    """
    s = _settings(st, workers, want_loss=want_loss)
    den: Any = None
    check: Any = None
    if st.reduction == "mean":
        # The denominator reads every label first anyway: it is the check, and raises
        # the first bad label before any block starts.
        den_parts = [
            dask.delayed(_Located(off, st.ax, _den_part, True), pure=True)(None, s, yb)
            for off, yb in st.label_blocks()
        ]
        den = dask.delayed(_den_value, pure=True)(_tree(den_parts))
    else:
        check = st.label_check()
    return {
        idx: dask.delayed(_Located(st.offsets(idx), st.ax, _grad_block), pure=True)(
            check, s, zb, yb, ub, den
        )
        for idx, zb, yb, ub in st.delayed_blocks()
    }


def _assemble(
    pieces: dict[tuple[int, ...], Any], chunks: tuple[tuple[int, ...], ...], dtype: Any
) -> da.Array:
    """One Dask array from Delayed blocks laid out on the grid of ``chunks``."""
    grid = np.empty(tuple(len(c) for c in chunks), dtype=object)
    for idx, piece in pieces.items():
        shape = tuple(c[i] for c, i in zip(chunks, idx, strict=True))
        grid[idx] = da.from_delayed(piece, shape=shape, dtype=dtype)
    return da.block(grid.tolist()) if grid.ndim else grid[()]


def _loss_from_pairs(st: _Setup, pairs: dict[tuple[int, ...], Any]) -> da.Array:
    if st.reduction == "none":
        firsts = {_drop(i, st.ax): dask.delayed(_first, pure=True)(p) for i, p in pairs.items()}
        batch = tuple(c for i, c in enumerate(st.z.chunks) if i != st.ax)
        loss = _assemble(firsts, batch, st.p.grad_dtype)
        original = tuple(c for i, c in enumerate(st.original_chunks) if i != st.ax)
        return loss if loss.chunks == original else loss.rechunk(original)
    parts = [dask.delayed(_first, pure=True)(p) for p in pairs.values()]
    total = dask.delayed(_finish_loss, pure=True)(
        _tree(parts), st.reduction, st.p.scalar_dtype, loss_unit(st.p, st.reduction)
    )
    return da.from_delayed(total, shape=(), dtype=st.p.scalar_dtype)


def _first(pair: tuple[Any, Any]) -> Any:
    return pair[0]


def _second(pair: tuple[Any, Any]) -> Any:
    return pair[1]


def _grad_from_pairs(st: _Setup, pairs: dict[tuple[int, ...], Any]) -> da.Array:
    seconds = {i: dask.delayed(_second, pure=True)(p) for i, p in pairs.items()}
    grad = _assemble(seconds, st.z.chunks, st.p.grad_dtype)
    return grad if grad.chunks == st.original_chunks else grad.rechunk(st.original_chunks)


@_doc
def cross_entropy(
    logits: Any,
    labels: Any,
    epsilon: float = 0.0,
    *,
    axis: int = -1,
    reduction: str = "mean",
    prior: Any = None,
    weight: npt.ArrayLike | None = None,
    ignore_index: int | None = None,
    num_classes: int | None = None,
    workers: int | None = 1,
) -> da.Array:
    """:func:`smoothce.cross_entropy` of Dask arrays, lazily.

    Parameters
    ----------
    {parameters}

    Returns
    -------
    dask.array.Array
        ``"mean"``/``"sum"``: a 0-d array (float32 for float16/float32 logits,
        float64 otherwise) whose ``.compute()`` agrees with the in-memory loss; the
        partial sums are combined exactly. ``"none"``: the element losses, chunked as
        ``logits`` without the class axis.

    Examples
    --------
    .. code-block:: python

        import dask.array as da, smoothce.dask
        z = da.from_zarr("logits.zarr")          # (tokens, vocabulary), rows chunked
        y = da.from_zarr("labels.zarr")
        loss = smoothce.dask.cross_entropy(z, y, 0.1, ignore_index=-100)
        loss.compute()                           # on the current Dask scheduler
    """
    st = _Setup(
        logits, labels, epsilon, axis=axis, reduction=reduction, prior=prior,
        weight=weight, ignore_index=ignore_index, num_classes=num_classes,
    )  # fmt: skip
    if st.reduction != "none":
        return _loss_graph(st, workers)
    s = _settings(st, workers)
    check = st.label_check()
    pieces = {
        _drop(idx, st.ax): dask.delayed(_Located(st.offsets(idx), st.ax, _none_block), pure=True)(
            check, s, zb, yb, ub
        )
        for idx, zb, yb, ub in st.delayed_blocks()
    }
    batch = tuple(c for i, c in enumerate(st.z.chunks) if i != st.ax)
    loss = _assemble(pieces, batch, st.p.grad_dtype)
    original = tuple(c for i, c in enumerate(st.original_chunks) if i != st.ax)
    return loss if loss.chunks == original else loss.rechunk(original)


def _none_block(s: dict[str, Any], z: np.ndarray, y: np.ndarray, u: Any) -> np.ndarray:
    loss: np.ndarray = _np_cross_entropy(
        z, y, s["epsilon"], axis=s["axis"], reduction="none",
        prior=s["prior"] if u is None else u, weight=s["weight"],
        ignore_index=s["ignore_index"], num_classes=s["num_classes"], workers=s["workers"],
    )  # fmt: skip
    return loss


@_doc
def cross_entropy_grad(
    logits: Any,
    labels: Any,
    epsilon: float = 0.0,
    *,
    axis: int = -1,
    reduction: str = "mean",
    prior: Any = None,
    weight: npt.ArrayLike | None = None,
    ignore_index: int | None = None,
    num_classes: int | None = None,
    workers: int | None = 1,
) -> da.Array:
    """:func:`smoothce.cross_entropy_grad` of Dask arrays, lazily.

    Parameters
    ----------
    {parameters}

    Returns
    -------
    dask.array.Array
        The gradient, chunked as ``logits``. For ``"mean"`` it is divided by the
        global denominator, computed first from the labels alone.
    """
    st = _Setup(
        logits, labels, epsilon, axis=axis, reduction=reduction, prior=prior,
        weight=weight, ignore_index=ignore_index, num_classes=num_classes,
    )  # fmt: skip
    return _grad_from_pairs(st, _pairs(st, workers, want_loss=False))


@_doc
def cross_entropy_with_grad(
    logits: Any,
    labels: Any,
    epsilon: float = 0.0,
    *,
    axis: int = -1,
    reduction: str = "mean",
    prior: Any = None,
    weight: npt.ArrayLike | None = None,
    ignore_index: int | None = None,
    num_classes: int | None = None,
    workers: int | None = 1,
) -> tuple[da.Array, da.Array]:
    """:func:`smoothce.cross_entropy_with_grad` of Dask arrays, lazily.

    Both results come from one engine pass per block when computed together,
    ``dask.compute(loss, grad)``.

    Parameters
    ----------
    {parameters}

    Returns
    -------
    loss : dask.array.Array
        As :func:`cross_entropy`.
    grad : dask.array.Array
        As :func:`cross_entropy_grad`.
    """
    st = _Setup(
        logits, labels, epsilon, axis=axis, reduction=reduction, prior=prior,
        weight=weight, ignore_index=ignore_index, num_classes=num_classes,
    )  # fmt: skip
    pairs = _pairs(st, workers, want_loss=True)
    return _loss_from_pairs(st, pairs), _grad_from_pairs(st, pairs)


def evaluate(
    logits: Any,
    labels: Any,
    epsilon: float = 0.0,
    *,
    axis: int = -1,
    prior: Any = None,
    weight: npt.ArrayLike | None = None,
    ignore_index: int | None = None,
    top_k: int = 5,
    n_bins: int = 15,
    workers: int | None = 1,
) -> Delayed:
    """:func:`smoothce.metrics.evaluate` of Dask arrays, lazily.

    Each block becomes a :class:`~smoothce.metrics.Accumulator`
    (:func:`smoothce.metrics.accumulate`), the accumulators are merged exactly in a
    tree, and the last step forms the metrics.

    Parameters
    ----------
    logits : dask.array.Array or array_like, shape (..., K, ...)
        Logits chunked along the batch axes (the class axis in one chunk).
    labels : dask.array.Array or array_like of int
        Class indices, the shape of ``logits`` without the class axis.
    epsilon, axis, prior, weight, ignore_index, top_k, n_bins
        As in :func:`smoothce.metrics.evaluate`.
    workers : int, default 1
        Threads of the engine within a block.

    Returns
    -------
    dask.delayed.Delayed
        ``.compute()`` gives the :class:`~smoothce.metrics.Metrics`.

    Examples
    --------
    .. code-block:: python

        from distributed import Client
        import dask.array as da, smoothce.dask

        client = Client("scheduler-address:8786")
        z, y = da.from_zarr("logits.zarr"), da.from_zarr("labels.zarr")
        metrics = smoothce.dask.evaluate(z, y, ignore_index=-100).compute()
        metrics.nll, metrics.accuracy, metrics.ece
    """
    st = _Setup(
        logits, labels, epsilon, axis=axis, reduction="mean", prior=prior,
        weight=weight, ignore_index=ignore_index, num_classes=None, metrics=True,
    )  # fmt: skip
    s = _settings(
        st,
        workers,
        top_k=_metrics._check_top_k(top_k),
        n_bins=_check_bins(n_bins),
    )
    parts = [
        dask.delayed(_Located(st.offsets(idx), st.ax, _accumulate_block, True), pure=True)(
            None, s, zb, yb, ub
        )
        for idx, zb, yb, ub in st.delayed_blocks()
    ]
    return dask.delayed(_result, pure=True)(_tree(parts))


def _result(acc: Any) -> _metrics.Metrics:
    if isinstance(acc, _Bad):
        acc.raise_()
    result: _metrics.Metrics = acc.result()
    return result
