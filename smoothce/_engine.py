r"""Scheduling: blocks of rows on threads, and rows too long for one block.

The work on a block is :func:`smoothce._kernel.run_block`; the call's scaling is a
:class:`~smoothce._scaling.Scaling`. This module only decides which rows go together,
which thread runs them, where each block's exponentials are written, and how partial
results are combined.

Blocks
------
Rows are processed in blocks of at most :data:`BLOCK_ELEMENTS` logits, so the workspace
is bounded independently of the batch size. A block's gradient is computed in place in
its own slice of the gradient array when that slice is a writable C-contiguous view of
the compute dtype (no copy); otherwise in a per-thread workspace, then stored.

A row longer than a block is *streamed*: its classes are cut into windows, each window
yields its ``(max m_j, sum of exponentials S_j, dot T_j, mass W_j)`` in its own shifted
coordinates (:func:`~smoothce._kernel.window_stats`), and the row's values follow by the
online log-sum-exp (:func:`~smoothce._kernel.merge_windows`). Its gradient needs ``m``
and ``S`` first, so streamed rows take a second pass over their windows: that is the
price of their length, whatever their values.

Each block is computed the same way whichever thread runs it, and partial sums are
added with :func:`math.fsum` (exactly rounded), so every ``workers`` value gives bitwise
identical results; a row's values depend on that row alone, so every chunking does too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from ._compat import Quiet
from ._kernel import (
    Plan,
    finish_losses,
    load,
    merge_windows,
    run_block,
    scratch,
    window_grad,
    window_stats,
    z_terms,
)
from ._parallel import resolve_workers, run_ranges
from ._scaling import Scaling, exact_sum
from ._stable import is_view_of, row_blocks, store_float16
from ._terms import Block, Terms
from ._validation import Prior, Problem, classes_last

__all__ = ["BLOCK_ELEMENTS", "evaluate", "run", "with_batch_axis"]

# The blocks' partial sums, the ufunc reduction called directly (an ndarray's .sum
# adds a Python frame); the lean path adds its one block with the same function.
_add = np.add.reduce

#: Elements per block: 2**18 float32 values are 1 MiB, one core's L2 cache here, so a
#: block is read from memory once and its later passes (sums, scaling, the gradient)
#: hit the cache or the L3 behind it. Each block costs a fixed few dozen NumPy calls
#: with the GIL held, which is what smaller blocks pay for: against 2**17, 2**18 made
#: float32 forward+gradient 5-12% faster at (8192, 1000), (65536, 100) and
#: (4096, 32000), and 2**19 gained half as much again (``benchmarks/block_size.py``).
#: The price is the loss-only path's workspace, one block per thread (2 MiB per
#: thread in float64). Every path reads it here, at call time (tests lower it to
#: exercise streamed rows on small shapes).
BLOCK_ELEMENTS = 1 << 18

#: ``observe(key, z2, S, ref, label_logs)``: see :data:`smoothce._kernel.Observer`;
#: ``key`` indexes the block's rows in the batch.
BlockObserver = Callable[[Any, np.ndarray, np.ndarray, Any, Any], None]
#: ``observe_streamed(m, S)``: streamed rows' maxima and sums, in batch order.
StreamObserver = Callable[[np.ndarray, np.ndarray], None]


def run(
    p: Problem,
    scaling: Scaling,
    *,
    want_loss: bool,
    grad: np.ndarray | None = None,
    loss_rows: np.ndarray | None = None,
    z_rows: np.ndarray | None = None,
    workers: Any = None,
    observe: BlockObserver | None = None,
    observe_streamed: StreamObserver | None = None,
) -> tuple[float, float]:
    """One pass over ``p`` (which has a batch axis); returns ``(ce_sum, z_sum)``.

    Parameters
    ----------
    p : Problem
        Validated arguments with at least one batch axis.
    scaling : Scaling
        The gradient's factor and the z-loss constants; ``scaling.unit`` multiplies the
        rows stored in ``loss_rows``.
    want_loss : bool
        Whether to compute the losses (the gradient alone skips the dot products).
    grad : ndarray of shape ``p.z.shape`` (classes last), or None
        Destination of the gradient, any dtype (converted on store).
    loss_rows : ndarray of shape ``p.batch_shape``, or None
        Destination of the per-element losses (``unit * (W log S - T) + z_loss
        lse**2``); when None, the losses are summed instead.
    z_rows : ndarray of shape ``p.batch_shape``, or None
        With ``loss_rows``: the z-loss rows go here instead of into ``loss_rows``
        (a caller reducing the two over different denominators, :mod:`smoothce.dask`).
    workers : int or None
        Threads, as in :func:`smoothce._parallel.resolve_workers`.
    observe, observe_streamed : callable or None
        See :data:`BlockObserver` and :data:`StreamObserver`.

    Returns
    -------
    (ce_sum, z_sum)
        Exact sums of the cross-entropy rows (engine units) and of the z-loss rows;
        ``(0.0, 0.0)`` when the rows go to ``loss_rows`` or nothing is summed.
    """
    plan = Plan.of(p, scaling, want_loss, grad is not None)
    out = _Rows(loss_rows, z_rows, scaling.unit)
    if p.num_classes > BLOCK_ELEMENTS:
        return _streamed(p, plan, grad, out, workers, observe_streamed)
    return _rows(p, plan, grad, out, workers, observe)


class _Rows:
    """Where a call's per-element losses go (see :func:`run`)."""

    __slots__ = ("loss", "unit", "z")

    def __init__(self, loss: np.ndarray | None, z: np.ndarray | None, unit: float) -> None:
        self.loss, self.z, self.unit = loss, z, unit

    def store(self, key: Any, losses: np.ndarray, z_rows: Any) -> None:
        """``loss[key] = unit * losses`` (``+ z_rows``, unless they have their own
        array); beyond the dtype's range: inf."""
        assert self.loss is not None
        if self.unit != 1.0:
            losses *= self.unit
        if z_rows is not None:
            if self.z is not None:
                z_dst = self.z[key]
                z_dst[...] = z_rows.reshape(z_dst.shape)
            else:
                losses += z_rows
        dst = self.loss[key]
        dst[...] = losses.reshape(dst.shape)


def _store_grad(dst: np.ndarray, src: np.ndarray, scratch: list[np.ndarray]) -> None:
    """The gradient block from the workspace (which it may overwrite): float16 by
    :func:`~smoothce._stable.store_float16` with the thread's ``scratch`` (allocated on
    first use, kept in the one-element list), anything else by NumPy's cast."""
    if dst.dtype == np.float16:
        if not scratch:
            scratch.append(np.empty(src.size, dtype=np.uint32))
        store_float16(dst, src.reshape(dst.shape), scratch[0])
    else:
        dst[...] = src.reshape(dst.shape)


def _rows(
    p: Problem,
    plan: Plan,
    g_moved: np.ndarray | None,
    out: _Rows,
    workers: Any,
    observe: BlockObserver | None,
) -> tuple[float, float]:
    """Blocks of whole rows, threads over contiguous ranges of blocks.

    The per-block Python work is kept to a handful of NumPy calls: it runs with the GIL
    held, so it is what limits both small blocks and threads.
    """
    K = p.num_classes
    per_block = max(1, BLOCK_ELEMENTS // K)
    keys = list(row_blocks(p.batch_shape, per_block))
    n_rows = math.prod(p.batch_shape)
    # The workspace holds one block, and no more rows than the batch has (a small call
    # would otherwise allocate a whole 512 KiB block each time).
    ws_rows = min(per_block, n_rows)
    partial = np.zeros(len(keys))
    z_partial = np.zeros(len(keys))
    n = resolve_workers(workers, n_rows * K, len(keys))

    def work(i0: int, i1: int) -> None:
        ws_all: np.ndarray | None = None
        z_all, x_all = scratch(plan, per_block, K)
        store_scratch: list[np.ndarray] = []
        with Quiet():
            for i in range(i0, i1):
                key = keys[i]
                z2 = load(plan, p.z[key].reshape(-1, K), z_all, x_all)
                g_blk = g2 = None
                if g_moved is not None:
                    g_blk = g_moved[key]
                    g2 = g_blk.reshape(-1, K)
                if (
                    g2 is not None
                    and g_blk is not None
                    and g2.dtype == p.compute_dtype
                    and g2.flags.c_contiguous
                    and is_view_of(g2, g_blk)
                ):
                    ws = g2  # the gradient block is the workspace: no copy
                    if np.may_share_memory(ws, z2):
                        # In place (out=logits): the exponentials would overwrite z
                        # before the terms read it; read a copy, the same bits.
                        if ws_all is None:
                            ws_all = np.empty((ws_rows, K), dtype=p.compute_dtype)
                        copy = ws_all[: z2.shape[0]]
                        np.copyto(copy, z2)
                        z2 = copy
                else:
                    if ws_all is None:
                        ws_all = np.empty((ws_rows, K), dtype=p.compute_dtype)
                    ws = ws_all[: z2.shape[0]]
                obs = None
                if observe is not None:
                    obs = _bind(observe, key)
                losses, z_rows = run_block(plan, z2, ws, Block(p, key, 0, K), x_all, obs)
                if losses is not None:
                    if out.loss is not None:
                        out.store(key, losses, z_rows)
                    else:
                        # float64 partial sums: a float32 sum beyond 3.4e38 would
                        # overflow the block.
                        partial[i] = _add(losses)
                        if z_rows is not None:
                            z_partial[i] = _add(z_rows)
                if g_blk is not None and ws is not g2:
                    _store_grad(g_blk, ws, store_scratch)

    run_ranges(len(keys), n, work)
    if out.loss is not None or not plan.want_loss:
        return 0.0, 0.0
    if len(partial) == 1:
        return float(partial[0]), float(z_partial[0])
    return exact_sum(partial), (exact_sum(z_partial) if plan.zl != 0.0 else 0.0)


def _bind(observe: BlockObserver, key: Any) -> Callable[[np.ndarray, np.ndarray, Any, Any], None]:
    def bound(z2: np.ndarray, S: np.ndarray, ref: Any, logs: Any) -> None:
        observe(key, z2, S, ref, logs)

    return bound


def _streamed(
    p: Problem,
    plan: Plan,
    g_moved: np.ndarray | None,
    out: _Rows,
    workers: Any,
    observe_streamed: StreamObserver | None,
) -> tuple[float, float]:
    """Rows longer than a block: windows of classes, merged, then the gradient."""
    K = p.num_classes
    windows = [(k0, min(K, k0 + BLOCK_ELEMENTS)) for k0 in range(0, K, BLOCK_ELEMENTS)]
    win_terms = [Terms.of(p, k0, k1) for k0, k1 in windows]
    keys = list(row_blocks(p.batch_shape, 1))
    nw = len(windows)
    m = np.empty((len(keys), nw))
    S = np.empty_like(m)
    T = np.zeros_like(m)
    Wc = np.zeros_like(m)
    n = resolve_workers(workers, math.prod(p.batch_shape) * K, len(keys) * nw)

    def first_pass(t0: int, t1: int) -> None:
        ws = np.empty((1, BLOCK_ELEMENTS), dtype=p.compute_dtype)
        z_buf, x_buf = scratch(plan, 1, BLOCK_ELEMENTS)
        with Quiet():
            for t in range(t0, t1):
                r, j = divmod(t, nw)
                k0, k1 = windows[j]
                x = load(plan, p.z[keys[r]].reshape(-1, K)[:, k0:k1], z_buf, x_buf)
                blk = Block(p, keys[r], k0, k1)
                mj, Sj, Tj = window_stats(x, ws[:, : k1 - k0], win_terms[j], blk, plan.want_loss)
                m[r, j], S[r, j] = mj[0], Sj[0]
                if Tj is not None:
                    T[r, j] = Tj[0]
                Wc[r, j] = np.broadcast_to(win_terms[j].mass(blk), (1,))[0]

    run_ranges(len(keys) * nw, n, first_pass)
    with Quiet():
        m_row, S_row, T_row, W_row = merge_windows(m, S, T, Wc)
        if observe_streamed is not None:
            observe_streamed(m_row, S_row)
        counted_rows = None if p.counted is None else p.counted.reshape(-1)
        z_rows, extra = z_terms(
            plan, S_row, m_row, counted_rows, plan.want_loss, g_moved is not None
        )
        partial = []
        if plan.want_loss:
            loss = W_row * np.log(S_row) - T_row
            for r, key in enumerate(keys):
                counted = None if p.counted is None else p.counted[key].reshape(-1)
                rows = finish_losses(loss[r : r + 1], counted)
                z_r = None if z_rows is None else z_rows[r : r + 1]
                if out.loss is not None:
                    out.store(key, rows, z_r)
                else:
                    partial.append(float(rows[0]))
    if g_moved is not None:
        grad = g_moved

        def second_pass(t0: int, t1: int) -> None:
            ws = np.empty((1, BLOCK_ELEMENTS), dtype=p.compute_dtype)
            z_buf, x_buf = scratch(plan, 1, BLOCK_ELEMENTS)
            store_scratch: list[np.ndarray] = []
            with Quiet():
                for t in range(t0, t1):
                    r, j = divmod(t, nw)
                    k0, k1 = windows[j]
                    x = load(plan, p.z[keys[r]].reshape(-1, K)[:, k0:k1], z_buf, x_buf)
                    buf = ws[:, : k1 - k0]
                    e = None if extra is None else extra[r : r + 1]
                    blk = Block(p, keys[r], k0, k1)
                    window_grad(
                        plan, x, buf, m_row[r], S_row[r : r + 1], W_row[r], e,
                        win_terms[j], blk, x_buf,
                    )  # fmt: skip
                    _store_grad(grad[keys[r]].reshape(-1, K)[:, k0:k1], buf, store_scratch)

        run_ranges(len(keys) * nw, n, second_pass)
    if out.loss is not None or not plan.want_loss:
        return 0.0, 0.0
    z_total = exact_sum(z_rows) if z_rows is not None else 0.0
    return exact_sum(partial), z_total


def evaluate(
    p: Problem,
    *,
    want_loss: bool = True,
    grad: np.ndarray | None = None,
    workers: Any = None,
    scaling: Scaling | None = None,
    sums: bool = False,
) -> tuple[Any, np.ndarray | None]:
    """The reduced loss (or the per-element losses) and/or the gradient in ``grad``.

    Parameters
    ----------
    p : Problem
        Validated arguments.
    want_loss : bool
        Whether to compute the loss (the gradient alone skips the dot products).
    grad : ndarray of shape ``p.logits_shape`` and dtype ``p.grad_dtype``, or None
        Destination of the gradient (may be the logits themselves).
    workers : int or None
        Threads, as in :func:`smoothce._parallel.resolve_workers`.
    scaling : Scaling or None
        The call's scaling; by default ``Scaling.of(p)``. A blocked caller (the fused
        linear head) passes the whole batch's.
    sums : bool
        For a reduced loss, return the float64 pair ``(cross-entropy sum, z-loss
        sum)`` instead, so that a blocked caller can add the sums of its blocks
        exactly before reducing once (:meth:`Scaling.reduce`).

    Returns
    -------
    (loss, grad)
        ``loss`` is None when ``want_loss`` is False.
    """
    scaling = Scaling.of(p) if scaling is None else scaling
    g_moved = None if grad is None else classes_last(grad, p.axis)
    single = not p.batch_shape
    if single:
        # A single sample: give it a batch axis of one row; views, no copies.
        g_moved = None if g_moved is None else g_moved[np.newaxis]
        p = with_batch_axis(p)
    loss_rows = None
    if want_loss and p.reduction == "none":
        loss_rows = np.zeros(p.batch_shape, dtype=p.grad_dtype)
    total, z_total = run(
        p, scaling, want_loss=want_loss, grad=g_moved, loss_rows=loss_rows, workers=workers
    )
    if not want_loss:
        return None, grad
    if loss_rows is not None:
        return (loss_rows[0, ...] if single else loss_rows), grad
    if sums:
        return (total, z_total), grad
    return scaling.reduce(total, z_total, p.scalar_dtype), grad


def with_batch_axis(p: Problem) -> Problem:
    """``p`` for one sample (1-D logits) seen as a batch of one row."""
    u = p.prior
    if u.kind == "sample":
        assert u.values is not None
        u = Prior("sample", u.values[np.newaxis])
    return replace(
        p,
        z=p.z[np.newaxis],
        labels=p.labels[np.newaxis],
        counted=None if p.counted is None else p.counted[np.newaxis],
        prior=u,
    )
