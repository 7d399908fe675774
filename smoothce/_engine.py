r"""The blocked loss-and-gradient engine.

The closed form and its target terms live in :mod:`smoothce._terms`; this module
cuts the work into tiles, runs them on threads, and combines the results.

Tiles
-----
Rows are processed in blocks of at most :data:`~smoothce._stable.BLOCK_ELEMENTS`
logits, so the workspace is bounded independently of the batch size. A row longer
than a block is *streamed*: its classes are cut into chunks, each chunk yields its
``(max m_j, sum of exponentials S_j, dot T_j, mass W_j)`` in its own shifted
coordinates, and the row's values follow by the online log-sum-exp

.. math::

    m = \max_j m_j, \quad S = \sum_j S_j e^{m_j - m}, \quad
    T = \sum_j \bigl(T_j + W_j (m_j - m)\bigr),

in which every ``T`` term is non-positive, so nothing cancels. Its gradient needs
``m`` and ``S`` first, so streamed rows take a second pass over their chunks.

Each tile is computed the same way whichever thread runs it and partial sums are
added with :func:`math.fsum` (exactly rounded), so every ``workers`` value gives
bitwise identical results.

Passes over a block (float32, integer labels, uniform prior)
------------------------------------------------------------
Forward: one ``exp`` of the logits into the workspace, two row sums (of the
exponentials, and of the logits for the uniform term), one gather of the label
logits; no row maximum and no shift, by the fast path of :func:`_exp_and_dot`.
Gradient: the exponentials are scaled in place by ``c W / S`` (one multiply), the
prior share is subtracted (one subtract), and the labels get one scatter. When the
gradient block is a writable view of the compute dtype it *is* the workspace.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from ._parallel import resolve_workers, run_ranges
from ._stable import (
    BLOCK_ELEMENTS,
    fast_exp_bounds,
    is_view_of,
    row_blocks,
    row_sums,
    shift_rows,
)
from ._terms import Block, Hot, Terms, hot_dot
from ._validation import Prior, Problem, classes_last, is_bfloat16

__all__ = [
    "evaluate",
    "exact_sum",
    "finish_losses",
    "hot_exp_and_dot",
    "mean_denominator",
    "row_losses",
    "scale_exponentials",
]

_F64 = np.dtype(np.float64)


def mean_denominator(p: Problem) -> float:
    """PyTorch's denominator for ``reduction="mean"``.

    Integer labels: the sum of ``weight[label]`` over counted elements (their count
    without ``weight``). Probability targets: the number of elements, weights or not.
    """
    n = math.prod(p.batch_shape)
    if p.probabilistic:
        return float(n)
    if p.weight is None:
        return float(n if p.counted is None else np.count_nonzero(p.counted))
    w_y = p.weight[p.labels]
    if p.counted is not None:
        w_y = w_y[p.counted]
    return float(w_y.sum())


def exact_sum(parts: Any) -> float:
    """The exactly rounded sum of float64 ``parts`` (:func:`math.fsum`), with IEEE
    semantics at the edges: ``inf`` for an infinite sum, ``nan`` for NaN or inf - inf.

    ``math.fsum`` raises OverflowError when finite parts overflow the total (the parts
    here are losses, never negative, so that total is ``+inf``) and ValueError for
    ``inf + -inf``.
    """
    try:
        return math.fsum(parts)
    except OverflowError:
        return math.inf
    except ValueError:
        return math.nan


def finish_losses(loss: np.ndarray, counted: np.ndarray | None) -> np.ndarray:
    """Clamp element losses at 0 and zero the ignored ones, in place; return ``loss``.

    Cross-entropy against a probability target is never negative, but ``W log S`` and
    ``T`` are rounded separately, so a row whose softmax is one-hot can come out as -1
    ulp of its terms (``maximum`` keeps NaN).
    """
    np.maximum(loss, 0.0, out=loss)
    if counted is not None:
        loss[~counted] = 0.0
    return loss


def row_losses(S: np.ndarray, T: np.ndarray, W: Any, counted: np.ndarray | None) -> np.ndarray:
    """``W log S - T`` per row (float64), finished by :func:`finish_losses`."""
    loss: np.ndarray = np.log(S)
    if not (isinstance(W, float) and W == 1.0):
        loss *= W
    loss -= T
    return finish_losses(loss, counted)


def scale_exponentials(ws: np.ndarray, c: float, W: Any, S: np.ndarray) -> None:
    """``ws <- c W p = exp(x) * (c W / S)`` in place: one multiply over the block.

    Overflow here means a gradient entry beyond the dtype's range, which is inf: the
    caller ignores overflow.
    """
    scale = (c * W / S).astype(ws.dtype)
    ws *= scale[:, np.newaxis]


def hot_exp_and_dot(
    z2: np.ndarray, ws: np.ndarray, flat_labels: np.ndarray, hot: Hot, want_T: bool, fast: bool
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """:func:`_exp_and_dot` for :class:`~smoothce._terms.Hot` blocks, without repairs.

    The same operations in the same order as the general path, so the same bits; it
    returns None instead of repairing when a row leaves the fast range or ``T`` is not
    finite (a ``-inf`` or NaN logit), and the caller then takes the general path. The
    caller ignores overflow and invalid operations (their rows are the ones refused).
    """
    if fast:
        np.exp(z2, out=ws, dtype=ws.dtype)
        S = row_sums(ws)
        T = hot_dot(z2, flat_labels, hot) if want_T else None
        lo, hi = fast_exp_bounds(hot.K)
        if not (lo <= S.min() and S.max() <= hi):
            return None
    else:
        shift_rows(z2, ws)
        T = hot_dot(ws, flat_labels, hot) if want_T else None
        np.exp(ws, out=ws)
        S = row_sums(ws)
    # The Python float test costs no second NumPy call: inf and NaN fail it.
    if T is not None and not math.isfinite(T.sum()):
        return None
    return S, T


def _shifted(
    z2: np.ndarray, ws: np.ndarray, terms: Terms, blk: Block, want_T: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Shifted coordinates: ``ws <- exp(z - m)``; return ``(m, S, T)`` per row.

    ``T`` is taken from ``s = z - m`` before the exponential overwrites it. Rows with
    a ``-inf`` logit and a finite maximum may have NaN there (``0 * -inf``) and are
    recomputed term by term.
    """
    m = shift_rows(z2, ws)
    T = None
    if want_T:
        with np.errstate(invalid="ignore"):  # 0 * -inf in masked rows, repaired next
            T = terms.dot(ws, blk)
        redo = np.isfinite(m) & ~np.isfinite(T)
        if redo.any():
            T[redo] = terms.exact_dot(z2, m, blk, redo)
    np.exp(ws, out=ws)
    return m, row_sums(ws), T


def _exp_and_dot(
    z2: np.ndarray, ws: np.ndarray, terms: Terms, blk: Block, want_T: bool, fast: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """``ws <- exp(z - c)`` for a per-row reference ``c``; return ``(S, T)`` about ``c``.

    Fast path (float32 compute): ``c = 0``, so neither a row maximum nor a shift is
    computed. :func:`~smoothce._stable.fast_exp_bounds` proves it as accurate as the
    shift while ``S`` stays in its range; the rows outside it (overflow, underflow,
    very large logits, NaN) are recomputed with ``c = max(z)``. ``W log S - T`` is
    the loss in any coordinates, and ``exp(z - c) / S`` is ``softmax(z)``.
    """
    if not fast:
        _, S, T = _shifted(z2, ws, terms, blk, want_T)
        return S, T
    # One error-state context for both steps: overflowing rows leave the fast range
    # and are redone below, and 0 * -inf in masked rows is repaired below.
    with np.errstate(over="ignore", invalid="ignore"):
        np.exp(z2, out=ws, dtype=ws.dtype)
        S = row_sums(ws)
        T = terms.dot(z2, blk) if want_T else None
    lo, hi = terms.fast_range
    # Two reductions decide the common case (NaN propagates through min and max, so
    # a NaN row also lands in the slow branch); the mask is built only when needed.
    outside = None
    if not (lo <= S.min() and S.max() <= hi):
        outside = ~((lo <= S) & (S <= hi))  # NaN compares False: NaN rows are redone
        idx = np.flatnonzero(outside)
        sub_ws = np.empty((len(idx), z2.shape[1]), dtype=ws.dtype)
        _, S[idx], T_sub = _shifted(z2[idx], sub_ws, terms, blk.subset(idx), want_T)
        ws[idx] = sub_ws
        if T is not None:
            T[idx] = T_sub
    if T is not None and not np.isfinite(T.sum()):
        repair = ~np.isfinite(T)
        if outside is not None:
            repair &= ~outside
        if repair.any():
            T[repair] = terms.exact_dot(z2, None, blk, repair)
    return S, T


class _Call:
    """One evaluation: the problem, its outputs, and the per-tile work."""

    def __init__(self, p: Problem, want_loss: bool, g_moved: np.ndarray | None) -> None:
        self.p, self.want_loss, self.g_moved = p, want_loss, g_moved
        self.K = p.num_classes
        # The engine sees the class weights divided by `p.weight_scale` (a power of
        # two, see `check_weight`), so every loss it forms is the true one divided by
        # that scale. `scale` puts it back; a weighted mean of integer labels divides
        # by the weights too, and there the scale cancels exactly.
        scale = p.weight_scale
        self.den = 1.0
        if p.reduction == "mean":
            self.den = mean_denominator(p)
            if p.weight is not None and not p.probabilistic:
                scale = 1.0
        self.scale = scale
        # `c` multiplies the gradient; a mean over nothing (every element ignored, or
        # zero total weight) is defined as 0 with a zero gradient (PyTorch: NaN).
        self.c = scale / self.den if self.den > 0.0 else 0.0
        self.loss_rows: np.ndarray | None = None
        if want_loss and p.reduction == "none":
            self.loss_rows = np.zeros(p.batch_shape, dtype=p.grad_dtype)
        self.fast = p.compute_dtype == np.float32
        # bfloat16 logits: NumPy has no arithmetic of its own for them, so each block is
        # converted to float32 (exactly) before anything else touches it.
        self.convert = is_bfloat16(p.z.dtype)

    def load(self, block: np.ndarray, buf: np.ndarray | None) -> np.ndarray:
        """The logits ``block`` (rows, window) as a C-contiguous compute-dtype array.

        ``buf`` is a per-thread (rows, window)-or-larger compute-dtype scratch, used
        only when the block must be converted (bfloat16); otherwise a strided block is
        copied (one block at most) so that every layout is summed in the same order.
        """
        if not self.convert:
            return np.ascontiguousarray(block)
        assert buf is not None
        z2 = buf[: block.shape[0], : block.shape[1]]
        z2[...] = block
        return z2

    def store_loss(self, key: Any, loss: np.ndarray) -> float:
        """Write ``"none"`` losses (finished by :func:`finish_losses`); return the
        block's sum."""
        if self.loss_rows is not None:
            # A legitimately infinite loss (beyond float16's 65504, or a huge weight
            # times a loss) is stored quietly; so is a subnormal one.
            with np.errstate(over="ignore", under="ignore"):
                if self.scale != 1.0:
                    loss *= self.scale
                self.loss_rows[key] = loss.reshape(self.loss_rows[key].shape)
            return 0.0
        # float64 partial sums: a float32 sum beyond 3.4e38 would overflow the block.
        return float(loss.sum(dtype=_F64))

    def finish_grad(self, ws: np.ndarray, W: Any, S: np.ndarray, terms: Terms, blk: Block) -> None:
        """Turn the exponentials in ``ws`` into the gradient, in place."""
        with np.errstate(over="ignore"):  # an entry beyond the dtype's range is inf
            scale_exponentials(ws, self.c, W, S)
            terms.subtract_targets(ws, blk, self.c)
        if blk.counted is not None:
            ws[~blk.counted] = 0

    # -- whole rows ------------------------------------------------------------
    def rows(self, workers: Any) -> float:
        """Blocks of whole rows: one pass, threads over contiguous block ranges.

        The per-block Python work is kept to a handful of NumPy calls: it runs with
        the GIL held, so it is what limits both small blocks and threads.
        """
        p, K = self.p, self.K
        per_block = max(1, BLOCK_ELEMENTS // K)
        keys = list(row_blocks(p.batch_shape, per_block))
        n_rows = math.prod(p.batch_shape)
        partial = np.zeros(len(keys))
        terms = Terms(p)
        # The loss mass is the same on every row in the common case: compute it once.
        constant_mass = terms.constant_mass()
        n = resolve_workers(workers, n_rows * K, len(keys))

        def work(i0: int, i1: int) -> None:
            ws_all: np.ndarray | None = None
            z_all = np.empty((per_block, K), dtype=p.compute_dtype) if self.convert else None
            for i in range(i0, i1):
                key = keys[i]
                z2 = self.load(p.z[key].reshape(-1, K), z_all)
                blk = Block(p, key, 0, K)
                g_blk = g2 = None
                if self.g_moved is not None:
                    g_blk = self.g_moved[key]
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
                        # before the terms read it; read a copy, same bits as ever.
                        if ws_all is None:
                            ws_all = np.empty((per_block, K), dtype=p.compute_dtype)
                        scratch = ws_all[: z2.shape[0]]
                        np.copyto(scratch, z2)
                        z2 = scratch
                else:
                    if ws_all is None:
                        ws_all = np.empty((per_block, K), dtype=p.compute_dtype)
                    ws = ws_all[: z2.shape[0]]
                S, T = _exp_and_dot(z2, ws, terms, blk, self.want_loss, self.fast)
                W = terms.mass(blk) if constant_mass is None else constant_mass
                if T is not None:
                    partial[i] = self.store_loss(key, row_losses(S, T, W, blk.counted))
                if g_blk is not None:
                    self.finish_grad(ws, W, S, terms, blk)
                    if ws is not g2:
                        with np.errstate(over="ignore"):  # float32 -> float16: inf quietly
                            g_blk[...] = ws.reshape(g_blk.shape)

        run_ranges(len(keys), n, work)
        return float(partial[0]) if len(partial) == 1 else exact_sum(partial)

    # -- streamed rows -----------------------------------------------------------
    def streamed(self, workers: Any) -> float:
        p, K = self.p, self.K
        windows = [(k0, min(K, k0 + BLOCK_ELEMENTS)) for k0 in range(0, K, BLOCK_ELEMENTS)]
        win_terms = [Terms(p, k0, k1) for k0, k1 in windows]
        keys = list(row_blocks(p.batch_shape, 1))
        nw = len(windows)
        m = np.empty((len(keys), nw))
        S = np.empty_like(m)
        T = np.zeros_like(m)
        Wc = np.zeros_like(m)
        n = resolve_workers(workers, math.prod(p.batch_shape) * K, len(keys) * nw)

        def first_pass(t0: int, t1: int) -> None:
            ws = np.empty((1, BLOCK_ELEMENTS), dtype=p.compute_dtype)
            z_buf = np.empty_like(ws) if self.convert else None
            for t in range(t0, t1):
                r, j = divmod(t, nw)
                k0, k1 = windows[j]
                x = self.load(p.z[keys[r]].reshape(-1, K)[:, k0:k1], z_buf)
                blk = Block(p, keys[r], k0, k1)
                mj, Sj, Tj = _shifted(x, ws[:, : k1 - k0], win_terms[j], blk, self.want_loss)
                m[r, j], S[r, j] = mj[0], Sj[0]
                if Tj is not None:
                    T[r, j] = Tj[0]
                Wc[r, j] = np.broadcast_to(win_terms[j].mass(blk), (1,))[0]

        run_ranges(len(keys) * nw, n, first_pass)
        # A chunk whose logits are all -inf has no maximum: it adds nothing to S and
        # costs +inf exactly when it holds target mass.
        empty = m == -np.inf
        S[empty] = 0.0
        # Rows with NaN or +inf logits stay NaN; chunk maxima further apart than the
        # largest float underflow exp() to 0, as they should.
        with np.errstate(invalid="ignore", over="ignore"):
            m_row = m.max(axis=1)
            rel = np.where(empty, 0.0, m - m_row[:, np.newaxis])
            S_row = (S * np.exp(rel)).sum(axis=1)
            # T_j + W_j (m_j - m): m_j - m <= 0 and T_j <= 0, so nothing cancels; it is
            # formed at a quarter scale (exact) because m_j - m alone may overflow when
            # the chunks' maxima lie beyond the largest float apart.
            shift = Wc * (m / 4 - m_row[:, np.newaxis] / 4)
            T_parts = np.where(empty, np.where(Wc > 0, -np.inf, 0.0), 4 * (T / 4 + shift))
        # Every chunk masked: no softmax at all; NaN, as for a whole row of -inf.
        S_row[empty.all(axis=1)] = np.nan
        W_row = Wc.sum(axis=1)
        partial = []
        if self.want_loss:
            with np.errstate(invalid="ignore", over="ignore"):
                loss = W_row * np.log(S_row) - T_parts.sum(axis=1)
            for r, key in enumerate(keys):
                counted = None if p.counted is None else p.counted[key].reshape(-1)
                partial.append(self.store_loss(key, finish_losses(loss[r : r + 1], counted)))
        if self.g_moved is not None:
            g_moved = self.g_moved

            def second_pass(t0: int, t1: int) -> None:
                ws = np.empty((1, BLOCK_ELEMENTS), dtype=p.compute_dtype)
                z_buf = np.empty_like(ws) if self.convert else None
                for t in range(t0, t1):
                    r, j = divmod(t, nw)
                    k0, k1 = windows[j]
                    x = p.z[keys[r]].reshape(-1, K)[:, k0:k1]
                    if self.convert:
                        x = self.load(x, z_buf)
                    buf = ws[:, : k1 - k0]
                    with np.errstate(invalid="ignore", over="ignore"):
                        np.subtract(x, m_row[r], out=buf, dtype=buf.dtype)
                    np.exp(buf, out=buf)
                    blk = Block(p, keys[r], k0, k1)
                    # p = exp(z - m) / S needs the whole row's mass, not the chunk's.
                    self.finish_grad(buf, W_row[r], S_row[r : r + 1], win_terms[j], blk)
                    with np.errstate(over="ignore"):
                        g_moved[keys[r]].reshape(-1, K)[:, k0:k1] = buf

            run_ranges(len(keys) * nw, n, second_pass)
        return exact_sum(partial)


def evaluate(
    p: Problem,
    *,
    want_loss: bool = True,
    grad: np.ndarray | None = None,
    workers: Any = None,
) -> tuple[Any, np.ndarray | None]:
    """Compute the reduced loss and/or write the gradient into ``grad``.

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

    Returns
    -------
    (loss, grad)
        ``loss`` is None when ``want_loss`` is False.
    """
    g_moved = None if grad is None else classes_last(grad, p.axis)
    single = not p.batch_shape
    if single:
        # A single sample: give it a batch axis of one row; views, no copies.
        g_moved = None if g_moved is None else g_moved[np.newaxis]
        p = _with_batch_axis(p)
    call = _Call(p, want_loss, g_moved)
    streamed = p.num_classes > BLOCK_ELEMENTS
    total = call.streamed(workers) if streamed else call.rows(workers)
    if not want_loss:
        return None, grad
    if call.loss_rows is not None:
        return (call.loss_rows[0, ...] if single else call.loss_rows), grad
    if p.reduction == "mean":
        total = total / call.den if call.den > 0.0 else 0.0
    total *= call.scale  # a Python float: overflow gives inf, underflow 0, silently
    with np.errstate(over="ignore"):  # a sum beyond float32's range is inf, quietly
        return p.scalar_dtype.type(total), grad


def _with_batch_axis(p: Problem) -> Problem:
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
