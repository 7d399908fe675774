r"""A linear head whose vocabulary is split into windows: the block functions of
vocabulary-parallel evaluation and training (:mod:`smoothce.dask`).

A classifier too large for one worker is split along its vocabulary: window ``j``
holds the classes ``[k0, k1)`` (rows ``k0:k1`` of the classifier and the bias). For a
block of rows, each window's task forms its logits ``hidden @ classifier[k0:k1].T +
bias[k0:k1]`` (soft-capped as the engine loads them) and returns only per-row values
(:class:`WindowStats`): the window's maximum ``m_j``, sum of exponentials ``S_j`` and
target dot product ``T_j`` in its own shifted coordinates and its target mass ``W_j``
(:func:`smoothce._kernel.window_stats`, the engine's own streamed-row step), the label's
logit where the label falls in the window, and the window's ``top_k`` candidates for
the top classes. :func:`merge` joins a row block's windows exactly as the engine joins
the windows of a streamed row (:func:`smoothce._kernel.merge_windows`, the online
log-sum-exp in float64) and keeps the best ``top_k`` candidates (ties to the lower
class, as :func:`numpy.argmax`); from the merged rows follow the losses
(:func:`row_losses`), the metrics (:func:`accumulator`) and, in a second pass over
the windows with the merged ``(m, S, W)``, the gradients (:func:`window_grads`).

Every function takes a :class:`Spec` (the call's validated settings, built once) and
NumPy blocks; nothing here imports Dask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ._compat import Quiet
from ._kernel import (
    Plan,
    finish_losses,
    load,
    merge_windows,
    scratch,
    window_grad,
    window_stats,
    z_terms,
)
from ._linear import _Head, aligned, logits_into
from ._scaling import Scaling, loss_unit
from ._terms import Block, Terms
from ._validation import Problem, prepare
from .metrics import Accumulator, _accumulator_of, _Pass

__all__ = [
    "Merged",
    "Spec",
    "WindowStats",
    "accumulator",
    "merge",
    "row_losses",
    "rows_problem",
    "window_grads",
    "window_stats_of",
]


@dataclass(frozen=True)
class Spec:
    """The validated settings of one split-head call, shared by all of its blocks.

    Attributes
    ----------
    V, d : int
        Classes and features.
    dtype : numpy dtype
        The compute dtype (float32, or float64 when an input is).
    epsilon, prior, weight, ignore_index, z_loss, softcap
        As the user gave them, already validated once (:class:`~smoothce._linear._Head`);
        each block validates its labels against them.
    workspace : int
        Bytes of logits a block forms at once (its rows are cut to fit).
    top_k : int
        Candidates for the top classes kept per window (0: none, for the losses).
    """

    V: int
    d: int
    dtype: np.dtype[Any]
    epsilon: float
    prior: Any
    weight: Any
    ignore_index: int | None
    z_loss: float
    softcap: float | None
    workspace: int
    top_k: int = 0

    @classmethod
    def of(cls, head: _Head, prior: Any, weight: Any, ignore_index: Any, top_k: int = 0) -> Spec:
        """The settings of a head validated on stand-ins (the user's ``prior``,
        ``weight`` and ``ignore_index``, which each block validates again with its
        labels)."""
        p = head.p
        return cls(
            head.V, head.d, head.dtype, p.epsilon, prior, weight, ignore_index, p.z_loss,
            p.softcap, head.workspace, top_k,
        )  # fmt: skip


def rows_problem(spec: Spec, labels: Any) -> Problem:
    """The engine's problem of a block of rows with these labels: validated (positions
    in the block's own shape, as in memory) and then flattened to (rows, V).

    The logits are a zero-strided stand-in (no memory): only the targets are read.
    """
    y = np.asarray(labels)
    stand_in = np.broadcast_to(np.zeros((), dtype=spec.dtype), (*y.shape, spec.V))
    p = prepare(
        stand_in, y, spec.epsilon, axis=-1, reduction="none", prior=spec.prior,
        weight=spec.weight, ignore_index=spec.ignore_index, num_classes=None,
        z_loss=spec.z_loss, softcap=spec.softcap,
    )  # fmt: skip
    n = y.size
    flat = np.broadcast_to(np.zeros((), dtype=spec.dtype), (n, spec.V))
    return replace(
        p,
        z=flat,
        logits_shape=flat.shape,
        labels=p.labels.reshape(n),
        counted=None if p.counted is None else p.counted.reshape(n),
    )


def _sub_rows(spec: Spec, width: int, n: int) -> int:
    """Rows whose logits over ``width`` classes fit the workspace (at least one)."""
    return max(1, min(n, spec.workspace // max(1, width * spec.dtype.itemsize)))


def _loader(
    spec: Spec, terms: Terms, want_grad: bool = False, scaling: Scaling | None = None
) -> Plan:
    """The kernel's plan for a window's logits, already in the compute dtype (only
    ``softcap`` transforms them as they load)."""
    s = Scaling() if scaling is None else scaling
    return Plan(
        terms, True, want_grad, s.grad, spec.dtype, spec.dtype, s.z_loss, s.z_grad,
        spec.softcap,
    )  # fmt: skip


# -- first pass: per-window statistics -------------------------------------------------
@dataclass
class WindowStats:
    """One window's per-row values for a block of ``n`` rows (float64 unless said).

    ``m, S, T`` are in the window's own shifted coordinates
    (:func:`~smoothce._kernel.window_stats`), ``W`` its target mass; ``zy`` the label
    logit where ``has`` (the label falls in the window); ``cand_v, cand_i`` (n, c) the
    window's best ``c = min(top_k, width)`` logits and their (global) classes, largest
    first, ties to the lower class.
    """

    k0: int
    m: np.ndarray
    S: np.ndarray
    T: np.ndarray
    W: np.ndarray
    zy: np.ndarray
    has: np.ndarray
    cand_v: np.ndarray
    cand_i: np.ndarray


def window_stats_of(
    spec: Spec,
    hidden: np.ndarray,
    classifier: np.ndarray,
    bias: np.ndarray | None,
    labels: Any,
    k0: int,
) -> WindowStats:
    """The :class:`WindowStats` of the classes ``[k0, k0 + len(classifier))`` for the
    rows ``hidden`` (..., d) with ``labels`` (...).

    The logits are formed in blocks of rows that fit ``spec.workspace``.
    """
    p = rows_problem(spec, labels)
    n = p.labels.shape[0]
    h2 = np.asarray(hidden).reshape(n, spec.d)
    Wj = aligned(np.asarray(classifier), spec.dtype)
    bj = None if bias is None else aligned(np.asarray(bias), spec.dtype)
    width = Wj.shape[0]
    k1 = k0 + width
    terms = Terms.of(p, k0, k1)
    plan = _loader(spec, terms)
    rows = _sub_rows(spec, width, n)
    raw = np.empty((rows, width), dtype=spec.dtype)
    ws = np.empty_like(raw)
    zbuf, xbuf = scratch(plan, rows, width)
    c = min(spec.top_k, width)
    m, S, T, W = (np.empty(n) for _ in range(4))
    zy = np.zeros(n)
    has = np.zeros(n, dtype=bool)
    cand_v = np.empty((n, c))
    cand_i = np.empty((n, c), dtype=np.int64)
    with Quiet():
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            x = load(plan, logits_into(h2[r0:r1], Wj, bj, raw), zbuf, xbuf)
            blk = Block(p, (slice(r0, r1),), k0, k1)
            mj, Sj, Tj = window_stats(x, ws[: r1 - r0], terms, blk, True)
            assert Tj is not None
            m[r0:r1], S[r0:r1], T[r0:r1] = mj, Sj, Tj
            W[r0:r1] = np.broadcast_to(terms.mass(blk), (r1 - r0,))
            inside, cols = blk.label_positions()
            zy[r0 + inside] = x[inside, cols]
            has[r0 + inside] = True
            if c:
                cand_v[r0:r1], cand_i[r0:r1] = _top(x, c, ws[: r1 - r0])
    cand_i += k0
    return WindowStats(k0, m, S, T, W, zy, has, cand_v, cand_i)


def _top(x: np.ndarray, c: int, scratch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``c`` largest entries of ``x`` (rows, width) and their columns,
    largest first, ties to the lower column (as :func:`numpy.argmax` ranks them);
    values in float64. ``scratch`` is a free buffer of ``x``'s shape and dtype.

    A partition of a copy (in ``scratch``) gives the ``c``-th largest value ``t`` of
    each row; where exactly ``c`` entries are at least ``t`` they are the answer. Rows
    with more (ties at ``t``) take every larger entry and the lowest columns equal to
    ``t``. Rows with a NaN (no softmax: their metrics are NaN) take any ``c`` columns.
    The extra memory is one boolean per entry; no index array of the block's size.
    """
    n, width = x.shape
    if c == width:
        cols: np.ndarray = np.broadcast_to(np.arange(width), (n, width))
    else:
        np.copyto(scratch, x)
        scratch.partition(width - c, axis=1)
        t = scratch[:, width - c, np.newaxis].copy()
        ge = x >= t
        plain = np.count_nonzero(ge, axis=1) == c
        cols = np.empty((n, c), dtype=np.intp)
        if plain.all():
            cols[...] = np.nonzero(ge)[1].reshape(n, c)
        else:
            rows = np.flatnonzero(plain)
            cols[rows] = np.nonzero(ge[rows])[1].reshape(len(rows), c)
            rest = np.flatnonzero(~plain)
            xt, tt = x[rest], t[rest]
            above, equal = xt > tt, xt == tt
            room = c - np.count_nonzero(above, axis=1)
            chosen = above | (equal & (np.cumsum(equal, axis=1) <= room[:, np.newaxis]))
            full = np.count_nonzero(chosen, axis=1) == c
            cols[rest[full]] = np.nonzero(chosen[full])[1].reshape(-1, c)
            cols[rest[~full]] = np.arange(c)  # NaN in the row: undefined anyway
    vals = np.take_along_axis(x, cols, axis=1).astype(np.float64)
    return _ranked(vals, np.asarray(cols, dtype=np.int64), c)


def _ranked(vals: np.ndarray, cols: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``c`` of each row's candidates ordered by value (descending), then
    class (ascending)."""
    order = np.lexsort((cols, -vals), axis=-1)[:, :c]
    return np.take_along_axis(vals, order, axis=1), np.take_along_axis(cols, order, axis=1)


# -- the merge -------------------------------------------------------------------------
@dataclass
class Merged:
    """A block of rows with its windows merged: ``m, S, T, W`` over the whole
    vocabulary in the coordinates ``x = z - m`` (float64), the label logit ``zy``, and
    the ``top_k`` best classes ``cand_i`` with their logits ``cand_v``."""

    m: np.ndarray
    S: np.ndarray
    T: np.ndarray
    W: np.ndarray
    zy: np.ndarray
    cand_v: np.ndarray
    cand_i: np.ndarray


def merge(spec: Spec, parts: Sequence[WindowStats]) -> Merged:
    """The rows of one block from all of its windows (any order): the online
    log-sum-exp of :func:`~smoothce._kernel.merge_windows`, in window order, and the
    best ``top_k`` of all candidates."""
    parts = sorted(parts, key=lambda w: w.k0)
    stack = [np.stack([getattr(w, f) for w in parts], axis=1) for f in ("m", "S", "T", "W")]
    with Quiet():
        m, S, T, W = merge_windows(*stack)
    zy = np.zeros_like(m)
    for w in parts:
        zy[w.has] = w.zy[w.has]
    if spec.top_k:
        v = np.concatenate([w.cand_v for w in parts], axis=1)
        i = np.concatenate([w.cand_i for w in parts], axis=1)
        cand_v, cand_i = _ranked(v, i, min(spec.top_k, v.shape[1]))
    else:
        cand_v, cand_i = np.empty((len(m), 0)), np.empty((len(m), 0), dtype=np.int64)
    return Merged(m, S, T, W, zy, cand_v, cand_i)


def row_losses(
    spec: Spec, p: Problem, merged: Merged, scaling: Scaling, want_grad: bool = False
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``(cross-entropy rows in engine units, z-loss rows, gradient's z-loss term)``.

    The rows are the engine's of a streamed row: ``W log S - T``, clamped at 0 and 0
    where ignored (:func:`~smoothce._kernel.finish_losses`); the z-loss rows
    ``z_loss lse**2`` and the term ``2 z_loss lse c_z`` are
    :func:`~smoothce._kernel.z_terms`' (None without a z-loss).
    """
    plan = _loader(spec, Terms.of(p), want_grad, scaling)
    with Quiet():
        ce = finish_losses(merged.W * np.log(merged.S) - merged.T, p.counted)
        z_rows, extra = z_terms(plan, merged.S, merged.m, p.counted, True, want_grad)
    return ce, z_rows, extra


def accumulator(spec: Spec, labels: Any, merged: Merged, n_bins: int) -> Accumulator:
    """The metrics' :class:`~smoothce.metrics.Accumulator` of a merged block: the
    values of one engine pass over whole rows (:class:`~smoothce.metrics._Pass`),
    taken from the merged windows as the metrics take a streamed row's."""
    p = rows_problem(spec, labels)
    ce, _, _ = row_losses(spec, p, merged, Scaling())
    unit = loss_unit(p, "mean")
    if unit != 1.0:
        ce *= unit
    y = p.labels
    k = spec.top_k
    with Quiet():
        log_s = np.log(merged.S)
        label_log = merged.zy - merged.m  # undefined rows: inf - inf
    r = _Pass(
        loss=ce,
        log_s=log_s,
        ref=merged.m,
        zy=merged.zy,
        label_log=label_log,
        m=merged.cand_v[:, 0].copy(),
        top1=merged.cand_i[:, 0] == y,
        topk=(merged.cand_i[:, :k] == y[:, None]).any(axis=1),
    )
    return _accumulator_of(p, r, k, n_bins)


# -- second pass: the gradients of one window ----------------------------------------
def window_grads(
    spec: Spec,
    hidden: np.ndarray,
    classifier: np.ndarray,
    bias: np.ndarray | None,
    labels: Any,
    k0: int,
    merged: Merged,
    extra: np.ndarray | None,
    scaling: Scaling,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The window's share of the gradients, ``(d hidden (n, d), d classifier[k0:k1],
    d bias[k0:k1] or None)``, in the compute dtype.

    The logits are formed again (the price of not storing them) and turned into their
    gradient with the merged rows' ``(m, S, W)`` and ``extra``
    (:func:`~smoothce._kernel.window_grad`), block by block: ``G @ classifier[k0:k1]``
    is this window's part of ``d hidden`` (the windows' parts are summed by the
    caller), ``G.T @ hidden`` and ``G.sum(0)`` are its rows' part of the
    classifier's and the bias's gradients.
    """
    p = rows_problem(spec, labels)
    n, d = p.labels.shape[0], spec.d
    h2 = np.asarray(hidden).reshape(n, d)
    Wj = aligned(np.asarray(classifier), spec.dtype)
    bj = None if bias is None else aligned(np.asarray(bias), spec.dtype)
    width = Wj.shape[0]
    terms = Terms.of(p, k0, k0 + width)
    plan = _loader(spec, terms, True, scaling)
    rows = _sub_rows(spec, width, n)
    raw = np.empty((rows, width), dtype=spec.dtype)
    zbuf, xbuf = scratch(plan, rows, width)
    dh = np.empty((n, d), dtype=spec.dtype)
    # d hidden is formed transposed, classifier.T @ G.T, as the fused head does it
    # (OpenBLAS runs the product with few rows and a long vocabulary far slower).
    dh_t = np.empty(d * rows, dtype=spec.dtype)
    dW = np.zeros((width, d), dtype=spec.dtype)
    db = None if bias is None else np.zeros(width, dtype=spec.dtype)
    slab = _sub_rows(spec, d, width)  # d classifier += G.T @ hidden, in slabs of classes
    tmp = np.empty((slab, d), dtype=spec.dtype)
    with Quiet():
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            x = load(plan, logits_into(h2[r0:r1], Wj, bj, raw), zbuf, xbuf)
            G = raw[: r1 - r0]  # the raw logits are read by `load` only: G goes there
            blk = Block(p, (slice(r0, r1),), k0, k0 + width)
            e = None if extra is None else extra[r0:r1]
            window_grad(
                plan, x, G, merged.m[r0:r1, None], merged.S[r0:r1], merged.W[r0:r1], e,
                terms, blk, xbuf,
            )  # fmt: skip
            block_t = dh_t[: d * (r1 - r0)].reshape(d, r1 - r0)
            np.matmul(Wj.T, G.T, out=block_t)
            dh[r0:r1] = block_t.T
            _Head._accumulate(dW, G, aligned(h2[r0:r1], spec.dtype), tmp, r0 == 0)
            if db is not None:
                db += G.sum(axis=0)
    return dh, dW, db
