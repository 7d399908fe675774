r"""One block of rows: the only written copy of the per-block work.

Every path that computes the loss calls :func:`run_block` on blocks of whole rows: the
engine's loop (:mod:`smoothce._engine`), the lean path for small calls
(:mod:`smoothce._lean`), the fused linear head (through the engine) and the metrics'
observers. Rows too long for one block are cut into windows of classes
(:func:`window_stats`, :func:`window_grad`), which the engine merges by the online
log-sum-exp; :mod:`smoothce.dask` merges vocabulary-chunked windows the same way.

The closed form
---------------
With ``W = sum_k w_k q_k`` and ``T = sum_k w_k q_k x_k`` in coordinates ``x = z - c``
(any per-row reference ``c``; :mod:`smoothce._terms`), a row's loss and gradient are

.. math::

    \ell = W \log S - T, \qquad S = \sum_k e^{x_k}, \qquad
    \nabla_z \ell = W \frac{e^{x}}{S} - w q .

The steps of :func:`run_block`
------------------------------
1. **Reference** (:func:`reference`): in float32, ``c = 0`` for every row whose
   maximum lies in ``[0, 64]``, or in ``(-inf, 64]`` with every logit at least -80;
   the row maximum ``c = m`` otherwise (the classic max shift), and always in float64.
   With ``c = 0`` no exponential can overflow (``K e^64`` is far below float32's
   largest value for any ``K`` below ``5e10``), the largest term is a normal number,
   and no exponential that the shift would keep normal is lost to float32's subnormal
   range; so the unshifted sum is as accurate as the shifted one (more so: its
   arguments are not rounded by a subtraction) and within the contract's
   ``(K + 4) u M``, where ``M`` grows with the logits themselves. The rule depends on
   the row alone, so a row gives the same bits in every block, chunk and worker. The
   common case costs two reductions over the block (its minimum and maximum prove
   ``c = 0`` for every row at once); only a block with a logit outside ``[-80, 64]``
   computes row maxima, and only a row with its maximum outside the window is shifted
   (one subtraction over the block). No row is exponentiated twice, whatever its
   values.
2. **Exponentials**: ``T`` without its label term is read from ``x`` (the logits, or
   the shifted workspace) before ``ws <- exp(x)`` overwrites it; ``S`` is the row sum.
3. **Label term** ``(1 - eps) w_y log e_y`` from the exponential itself, so that a row
   whose softmax is one-hot costs exactly 0 (see :mod:`smoothce._terms`); rows whose
   ``T`` is not finite (``-inf`` logits, spreads beyond the largest float) are summed
   again term by term (:meth:`~smoothce._terms.Terms.exact_dot`), which reads the
   logits, not the exponentials.
4. **Observer** (:mod:`smoothce.metrics`) sees the block while it is in cache.
5. **Losses** ``W log S - T`` (float64), clamped at 0, zero where ignored; the z-loss
   ``z_loss lse**2`` per row beside them.
6. **Gradient**, in place in ``ws``: one multiply by ``c W / S`` per row (plus the
   z-loss's ``2 z_loss lse c_z``), one subtraction of the prior's share, one scatter at
   the labels, ignored rows zeroed, and softcap's chain rule.

Every function here runs inside :class:`~smoothce._compat.Quiet` (the caller enters it
once): overflow to inf and NaN from undefined rows are the documented results.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ._scaling import Scaling
from ._stable import row_sums, widen_float16
from ._terms import Block, Terms, _row_offsets
from ._validation import Problem

__all__ = [
    "UNSHIFTED",
    "Plan",
    "cap_chain",
    "finish_losses",
    "load",
    "merge_windows",
    "reference",
    "row_maxima",
    "run_block",
    "window_grad",
    "window_stats",
]

_F64 = np.dtype(np.float64)

#: ``(lo, hi)``: a row is exponentiated without a shift when its maximum lies in
#: ``[0, hi]``, or in ``(-inf, hi]`` with every logit at least ``lo``
#: (see :func:`reference`).
UNSHIFTED = (-80.0, 64.0)
_LO, _HI = UNSHIFTED
_E_HI = math.exp(_HI)

_TINY = {np.dtype(t): float(np.finfo(t).tiny) for t in (np.float32, np.float64)}
_F32_MAX = float(np.finfo(np.float32).max)
# ufunc reductions called directly: the ndarray methods add a Python frame each.
_min, _max = np.minimum.reduce, np.maximum.reduce
_max_at, _min_at = np.maximum.reduceat, np.minimum.reduceat

#: Observer of whole-row blocks: ``observe(z2, S, ref, label_logs)`` with ``z2`` the
#: block's logits (compute dtype, C-contiguous), ``lse = log S + ref`` (``ref`` None
#: for 0), and ``label_logs`` the label's ``log e_y`` in the same coordinates (None for
#: probability targets).
Observer = Callable[[np.ndarray, np.ndarray, Any, Any], None]


class Plan:
    """Per-call constants of :func:`run_block`.

    Parameters
    ----------
    terms : Terms
        The closed form's target terms over whole rows (or a window).
    want_loss, want_grad : bool
        What the blocks compute: the loss needs ``T``, the gradient the scatter.
    c : float
        The gradient's factor (:attr:`Scaling.grad <smoothce._scaling.Scaling.grad>`).
    compute_dtype, logits_dtype : numpy dtype
        float32 or float64, and the caller's logits' dtype: float16, bfloat16 and
        integer logits are converted by :func:`load` into scratch, as are soft-capped
        ones.
    z_loss, cz : float
        The z-loss coefficient and its gradient's reduction factor.
    softcap : float or None
        Logit soft-capping (:func:`load` applies it, :func:`cap_chain` its derivative).
    """

    __slots__ = (
        "W", "c", "cap", "check_big", "check_scale", "compute_dtype", "cz", "half", "terms",
        "transform", "want_grad", "want_loss", "zl",
    )  # fmt: skip

    def __init__(
        self,
        terms: Terms,
        want_loss: bool,
        want_grad: bool,
        c: float,
        compute_dtype: np.dtype[Any],
        logits_dtype: np.dtype[Any],
        z_loss: float = 0.0,
        cz: float = 0.0,
        softcap: float | None = None,
    ) -> None:
        self.terms = terms
        # The loss mass is the same on every row in the common case: computed once.
        self.W = terms.constant_mass()
        self.want_loss, self.want_grad = want_loss, want_grad
        self.c, self.zl, self.cz, self.cap = c, z_loss, cz, softcap
        self.compute_dtype = compute_dtype
        # float16 logits are widened by a table lookup, 2.2x faster than NumPy's cast
        # (which the exp and the sums would otherwise each repeat on the fly);
        # bfloat16 ones have no NumPy arithmetic at all; integers are converted once.
        # The values are the cast's, so every later step gives the same bits.
        self.half = logits_dtype == np.float16
        self.transform = logits_dtype != compute_dtype or softcap is not None
        # Whether the gradient's factor c W / S may be subnormal (see _finish_grad):
        # not when W is one constant and c W exceeds the smallest normal number times
        # the largest S (K e^64 unshifted, K shifted), which is every call but those
        # with tiny weights or factors, or per-row masses, or a z-loss.
        largest_S = terms.K * (_E_HI if compute_dtype == np.float32 else 1.0)
        self.check_scale = not (
            self.W is not None and z_loss == 0.0 and c * self.W >= _TINY[compute_dtype] * largest_S
        )
        # Whether that factor may exceed float32's range: an unshifted row below 0 has
        # S as small as e^-80 (a shifted row's S is at least 1, and float64 always
        # shifts), so only when c W e^80 (or a z-loss's factor) can reach it.
        self.check_big = compute_dtype == np.float32 and not (
            self.W is not None and z_loss == 0.0 and c * self.W * math.exp(-_LO) <= _F32_MAX
        )

    @classmethod
    def of(cls, p: Problem, scaling: Scaling, want_loss: bool, want_grad: bool) -> Plan:
        """The plan of a validated call with its scaling."""
        return cls(
            Terms.of(p), want_loss, want_grad, scaling.grad, p.compute_dtype, p.z.dtype,
            scaling.z_loss, scaling.z_grad, p.softcap,
        )  # fmt: skip


# -- step 0: the block's logits in the compute dtype --------------------------------
def scratch(plan: Plan, rows: int, width: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Per-thread buffers for :func:`load`: ``(logits, z / softcap)``, as needed."""
    dt = plan.compute_dtype
    zbuf = np.empty((rows, width), dtype=dt) if plan.transform else None
    xbuf = np.empty((rows, width), dtype=dt) if plan.cap is not None else None
    return zbuf, xbuf


def load(
    plan: Plan, block: np.ndarray, zbuf: np.ndarray | None, xbuf: np.ndarray | None
) -> np.ndarray:
    """The logits ``block`` (rows, window) as a C-contiguous compute-dtype array.

    Without a transformation a strided block is copied (one block at most) so that every
    layout is summed in the same order. Converted logits go to ``zbuf``; with
    ``softcap`` they become ``softcap * tanh(z / softcap)`` in ``zbuf``, and
    ``z / softcap`` stays in ``xbuf`` for :func:`cap_chain`.
    """
    if not plan.transform:
        return np.ascontiguousarray(block)
    assert zbuf is not None
    n, k = block.shape
    z2 = zbuf[:n, :k]
    if plan.cap is None:
        _widen(plan, block, z2)
        return z2
    assert xbuf is not None
    x = xbuf[:n, :k]
    _widen(plan, block, x)
    x /= plan.cap
    # tanh saturates at +-1 without overflow for any |x|; NaN stays NaN and +-inf
    # logits become the finite +-softcap.
    np.tanh(x, out=z2)
    z2 *= plan.cap
    return z2


def _widen(plan: Plan, block: np.ndarray, out: np.ndarray) -> None:
    """``out[...] = block``, exactly, the float16 case by table lookup."""
    if plan.half:
        widen_float16(block, out)
    else:
        out[...] = block


# -- step 1: the reference ---------------------------------------------------------
def row_maxima(z2: np.ndarray) -> np.ndarray:
    """Row maxima of a C-contiguous (rows, K) block (NaN where a row has one).

    ``maximum.reduceat`` over the flat block: the same values as ``max(axis=1)`` at
    two fifths of its cost on rows of 100 classes, and a ninth at 10, where NumPy's
    axis reduction pays a fixed cost per row.
    """
    n, K = z2.shape
    result: np.ndarray = _max_at(z2.reshape(-1), _row_offsets(n, K))
    return result


def _row_minima(z2: np.ndarray) -> np.ndarray:
    n, K = z2.shape
    result: np.ndarray = _min_at(z2.reshape(-1), _row_offsets(n, K))
    return result


def reference(z2: np.ndarray) -> tuple[np.ndarray | None, bool]:
    """``(c, inside)``: each row's reference ``c`` (see the module's step 1), None where
    it is 0 on every row; ``inside`` says that every logit lies in ``[-80, 64]`` (then
    every logit is finite and every exponential a normal number).

    ``c`` is 0 for a row whose maximum ``m`` lies in ``[0, 64]``, or in ``(-inf, 64]``
    with every logit at least -80; ``m`` itself otherwise. A NaN or ``+inf`` logit
    gives ``c = NaN`` or ``inf``, and a row of ``-inf`` gives ``-inf``: ``x = z - c``
    is NaN there, the documented result of an undefined softmax.

    float64 logits are always shifted (``c = m``). Unshifted, ``log S`` and the label's
    ``log e_y`` are both of the size of the logits, and their difference, a confident
    row's small loss, carries float64 rounding of that size (``u |m|`` instead of
    ``u``); in float32 it is far below the rounding of ``S`` itself (float32's
    ``u = 6e-8`` against float64's logs of float32 sums), so float32 loses nothing.

    Why this window (float32). Without a shift ``S = sum_k e^{z_k}`` must neither overflow
    (``m <= 64``) nor lose the largest term's digits (``m >= -80``: ``e^-80`` is a
    normal float32). The shift keeps ``e^{z_k - m}`` normal down to ``z_k - m = -87``;
    without it ``e^{z_k}`` is subnormal once ``z_k < -87``, and a gradient entry
    ``p_k`` would lose digits the shift keeps, unless ``m >= 0`` (then ``z_k - m <=
    z_k``: the shifted value is subnormal too) or no logit is below -80.
    """
    if z2.dtype.char == "d":
        return row_maxima(z2), False  # float64 keeps the shift: see the docstring
    if z2.size == 0:
        return None, True
    if z2.size < 1 << 15:
        # argmin/argmax (of the flattened block) and one element each cost a third of
        # a reduction's set-up on a small block (0.3 us against 1.0 at 1280 values, the
        # same at 2**15); they find NaN too, as the reductions do.
        lo, hi = z2.item(z2.argmin()), z2.item(z2.argmax())
    else:
        flat = z2.reshape(-1)
        lo, hi = _min(flat), _max(flat)
    if _LO <= lo and hi <= _HI:
        return None, True  # every logit inside: c = 0 on every row (NaN fails both)
    m = row_maxima(z2)
    keep = (m >= 0.0) & (m <= _HI)
    low = m < 0.0
    if low.any():
        keep |= low & (_row_minima(z2) >= _LO)
    if keep.all():
        return None, False
    m[keep] = 0.0
    return m, False


# -- steps 2-3: exponentials, S and T ------------------------------------------------
def _exponentials(
    z2: np.ndarray,
    ws: np.ndarray,
    ref: np.ndarray | None,
    inside: bool,
    terms: Terms,
    blk: Block,
    want_T: bool,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``ws <- exp(z - ref)``; return ``(S, T, label_logs)`` per row (float64).

    ``inside``: every logit lies in the unshifted window (see :func:`reference`).
    """
    if ref is None:
        x = z2
    else:
        np.subtract(z2, ref[:, np.newaxis], out=ws)  # rows with c = 0 keep their bits
        x = ws
    T = x_y = None
    if want_T:
        # Read x before the exponential overwrites it. The label logits are needed
        # where e_y may not be normal, which a block inside the window rules out.
        T, x_y = terms.dot_rest(x, blk, want_x_y=not inside)
    np.exp(x, out=ws)
    S = row_sums(ws)
    logs = None
    if T is None:
        return S, None, None
    if not terms.probabilistic:
        # A block inside the window holds logits in [-80, 64]: every e_y is normal.
        logs = terms.label_logs(ws, blk, x_y, normal=inside)
    T = terms.add_label_term(T, logs, blk)
    # A block inside the window has finite, bounded logits: T is finite. Elsewhere a
    # -inf logit gives 0 * -inf = NaN where its target mass is 0 (0 log 0 = 0), and a
    # spread beyond the largest float overflows x: those rows (with a finite
    # reference) are summed term by term.
    if not inside and not np.isfinite(T.sum()):
        redo = ~np.isfinite(T)
        if ref is not None:
            redo &= np.isfinite(ref)
        if redo.any():
            T[redo] = terms.exact_dot(z2, ref, blk, redo)
    return S, T, logs


def window_stats(
    x: np.ndarray, ws: np.ndarray, terms: Terms, blk: Block, want_T: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(m, S, T)`` per row of a window of classes, in the window's own shifted
    coordinates (``c = m``, the window's maximum): what the online log-sum-exp merges.

    ``x`` (rows, window) holds compute-dtype logits, ``ws`` a workspace of its shape.
    A window whose logits are all ``-inf`` has ``m = -inf`` and NaN in ``S``: the
    merge counts it as empty.
    """
    m = row_maxima(x)
    S, T, _ = _exponentials(x, ws, m, False, terms, blk, want_T)
    return m, S, T


# -- step 5: losses ------------------------------------------------------------------
def finish_losses(loss: np.ndarray, counted: np.ndarray | None) -> np.ndarray:
    """Clamp element losses at 0 and zero the ignored ones, in place; return ``loss``.

    Cross-entropy against a probability target is never negative, but ``W log S`` and
    ``T`` are rounded separately, so a row whose softmax is one-hot can come out a
    rounding below 0 (``maximum`` keeps NaN).
    """
    np.maximum(loss, 0.0, out=loss)
    if counted is not None:
        loss[~counted] = 0.0
    return loss


def _row_losses(S: np.ndarray, T: np.ndarray, W: Any, counted: np.ndarray | None) -> np.ndarray:
    """``W log S - T`` per row (float64), finished by :func:`finish_losses`."""
    loss: np.ndarray = np.log(S)
    if not (isinstance(W, float) and W == 1.0):
        loss *= W
    loss -= T
    return finish_losses(loss, counted)


def z_terms(
    plan: Plan, S: np.ndarray, ref: Any, counted: np.ndarray | None, rows: bool, grad: bool
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(z_loss lse**2 per row, gradient coefficient 2 z_loss lse c_z)``, float64.

    ``lse = log S + ref``; ignored rows get a zero z-loss (their gradient rows are
    zeroed with the rest).
    """
    if plan.zl == 0.0:
        return None, None
    lse = np.log(S)
    if ref is not None:
        lse += ref
    z_rows = None
    if rows:
        z_rows = plan.zl * lse * lse
        if counted is not None:
            z_rows[~counted] = 0.0
    extra = (2.0 * plan.zl * plan.cz) * lse if grad else None
    return z_rows, extra


# -- step 6: the gradient ------------------------------------------------------------
def _finish_grad(
    plan: Plan,
    ws: np.ndarray,
    W: Any,
    S: np.ndarray,
    terms: Terms,
    blk: Block,
    extra: np.ndarray | None,
) -> None:
    """Turn the exponentials ``e`` in ``ws`` into the gradient with respect to the
    (possibly soft-capped) logits, in place: ``c (W e / S - w q) + extra e / S``.

    One multiply over the block, ``e * ((c W + extra) / S)`` (``extra``, per row, is the
    z-loss's ``2 z_loss lse c_z``, whose gradient is also a multiple of ``p``), then
    the targets' subtraction. Overflow means an entry beyond the dtype's range: inf.

    A row whose factor would be subnormal in the compute dtype (a tiny ``c``: weights
    near the bottom of the range, or a huge batch in float32, against a large ``S``)
    would have that rounding multiplied by ``e`` (up to ``e^64`` unshifted), so such
    rows are formed again in float64, ``c * (W e / S - w q)``, and rounded once. The
    choice reads each row's own factor, so every row gives the same bits in every
    block.
    """
    c = plan.c
    num = c * W if extra is None else c * W + extra
    scale = num / S
    small = _subnormal(scale, _TINY[ws.dtype]) if plan.check_scale and c != 0.0 else None
    e_small = None if small is None else ws[small]  # a copy, before ws is overwritten
    factor = scale.astype(ws.dtype, copy=False)
    big = _beyond_float32(scale) if plan.check_big else None
    if big is not None:
        # Those rows' factor is not a float32 but every product e * factor may be
        # (e is as small as the factor is large): formed in float64, rounded once.
        factor[big] = 1.0
        ws[big] = ws[big] * scale[big, np.newaxis]
    ws *= factor[:, np.newaxis]
    terms.subtract_targets(ws, blk, c)
    if small is not None:
        assert e_small is not None
        # W / S itself may lie below float32's range (W = 2**-100 against S = e^64):
        # every step in float64, where W p_k and w q_k are normal numbers.
        base = (W / S if extra is None else (W + extra / c) / S)[small]
        minus_wq = np.zeros(ws.shape, dtype=_F64)  # rare: a block holding such a row
        terms.subtract_targets(minus_wq, blk, 1.0)
        g = e_small * base[:, np.newaxis]
        g += minus_wq[small]
        g *= c
        ws[small] = g
    if blk.counted is not None:
        ws[~blk.counted] = 0


def _beyond_float32(scale: np.ndarray) -> np.ndarray | None:
    """The rows whose finite factor exceeds float32's range, or None (one reduction
    each way when none does, which is always but at the edges). The rule reads the row
    alone, so a row gives the same bits in every block."""
    if scale.max() <= _F32_MAX and scale.min() >= -_F32_MAX:  # NaN fails: looked at below
        return None
    a = np.abs(scale)
    big = (a > _F32_MAX) & (a < np.inf)
    return big if big.any() else None


def _subnormal(scale: np.ndarray, tiny: float) -> np.ndarray | None:
    """The rows whose nonzero factor lies below ``tiny`` in magnitude, or None (one
    reduction when none does, which is always but at the edges)."""
    if scale.min() >= tiny:  # NaN fails and is looked at below, where it is ignored
        return None
    a = np.abs(scale)
    small = (a < tiny) & (a > 0.0)
    return small if small.any() else None


def cap_chain(g: np.ndarray, xbuf: np.ndarray | None, tmp: np.ndarray) -> None:
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
    np.exp(e, out=e)  # underflows to 0 far from 0, where the factor is 0
    np.add(e, 1, out=tmp)
    np.multiply(tmp, tmp, out=tmp)
    e *= 4
    e /= tmp
    g *= e


# -- the sequence ----------------------------------------------------------------------
def run_block(
    plan: Plan,
    z2: np.ndarray,
    ws: np.ndarray,
    blk: Block,
    xbuf: np.ndarray | None = None,
    observe: Observer | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The loss rows and (in ``ws``) the gradient of one block of whole rows.

    Parameters
    ----------
    plan : Plan
        The call's constants.
    z2 : ndarray, shape (rows, K)
        The block's logits, C-contiguous, in the compute dtype (:func:`load`); not
        modified unless the call is soft-capped and wants the gradient (then it is
        scratch).
    ws : ndarray, shape (rows, K)
        Workspace of the compute dtype; may be the gradient's own block, never ``z2``.
    blk : Block
        The rows' targets.
    xbuf : ndarray or None
        ``z / softcap`` from :func:`load`, for the chain rule.
    observe : callable or None
        See :data:`Observer`; called after the exponentials, before the gradient.

    Returns
    -------
    losses : ndarray of float64, shape (rows,), or None
        ``W log S - T`` in engine units, clamped at 0, 0 where ignored (None without
        ``plan.want_loss``).
    z_rows : ndarray of float64, shape (rows,), or None
        The z-loss per row (None without z-loss or without ``plan.want_loss``).

    ``ws`` holds the gradient ``c (W p - w q) + extra p`` afterwards when
    ``plan.want_grad``.
    """
    terms = plan.terms
    ref, inside = reference(z2)
    S, T, logs = _exponentials(z2, ws, ref, inside, terms, blk, plan.want_loss)
    if observe is not None:
        observe(z2, S, ref, logs)
    W = terms.mass(blk) if plan.W is None else plan.W
    z_rows, extra = z_terms(plan, S, ref, blk.counted, T is not None, plan.want_grad)
    losses = None if T is None else _row_losses(S, T, W, blk.counted)
    if plan.want_grad:
        _finish_grad(plan, ws, W, S, terms, blk, extra)
        if plan.cap is not None:
            cap_chain(ws, xbuf, z2)
    return losses, z_rows


def merge_windows(
    m: np.ndarray, S: np.ndarray, T: np.ndarray, W: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    r"""Rows' ``(m, S, T, W)`` from their windows' (rows, windows) arrays, exactly as
    one pass over the whole row would have them (float64), by the online log-sum-exp

    .. math::

        m = \max_j m_j, \quad S = \sum_j S_j e^{m_j - m}, \quad
        T = \sum_j \bigl(T_j + W_j (m_j - m)\bigr), \quad W = \sum_j W_j,

    in which every ``T`` term is non-positive, so nothing cancels. A window whose
    logits are all ``-inf`` adds nothing to ``S`` and costs ``+inf`` exactly when it
    holds target mass; a row whose windows are all such has no softmax (NaN). Rows with
    NaN or ``+inf`` logits stay NaN; windows whose maxima lie further apart than the
    largest float underflow ``exp`` to 0, as they should. The arrays are not modified.
    """
    empty = m == -np.inf
    S = np.where(empty, 0.0, S)
    m_row = m.max(axis=1)
    rel = np.where(empty, 0.0, m - m_row[:, np.newaxis])
    S_row = (S * np.exp(rel)).sum(axis=1)
    # T_j + W_j (m_j - m), formed at a quarter scale (exact) because m_j - m alone may
    # overflow when the windows' maxima lie beyond the largest float apart.
    shift = W * (m / 4 - m_row[:, np.newaxis] / 4)
    T_parts = np.where(empty, np.where(W > 0, -np.inf, 0.0), 4 * (T / 4 + shift))
    S_row[empty.all(axis=1)] = np.nan
    return m_row, S_row, T_parts.sum(axis=1), W.sum(axis=1)


def window_grad(
    plan: Plan,
    x: np.ndarray,
    buf: np.ndarray,
    m: Any,
    S: np.ndarray,
    W: Any,
    extra: np.ndarray | None,
    terms: Terms,
    blk: Block,
    xbuf: np.ndarray | None,
) -> None:
    """The gradient of a window of classes once its rows' ``(m, S, W)`` are merged:
    ``buf <- c (W e^{x - m} / S - w q) + extra p`` over the window, with softcap's
    chain rule. ``x`` holds the window's compute-dtype logits (:func:`load`)."""
    np.subtract(x, m, out=buf, dtype=buf.dtype)
    np.exp(buf, out=buf)
    # p = exp(z - m) / S needs the whole row's mass, not the window's.
    _finish_grad(plan, buf, W, S, terms, blk, extra)
    if plan.cap is not None:
        cap_chain(buf, xbuf, x)
