r"""A linear head on Dask arrays: the graphs of :func:`smoothce.dask.linear_cross_entropy`,
:func:`~smoothce.dask.linear_cross_entropy_with_grad` and
:func:`~smoothce.dask.evaluate_linear`.

The hidden states (..., d) are the grid (:class:`~smoothce.dask._setup.Grid`, its
blocks whole along the hidden width), the labels lined up with it as labels are with
logits (unknown chunk sizes included); errors are placed in the whole array by the
package's :class:`~smoothce.dask._positions.Layout` and merge trees. The classifier
(V, d) and the bias (V,) are either

* **whole** (NumPy arrays, or Dask arrays of one chunk of classes): one key of the
  graph, which each worker receives once (with a default ``distributed.Client`` a
  NumPy classifier is scattered to the workers when the graph is built); every row
  block runs the in-memory head on it (:class:`smoothce._linear._Head`,
  :func:`smoothce._linear_metrics.accumulate_head`);
* **split along the vocabulary** (a Dask array in several chunks of classes): every
  (row block, vocabulary chunk) task forms its window of the logits only and returns
  per-row statistics (:func:`smoothce._vocab.window_stats_of`), merged per row block
  exactly as the engine merges a streamed row's windows (:func:`smoothce._vocab.merge`);
  the gradients take a second pass over the windows with the merged rows
  (:func:`smoothce._vocab.window_grads`). No task holds more than one chunk of the
  classifier.

Reductions merge exact partial sums in the package's trees and are divided once by
the whole batch's mean denominators. The gradients wait for a gate over the labels
alone (the denominators, and every label checked first). The classifier's and the
bias's gradients are summed over the row blocks, and the windows' parts of the hidden
states' gradient over the windows, in float64 in a fixed binary tree (two operands per
task), and rounded once to their dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
import numpy.typing as npt
from dask.base import tokenize
from dask.delayed import Delayed

from .._bins import check_bins
from .._exact import ExactSum, exact_sums
from .._linear import DEFAULT_WORKSPACE, LinearGrads, _Head, check_features
from .._linear_metrics import accumulate_head, metrics_head
from .._scaling import Scaling
from .._vocab import Spec, accumulator, merge, row_losses, rows_problem, window_grads
from .._vocab import window_stats_of as _window_stats_of
from ..metrics import Metrics, _check_top_k, _exact_denominator
from ._graph import Gate, Part, Tasks
from ._positions import Layout
from ._setup import Grid

__all__ = ["evaluate_linear", "linear_cross_entropy", "linear_cross_entropy_with_grad"]

_F64 = np.dtype(np.float64)
_ONE = 1 << 1126  # 1.0 in ExactSum's units
#: The arguments of a task over a row block, as its BlockTask names them.
ROWS = ("hidden", "labels", "classifier", "bias", "k0")


@dataclass(frozen=True)
class HeadSettings:
    """What every task of one call needs (one key of the graph)."""

    spec: Spec
    reduction: str
    workers: Any
    n_bins: int = 15


def _stand_in(shape: tuple[float, ...], dtype: Any) -> np.ndarray:
    """A read-only array of ``shape`` (unknown sizes as 0) and ``dtype`` that occupies no
    memory."""
    return np.broadcast_to(
        np.zeros((), dtype=dtype), tuple(0 if math.isnan(n) else int(n) for n in shape)
    )


def _meta(a: Any) -> tuple[tuple[int, ...], np.dtype[Any]]:
    if isinstance(a, (da.Array, np.ndarray)):
        return tuple(a.shape), np.dtype(a.dtype)
    arr = np.asarray(a)
    return arr.shape, arr.dtype


def _local(a: Any) -> Any:
    """A class prior or class weights given as a Dask array: V numbers, computed now.
    Any other Dask array (a prior per row, which the head refuses) stands in unread."""
    if not isinstance(a, da.Array):
        return a
    if a.ndim != 1:
        return _stand_in(a.shape, a.dtype)
    return np.asarray(a.compute())


def _whole_key(a: Any) -> da.Array:
    """A whole array as a Dask array of one chunk, so that each worker receives it once.

    A NumPy array goes into the graph once (:func:`dask.array.from_array`), or, with a
    default ``distributed.Client``, is scattered to every worker now: a graph holding a
    large array would travel through the scheduler.
    """
    if isinstance(a, da.Array):
        return a.rechunk(-1)
    a = np.asarray(a)
    try:
        from distributed import default_client

        client = default_client()
    except (ImportError, ValueError):  # no distributed, or no default client
        client = None
    if client is not None:
        future = client.scatter(a, broadcast=True, hash=True)
        return da.from_delayed(dask.delayed(future), shape=a.shape, dtype=a.dtype)
    return da.from_array(a, chunks=a.shape)


class HeadSetup:
    """The Dask inputs of one head call, validated now and lined up block for block."""

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
        y = labels if isinstance(labels, da.Array) else da.asarray(np.asarray(labels))
        prior, weight = _local(prior), _local(weight)
        if h.ndim < 2:
            raise ValueError(
                "smoothce.dask needs a batch axis (hidden states (..., d) of at least 2 "
                f"dimensions); got hidden of shape {h.shape}. Use smoothce.metrics or "
                "smoothce.linear_cross_entropy."
            )
        W_shape, W_dtype = _meta(classifier)
        if len(W_shape) == 2:  # (else the head names the classifier's shape)
            check_features(h.shape, W_shape)
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
        known = not any(math.isnan(n) for n in (*y.shape, *h.shape))
        if y.ndim != h.ndim - 1 or (known and y.shape != h.shape[:-1]):
            raise ValueError(
                "labels must have the shape of hidden without its last axis, "
                f"{h.shape[:-1]}; got shape {y.shape}."
            )
        self.spec = Spec.of(head, prior, weight, ignore_index, top_k)
        self.settings = HeadSettings(self.spec, head.p.reduction, workers, n_bins)
        self.reduction = head.p.reduction
        self.dtype = head.dtype
        self.hidden_dtype, self.classifier_dtype = h.dtype, np.dtype(W_dtype)
        self.bias_dtype = None if b_meta is None else b_meta[1]
        self.grid = Grid(h, h.ndim - 1, "hidden", "hidden width")
        self.h = self.grid.array
        self.y_axes = tuple(range(h.ndim - 1))
        self.y = self.grid.align(y, "labels", self.y_axes)
        self.layout: Layout = self.grid.layout({"labels": self.y_axes})
        self._classifier(classifier, bias)

    def _classifier(self, W: Any, b: Any) -> None:
        """The classifier and the bias as one piece, or in chunks of the vocabulary."""
        V, d = self.spec.V, self.spec.d
        self.classifier_chunks = W.chunks if isinstance(W, da.Array) else ((V,), (d,))
        if isinstance(W, da.Array):
            classes = Grid(W, 1, "classifier", "hidden width")  # whole rows of features
            if any(math.isnan(c) for c in classes.chunks[0]):
                raise ValueError(
                    "classifier has unknown chunk sizes along its classes; "
                    "compute_chunk_sizes() on the Dask array makes them known."
                )
            W = classes.array
        self.split = isinstance(W, da.Array) and W.numblocks[0] > 1
        if not self.split:
            self.W = _whole_key(W)
            self.b = None if b is None else _whole_key(b)
            self.vocab = [(0, V)]
        else:
            self.W = W
            self.b = None
            if b is not None:
                bd = b if isinstance(b, da.Array) else da.from_array(np.asarray(b), chunks=-1)
                self.b = bd.rechunk((W.chunks[0],))
            ends = np.cumsum(W.chunks[0]).tolist()
            self.vocab = list(zip([0, *ends[:-1]], ends, strict=True))

    # -- blocks ------------------------------------------------------------------------
    def inputs(self) -> list[da.Array]:
        return [a for a in (self.h, self.y, self.W, self.b) if a is not None]

    def windows(self) -> list[tuple[Any, Any, int]]:
        """``(classifier key, bias key or None, first class)`` per vocabulary chunk."""
        out = []
        for j, (k0, _) in enumerate(self.vocab):
            bk = None if self.b is None else (self.b.name, j) if self.split else (self.b.name, 0)
            out.append(((self.W.name, j, 0), bk, k0))
        return out

    def blocks(self, window: tuple[Any, Any, int]) -> dict[tuple[int, ...], tuple[Any, ...]]:
        """``index -> (hidden, labels, classifier, bias keys, first class)`` per row
        block, with one vocabulary chunk."""
        out = {}
        for index in self.grid.indices():
            yb = (self.y.name, *Grid.block_of(index, self.y_axes, self.y))
            out[index] = ((self.h.name, *index), yb, *window)
        return out

    def label_blocks(self) -> dict[tuple[int, ...], tuple[Any]]:
        """``index over the hidden states' axes -> (labels key,)``, one per labels
        block."""
        out = {}
        for idx in np.ndindex(*self.y.numblocks):
            index = (*idx, 0)
            out[index] = ((self.y.name, *idx),)
        return out


# -- exact parts of the reduced loss and the mean's denominators -----------------------
@dataclass(frozen=True)
class HeadSums:
    """A block's exact sums: the cross-entropy (engine units), the z-loss, the mean's
    denominator (the weights' engine units) and the counted rows."""

    ce: ExactSum
    z: ExactSum
    den: ExactSum
    counted: ExactSum

    def __add__(self, other: HeadSums) -> HeadSums:
        return HeadSums(
            self.ce + other.ce, self.z + other.z, self.den + other.den,
            self.counted + other.counted,
        )  # fmt: skip

    @classmethod
    def of(cls, p: Any, ce: Any, z: Any) -> HeadSums:
        n = p.labels.size if p.counted is None else int(np.count_nonzero(p.counted))
        (ce_sum,) = exact_sums(np.asarray(ce, dtype=_F64))
        (z_sum,) = exact_sums(np.asarray(0.0 if z is None else z, dtype=_F64))
        return cls(ce_sum, z_sum, _exact_denominator(p), ExactSum(n * _ONE))

    def scaling(self, s: HeadSettings) -> Scaling:
        """The whole batch's :class:`~smoothce._scaling.Scaling`."""
        p = rows_problem(s.spec, np.zeros(0, dtype=np.intp))
        dens = (self.den.value(), self.counted.value()) if s.reduction == "mean" else None
        return Scaling.of(p, s.reduction, dens)


def _reduced(sums: HeadSums, s: HeadSettings) -> Any:
    """The reduced loss, as :meth:`~smoothce._scaling.Scaling.reduce` forms it."""
    return sums.scaling(s).reduce(sums.ce.value(), sums.z.value(), s.spec.dtype)


def _labels_sums(s: HeadSettings, gate: Gate | None, y: Any) -> HeadSums:
    """A labels block checked, and its share of the mean's denominators."""
    return HeadSums.of(rows_problem(s.spec, y), 0.0, None)


def _scaling_of(s: HeadSettings, gate: Gate | None) -> Any:
    assert gate is not None
    sums: HeadSums = gate.value
    return sums.scaling(s)


# -- block functions: a whole classifier -------------------------------------------------
def _whole_head(s: HeadSettings, h: Any, W: Any, b: Any, y: Any) -> _Head:
    """The in-memory head of one row block, the classifier and the bias in the compute
    dtype (the partial gradients stay there until the merge rounds their sum once)."""
    sp = s.spec
    Wc = np.asarray(W).astype(sp.dtype, copy=False)
    bc = None if b is None else np.asarray(b).astype(sp.dtype, copy=False)
    return _Head(
        h, Wc, y, sp.epsilon, bc, s.reduction, sp.prior, sp.weight, sp.ignore_index, None,
        sp.z_loss, sp.softcap, sp.workspace,
    )  # fmt: skip


def _whole_metrics(s: HeadSettings, gate: Any, h: Any, y: Any, W: Any, b: Any, k0: int) -> Any:
    sp = s.spec
    head = metrics_head(
        h, W, y, sp.epsilon, bias=b, softcap=sp.softcap, prior=sp.prior, weight=sp.weight,
        ignore_index=sp.ignore_index, workspace=sp.workspace,
    )  # fmt: skip
    return accumulate_head(head, sp.top_k, s.n_bins, s.workers)


def _whole_loss(s: HeadSettings, gate: Any, h: Any, y: Any, W: Any, b: Any, k0: int) -> Any:
    """The loss rows (``"none"``) or the block's :class:`HeadSums`."""
    head = _whole_head(s, h, W, b, y)
    scaling = None if gate is None else _scaling_of(s, gate)
    total, _ = head.run(False, s.workers, scaling, True)
    return total if s.reduction == "none" else HeadSums.of(head.p, *total)


def _whole_grads(s: HeadSettings, gate: Any, h: Any, y: Any, W: Any, b: Any, k0: int) -> Any:
    """``(loss rows or sums, d hidden, d classifier, d bias)`` of one row block."""
    head = _whole_head(s, h, W, b, y)
    total, g = head.run(True, s.workers, _scaling_of(s, gate), True)
    assert g is not None
    loss = total if s.reduction == "none" else HeadSums.of(head.p, *total)
    return loss, g.hidden, g.classifier, g.bias


# -- block functions: a classifier split along the vocabulary ----------------------------
def _window(s: HeadSettings, gate: Any, h: Any, y: Any, W: Any, b: Any, k0: int) -> Any:
    return _window_stats_of(s.spec, h, W, b, y, k0)


def _merged(layout: Layout, s: HeadSettings, parts: Sequence[Part]) -> Part:
    """A row block's windows merged (:func:`smoothce._vocab.merge`), or their first
    error, as a :class:`~smoothce.dask._graph.Part`."""
    sizes: dict[Any, int] = {}
    for p in parts:
        sizes.update(p.sizes)
    error = layout.earliest([p.error for p in parts if p.error is not None])
    if error is not None:
        return Part(None, error, sizes)
    return Part(merge(s.spec, [p.value for p in parts]), None, sizes)


def _split_metrics(layout: Layout, s: HeadSettings, y: Any, *parts: Part) -> Part:
    m = _merged(layout, s, parts)
    if m.error is not None:
        return m
    return Part(accumulator(s.spec, y, m.value, s.n_bins), None, m.sizes)


def _none_rows(s: HeadSettings, ce: np.ndarray, z_rows: Any, shape: tuple[int, ...]) -> Any:
    """``"none"``'s element losses, ``unit * ce + z``, in the compute dtype (as the
    engine stores them)."""
    unit = rows_problem(s.spec, np.zeros(0, np.intp)).weight_scale
    rows = ce * unit if unit != 1.0 else ce
    if z_rows is not None:
        rows = rows + z_rows
    with np.errstate(over="ignore"):  # beyond float32's range: inf, as in memory
        return rows.astype(s.spec.dtype).reshape(shape)


def _split_loss(layout: Layout, s: HeadSettings, gate: Any, y: Any, *parts: Part) -> Any:
    """The loss rows (``"none"``, raising an error) or the :class:`HeadSums` part of a
    row block from its windows."""
    m = _merged(layout, s, parts)
    if m.error is not None:
        if s.reduction == "none":
            raise ValueError(layout.message(m.error, m.sizes))
        return m
    p = rows_problem(s.spec, y)
    # The loss alone needs no batch scaling: its rows are in engine units, and the
    # z-loss coefficient is the call's.
    ce, z_rows, _ = row_losses(s.spec, p, m.value, Scaling(z_loss=s.spec.z_loss))
    if s.reduction == "none":
        return _none_rows(s, ce, z_rows, np.shape(y))
    return Part(HeadSums.of(p, ce, z_rows), None, m.sizes)


def _split_rows(layout: Layout, s: HeadSettings, gate: Gate, y: Any, *parts: Part) -> Any:
    """``(loss, merged rows, the z-loss term of the gradient)`` of a row block."""
    m = _merged(layout, s, parts)
    if m.error is not None:
        raise ValueError(layout.message(m.error, {**gate.sizes, **m.sizes}))
    p = rows_problem(s.spec, y)
    ce, z_rows, extra = row_losses(s.spec, p, m.value, _scaling_of(s, gate), True)
    if s.reduction == "none":
        return _none_rows(s, ce, z_rows, np.shape(y)), m.value, extra
    return HeadSums.of(p, ce, z_rows), m.value, extra


def _window_grads(
    s: HeadSettings, gate: Any, h: Any, y: Any, W: Any, b: Any, k0: int, rows: Any
) -> Any:
    _, m, extra = rows
    return window_grads(s.spec, h, W, b, y, k0, m, extra, _scaling_of(s, gate))


# -- small tasks -----------------------------------------------------------------------------
def _item(pair: Any, k: int) -> Any:
    return pair[k]


def _value(part: Part) -> Any:
    return part.value


def _as_part(value: Any) -> Part:
    return Part(value)


def _add(a: Any, b: Any) -> Any:
    """Two partial gradients summed in float64 (None without a bias)."""
    return None if a is None else np.add(a, b, dtype=_F64)


def _cast(total: Any, dtype: Any, labels: Any = None) -> Any:
    """A float64 sum rounded once to the input's dtype (beyond float16/32's range:
    inf, as in memory); rows of hidden states shaped as their ``labels`` block (the
    feature axis named: an empty block has no size to infer it from)."""
    with np.errstate(over="ignore"):
        out = np.asarray(total).astype(dtype)
    return out if labels is None else out.reshape(*np.shape(labels), out.shape[-1])


def _result(acc: Any) -> Metrics:
    result: Metrics = acc.result()
    return result


class HeadGraph:
    """The tasks of one head call over the blocks of a :class:`HeadSetup`."""

    def __init__(self, st: HeadSetup, prefix: str) -> None:
        self.st = st
        inputs = st.inputs()
        token = tokenize(prefix, st.settings, st.layout, *(a.name for a in inputs))
        self.tasks = Tasks(f"smoothce-{prefix}-{token}", inputs)
        self.settings = self.tasks.constant("settings", st.settings)
        self.layout = self.tasks.constant("layout", st.layout)

    def _blocks(self, label: str, func: Any, window: Any, *, part: bool, gate: Any) -> Any:
        return self.tasks.blocks(
            label, func, self.st.blocks(window), ROWS, self.settings, self.layout, gate,
            part=part,
        )  # fmt: skip

    def gate(self) -> Any:
        """The key of the labels' :class:`~smoothce.dask._graph.Gate`: every label
        checked, the merged :class:`HeadSums` (the mean's denominators)."""
        t = self.tasks
        parts = t.blocks(
            "labels", _labels_sums, self.st.label_blocks(), ("labels",), self.settings,
            self.layout, part=True,
        )  # fmt: skip
        return t.gate(
            "gate", self.layout, t.tree("labels-merge", self.layout, list(parts.values()))
        )

    def first_pass(self, kind: str, gate: Any) -> dict[tuple[int, ...], Any]:
        """Per row block: ``kind`` is "metrics" (an Accumulator Part), "loss" (rows or a
        HeadSums Part) or "grads" (a tuple)."""
        st, t = self.st, self.tasks
        part = kind == "metrics" or (kind == "loss" and st.reduction != "none")
        if not st.split:
            func = {"metrics": _whole_metrics, "loss": _whole_loss, "grads": _whole_grads}[kind]
            whole: dict[tuple[int, ...], Any] = self._blocks(
                kind, func, st.windows()[0], part=part, gate=gate
            )
            return whole
        windows = [
            self._blocks(f"window-{j}", _window, w, part=True, gate=gate)
            for j, w in enumerate(st.windows())
        ]
        out = {}
        for index in st.grid.indices():
            yb = st.blocks(st.windows()[0])[index][1]
            keys = [w[index] for w in windows]
            key = t.key(f"{kind}-rows", *index)
            if kind == "metrics":
                out[index] = t.add(key, (_split_metrics, self.layout, self.settings, yb, *keys))
            elif kind == "loss":
                task = (_split_loss, self.layout, self.settings, gate, yb, *keys)
                out[index] = t.add(key, task)
            else:
                task = (_split_rows, self.layout, self.settings, gate, yb, *keys)
                out[index] = t.add(key, task)
        return out

    def sum_tree(self, label: str, keys: list[Any]) -> Any:
        """The float64 sum of the arrays ``keys`` give, in a fixed binary tree."""
        t, level, depth = self.tasks, list(keys), 0
        if len(level) == 1:
            return t.add(t.key(label, 0, 0), (_add, level[0], 0.0))
        while len(level) > 1:
            nxt = [
                t.add(t.key(label, depth, k), (_add, level[i], level[i + 1]))
                for k, i in enumerate(range(0, len(level) - 1, 2))
            ]
            if len(level) % 2:
                nxt.append(level[-1])
            level, depth = nxt, depth + 1
        return level[0]

    # -- results -------------------------------------------------------------------------
    def metrics(self) -> Any:
        parts = self.first_pass("metrics", None)
        root = self.tasks.tree("merge", self.layout, list(parts.values()))
        return self.tasks.delayed(
            "evaluate-linear", self.tasks.then("result", self.layout, root, _result)
        )

    def loss(self, losses: dict[tuple[int, ...], Any], as_parts: bool) -> Any:
        """The tasks of the loss from each row block's rows or sums (``as_parts``:
        wrapped as a Part first); :meth:`loss_array` makes the result."""
        st, t = self.st, self.tasks
        if st.reduction == "none":
            return {st.grid.drop(i): k for i, k in losses.items()}
        parts = losses if not as_parts else t.map("loss-as-part", _as_part, losses)
        root = t.tree("loss-merge", self.layout, list(parts.values()))
        return t.then("loss", self.layout, root, _reduced, st.settings)

    def loss_array(self, loss: Any) -> da.Array:
        st, t = self.st, self.tasks
        if st.reduction == "none":
            return t.array("linear-cross-entropy", loss, st.grid.drop(st.grid.chunks), st.dtype)
        return t.scalar("linear-cross-entropy", loss, st.dtype)

    def with_grad(self) -> tuple[da.Array, LinearGrads]:
        st, t = self.st, self.tasks
        gate = self.gate()
        first = self.first_pass("grads", gate)
        losses = {i: t.add(t.key("loss-of", *i), (_item, k, 0)) for i, k in first.items()}
        d = st.spec.d
        dh: dict[tuple[int, ...], Any] = {}
        dW, db = [], []
        if not st.split:
            for i, k in first.items():
                dh[i] = t.add(t.key("hidden-grad", *i), (_item, k, 1))
            total = self.sum_tree(
                "classifier-sum",
                [t.add(t.key("cls-of", *i), (_item, k, 2)) for i, k in first.items()],
            )
            dW.append(t.add(t.key("classifier-grad", 0, 0), (_cast, total, st.classifier_dtype)))
            if st.b is not None:
                total = self.sum_tree(
                    "bias-sum",
                    [t.add(t.key("bias-of", *i), (_item, k, 3)) for i, k in first.items()],
                )
                db.append(t.add(t.key("bias-grad", 0), (_cast, total, st.bias_dtype)))
        else:
            per_window: list[list[Any]] = [[] for _ in st.vocab]
            shares: dict[tuple[int, ...], list[Any]] = {i: [] for i in first}
            for j, window in enumerate(st.windows()):
                blocks = st.blocks(window)
                for i in st.grid.indices():
                    args = (*blocks[i], first[i])
                    g = t.add(
                        t.key(f"window-grad-{j}", *i),
                        (_BlockCall(_window_grads, i), self.settings, self.layout, gate, *args),
                    )
                    shares[i].append(t.add(t.key(f"hidden-share-{j}", *i), (_item, g, 0)))
                    per_window[j].append(g)
            for i, keys in shares.items():
                total = self.sum_tree(f"hidden-sum-{'-'.join(map(str, i))}", keys)
                yb = st.blocks(st.windows()[0])[i][1]
                dh[i] = t.add(t.key("hidden-grad", *i), (_cast, total, st.hidden_dtype, yb))
            for j, gs in enumerate(per_window):
                cls = [t.add(t.key(f"cls-of-{j}", k), (_item, g, 1)) for k, g in enumerate(gs)]
                dW.append(
                    t.add(
                        t.key("classifier-grad", j, 0),
                        (_cast, self.sum_tree(f"classifier-sum-{j}", cls), st.classifier_dtype),
                    )
                )
                if st.b is not None:
                    bs = [t.add(t.key(f"bias-of-{j}", k), (_item, g, 2)) for k, g in enumerate(gs)]
                    db.append(
                        t.add(
                            t.key("bias-grad", j),
                            (_cast, self.sum_tree(f"bias-sum-{j}", bs), st.bias_dtype),
                        )
                    )
        loss = self.loss(losses, as_parts=True)  # the last tasks: the results follow
        widths = tuple(k1 - k0 for k0, k1 in st.vocab)
        hidden = t.array("linear-grad-hidden", dh, st.grid.chunks, st.hidden_dtype)
        classifier = t.array(
            "linear-grad-classifier", {(j, 0): k for j, k in enumerate(dW)}, (widths, (d,)),
            st.classifier_dtype,
        )  # fmt: skip
        bias = None
        if db:
            assert st.bias_dtype is not None
            bias = t.array(
                "linear-grad-bias", {(j,): k for j, k in enumerate(db)}, (widths,), st.bias_dtype
            )
        return self.loss_array(loss), LinearGrads(
            _rechunked(hidden, st.grid.original_chunks),
            _rechunked(classifier, st.classifier_chunks),
            None if bias is None else _rechunked(bias, (st.classifier_chunks[0],)),
        )


class _BlockCall:
    """A second-pass window task: like :class:`~smoothce.dask._graph.BlockTask` without
    the Part machinery (its labels were checked by the gate), errors raised."""

    def __init__(self, func: Any, block: tuple[int, ...]) -> None:
        self.func, self.block = func, block

    def __dask_tokenize__(self) -> Any:
        return (type(self).__name__, self.func.__qualname__, self.block)

    def __call__(self, settings: Any, layout: Layout, gate: Any, *args: Any) -> Any:
        return self.func(settings, gate, *args)


def _rechunked(a: da.Array, chunks: tuple[tuple[float, ...], ...]) -> da.Array:
    if any(math.isnan(c) for axis in chunks for c in axis) or a.chunks == chunks:
        return a
    return a.rechunk(chunks)


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
    st = HeadSetup(
        hidden, classifier, labels, epsilon, bias=bias, reduction=reduction, prior=prior,
        weight=weight, ignore_index=ignore_index, num_classes=num_classes, z_loss=z_loss,
        softcap=softcap, workspace=workspace, workers=workers,
    )  # fmt: skip
    graph = HeadGraph(st, "linear-cross-entropy")
    # Array results wait for every label to be checked (the first bad one in C order is
    # the one reported); reductions carry their errors through the merge tree.
    gate = graph.gate() if st.reduction == "none" else None
    return graph.loss_array(graph.loss(graph.first_pass("loss", gate), as_parts=False))


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
    st = HeadSetup(
        hidden, classifier, labels, epsilon, bias=bias, reduction=reduction, prior=prior,
        weight=weight, ignore_index=ignore_index, num_classes=num_classes, z_loss=z_loss,
        softcap=softcap, workspace=workspace, workers=workers,
    )  # fmt: skip
    return HeadGraph(st, "linear-cross-entropy-with-grad").with_grad()


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
    st = HeadSetup(
        hidden, classifier, labels, epsilon, bias=bias, reduction="none", prior=prior,
        weight=weight, ignore_index=ignore_index, num_classes=None, z_loss=0.0,
        softcap=softcap, workspace=workspace, workers=workers,
        top_k=_check_top_k(top_k), n_bins=check_bins(n_bins),
    )  # fmt: skip
    return HeadGraph(st, "evaluate-linear").metrics()
