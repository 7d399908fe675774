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
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from ._parallel import resolve_workers, run_ranges
from ._stable import (
    BLOCK_ELEMENTS,
    is_view_of,
    row_blocks,
    row_sums,
    shift_rows,
    store_float16,
    widen_float16,
)
from ._terms import Block, Terms, label_denominator
from ._validation import Prior, Problem, classes_last, is_bfloat16

__all__ = [
    "element_count",
    "evaluate",
    "exact_sum",
    "finish_losses",
    "loss_scale",
    "mean_denominator",
    "mean_denominators",
    "reduce_sums",
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
    return label_denominator(n, p.labels, p.counted, p.weight)


def element_count(p: Problem) -> float:
    """Counted elements: the denominator of the z-loss's mean (Liger's ``n_non_ignore``)."""
    n = math.prod(p.batch_shape)
    return float(n if p.counted is None else np.count_nonzero(p.counted))


def mean_denominators(p: Problem) -> tuple[float, float]:
    """``(cross-entropy, z-loss)`` denominators of ``reduction="mean"``.

    A blocked caller (:mod:`smoothce._linear`) sets ``p.mean_denominators`` to those of
    the whole batch; otherwise they are this problem's own. The z-loss term is averaged
    over the counted elements without class weights, as in Liger-Kernel.
    """
    if p.mean_denominators is not None:
        return p.mean_denominators
    return mean_denominator(p), (element_count(p) if p.z_loss != 0.0 else 1.0)


def loss_scale(p: Problem, reduction: str) -> float:
    """Factor from the engine's weight units to those ``reduction`` works in.

    The engine sees the class weights divided by ``p.weight_scale`` (a power of two,
    see :func:`~smoothce._validation.check_weight`). A weighted mean of integer labels
    divides by those weights too, so the scale cancels and the losses stay in engine
    units (1.0, no overflow or underflow on the way); everything else is the true loss.
    """
    if reduction == "mean" and p.weight is not None and not p.probabilistic:
        return 1.0
    return p.weight_scale


def reduce_sums(p: Problem, ce_sum: float, z_sum: float) -> Any:
    """The reduced ("mean"/"sum") loss from the exact sums of the engine's row losses.

    ``ce_sum`` is in the engine's weight units (see :class:`_Call`), ``z_sum`` the sum
    of the z-loss terms; returns a NumPy scalar of ``p.scalar_dtype``.
    """
    den, z_den = mean_denominators(p) if p.reduction == "mean" else (1.0, 1.0)
    scale = loss_scale(p, p.reduction)
    total = ce_sum
    if p.reduction == "mean":
        total = total / den if den > 0.0 else 0.0
    total *= scale  # a Python float: overflow gives inf, underflow 0, silently
    if p.z_loss != 0.0:
        total += z_sum / z_den if z_den > 0.0 else 0.0
    with np.errstate(over="ignore"):  # a sum beyond float32's range is inf, quietly
        return p.scalar_dtype.type(total)


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


def scale_exponentials(
    ws: np.ndarray, c: float, W: Any, S: np.ndarray, extra: np.ndarray | None = None
) -> None:
    """``ws <- c W p = exp(x) * (c W / S)`` in place: one multiply over the block.

    ``extra`` (per row) is added to ``c W``: the z-loss's ``2 z_loss lse`` times its
    reduction factor, whose gradient is also a multiple of ``p``. Overflow here means a
    gradient entry beyond the dtype's range, which is inf: the caller ignores overflow.
    """
    scale = (c * W / S if extra is None else (c * W + extra) / S).astype(ws.dtype, copy=False)
    ws *= scale[:, np.newaxis]


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
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``ws <- exp(z - c)`` for a per-row reference ``c``; return ``(S, T, c)``.

    ``c`` is None where it is 0 on every row; ``log S + c`` is the row's log-sum-exp.

    Fast path (float32 compute): ``c = 0``, so neither a row maximum nor a shift is
    computed. :func:`~smoothce._stable.fast_exp_bounds` proves it as accurate as the
    shift while ``S`` stays in its range; the rows outside it (overflow, underflow,
    very large logits, NaN) are recomputed with ``c = max(z)``. ``W log S - T`` is
    the loss in any coordinates, and ``exp(z - c) / S`` is ``softmax(z)``.
    """
    if not fast:
        m, S, T = _shifted(z2, ws, terms, blk, want_T)
        return S, T, m
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
    ref = None
    if not (lo <= S.min() and S.max() <= hi):
        outside = ~((lo <= S) & (S <= hi))  # NaN compares False: NaN rows are redone
        idx = np.flatnonzero(outside)
        sub_ws = np.empty((len(idx), z2.shape[1]), dtype=ws.dtype)
        ref = np.zeros(len(S), dtype=_F64)
        ref[idx], S[idx], T_sub = _shifted(z2[idx], sub_ws, terms, blk.subset(idx), want_T)
        ws[idx] = sub_ws
        if T is not None:
            T[idx] = T_sub
    if T is not None and not np.isfinite(T.sum()):
        repair = ~np.isfinite(T)
        if outside is not None:
            repair &= ~outside
        if repair.any():
            T[repair] = terms.exact_dot(z2, None, blk, repair)
    return S, T, ref


class _Call:
    """One evaluation: the problem, its outputs, and the per-tile work."""

    def __init__(self, p: Problem, want_loss: bool, g_moved: np.ndarray | None) -> None:
        self.p, self.want_loss, self.g_moved = p, want_loss, g_moved
        self.K = p.num_classes
        # The engine sees the class weights divided by `p.weight_scale` (a power of
        # two, see `check_weight`), so every loss it forms is the true one divided by
        # that scale. `scale` puts it back; a weighted mean of integer labels divides
        # by the weights too, and there the scale cancels exactly.
        scale = loss_scale(p, p.reduction)
        self.den = z_den = 1.0
        if p.reduction == "mean":
            self.den, z_den = mean_denominators(p)
        self.scale = scale
        # `c` multiplies the gradient; a mean over nothing (every element ignored, or
        # zero total weight) is defined as 0 with a zero gradient (PyTorch: NaN).
        self.c = scale / self.den if self.den > 0.0 else 0.0
        # The z-loss `z_loss lse**2` per counted element, in true units (no weights):
        # its gradient `2 z_loss lse p` joins the one multiply that forms `c W p`.
        self.zl = p.z_loss
        self.cz = 1.0 / z_den if z_den > 0.0 else 0.0
        self.cap = p.softcap
        self.loss_rows: np.ndarray | None = None
        # Observers for callers that want more from the same pass (smoothce.metrics):
        # `observe(key, z2, S, ref)` sees each block of whole rows after its
        # exponentials (z2 the block's logits in the compute dtype, lse = log S + ref,
        # ref None for 0); `observe_streamed(m, S)` sees streamed rows' (max, S).
        self.observe: Callable[[Any, np.ndarray, np.ndarray, Any], None] | None = None
        self.observe_streamed: Callable[[np.ndarray, np.ndarray], None] | None = None
        if want_loss and p.reduction == "none":
            self.loss_rows = np.zeros(p.batch_shape, dtype=p.grad_dtype)
        self.fast = p.compute_dtype == np.float32
        # bfloat16 logits: NumPy has no arithmetic of its own for them, so each block is
        # converted to float32 (exactly) before anything else touches it. float16 logits
        # too: a table lookup widens them 2.2x faster than NumPy's cast, which the exp
        # and the sums would otherwise each repeat on the fly; the values are the
        # cast's, so every later step gives the same bits.
        self.half = p.z.dtype == np.float16
        # Converted or soft-capped logits are formed in per-thread scratch (so an
        # in-place call never reads a gradient entry as a logit).
        self.transform = self.half or is_bfloat16(p.z.dtype) or self.cap is not None

    def scratch(self, rows: int, width: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Per-thread buffers for :meth:`load`: ``(logits, z / softcap)``, as needed."""
        dt = self.p.compute_dtype
        zbuf = np.empty((rows, width), dtype=dt) if self.transform else None
        xbuf = np.empty((rows, width), dtype=dt) if self.cap is not None else None
        return zbuf, xbuf

    def load(
        self, block: np.ndarray, zbuf: np.ndarray | None, xbuf: np.ndarray | None
    ) -> np.ndarray:
        """The logits ``block`` (rows, window) as a C-contiguous compute-dtype array.

        Without a transformation a strided block is copied (one block at most) so that
        every layout is summed in the same order. bfloat16 is converted to float32 in
        ``zbuf``; with ``softcap`` the logits become ``softcap * tanh(z / softcap)`` in
        ``zbuf``, and ``z / softcap`` stays in ``xbuf`` for :meth:`cap_chain`.
        """
        if not self.transform:
            return np.ascontiguousarray(block)
        assert zbuf is not None
        n, k = block.shape
        z2 = zbuf[:n, :k]
        if self.cap is None:
            self.widen(block, z2)
            return z2
        assert xbuf is not None
        x = xbuf[:n, :k]
        self.widen(block, x)
        x /= self.cap
        # tanh saturates at +-1 without overflow for any |x|; NaN stays NaN and +-inf
        # logits become the finite +-softcap.
        np.tanh(x, out=z2)
        z2 *= self.cap
        return z2

    def widen(self, block: np.ndarray, out: np.ndarray) -> None:
        """``out[...] = block``, exactly, the float16 case by table lookup."""
        if self.half:
            widen_float16(block, out)
        else:
            out[...] = block

    def cap_chain(self, g: np.ndarray, xbuf: np.ndarray | None, tmp: np.ndarray) -> None:
        """``g *= d(softcap tanh(x)) / dz = 1 / cosh(x)**2``, ``x = z / softcap``, in place.

        Formed as ``4 e / (1 + e)**2`` with ``e = exp(-2 |x|)`` in (0, 1]: nothing
        overflows or cancels, so the factor keeps its relative accuracy where ``tanh``
        saturates (``1 - tanh(x)**2`` would cancel), and ``exp`` costs a sixth of
        ``cosh`` in NumPy. Overwrites ``xbuf`` (``x`` is not needed afterwards) and
        ``tmp``, a scratch of ``g``'s shape (the capped logits).
        """
        assert xbuf is not None
        n, k = g.shape
        e = xbuf[:n, :k]
        np.abs(e, out=e)
        e *= -2
        np.exp(e, out=e)  # underflows to 0 quietly far from 0, where the factor is 0
        np.add(e, 1, out=tmp)
        np.multiply(tmp, tmp, out=tmp)
        e *= 4
        e /= tmp
        g *= e

    def z_terms(
        self, S: np.ndarray, ref: Any, counted: np.ndarray | None, want_rows: bool, want_grad: bool
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """``(z_loss lse**2 per row, gradient coefficient 2 z_loss lse cz)``, float64.

        ``lse = log S + ref``; ignored rows get a zero z-loss (their gradient rows are
        zeroed by :meth:`finish_grad`).
        """
        if self.zl == 0.0:
            return None, None
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            lse = np.log(S)
            if ref is not None:
                lse += ref
            rows = None
            if want_rows:
                rows = self.zl * lse * lse
                if counted is not None:
                    rows[~counted] = 0.0
            extra = (2.0 * self.zl * self.cz) * lse if want_grad else None
        return rows, extra

    def store_loss(self, key: Any, loss: np.ndarray, z_rows: np.ndarray | None = None) -> float:
        """Write ``"none"`` losses (finished by :func:`finish_losses`, plus the z-loss
        rows); return the block's cross-entropy sum."""
        if self.loss_rows is not None:
            # A legitimately infinite loss (beyond float16's 65504, or a huge weight
            # times a loss) is stored quietly; so is a subnormal one.
            with np.errstate(over="ignore", under="ignore"):
                if self.scale != 1.0:
                    loss *= self.scale
                if z_rows is not None:
                    loss += z_rows
                self.loss_rows[key] = loss.reshape(self.loss_rows[key].shape)
            return 0.0
        # float64 partial sums: a float32 sum beyond 3.4e38 would overflow the block.
        return float(loss.sum(dtype=_F64))

    def finish_grad(
        self,
        ws: np.ndarray,
        W: Any,
        S: np.ndarray,
        terms: Terms,
        blk: Block,
        extra: np.ndarray | None = None,
    ) -> None:
        """Turn the exponentials in ``ws`` into the gradient, in place (with respect to
        the possibly soft-capped logits: the caller applies :meth:`cap_chain`)."""
        with np.errstate(over="ignore", invalid="ignore"):  # entries beyond range: inf
            scale_exponentials(ws, self.c, W, S, extra)
            terms.subtract_targets(ws, blk, self.c)
        if blk.counted is not None:
            ws[~blk.counted] = 0

    # -- whole rows ------------------------------------------------------------
    def rows(self, workers: Any) -> tuple[float, float]:
        """Blocks of whole rows: one pass, threads over contiguous block ranges.

        The per-block Python work is kept to a handful of NumPy calls: it runs with
        the GIL held, so it is what limits both small blocks and threads.
        """
        p, K = self.p, self.K
        per_block = max(1, BLOCK_ELEMENTS // K)
        keys = list(row_blocks(p.batch_shape, per_block))
        n_rows = math.prod(p.batch_shape)
        # The workspace holds one block, and no more rows than the batch has (a small
        # call would otherwise allocate a whole 512 KiB block each time).
        ws_rows = min(per_block, n_rows)
        partial = np.zeros(len(keys))
        z_partial = np.zeros(len(keys))
        terms = Terms(p)
        # The loss mass is the same on every row in the common case: compute it once.
        constant_mass = terms.constant_mass()
        n = resolve_workers(workers, n_rows * K, len(keys))

        def work(i0: int, i1: int) -> None:
            ws_all: np.ndarray | None = None
            z_all, x_all = self.scratch(per_block, K)
            for i in range(i0, i1):
                key = keys[i]
                z2 = self.load(p.z[key].reshape(-1, K), z_all, x_all)
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
                            ws_all = np.empty((ws_rows, K), dtype=p.compute_dtype)
                        scratch = ws_all[: z2.shape[0]]
                        np.copyto(scratch, z2)
                        z2 = scratch
                else:
                    if ws_all is None:
                        ws_all = np.empty((ws_rows, K), dtype=p.compute_dtype)
                    ws = ws_all[: z2.shape[0]]
                S, T, ref = _exp_and_dot(z2, ws, terms, blk, self.want_loss, self.fast)
                if self.observe is not None:
                    self.observe(key, z2, S, ref)
                W = terms.mass(blk) if constant_mass is None else constant_mass
                z_rows, extra = self.z_terms(S, ref, blk.counted, T is not None, g_blk is not None)
                if T is not None:
                    losses = row_losses(S, T, W, blk.counted)
                    partial[i] = self.store_loss(key, losses, z_rows)
                    if z_rows is not None and self.loss_rows is None:
                        z_partial[i] = float(z_rows.sum())
                if g_blk is not None:
                    self.finish_grad(ws, W, S, terms, blk, extra)
                    if self.cap is not None:
                        self.cap_chain(ws, x_all, z2)
                    if ws is not g2:
                        with np.errstate(over="ignore"):  # float32 -> float16: inf quietly
                            if g_blk.dtype == np.float16:
                                store_float16(g_blk, ws.reshape(g_blk.shape))
                            else:
                                g_blk[...] = ws.reshape(g_blk.shape)

        run_ranges(len(keys), n, work)
        if len(partial) == 1:
            return float(partial[0]), float(z_partial[0])
        return exact_sum(partial), (exact_sum(z_partial) if self.zl != 0.0 else 0.0)

    # -- streamed rows -----------------------------------------------------------
    def streamed(self, workers: Any) -> tuple[float, float]:
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
            z_buf, x_buf = self.scratch(1, BLOCK_ELEMENTS)
            for t in range(t0, t1):
                r, j = divmod(t, nw)
                k0, k1 = windows[j]
                x = self.load(p.z[keys[r]].reshape(-1, K)[:, k0:k1], z_buf, x_buf)
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
        if self.observe_streamed is not None:
            self.observe_streamed(m_row, S_row)
        counted_rows = None if p.counted is None else p.counted.reshape(-1)
        z_rows, extra = self.z_terms(
            S_row, m_row, counted_rows, self.want_loss, self.g_moved is not None
        )
        partial = []
        if self.want_loss:
            with np.errstate(invalid="ignore", over="ignore"):
                loss = W_row * np.log(S_row) - T_parts.sum(axis=1)
            for r, key in enumerate(keys):
                counted = None if p.counted is None else p.counted[key].reshape(-1)
                z_r = None if z_rows is None else z_rows[r : r + 1]
                partial.append(self.store_loss(key, finish_losses(loss[r : r + 1], counted), z_r))
        if self.g_moved is not None:
            g_moved = self.g_moved

            def second_pass(t0: int, t1: int) -> None:
                ws = np.empty((1, BLOCK_ELEMENTS), dtype=p.compute_dtype)
                z_buf, x_buf = self.scratch(1, BLOCK_ELEMENTS)
                for t in range(t0, t1):
                    r, j = divmod(t, nw)
                    k0, k1 = windows[j]
                    x = p.z[keys[r]].reshape(-1, K)[:, k0:k1]
                    if self.transform:
                        x = self.load(x, z_buf, x_buf)
                    buf = ws[:, : k1 - k0]
                    with np.errstate(invalid="ignore", over="ignore"):
                        np.subtract(x, m_row[r], out=buf, dtype=buf.dtype)
                    np.exp(buf, out=buf)
                    blk = Block(p, keys[r], k0, k1)
                    # p = exp(z - m) / S needs the whole row's mass, not the chunk's.
                    e = None if extra is None else extra[r : r + 1]
                    self.finish_grad(buf, W_row[r], S_row[r : r + 1], win_terms[j], blk, e)
                    if self.cap is not None:
                        self.cap_chain(buf, x_buf, x)
                    with np.errstate(over="ignore"):
                        dst = g_moved[keys[r]].reshape(-1, K)[:, k0:k1]
                        if dst.dtype == np.float16:
                            store_float16(dst, buf)
                        else:
                            dst[...] = buf

            run_ranges(len(keys) * nw, n, second_pass)
        z_total = 0.0
        if z_rows is not None and self.loss_rows is None:
            z_total = exact_sum(z_rows)
        return exact_sum(partial), z_total


def evaluate(
    p: Problem,
    *,
    want_loss: bool = True,
    grad: np.ndarray | None = None,
    workers: Any = None,
    sums: bool = False,
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
    sums : bool
        For a reduced loss, return the float64 pair ``(cross-entropy sum, z-loss sum)``
        that :func:`reduce_sums` turns into the loss, so that a blocked caller can add
        the sums of its blocks exactly before reducing once.

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
    total, z_total = call.streamed(workers) if streamed else call.rows(workers)
    if not want_loss:
        return None, grad
    if call.loss_rows is not None:
        return (call.loss_rows[0, ...] if single else call.loss_rows), grad
    if sums:
        return (total, z_total), grad
    return reduce_sums(p, total, z_total), grad


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
