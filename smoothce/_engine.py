r"""The blocked loss-and-gradient engine.

Closed form
-----------
With ``s = z - max(z)`` (so ``s <= 0``), ``S = sum_k exp(s_k)`` (so ``log S >= 0``),
class weights ``w`` (1 without ``weight``) and ``q = (1 - eps) t + eps u``:

.. math::

    \ell = -\sum_k w_k q_k \log p_k = W \log S - T,
    \qquad W = \sum_k w_k q_k, \quad T = \sum_k w_k q_k s_k \le 0 .

Both ``W log S`` and ``-T`` are non-negative, so the loss is a sum of two
non-negative terms and is computed without cancellation; the large ``max(z)`` has
cancelled exactly in ``s`` before anything is summed. ``W`` and ``T`` split into a
label part and a prior part, and for integer labels neither needs ``q``:

* label part, one-hot ``t``: ``W_t = w_y``, ``T_t = w_y s_y`` (one gather per row);
* uniform prior: ``W_u = mean(w)``, ``T_u = sum_k w_k s_k / K`` (one row sum);
* ``"others"``: the uniform sums over ``K - 1`` classes minus the label's term;
* class prior ``u``: ``T_u = s @ (w u)``; per-sample prior: a row-wise dot product.

The gradient of each element's loss is ``W p - w q`` with ``p = exp(s) / S``: it is
written by scaling the exponentials in place and subtracting the target terms (a
scatter for one-hot labels, a broadcast vector for class priors), so the forward and
backward passes share the shift and the exponentials.

Masked classes
--------------
A ``-inf`` logit gives ``s_k = -inf``; where its target mass ``q_k`` is zero the term
``q_k s_k`` must count as 0 (``0 log 0 = 0``), but floating point says NaN. The fast
formulas therefore leave NaN exactly in the rows that have a ``-inf`` logit and a
finite maximum; those rows (and only those) are recomputed term by term from the
dense target, which keeps ``0 * -inf`` out and gives ``+inf`` where ``q_k > 0``.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from ._stable import BLOCK_ELEMENTS, Key, is_view_of, row_blocks, shift_rows
from ._targets import dense_targets
from ._validation import Prior, Problem

__all__ = ["evaluate", "mean_denominator"]

_F64 = np.dtype(np.float64)


def _dot64(subscripts: str, *operands: np.ndarray) -> np.ndarray:
    """Row-wise sums of products, accumulated in float64.

    ``einsum(..., dtype=float64)`` casts its operands in buffered chunks (no full
    float64 copy of a block). Accumulating in float64 matters for float32 inputs: a
    float32 dot product over 10**6 classes carries about sqrt(K) ulps of error, which
    is above the 1e-6 relative accuracy we promise; a float64 one is far below it.
    """
    result: np.ndarray = np.einsum(subscripts, *operands, dtype=_F64, casting="safe")
    return result


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


class _Block:
    """The rows of one block: labels, counted mask and per-sample prior, 2-D."""

    __slots__ = ("counted", "rows", "u", "y")

    def __init__(self, p: Problem, key: Key, K: int) -> None:
        y = p.labels[key]
        self.y: np.ndarray = y.reshape(-1, K) if p.probabilistic else y.reshape(-1)
        self.rows = np.arange(self.y.shape[0])
        self.counted = None if p.counted is None else p.counted[key].reshape(-1)
        u = p.prior.values if p.prior.kind == "sample" else None
        self.u = None if u is None else u[key].reshape(-1, K)

    @property
    def sample_prior(self) -> np.ndarray:
        """The per-sample prior rows, shape (b, K) (only with ``prior.kind == "sample"``)."""
        assert self.u is not None
        return self.u


class _Terms:
    """Per-call constants of the closed form: which terms exist and their weights."""

    def __init__(self, p: Problem) -> None:
        K, eps, w = p.num_classes, p.epsilon, p.weight
        self.K, self.eps, self.a, self.w = K, eps, 1.0 - eps, w
        self.probabilistic = p.probabilistic
        self.prior = p.prior
        self.dtype = p.compute_dtype
        # For uniform, "others" and class priors the prior term is a dot product of
        # s with one vector; without weights it is a constant and a plain row sum
        # (NumPy's pairwise sum: error O(log K) ulps) replaces the dot product.
        self.p_const: float | None = None
        self.p_vec: np.ndarray | None = None
        kind = p.prior.kind
        if kind in ("uniform", "others"):
            share = 1.0 / (K if kind == "uniform" else K - 1)
            if w is None:
                self.p_const = share
            else:
                self.p_vec = w * share
        elif kind == "class":
            assert p.prior.values is not None
            self.p_vec = p.prior.values if w is None else p.prior.values * w
        self.others = kind == "others"
        # sum_k w_k u_k before "others" removes the label's share (per row, in mass()).
        self.prior_mass = (
            float(self.p_vec.sum()) if self.p_vec is not None else (self.p_const or 0.0) * K
        )

    # -- forward -------------------------------------------------------------
    def _label_weight(self, blk: _Block) -> Any:
        """``w_y`` per row (integer labels), or 1.0 without weights."""
        return 1.0 if self.w is None else self.w[blk.y]

    def _prior_share_at_label(self, blk: _Block) -> Any:
        """``w_y u_y`` of the uniform prior that ``"others"`` takes back from the label."""
        if self.p_vec is None:
            assert self.p_const is not None
            return self.p_const
        return self.p_vec[blk.y]

    def mass(self, blk: _Block) -> Any:
        """``W = sum_k w_k q_k`` per row (float64, or a scalar when it is constant).

        Needs no logits, so the gradient-only path never computes a dot product.
        """
        W: Any = 0.0
        w, a, eps = self.w, self.a, self.eps
        if a != 0.0:  # label part (absent when epsilon == 1)
            if not self.probabilistic:
                W = W + a * self._label_weight(blk)
            elif w is None:
                W = W + a * blk.y.sum(axis=1, dtype=_F64)
            else:
                W = W + a * _dot64("ik,k->i", blk.y, w)
        if eps != 0.0:  # prior part
            if self.prior.kind == "sample":
                u = blk.sample_prior
                W = W + eps * (u.sum(axis=1, dtype=_F64) if w is None else _dot64("ik,k->i", u, w))
            else:
                share: Any = self.prior_mass
                if self.others:
                    share = share - self._prior_share_at_label(blk)
                W = W + eps * share
        return W

    def dot(self, s: np.ndarray, blk: _Block) -> np.ndarray:
        """``T = sum_k w_k q_k s_k`` per row, in float64, from shifted logits ``s``.

        Dot products accumulate in float64 (:func:`_dot64`). May leave NaN in rows
        with a ``-inf`` logit; :meth:`exact_dot` repairs them.
        """
        T = np.zeros(s.shape[0], dtype=_F64)
        w, a, eps = self.w, self.a, self.eps
        s_y = None if self.probabilistic else s[blk.rows, blk.y].astype(_F64)
        if a != 0.0:  # label part
            if s_y is not None:
                T += a * (self._label_weight(blk) * s_y)
            elif w is None:
                T += a * _dot64("ik,ik->i", blk.y, s)
            else:
                T += a * _dot64("ik,k,ik->i", blk.y, w, s)
        if eps != 0.0:  # prior part
            if self.prior.kind == "sample":
                u = blk.sample_prior
                if w is None:
                    T += eps * _dot64("ik,ik->i", u, s)
                else:
                    T += eps * _dot64("ik,k,ik->i", u, w, s)
            else:
                if self.p_vec is None:
                    assert self.p_const is not None
                    dot = self.p_const * s.sum(axis=1, dtype=self.dtype).astype(_F64)
                else:
                    dot = _dot64("ik,k->i", s, self.p_vec)
                if self.others:
                    # u is zero on the label: remove the label's term from the sum.
                    assert s_y is not None
                    dot = dot - self._prior_share_at_label(blk) * s_y
                T += eps * dot
        return T

    def exact_dot(self, s: np.ndarray, blk: _Block, which: np.ndarray) -> np.ndarray:
        """``T`` for the rows ``which`` term by term, with ``0 * (-inf)`` read as 0."""
        y = blk.y[which]
        prior = self.prior
        if prior.kind == "sample":
            assert blk.u is not None
            prior = Prior("sample", blk.u[which])
        wq = dense_targets(y, self.probabilistic, prior, self.eps, self.K, _F64)
        if self.w is not None:
            wq *= self.w
        with np.errstate(invalid="ignore"):
            terms = wq * s[which]
        terms[wq == 0.0] = 0.0
        result: np.ndarray = terms.sum(axis=1)
        return result

    # -- backward ------------------------------------------------------------
    def subtract_targets(self, g: np.ndarray, blk: _Block, c: float) -> None:
        """``g -= c * w * q`` in place, without forming ``q`` for integer labels."""
        w, a, eps = self.w, self.a, self.eps
        if self.probabilistic and a != 0.0:
            wt = blk.y if w is None else blk.y * w
            g -= (c * a) * wt
        if eps != 0.0:
            if self.prior.kind == "sample":
                u = blk.sample_prior
                g -= (c * eps) * (u if w is None else u * w)
            elif self.p_vec is None:
                g -= c * eps * self._prior_share_at_label(blk)
            else:
                g -= (c * eps * self.p_vec).astype(g.dtype)
        if not self.probabilistic:
            # One scatter per row: the label's (1 - eps) w_y, and for "others" the
            # prior share just subtracted from the label column is given back.
            at_label = a * self._label_weight(blk)
            if eps != 0.0 and self.others:
                at_label = at_label - eps * self._prior_share_at_label(blk)
            g[blk.rows, blk.y] -= c * at_label


def evaluate(
    p: Problem, *, want_loss: bool = True, grad: np.ndarray | None = None
) -> tuple[Any, np.ndarray | None]:
    """Compute the reduced loss and/or write the gradient into ``grad``.

    Parameters
    ----------
    p : Problem
        Validated arguments.
    want_loss : bool
        Whether to compute the loss (the gradient alone skips the logs and dots).
    grad : ndarray of shape ``p.logits_shape`` and dtype ``p.grad_dtype``, or None
        Destination of the gradient (may be the logits themselves).

    Returns
    -------
    (loss, grad)
        ``loss`` is None when ``want_loss`` is False.
    """
    K = p.num_classes
    g_moved = None if grad is None else np.moveaxis(grad, p.axis, -1)
    single = not p.batch_shape
    if single:
        # A single sample: give it a batch axis of one row; views, no copies.
        g_moved = None if g_moved is None else g_moved[np.newaxis]
        p = _with_batch_axis(p)
    z = p.z
    n_rows = math.prod(p.batch_shape)
    red = p.reduction

    c = 1.0
    den = 1.0
    if red == "mean":
        den = mean_denominator(p)
        # A mean over nothing (every element ignored, or zero total weight) is
        # defined as 0 with a zero gradient; PyTorch returns NaN here.
        c = 1.0 / den if den > 0.0 else 0.0
    loss_rows_out = None
    if want_loss and red == "none":
        loss_rows_out = np.zeros(p.batch_shape, dtype=p.grad_dtype)
    partial_sums: list[float] = []

    terms = _Terms(p)
    rows = max(1, BLOCK_ELEMENTS // K)
    ws_all = np.empty((min(rows, max(n_rows, 1)), K), dtype=p.compute_dtype)
    for key in row_blocks(p.batch_shape, rows):
        z2 = z[key].reshape(-1, K)
        b = z2.shape[0]
        blk = _Block(p, key, K)
        # The gradient block doubles as the workspace when it is a writable view
        # of the right dtype: the shift, the exponentials and the gradient then
        # live in the output and no copy is made.
        g_blk = g2 = None
        if g_moved is not None:
            g_blk = g_moved[key]
            g2 = g_blk.reshape(-1, K)
        if (
            g2 is not None
            and g_blk is not None
            and g2.dtype == p.compute_dtype
            and is_view_of(g2, g_blk)
        ):
            ws = g2
        else:
            ws = ws_all[:b]
        m = shift_rows(z2, ws)
        W = terms.mass(blk)
        if want_loss:
            with np.errstate(invalid="ignore"):  # 0 * -inf in masked rows, repaired below
                T = terms.dot(ws, blk)
            redo = np.isfinite(m) & ~np.isfinite(T)
            if redo.any():
                T[redo] = terms.exact_dot(ws, blk, redo)
        np.exp(ws, out=ws)
        S = ws.sum(axis=1)
        if want_loss:
            loss = W * np.log(S.astype(_F64)) - T
            if blk.counted is not None:
                loss[~blk.counted] = 0.0
            if loss_rows_out is not None:
                loss_rows_out[key] = loss.reshape(loss_rows_out[key].shape)
            else:
                partial_sums.append(float(loss.sum()))
        if g_moved is not None:
            assert g_blk is not None
            # p * W * c = exp(s) * (c W / S): one multiply over the block.
            scale = (c * W / S.astype(_F64)).astype(p.compute_dtype)
            ws *= scale[:, np.newaxis]
            terms.subtract_targets(ws, blk, c)
            if blk.counted is not None:
                ws[~blk.counted] = 0
            if ws is not g2:
                g_blk[...] = ws.reshape(g_blk.shape)

    if not want_loss:
        return None, grad
    if loss_rows_out is not None:
        return (loss_rows_out[0, ...] if single else loss_rows_out), grad
    # Block partial sums in block order: the same blocks and order on every call.
    total = math.fsum(partial_sums)
    if red == "mean":
        total = total / den if den > 0.0 else 0.0
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
