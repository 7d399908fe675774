r"""A linear head on Dask arrays: :func:`linear_cross_entropy`,
:func:`linear_cross_entropy_with_grad` and :func:`evaluate_linear` of
:mod:`smoothce.dask`.

``hidden`` (..., d) is a Dask array chunked along its rows (any chunking, known or
unknown sizes: ``hidden[labels != pad]`` works when ``labels`` is indexed with the same
mask); one task per block of rows, which forms its logits in blocks that fit
``workspace`` and never stores them. The classifier (V, d) and the bias (V,) are either

* **whole** (NumPy arrays, or Dask arrays of one chunk of classes): one key of the
  graph, so each worker receives it once (with a default ``distributed.Client`` a
  NumPy classifier is scattered to every worker when the graph is built), and every
  row block runs the in-memory head on it (:class:`smoothce._linear._Head`,
  :func:`smoothce._linear_metrics.accumulate_head`);
* **split along the vocabulary** (a Dask array in several chunks of classes): every
  (row block, vocabulary chunk) task forms its window of the logits only and returns
  per-row statistics (:func:`smoothce._vocab.window_stats_of`), which are merged per
  row block exactly as the engine merges a streamed row's windows
  (:func:`smoothce._vocab.merge`); the gradients take a second pass over the windows
  with the merged rows (:func:`smoothce._vocab.window_grads`). No task holds more than
  one chunk of the classifier, so it may be larger than any worker's memory.

Reductions merge exact partial sums (:mod:`smoothce._exact`) in a fixed tree and are
divided once by the whole batch's mean denominators. The gradients wait for one pass
over the labels, which gives those denominators and checks every label first (so the
first bad label in C order is the one reported, at its position in the whole array).
The gradients of the classifier and the bias are summed over the row blocks, and the
windows' parts of ``hidden``'s gradient over the windows, in float64 in a fixed binary
tree, and rounded once to their dtype: the same bits on every scheduler. ``hidden``'s
gradient is chunked like ``hidden``, the classifier's like the classifier.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
import numpy.typing as npt
from dask.array.core import PerformanceWarning
from dask.delayed import Delayed

from ._bins import check_bins
from ._exact import ExactSum, exact_sums
from ._linear import DEFAULT_WORKSPACE, LinearGrads, _Head
from ._linear_metrics import accumulate_head, metrics_head
from ._scaling import Scaling, loss_unit
from ._vocab import Spec, accumulator, merge, row_losses, rows_problem, window_grads
from ._vocab import window_stats_of as _window_stats_of
from .dask import _POSITION, RECHUNK_WARN_BYTES, _assemble, _Bad, _earliest, _globalize, _ints
from .dask import _tree as _exact_tree
from .metrics import Metrics, _check_top_k, _exact_denominator

__all__ = ["evaluate_linear", "linear_cross_entropy", "linear_cross_entropy_with_grad"]

_F64 = np.dtype(np.float64)
_ONE = 1 << 1126  # 1.0 in ExactSum's units


# -- setup: validation on stand-ins, blocks aligned ------------------------------------
@dataclass(frozen=True)
class _Settings:
    """What every task of one call needs: one key of the graph."""

    spec: Spec
    reduction: str
    workers: Any
    n_bins: int = 15


def _stand_in(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A read-only array of ``shape`` and ``dtype`` that occupies no memory."""
    return np.broadcast_to(np.zeros((), dtype=dtype), shape)


def _meta(a: Any) -> tuple[tuple[int, ...], np.dtype[Any]]:
    if isinstance(a, (da.Array, np.ndarray)):
        return tuple(a.shape), np.dtype(a.dtype)
    arr = np.asarray(a)
    return arr.shape, arr.dtype


def _known(*chunks: tuple[float, ...]) -> bool:
    return not any(math.isnan(c) for axis in chunks for c in axis)


def _local(a: Any) -> Any:
    """A class prior or class weights given as a Dask array: V numbers, computed now.
    Any other Dask array (a prior per row, which the head refuses) stands in unread."""
    if not isinstance(a, da.Array):
        return a
    if a.ndim != 1:
        return _stand_in(tuple(0 if math.isnan(n) else int(n) for n in a.shape), a.dtype)
    return np.asarray(a.compute())


class _Setup:
    """The Dask inputs of one call, checked now and aligned block for block."""

    def __init__(
        self,
        hidden: Any,
        classifier: Any,
        labels: Any,
        epsilon: Any,
        *,
        bias: Any,
        reduction: Any,
        prior: Any,
        weight: Any,
        ignore_index: Any,
        num_classes: Any,
        z_loss: Any,
        softcap: Any,
        workspace: Any,
        workers: Any,
        top_k: int = 0,
        n_bins: int = 15,
    ) -> None:
        h = hidden if isinstance(hidden, da.Array) else da.asarray(hidden)
        y = labels if isinstance(labels, da.Array) else np.asarray(labels)
        prior, weight = _local(prior), _local(weight)
        if h.ndim < 2:
            raise ValueError(
                "smoothce.dask needs a batch axis (hidden states (..., d) of at least 2 "
                f"dimensions); got hidden of shape {h.shape}. Use smoothce.metrics or "
                "smoothce.linear_cross_entropy."
            )
        W_shape, W_dtype = _meta(classifier)
        b_meta = None if bias is None else _meta(bias)
        # Everything that needs no data is checked now by the fused head's own
        # validation, on stand-ins without memory (dtypes, the classifier's and the
        # bias's shapes, epsilon, reduction, prior, weight, z_loss, softcap, workspace);
        # the labels' values are checked per block.
        head = _Head(
            _stand_in((0, h.shape[-1]), h.dtype), _stand_in(W_shape, W_dtype),
            _stand_in((0,), y.dtype), epsilon,
            None if b_meta is None else _stand_in(*b_meta), reduction, prior, weight,
            ignore_index, num_classes, z_loss, softcap, workspace,
        )  # fmt: skip
        if y.ndim != h.ndim - 1 or (_known(y.shape, h.shape) and y.shape != h.shape[:-1]):
            raise ValueError(
                "labels must have the shape of hidden without its last axis, "
                f"{h.shape[:-1]}; got shape {y.shape}."
            )
        self.spec = Spec.of(head, prior, weight, ignore_index, top_k)
        self.settings = _Settings(self.spec, head.p.reduction, workers, n_bins)
        self.reduction = head.p.reduction
        self.dtype = head.dtype
        self.unit_none = loss_unit(head.p, "none")
        self.hidden_dtype, self.classifier_dtype = h.dtype, np.dtype(W_dtype)
        self.bias_dtype = None if b_meta is None else b_meta[1]
        self.hidden_chunks = h.chunks
        if h.numblocks[-1] > 1:
            h = _one_chunk(h, h.ndim - 1, "hidden", "features")
        self.h = h
        self.y = self._labels_like_hidden(y)
        self._classifier(classifier, bias)

    def _labels_like_hidden(self, y: Any) -> da.Array:
        """The labels in the blocks of ``hidden``'s rows."""
        rows = self.h.chunks[:-1]
        if _known(*rows):
            if isinstance(y, da.Array) and not _known(*y.chunks):
                raise ValueError(
                    "labels have unknown chunk sizes but hidden does not; call "
                    "labels.compute_chunk_sizes() first, or index both with the same mask."
                )
            if isinstance(y, da.Array):
                return y if y.chunks == rows else y.rechunk(rows)
            return da.from_array(y, chunks=rows)
        # Unknown row counts (boolean indexing): the labels must be cut the same way.
        if not isinstance(y, da.Array) or y.numblocks != self.h.numblocks[:-1]:
            raise ValueError(
                "hidden has unknown chunk sizes (e.g. after boolean indexing, hidden[mask]); "
                "give labels cut the same way (labels[mask] with the same mask), or call "
                "hidden.compute_chunk_sizes() first."
            )
        return y

    def _classifier(self, W: Any, b: Any) -> None:
        """The classifier and the bias as one piece, or in chunks of the vocabulary."""
        self.classifier_chunks = (
            W.chunks if isinstance(W, da.Array) else ((self.spec.V,), (self.spec.d,))
        )
        if isinstance(W, da.Array) and not _known(*W.chunks):
            raise ValueError(
                "classifier has unknown chunk sizes; call classifier.compute_chunk_sizes() first."
            )
        if isinstance(W, da.Array) and W.numblocks[1] > 1:
            W = _one_chunk(W, 1, "classifier", "features")
        self.split = isinstance(W, da.Array) and W.numblocks[0] > 1
        if not self.split:
            self.vocab = [(0, self.spec.V)]
            self.W_pieces: list[Any] = [_one_key(W)]
            self.b_pieces: list[Any] = [None if b is None else _one_key(b)]
            return
        ends = np.cumsum(W.chunks[0]).tolist()
        self.vocab = list(zip([0, *ends[:-1]], ends, strict=True))
        self.W_pieces = list(W.to_delayed()[:, 0])
        if b is None:
            self.b_pieces = [None] * len(self.vocab)
        else:
            bd = b if isinstance(b, da.Array) else da.from_array(np.asarray(b), chunks=-1)
            self.b_pieces = list(bd.rechunk((W.chunks[0],)).to_delayed())

    # -- the row blocks ------------------------------------------------------------
    def blocks(self) -> list[tuple[tuple[int, ...], Any, Any]]:
        """``(index, hidden block, labels block)`` in C order, as Delayed values."""
        hd, yd = self.h.to_delayed(), self.y.to_delayed()
        keys = [(i, (*i, 0)) for i in np.ndindex(*self.y.numblocks)]
        return [(i, hd[key], yd[i]) for i, key in keys]

    def offsets(self) -> Any:
        """Each row block's offsets along the batch axes (for error positions): known
        now, or a Delayed dict computed from the labels blocks' shapes."""
        if _known(*self.y.chunks):
            starts = [np.cumsum((0, *c[:-1])).tolist() for c in self.y.chunks]
            return {
                i: tuple(int(s[k]) for s, k in zip(starts, i, strict=True))
                for i in np.ndindex(*self.y.numblocks)
            }
        shapes = {
            i: dask.delayed(np.shape, pure=True)(yb)
            for i, yb in zip(
                np.ndindex(*self.y.numblocks), self.y.to_delayed().ravel(), strict=True
            )
        }
        return dask.delayed(_offsets_of, pure=True)(shapes)


def _offsets_of(shapes: dict[tuple[int, ...], tuple[int, ...]]) -> dict[tuple[int, ...], Any]:
    """Offsets of every block along each axis from the blocks' shapes (a task)."""
    out = {}
    for idx in shapes:
        out[idx] = tuple(
            sum(shapes[_replaced(idx, a, k)][a] for k in range(idx[a])) for a in range(len(idx))
        )
    return out


def _replaced(idx: tuple[int, ...], axis: int, k: int) -> tuple[int, ...]:
    return (*idx[:axis], k, *idx[axis + 1 :])


def _one_chunk(x: da.Array, axis: int, name: str, what: str) -> da.Array:
    """``x`` with ``axis`` in one chunk (a PerformanceWarning above
    :data:`~smoothce.dask.RECHUNK_WARN_BYTES`)."""
    if not _known(*x.chunks):
        raise ValueError(
            f"{name} is chunked along its {what} and has unknown chunk sizes; call "
            f"{name}.compute_chunk_sizes() first, or store it with its {what} in one chunk."
        )
    if x.nbytes > RECHUNK_WARN_BYTES:
        warnings.warn(
            f"{name} is chunked along its {what} ({x.numblocks[axis]} chunks); smoothce.dask "
            f"rechunks them into one, which moves all {x.nbytes / 2**20:.0f} MiB between "
            f"workers. Store it with its {what} in one chunk to avoid this.",
            PerformanceWarning,
            stacklevel=5,
        )
    return x.rechunk({axis: -1})


def _one_key(a: Any) -> Any:
    """A whole array as one key of the graph, so that each worker receives it once.

    A Dask array is rechunked to one chunk, its own key. A NumPy array goes into the
    graph once, or, with a default ``distributed.Client``, is scattered to every worker
    now: a graph holding a large array would travel through the scheduler.
    """
    if isinstance(a, da.Array):
        return a.rechunk(-1).to_delayed().ravel()[0]
    a = np.asarray(a)
    try:
        from distributed import default_client

        client = default_client()
    except (ImportError, ValueError):  # no distributed, or no default client
        client = None
    if client is not None:
        return dask.delayed(client.scatter(a, broadcast=True, hash=True))
    return dask.delayed(a, pure=True, traverse=False)


# -- errors at their position in the whole array ---------------------------------------
class _InBlock:
    """``func`` with the validation errors of the whole array, not of its block.

    Positions are shifted by the block's offsets (``offsets``: the block's tuple, or a
    dict of every block's); with ``as_value`` the error is returned as a
    :class:`~smoothce.dask._Bad` (reductions merge them, the earliest wins), else
    raised. ``check``, the labels pass's verdict, is raised before any work. A class
    rather than a closure: tasks are pickled to the workers.
    """

    def __init__(self, idx: tuple[int, ...], func: Any, as_value: bool = False) -> None:
        self.idx, self.func, self.as_value = idx, func, as_value

    def __dask_tokenize__(self) -> Any:
        return (type(self).__name__, self.func.__qualname__, self.idx, self.as_value)

    def __call__(self, check: Any, offsets: Any, *args: Any) -> Any:
        if isinstance(check, _Bad):
            check.raise_()
        try:
            return self.func(*args)
        except ValueError as exc:
            off = offsets[self.idx] if isinstance(offsets, dict) else offsets
            message = _globalize(str(exc), (*off, 0), len(off))
            if not self.as_value:
                raise ValueError(message) from None
            found = _POSITION.search(message)
            numbers = None if found is None else found.group(2) or found.group(4)
            return _Bad(() if numbers is None else _ints(numbers), message)


def _check_rows(h: Any, y: Any) -> None:
    """A hidden block and its labels block hold the same rows (unknown chunks)."""
    if np.shape(h)[:-1] != np.shape(y):
        raise ValueError(
            f"a block of hidden holds rows of shape {np.shape(h)[:-1]} but its labels "
            f"block {np.shape(y)}: labels must be cut like hidden (labels[mask] with "
            "hidden's mask)."
        )


def _parts(p: Any, ce: Any, z: Any) -> tuple[ExactSum, ExactSum, ExactSum, ExactSum]:
    """``(cross-entropy, z-loss, mean denominator, counted)`` of a block, exact sums:
    the loss terms in engine units, the denominator in the weights' engine units."""
    n = p.labels.size if p.counted is None else int(np.count_nonzero(p.counted))
    (ce_sum,) = exact_sums(np.asarray(ce, dtype=_F64))
    (z_sum,) = exact_sums(np.asarray(0.0 if z is None else z, dtype=_F64))
    return ce_sum, z_sum, _exact_denominator(p), ExactSum(n * _ONE)


def _scaling(s: _Settings, parts: Any) -> Any:
    """The whole batch's :class:`~smoothce._scaling.Scaling` from its merged
    ``_parts`` (an error among them is handed on, for the tasks to raise)."""
    if isinstance(parts, _Bad):
        return parts
    _, _, den, counted = parts
    p = rows_problem(s.spec, np.zeros(0, dtype=np.intp))
    dens = (den.value(), counted.value()) if s.reduction == "mean" else None
    return Scaling.of(p, s.reduction, dens)


def _reduced(s: _Settings, parts: Any) -> Any:
    """The reduced loss from the merged parts, as
    :meth:`~smoothce._scaling.Scaling.reduce` forms it in memory."""
    if isinstance(parts, _Bad):
        parts.raise_()
    ce, z, _, _ = parts
    return _scaling(s, parts).reduce(ce.value(), z.value(), s.spec.dtype)


# -- the labels pass ---------------------------------------------------------------------
def _labels_part(s: _Settings, y: Any) -> Any:
    """A labels block checked, and its share of the mean's denominators."""
    return _parts(rows_problem(s.spec, y), 0.0, None)


def _labels_pass(st: _Setup, s: Any, offsets: Any) -> Any:
    """Delayed scaling of the whole batch, once every label is checked. It reads the
    labels only: the hidden states' blocks are read by the tasks that use them (which
    check that their rows match the labels')."""
    parts = [
        dask.delayed(_InBlock(i, _labels_part, True), pure=True)(None, offsets, s, yb)
        for i, _, yb in st.blocks()
    ]
    return dask.delayed(_scaling, pure=True)(s, _exact_tree(parts))


# -- block functions: a whole classifier -----------------------------------------------
def _whole_head(s: _Settings, h: Any, W: Any, b: Any, y: Any) -> _Head:
    """The in-memory head of one row block. The classifier and the bias go in the
    compute dtype, so that the partial gradients stay there until the merge rounds
    their sum once."""
    _check_rows(h, y)
    sp = s.spec
    Wc = np.asarray(W).astype(sp.dtype, copy=False)
    bc = None if b is None else np.asarray(b).astype(sp.dtype, copy=False)
    return _Head(
        h, Wc, y, sp.epsilon, bc, s.reduction, sp.prior, sp.weight, sp.ignore_index, None,
        sp.z_loss, sp.softcap, sp.workspace,
    )  # fmt: skip


def _whole_metrics(s: _Settings, h: Any, W: Any, b: Any, y: Any) -> Any:
    _check_rows(h, y)
    sp = s.spec
    head = metrics_head(
        h, W, y, sp.epsilon, bias=b, softcap=sp.softcap, prior=sp.prior, weight=sp.weight,
        ignore_index=sp.ignore_index, workspace=sp.workspace,
    )  # fmt: skip
    return accumulate_head(head, sp.top_k, s.n_bins, s.workers)


def _whole_loss(s: _Settings, scaling: Any, h: Any, W: Any, b: Any, y: Any) -> Any:
    """The loss rows (``"none"``, with the batch's scaling) or the block's ``_parts``."""
    head = _whole_head(s, h, W, b, y)
    total, _ = head.run(False, s.workers, None if isinstance(scaling, _Bad) else scaling, True)
    return total if s.reduction == "none" else _parts(head.p, total[0], total[1])


def _whole_grads(s: _Settings, scaling: Any, h: Any, W: Any, b: Any, y: Any) -> Any:
    """``(loss rows or parts, d hidden, d classifier, d bias)`` of one row block."""
    head = _whole_head(s, h, W, b, y)
    total, g = head.run(True, s.workers, scaling, True)
    assert g is not None
    loss = total if s.reduction == "none" else _parts(head.p, total[0], total[1])
    return loss, g.hidden, g.classifier, g.bias


# -- block functions: a classifier split along the vocabulary ---------------------------
def _window(s: _Settings, h: Any, W: Any, b: Any, y: Any, k0: int) -> Any:
    _check_rows(h, y)
    return _window_stats_of(s.spec, h, W, b, y, k0)


def _merged(s: _Settings, y: Any, parts: Sequence[Any]) -> Any:
    bad = _earliest(parts)
    return bad if bad is not None else merge(s.spec, parts)


def _split_metrics(s: _Settings, y: Any, *parts: Any) -> Any:
    m = _merged(s, y, parts)
    return m if isinstance(m, _Bad) else accumulator(s.spec, y, m, s.n_bins)


def _split_loss(s: _Settings, scaling: Any, y: Any, *parts: Any) -> Any:
    """The loss rows (``"none"``) or ``_parts`` of a row block from its windows."""
    m = _merged(s, y, parts)
    if isinstance(m, _Bad):
        return m
    p = rows_problem(s.spec, y)
    # The loss alone needs no batch scaling: its rows are in engine units, and the
    # z-loss coefficient is the call's.
    plain = (
        Scaling(z_loss=s.spec.z_loss) if scaling is None or isinstance(scaling, _Bad) else scaling
    )
    ce, z_rows, _ = row_losses(s.spec, p, m, plain)
    if s.reduction != "none":
        return _parts(p, ce, z_rows)
    return _none_rows(s, ce, z_rows, np.shape(y))


def _none_rows(s: _Settings, ce: np.ndarray, z_rows: Any, shape: tuple[int, ...]) -> Any:
    """``"none"``'s element losses, ``unit * ce + z``, in the compute dtype (as the
    engine stores them)."""
    unit = rows_problem(s.spec, np.zeros(0, np.intp)).weight_scale
    rows = ce * unit if unit != 1.0 else ce
    if z_rows is not None:
        rows = rows + z_rows
    with np.errstate(over="ignore"):  # beyond float32's range: inf, as in memory
        return rows.astype(s.spec.dtype).reshape(shape)


def _split_rows(s: _Settings, scaling: Any, y: Any, *parts: Any) -> Any:
    """``(loss, merged rows, the z-loss term of the gradient)`` of a row block."""
    if isinstance(scaling, _Bad):
        scaling.raise_()
    m = _merged(s, y, parts)
    if isinstance(m, _Bad):
        m.raise_()
    p = rows_problem(s.spec, y)
    ce, z_rows, extra = row_losses(s.spec, p, m, scaling, True)
    loss = (
        _none_rows(s, ce, z_rows, np.shape(y)) if s.reduction == "none" else _parts(p, ce, z_rows)
    )
    return loss, m, extra


def _split_grads(
    s: _Settings, scaling: Any, h: Any, W: Any, b: Any, y: Any, k0: int, rows: Any
) -> Any:
    _, m, extra = rows
    return window_grads(s.spec, h, W, b, y, k0, m, extra, scaling)


# -- sums of arrays in float64 in a fixed tree -------------------------------------------
def _add(a: Any, b: Any) -> Any:
    return None if a is None else np.add(a, b, dtype=_F64)


def _item(pair: Any, k: int) -> Any:
    return pair[k]


def _sum_tree(parts: list[Any]) -> Any:
    """The float64 sum of Delayed arrays, pairwise in a fixed binary tree (so the
    same bits on every scheduler); each task holds two operands and their sum."""
    level = parts
    if len(level) == 1:
        return dask.delayed(_add, pure=True)(level[0], 0.0)
    while len(level) > 1:
        nxt = [
            dask.delayed(_add, pure=True)(level[i], level[i + 1])
            for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def _cast(total: Any, dtype: Any, shape: tuple[int, ...] | None = None) -> Any:
    with np.errstate(over="ignore"):  # beyond float16/32's range: inf, as in memory
        out = total.astype(dtype)
    return out if shape is None else out.reshape(shape)


# -- the graphs ------------------------------------------------------------------------------
def _first_pass(st: _Setup, s: Any, offsets: Any, kind: str, scaling: Any) -> dict[Any, Any]:
    """Delayed per-row-block results: ``kind`` is "metrics", "loss" or "grads".

    A whole classifier: one task per row block. A split one: one task per (row block,
    vocabulary chunk), merged per row block.
    """
    out = {}
    as_value = kind == "metrics" or (kind == "loss" and st.reduction != "none")
    for i, hb, yb in st.blocks():
        if not st.split:
            W, b = st.W_pieces[0], st.b_pieces[0]
            f: Any = _whole_metrics
            args: tuple[Any, ...] = (s, hb, W, b, yb)
            if kind != "metrics":
                f = _whole_loss if kind == "loss" else _whole_grads
                args = (s, scaling, hb, W, b, yb)
            task = _InBlock(i, f, as_value)
            out[i] = dask.delayed(task, pure=True)(scaling, offsets, *args)
            continue
        windows = [
            dask.delayed(_InBlock(i, _window, as_value), pure=True)(
                scaling, offsets, s, hb, W, b, yb, k0
            )
            for (k0, _), W, b in zip(st.vocab, st.W_pieces, st.b_pieces, strict=True)
        ]
        if kind == "metrics":
            out[i] = dask.delayed(_split_metrics, pure=True)(s, yb, *windows)
        elif kind == "loss":
            out[i] = dask.delayed(_split_loss, pure=True)(s, scaling, yb, *windows)
        else:
            out[i] = dask.delayed(_split_rows, pure=True)(s, scaling, yb, *windows)
    return out


def _loss_array(st: _Setup, s: Any, losses: dict[Any, Any]) -> da.Array:
    """The loss from each row block's rows (``"none"``) or ``_parts``."""
    if st.reduction == "none":
        return _assemble(losses, st.y.chunks, st.dtype)
    total = dask.delayed(_reduced, pure=True)(s, _exact_tree(list(losses.values())))
    return da.from_delayed(total, shape=(), dtype=st.dtype)


def _grads(st: _Setup, s: Any, scaling: Any, first: dict[Any, Any]) -> tuple[Any, LinearGrads]:
    """The loss and the three gradients as Dask arrays."""
    item = dask.delayed(_item, pure=True)
    losses = {i: item(r, 0) for i, r in first.items()}
    d = st.spec.d
    rows = st.h.chunks[:-1]
    has_bias = st.b_pieces[0] is not None
    if not st.split:
        dh = {(*i, 0): item(r, 1) for i, r in first.items()}
        dW_total = _sum_tree([item(r, 2) for r in first.values()])
        dW = [dask.delayed(_cast, pure=True)(dW_total, st.classifier_dtype)]
        db: list[Any] | None = None
        if has_bias:
            db = [
                dask.delayed(_cast, pure=True)(
                    _sum_tree([item(r, 3) for r in first.values()]), st.bias_dtype
                )
            ]
    else:
        dh = {}
        per_window: list[list[Any]] = [[] for _ in st.vocab]
        for i, hb, yb in st.blocks():
            shares = []
            for j, ((k0, _), W, b) in enumerate(
                zip(st.vocab, st.W_pieces, st.b_pieces, strict=True)
            ):
                g = dask.delayed(_split_grads, pure=True)(s, scaling, hb, W, b, yb, k0, first[i])
                shares.append(item(g, 0))
                per_window[j].append(g)
            shape = dask.delayed(np.shape, pure=True)(hb)
            key = (*i, 0)
            dh[key] = dask.delayed(_cast, pure=True)(_sum_tree(shares), st.hidden_dtype, shape)
        dW = [
            dask.delayed(_cast, pure=True)(
                _sum_tree([item(g, 1) for g in gs]), st.classifier_dtype
            )
            for gs in per_window
        ]
        db = None
        if has_bias:
            db = [
                dask.delayed(_cast, pure=True)(_sum_tree([item(g, 2) for g in gs]), st.bias_dtype)
                for gs in per_window
            ]
    hidden = _assemble(dh, (*rows, (d,)), st.hidden_dtype)
    if hidden.chunks != st.hidden_chunks and _known(*st.hidden_chunks):
        hidden = hidden.rechunk(st.hidden_chunks)
    widths = [k1 - k0 for k0, k1 in st.vocab]
    classifier = da.concatenate(
        [
            da.from_delayed(w, shape=(n, d), dtype=st.classifier_dtype)
            for w, n in zip(dW, widths, strict=True)
        ]
    )
    if classifier.chunks != st.classifier_chunks:
        classifier = classifier.rechunk(st.classifier_chunks)
    bias = None
    if db is not None:
        bias = da.concatenate(
            [
                da.from_delayed(g, shape=(n,), dtype=st.bias_dtype)
                for g, n in zip(db, widths, strict=True)
            ]
        )
    return _loss_array(st, s, losses), LinearGrads(hidden, classifier, bias)


# -- public functions ------------------------------------------------------------------------
_PARAMETERS = """
    hidden : dask.array.Array or array_like, shape (..., d)
        Hidden states chunked along their rows (any chunking, known or unknown sizes);
        the feature axis should be one chunk (else it is rechunked).
    classifier : numpy.ndarray or dask.array.Array, shape (V, d)
        The output layer's weight. A NumPy array (or a Dask array of one chunk of
        classes) reaches every worker once; a Dask array in several chunks of classes
        is split over the tasks along the vocabulary, so no worker holds all of it.
    labels : dask.array.Array or array_like of int, shape (...)
        Class indices, the shape of ``hidden`` without its last axis; cut into the
        blocks of ``hidden`` (when ``hidden``'s sizes are unknown, ``labels`` must be
        a Dask array cut the same way, e.g. ``labels[mask]`` for ``hidden[mask]``).
    epsilon : float, default 0.0
        Label smoothing.
    bias : array_like or dask.array.Array, shape (V,), optional
        The output layer's bias (split like the classifier)."""


def _doc(func: Any) -> Any:
    func.__doc__ = func.__doc__.replace("{parameters}", _PARAMETERS.strip("\n"))
    return func


def _setup(
    hidden: Any, classifier: Any, labels: Any, epsilon: Any, **kw: Any
) -> tuple[_Setup, Any, Any]:
    st = _Setup(hidden, classifier, labels, epsilon, **kw)
    s = dask.delayed(st.settings, pure=True, traverse=False)
    return st, s, st.offsets()


@_doc
def linear_cross_entropy(
    hidden: Any,
    classifier: Any,
    labels: Any,
    epsilon: float = 0.0,
    *,
    bias: Any = None,
    reduction: str = "mean",
    prior: Any = None,
    weight: npt.ArrayLike | None = None,
    ignore_index: int | None = None,
    num_classes: int | None = None,
    workers: int | None = 1,
    z_loss: float = 0.0,
    softcap: float | None = None,
    workspace: int = DEFAULT_WORKSPACE,
) -> da.Array:
    """:func:`smoothce.linear_cross_entropy` of Dask arrays, lazily.

    Parameters
    ----------
    {parameters}
    reduction, prior, weight, ignore_index, num_classes, z_loss, softcap, workspace
        As in :func:`smoothce.linear_cross_entropy` (``workspace`` per task).
    workers : int, default 1
        Threads of the engine within a task (Dask runs the tasks in parallel).

    Returns
    -------
    dask.array.Array
        ``"mean"``/``"sum"``: a 0-d array (float32, or float64 when an input is
        float64); ``"none"``: one loss per row, chunked as ``labels``. Equal to the
        in-memory loss within the rounding of the float64 merges.

    Examples
    --------
    .. code-block:: python

        import dask.array as da, smoothce.dask
        h = da.from_zarr("hidden.zarr")                 # (tokens, d), rows chunked
        W = da.from_zarr("classifier.zarr")             # (V, d), chunks of classes
        y = da.from_zarr("labels.zarr")
        smoothce.dask.linear_cross_entropy(h, W, y, 0.1).compute()
    """
    st, s, offsets = _setup(
        hidden, classifier, labels, epsilon, bias=bias, reduction=reduction, prior=prior,
        weight=weight, ignore_index=ignore_index, num_classes=num_classes, z_loss=z_loss,
        softcap=softcap, workspace=workspace, workers=workers,
    )  # fmt: skip
    check = _labels_pass(st, s, offsets) if st.reduction == "none" else None
    return _loss_array(st, s, _first_pass(st, s, offsets, "loss", check))


@_doc
def linear_cross_entropy_with_grad(
    hidden: Any,
    classifier: Any,
    labels: Any,
    epsilon: float = 0.0,
    *,
    bias: Any = None,
    reduction: str = "mean",
    prior: Any = None,
    weight: npt.ArrayLike | None = None,
    ignore_index: int | None = None,
    num_classes: int | None = None,
    workers: int | None = 1,
    z_loss: float = 0.0,
    softcap: float | None = None,
    workspace: int = DEFAULT_WORKSPACE,
) -> tuple[da.Array, LinearGrads]:
    """:func:`smoothce.linear_cross_entropy_with_grad` of Dask arrays, lazily.

    The labels are read first (the mean's denominators, and every label checked);
    then one pass over the row blocks gives the loss and the gradients, with a whole
    classifier, or two passes over the (row block, vocabulary chunk) tasks with a
    classifier split along the vocabulary (the logits of a window are formed again for
    its gradient rather than stored). Compute the results together,
    ``dask.compute(loss, *grads)``, to share the passes.

    Parameters
    ----------
    {parameters}
    reduction, prior, weight, ignore_index, num_classes, z_loss, softcap, workspace
        As in :func:`smoothce.linear_cross_entropy` (``workspace`` per task).
    workers : int, default 1
        Threads of the engine within a task.

    Returns
    -------
    loss : dask.array.Array
        As :func:`linear_cross_entropy`.
    grads : LinearGrads of dask.array.Array
        ``hidden``'s gradient chunked like ``hidden``, the classifier's like the
        classifier and the bias's like the classifier's classes, each in its input's
        dtype; the classifier's and the bias's are summed over the row blocks in
        float64 in a fixed tree and rounded once. ``"none"`` gives the gradient of the
        sum.
    """
    st, s, offsets = _setup(
        hidden, classifier, labels, epsilon, bias=bias, reduction=reduction, prior=prior,
        weight=weight, ignore_index=ignore_index, num_classes=num_classes, z_loss=z_loss,
        softcap=softcap, workspace=workspace, workers=workers,
    )  # fmt: skip
    scaling = _labels_pass(st, s, offsets)
    return _grads(st, s, scaling, _first_pass(st, s, offsets, "grads", scaling))


def evaluate_linear(
    hidden: Any,
    classifier: Any,
    labels: Any,
    epsilon: float = 0.0,
    *,
    bias: Any = None,
    softcap: float | None = None,
    prior: Any = None,
    weight: npt.ArrayLike | None = None,
    ignore_index: int | None = None,
    top_k: int = 5,
    n_bins: int = 15,
    workers: int | None = 1,
    workspace: int = DEFAULT_WORKSPACE,
) -> Delayed:
    """:func:`smoothce.metrics.evaluate_linear` of Dask arrays, lazily.

    Each row block becomes a :class:`~smoothce.metrics.Accumulator` (from the whole
    classifier, or from the row block's windows of a classifier split along the
    vocabulary: their log-sum-exp terms, label logits and ``top_k`` candidates merged
    exactly), the accumulators are merged exactly in a tree, and the last step forms
    the metrics.

    Parameters
    ----------
    hidden : dask.array.Array or array_like, shape (..., d)
        Hidden states chunked along their rows (known or unknown sizes).
    classifier : numpy.ndarray or dask.array.Array, shape (V, d)
        Whole, or a Dask array in chunks of classes (split over the tasks).
    labels : dask.array.Array or array_like of int, shape (...)
        Class indices; cut like ``hidden`` (``labels[mask]`` for ``hidden[mask]``).
    epsilon, bias, softcap, prior, weight, ignore_index, top_k, n_bins, workspace
        As in :func:`smoothce.metrics.evaluate_linear`.
    workers : int, default 1
        Threads of the engine within a task.

    Returns
    -------
    dask.delayed.Delayed
        ``.compute()`` gives the :class:`~smoothce.metrics.Metrics`, equal to the
        in-memory ones within the rounding of the float64 merges (float64: 1e-12
        relative; float32: 1e-5), the counts equal but for ties within that rounding.

    Examples
    --------
    .. code-block:: python

        import dask.array as da, smoothce.dask
        h = da.from_zarr("hidden.zarr")
        W = da.from_zarr("classifier.zarr")   # chunked along the vocabulary
        m = smoothce.dask.evaluate_linear(h, W, da.from_zarr("labels.zarr")).compute()
        m.perplexity, m.accuracy, m.ece
    """
    st, s, offsets = _setup(
        hidden, classifier, labels, epsilon, bias=bias, reduction="none", prior=prior,
        weight=weight, ignore_index=ignore_index, num_classes=None, z_loss=0.0,
        softcap=softcap, workspace=workspace, workers=workers,
        top_k=_check_top_k(top_k), n_bins=check_bins(n_bins),
    )  # fmt: skip
    parts = _first_pass(st, s, offsets, "metrics", None)
    return dask.delayed(_result, pure=True)(_exact_tree(list(parts.values())))


def _result(acc: Any) -> Metrics:
    if isinstance(acc, _Bad):
        acc.raise_()
    result: Metrics = acc.result()
    return result
