"""``python -m smoothce eval HIDDEN LABELS --classifier W``: a linear head's metrics
from saved hidden states, the logits never stored.

The report is that of ``eval`` on the materialised logits ``hidden @ classifier.T +
bias`` (soft-capped with ``--softcap``), computed by
:func:`smoothce.metrics.evaluate_linear` on memory-mapped ``.npy`` files, or by
:func:`smoothce.dask.evaluate_linear` when an input is a Zarr array or a directory of
``shard_*.npy`` files or when ``--dask-workers`` / ``--scheduler`` ask for a cluster:
the hidden states are read in blocks of rows by the tasks themselves, and a classifier
stored in chunks along its vocabulary (a Zarr array, or shards of rows) stays in those
chunks, one per task, so no worker needs all of it.

The errors are ``eval``'s, as one-line :class:`~smoothce._eval.EvalError`\\ s naming
the file: missing or unreadable files, a classifier whose width does not match the
hidden states, labels of the wrong shape, bad labels (at their position in the file)
and, when the metrics come back undefined, the first counted row whose hidden state
is not finite (or else the classifier's or the bias's non-finite value, or the row
whose logits overflow).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._bins import check_bins
from ._eval import EvalError, Report, _load, _Progress, named_prior
from ._linear import aligned, logits_into

__all__ = ["evaluate_hidden"]


@dataclass
class _Files:
    """The shapes and dtypes of the four inputs of ``eval --classifier``."""

    hidden: tuple[str, tuple[int, ...], np.dtype[Any]]
    labels: tuple[str, tuple[int, ...], np.dtype[Any]]
    classifier: tuple[str, tuple[int, ...], np.dtype[Any]]
    bias: tuple[str, tuple[int, ...], np.dtype[Any]] | None

    @property
    def rows(self) -> int:
        return math.prod(self.hidden[1][:-1])

    @property
    def classes(self) -> int:
        return self.classifier[1][0]

    @property
    def compute_itemsize(self) -> int:
        wide = any(f is not None and f[2] == np.float64 for f in (self.hidden, self.classifier))
        return 8 if wide or (self.bias is not None and self.bias[2] == np.float64) else 4

    def check(self) -> None:
        """The one-line errors of shapes and dtypes that need no data."""
        h_path, h_shape, _ = self.hidden
        y_path, y_shape, y_dtype = self.labels
        w_path, w_shape, _ = self.classifier
        if not h_shape:
            raise EvalError(
                f"hidden states must have a feature axis (the last); {h_path!r} holds a scalar."
            )
        if len(w_shape) != 2:
            raise EvalError(
                f"classifier file {w_path!r} must have shape (V, d), one row per class; it "
                f"has shape {w_shape}."
            )
        if w_shape[1] != h_shape[-1]:
            raise EvalError(
                f"classifier file {w_path!r} has {w_shape[1]} features per class (shape "
                f"{w_shape}) but the hidden states in {h_path!r} have {h_shape[-1]} (shape "
                f"{h_shape}); the logits are hidden @ classifier.T."
            )
        if w_shape[0] == 0:
            raise EvalError(f"classifier file {w_path!r} has no rows (classes): shape {w_shape}.")
        for name, (path, _, dtype) in (("hidden", self.hidden), ("classifier", self.classifier)):
            if dtype.kind != "f":
                raise EvalError(
                    f"{name} file {path!r} holds {dtype} values; give floating ones "
                    "(float16, float32 or float64)."
                )
        if y_shape != h_shape[:-1]:
            raise EvalError(
                f"labels must have the shape of the hidden states without their feature "
                f"axis, {h_shape[:-1]}; {y_path!r} has shape {y_shape}."
            )
        if y_dtype.kind not in "iu":
            raise EvalError(
                f"labels must be integer class indices; {y_path!r} holds {y_dtype} values."
            )
        if self.bias is not None:
            b_path, b_shape, b_dtype = self.bias
            if b_shape != (w_shape[0],):
                raise EvalError(
                    f"bias file {b_path!r} must have shape ({w_shape[0]},), one value per "
                    f"class of the classifier; it has shape {b_shape}."
                )
            if b_dtype.kind != "f":
                raise EvalError(
                    f"bias file {b_path!r} holds {b_dtype} values; give floating ones."
                )
        if self.rows == 0:
            raise EvalError(
                f"hidden file {h_path!r} has no rows (shape {h_shape}); nothing to evaluate."
            )


def class_prior(value: str | None, V: int) -> Any:
    """A named prior as it is, or the class prior (V,) of a .npy file: a per-row prior
    would be an (N, V) array, which ``--classifier`` exists to avoid."""
    if value is None or named_prior(value):
        return value
    u = _load(value, "prior")
    if u.shape != (V,):
        raise EvalError(
            f"prior must have shape ({V},), one value per class, with --classifier (a prior "
            f"per row would be as large as the logits); {value!r} has shape {u.shape}."
        )
    return np.asarray(u)


def _check_options(axis: int, bins: int) -> int:
    if axis != -1:
        raise EvalError(
            "--axis applies to logits; hidden states have their features on the last "
            "axis, so drop --axis with --classifier."
        )
    try:
        return check_bins(bins)
    except (TypeError, ValueError) as exc:
        raise EvalError(str(exc)) from None


def _position(flat: int, shape: tuple[int, ...]) -> list[int]:
    return [int(i) for i in np.unravel_index(flat, shape)] if shape else []


# -- why a counted row has no softmax: block functions (memmaps and Dask tasks) --------
def bad_hidden(h: Any, y: Any, ignore_index: int | None) -> tuple[int, int, float] | None:
    """``(row, feature, value)`` of the first counted row of a block whose hidden state
    is not finite (rows flattened), or None."""
    h2 = np.asarray(h).reshape(-1, np.shape(h)[-1])
    bad = ~np.isfinite(h2).all(axis=1)
    if ignore_index is not None:
        bad &= np.asarray(y).reshape(-1) != ignore_index
    if not bad.any():
        return None
    r = int(np.argmax(bad))
    k = int(np.flatnonzero(~np.isfinite(h2[r]))[0])
    return r, k, float(h2[r, k])


def bad_weight(W: Any, k0: int) -> tuple[int, int, float] | None:
    """``(class, feature, value)`` of a block of classifier rows' first non-finite
    weight, or None."""
    Wa = np.asarray(W)
    if np.isfinite(Wa).all():
        return None
    v, k = (int(i) for i in np.argwhere(~np.isfinite(Wa))[0])
    return k0 + v, k, float(Wa[v, k])


def bad_bias(b: Any, k0: int) -> tuple[int, float] | None:
    """``(class, value)`` of the first NaN or ``+inf`` of a block of the bias (``-inf``
    masks a class), or None."""
    ba = np.asarray(b)
    bad = np.isnan(ba) | np.isposinf(ba)
    if not bad.any():
        return None
    v = int(np.flatnonzero(bad)[0])
    return k0 + v, float(ba[v])


def bad_logits(
    h: Any, W: Any, b: Any, k0: int, softcap: float | None, dtype: np.dtype[Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of a block, over the classes ``[k0, k0 + len(W))``: the first class
    whose logit is NaN or ``+inf`` (-1 for none) and that logit, and whether every
    logit is ``-inf``."""
    h2 = np.asarray(h).reshape(-1, np.shape(h)[-1])
    Wc = aligned(np.asarray(W), dtype)
    bc = None if b is None else aligned(np.asarray(b), dtype)
    z = logits_into(h2, Wc, bc, np.empty((h2.shape[0], Wc.shape[0]), dtype=dtype))
    if softcap is not None:
        z = softcap * np.tanh(z / softcap)
    hit = np.isnan(z) | np.isposinf(z)
    first = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
    value = z[np.arange(len(z)), np.maximum(first, 0)].astype(np.float64)
    all_ninf = np.asarray(np.isneginf(z).all(axis=1))
    return np.where(first >= 0, first + k0, -1), value, all_ninf


def first_undefined(
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], y: Any, ignore_index: int | None
) -> tuple[int, int | None, float] | None:
    """The first counted row of a block without a softmax from its windows'
    :func:`bad_logits` (in class order): ``(row, class or None when every logit is
    -inf, logit)``, or None."""
    cols = np.stack([p[0] for p in parts], axis=1)
    vals = np.stack([p[1] for p in parts], axis=1)
    has = cols >= 0
    bad = has.any(axis=1) | np.stack([p[2] for p in parts], axis=1).all(axis=1)
    if ignore_index is not None:
        bad &= np.asarray(y).reshape(-1) != ignore_index
    if not bad.any():
        return None
    r = int(np.argmax(bad))
    if not has[r].any():
        return r, None, -np.inf
    j = int(np.argmax(has[r]))
    return r, int(cols[r, j]), float(vals[r, j])


def hidden_error(path: str, row: list[int], k: int, value: float) -> EvalError:
    return EvalError(
        f"hidden file {path!r} has a non-finite value in row {row}: hidden{[*row, k]} = "
        f"{value!r}; its logits have no softmax, so the file is corrupt."
    )


def weight_error(path: str, v: int, k: int, value: float) -> EvalError:
    return EvalError(
        f"classifier file {path!r} has a non-finite weight: classifier[{v}, {k}] = "
        f"{value!r}; the logits of every row are undefined."
    )


def bias_error(path: str, v: int, value: float) -> EvalError:
    return EvalError(
        f"bias file {path!r} has bias[{v}] = {value!r}; NaN and +inf logits have no "
        "softmax, so every row is undefined."
    )


def logits_error(
    h_path: str, row: list[int], col: int | None, value: float, dtype: np.dtype[Any], bias: bool
) -> EvalError:
    what = "every logit is -inf" if col is None else f"logits{[*row, col]} = {value!r}"
    return EvalError(
        f"the logits of row {row} have no softmax: {what} (hidden @ classifier.T"
        f"{' + bias' if bias else ''} in {dtype}); the hidden states of {h_path!r} or the "
        f"classifier are too large for {dtype}."
    )


def _bad_hidden_error(
    h: Any, y: Any, W: Any, b: Any, paths: tuple[str, str, str | None], ignore_index: Any,
    softcap: float | None, dtype: np.dtype[Any], rows_per_block: int,
) -> EvalError:  # fmt: skip
    """Why a counted row has no softmax: the first counted row whose hidden state is
    not finite, else a non-finite classifier weight, else a NaN or ``+inf`` bias, else
    the first counted row whose logits overflow; memory maps read in blocks of rows,
    positions in the files' shapes."""
    h_path, w_path, b_path = paths
    shape = y.shape
    h2 = h.reshape(-1, h.shape[-1])
    y1 = y.reshape(-1)
    blocks = range(0, y1.shape[0], rows_per_block)
    for r0 in blocks:
        found = bad_hidden(
            h2[r0 : r0 + rows_per_block], y1[r0 : r0 + rows_per_block], ignore_index
        )
        if found is not None:
            return hidden_error(h_path, _position(r0 + found[0], shape), found[1], found[2])
    weight = bad_weight(W, 0)
    if weight is not None:
        return weight_error(w_path, *weight)
    shift = None if b is None else bad_bias(b, 0)
    if shift is not None:
        assert b_path is not None
        return bias_error(b_path, *shift)
    for r0 in blocks:
        hb, yb = h2[r0 : r0 + rows_per_block], y1[r0 : r0 + rows_per_block]
        row = first_undefined([bad_logits(hb, W, b, 0, softcap, dtype)], yb, ignore_index)
        if row is not None:
            return logits_error(
                h_path, _position(r0 + row[0], shape), row[1], row[2], dtype, b is not None
            )
    return EvalError(  # pragma: no cover - the metrics said there is one
        f"hidden file {h_path!r} gave undefined metrics, but no row without a softmax "
        "was found on the second pass."
    )


def evaluate_hidden(
    hidden_path: str,
    labels_path: str,
    *,
    classifier: str,
    bias: str | None = None,
    softcap: float | None = None,
    epsilon: float = 0.0,
    axis: int = -1,
    ignore_index: int | None = None,
    prior: str | None = None,
    bins: int = 15,
    progress: bool | None = None,
    chunk_elements: int,
    scheduler: str | None = None,
    dask_workers: int | None = None,
) -> Report:
    """The :class:`~smoothce._eval.Report` of a linear head on saved hidden states
    (see the module docstring).

    ``chunk_elements`` is the number of logits formed at once: the workspace of
    :func:`~smoothce.metrics.evaluate_linear`, or the rows per Dask block times the
    vocabulary.
    """
    bins = _check_options(axis, bins)
    from ._eval_dask import is_shards, is_zarr

    paths = [p for p in (hidden_path, labels_path, classifier, bias) if p is not None]
    if (
        scheduler is not None
        or dask_workers is not None
        or any(is_zarr(p) or is_shards(p) for p in paths)
    ):
        from ._eval_linear_dask import evaluate_hidden_dask

        report: Report = evaluate_hidden_dask(
            hidden_path, labels_path, classifier=classifier, bias=bias, softcap=softcap,
            epsilon=epsilon, ignore_index=ignore_index, prior=prior, bins=bins,
            progress=progress, chunk_elements=chunk_elements, scheduler=scheduler,
            dask_workers=dask_workers,
        )  # fmt: skip
        return report
    h = _load(hidden_path, "hidden")
    y = _load(labels_path, "labels")
    W = _load(classifier, "classifier")
    b = None if bias is None else _load(bias, "bias")
    head = _Files(
        (hidden_path, h.shape, h.dtype),
        (labels_path, y.shape, y.dtype),
        (classifier, W.shape, W.dtype),
        None if b is None or bias is None else (bias, b.shape, b.dtype),
    )
    head.check()
    N, V = head.rows, head.classes
    itemsize = head.compute_itemsize
    u = class_prior(prior, V)
    if progress is None:
        progress = N * V * itemsize > (256 << 20) and sys.stderr.isatty()
    bar = _Progress(N, sys.stderr if progress else None)
    workspace = chunk_elements * itemsize
    from .metrics import evaluate_linear

    try:
        m = evaluate_linear(
            h, W, y, epsilon, bias=b, softcap=softcap, prior=u, ignore_index=ignore_index,
            top_k=1, n_bins=bins, workspace=workspace,
            progress=lambda done, total: bar.advance(done - bar.done),
        )  # fmt: skip
    except (TypeError, ValueError) as exc:
        raise EvalError(str(exc)) from None
    if math.isnan(m.accuracy):  # NaN exactly when a counted row has no softmax
        dtype = np.dtype(np.float64 if itemsize == 8 else np.float32)
        rows = max(1, chunk_elements // V)
        raise _bad_hidden_error(
            h, y, W, b, (hidden_path, classifier, bias), ignore_index, softcap, dtype, rows
        )
    return Report.of(
        m, hidden_path, labels_path, N, V, epsilon, bins,
        classifier=classifier, bias=bias, softcap=softcap,
    )  # fmt: skip
