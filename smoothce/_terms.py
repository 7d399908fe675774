r"""The target terms of the closed form, over a window of classes.

With class weights ``w`` (1 without ``weight``) and ``q = (1 - eps) t + eps u``, the
loss of one row in coordinates ``x = z - c`` (any per-row reference ``c``) is

.. math::

    \ell = W \log \sum_k e^{x_k} - T,
    \qquad W = \sum_k w_k q_k, \quad T = \sum_k w_k q_k x_k ,

and its gradient is ``W p - w q``. This module computes ``W``, ``T`` and the
``- w q`` part of the gradient without building ``q`` for integer labels:

* label part, one-hot ``t``: ``W_t = w_y``, ``T_t = w_y x_y`` (one gather per row);
* uniform prior: ``W_u = mean(w)``, ``T_u = sum_k w_k x_k / K`` (a row sum);
* ``"others"``: the uniform sums over ``K - 1`` classes minus the label's share;
* class prior ``u``: ``T_u = x @ (w u)``; per-sample prior: a row-wise dot product.

Every quantity is restricted to a *window* of classes ``[k0, k1)``: the whole row for
ordinary blocks, one chunk of it when a row is too long for one block and is
streamed (:mod:`smoothce._engine` then adds the windows up).

Masked classes: a ``-inf`` logit gives ``x_k = -inf``; where ``q_k = 0`` the term
``q_k x_k`` must count as 0 (``0 log 0 = 0``), but floating point says NaN. The fast
formulas leave NaN exactly in such rows; :meth:`Terms.exact_dot` recomputes them term
by term from the dense target and gives ``+inf`` loss only where ``q_k > 0``.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ._stable import Key, fast_exp_bounds, row_sums
from ._targets import dense_targets
from ._validation import Prior, Problem

__all__ = [
    "Block",
    "Hot",
    "Terms",
    "hot_constants",
    "hot_dot",
    "hot_subtract",
    "label_denominator",
    "label_weights",
]

_F64 = np.dtype(np.float64)


def _dot64(subscripts: str, *operands: np.ndarray) -> np.ndarray:
    """Row-wise sums of products, accumulated in float64.

    ``einsum(..., dtype=float64)`` casts its operands in buffered chunks (no full
    float64 copy of a block). A float32 dot product over 10**6 classes would carry
    about sqrt(K) ulps of error; a float64 one is far below float32's resolution.
    """
    result: np.ndarray = np.einsum(subscripts, *operands, dtype=_F64, casting="safe")
    return result


@functools.lru_cache(maxsize=32)
def _row_offsets(n: int, K: int) -> np.ndarray:
    """``arange(n) * K``, read-only and cached: the start of each row in a flat block.

    Blocks of one call, and the calls of a training loop, share their shapes.
    """
    offsets = np.arange(n) * K
    offsets.setflags(write=False)
    return offsets


def label_weights(
    labels: np.ndarray, counted: np.ndarray | None, weight: np.ndarray
) -> np.ndarray:
    """``weight[label]`` of each counted element (flat): its share of the weighted
    mean's denominator. ``labels`` are safe indices (ignored ones replaced by 0)."""
    w_y: np.ndarray = weight[labels]
    return w_y.reshape(-1) if counted is None else w_y[counted]


def label_denominator(
    n: int, labels: np.ndarray, counted: np.ndarray | None, weight: np.ndarray | None
) -> float:
    """PyTorch's ``reduction="mean"`` denominator for ``n`` integer labels.

    The sum of ``weight[label]`` over the counted elements (``counted`` False where
    ignored; None: all), or their number without ``weight``. ``labels`` are safe
    indices (ignored ones replaced by 0). The engine's ``mean_denominator`` and the
    lean path (:mod:`smoothce._lean`) both take it from here.
    """
    if weight is None:
        return float(n if counted is None else np.count_nonzero(counted))
    return float(label_weights(labels, counted, weight).sum())


class Hot:
    """Constants of the common case: integer labels over whole rows, no class weights,
    the uniform or ``"others"`` prior (PyTorch's default and fairseq's variant).

    Its terms need one row sum and one gather (:func:`hot_dot`), its gradient one
    scalar subtract and one scatter (:func:`hot_subtract`), and its mass ``W`` is the
    same on every row. Both the general engine and the lean path for small calls
    (:mod:`smoothce._lean`) take these constants from here.
    """

    __slots__ = ("K", "W", "a", "at_label", "eps", "others", "p_const", "share")

    def __init__(self, K: int, eps: float, others: bool) -> None:
        self.K, self.eps, self.a, self.others = K, eps, 1.0 - eps, others
        self.p_const = 1.0 / (K - 1 if others else K)
        self.share = eps * self.p_const  # epsilon * u_k on every class
        self.at_label = self.a - self.share if others else self.a  # coefficient of x_y in T
        # a * 1 + eps * (sum of u over the classes, minus the label's share for "others"),
        # in this order: the loss multiplies by W only when it is not exactly 1.
        mass = self.a + eps * (self.p_const * K)
        if others:
            mass -= eps * self.p_const
        self.W = mass


@functools.lru_cache(maxsize=64)
def hot_constants(K: int, eps: float, others: bool) -> Hot:
    """:class:`Hot` for a call, cached: training loops repeat the same (K, eps)."""
    return Hot(K, eps, others)


def hot_dot(x: np.ndarray, flat_labels: np.ndarray, hot: Hot) -> np.ndarray:
    """``T = eps u0 sum_k x_k + (a - eps u0 [others]) x_y`` per row, in float64.

    ``x`` is a C-contiguous (rows, K) block; ``flat_labels`` the labels' positions in it
    when flattened.
    """
    # The label logits are gathered into float64 before they meet the Python float
    # `at_label`: NumPy keeps `float * float16_array` in float16, which rounded the loss
    # of float16 logits to 11 bits (3e-4 relative error).
    x_y: np.ndarray = x.reshape(-1).take(flat_labels).astype(_F64)
    x_y *= hot.at_label  # in place: the same products, one array fewer
    if hot.share == 0.0:
        return x_y
    T = row_sums(x)
    T *= hot.share
    T += x_y
    return T


def hot_subtract(g: np.ndarray, flat_labels: np.ndarray, hot: Hot, c: float) -> None:
    """``g -= c q`` in place for one-hot labels and the uniform/"others" prior.

    ``g`` is a C-contiguous (rows, K) block holding ``c W p``.
    """
    share = hot.share
    flat = g.reshape(-1)  # a view: g is C-contiguous
    # "others" gives the label no share of epsilon. Its column is read before the share
    # is subtracted from every column and then written directly: subtracting the share
    # and adding it back would cancel catastrophically (p_y - 1 + 1 at eps = 1 keeps
    # only float32's absolute accuracy).
    at_y = flat.take(flat_labels) if hot.others and share != 0.0 else None
    # Python floats meet g as g's dtype (rounded once, to nearest: NumPy 2's weak
    # scalars and NumPy 1's value-based casting agree here), as dtype.type(...) did.
    if share != 0.0:
        g -= c * share
    if at_y is not None:
        flat[flat_labels] = at_y - g.dtype.type(c * hot.a)
    else:
        flat[flat_labels] -= c * hot.a


class Block:
    """The targets of the rows ``key`` restricted to the classes ``[k0, k1)``."""

    __slots__ = (
        "K", "counted", "flat_labels", "label_cols", "label_rows", "labels", "n", "t", "u",
    )  # fmt: skip

    def __init__(self, p: Problem, key: Key, k0: int, k1: int) -> None:
        K = p.num_classes
        self.K = K
        full = k0 == 0 and k1 == K
        self.counted = None if p.counted is None else p.counted[key].reshape(-1)
        self.t: np.ndarray | None = None
        self.labels: np.ndarray | None = None
        self.label_rows: np.ndarray | slice = slice(None)
        self.label_cols: np.ndarray | None = None
        self.flat_labels: np.ndarray | None = None
        if p.probabilistic:
            t = p.labels[key].reshape(-1, K)
            self.t = t if full else t[:, k0:k1]
            self.n = t.shape[0]
        else:
            y = p.labels[key].reshape(-1)
            self.n = y.shape[0]
            self.labels = y
            if full:
                self.label_cols = y
                # Positions of the labels in the flattened (rows, K) block: a `take`
                # and a flat scatter cost a third of 2-D fancy indexing.
                self.flat_labels = _row_offsets(self.n, K) + y
            else:
                # Only the rows whose label falls in this window have a label term here.
                inside = np.flatnonzero((y >= k0) & (y < k1))
                self.label_rows = inside
                self.label_cols = y[inside] - k0
        u = p.prior.values if p.prior.kind == "sample" else None
        if u is not None:
            u = u[key].reshape(-1, K)
            u = u if full else u[:, k0:k1]
        self.u: np.ndarray | None = u

    @property
    def global_labels(self) -> np.ndarray:
        assert self.labels is not None
        return self.labels

    @property
    def targets(self) -> np.ndarray:
        assert self.t is not None
        return self.t

    @property
    def sample_prior(self) -> np.ndarray:
        assert self.u is not None
        return self.u

    def subset(self, which: np.ndarray) -> Block:
        """The same targets for the rows ``which`` only (whole-row windows)."""
        assert isinstance(self.label_rows, slice), "subsets are taken of whole rows"
        sub = Block.__new__(Block)
        sub.n = len(which)
        sub.counted = None if self.counted is None else self.counted[which]
        sub.t = None if self.t is None else self.t[which]
        sub.labels = None if self.labels is None else self.labels[which]
        sub.label_rows = slice(None)
        sub.label_cols = sub.labels
        sub.K = self.K
        sub.flat_labels = None if sub.labels is None else np.arange(sub.n) * self.K + sub.labels
        sub.u = None if self.u is None else self.u[which]
        return sub

    def label_positions(self) -> tuple[Any, np.ndarray]:
        """``(rows, local columns)`` of the labels that fall in this block's window."""
        if self.label_cols is None:
            raise AssertionError("probability targets have no label positions")
        rows = np.arange(self.n) if isinstance(self.label_rows, slice) else self.label_rows
        return rows, self.label_cols


class Terms:
    """Per-call constants of the closed form for the classes ``[k0, k1)``."""

    def __init__(self, p: Problem, k0: int = 0, k1: int | None = None) -> None:
        K, eps = p.num_classes, p.epsilon
        k1 = K if k1 is None else k1
        self.K, self.k0, self.k1 = K, k0, k1
        self.eps, self.a = eps, 1.0 - eps
        self.w_all = p.weight
        self.w = None if p.weight is None else p.weight[k0:k1]
        self.probabilistic = p.probabilistic
        self.prior = p.prior
        self.dtype = p.compute_dtype
        # Uniform, "others" and class priors make the prior term a dot product of x
        # with one vector; without weights the vector is constant and a row sum
        # replaces the dot product.
        self.p_const: float | None = None
        self.p_vec: np.ndarray | None = None
        self.p_vec_all: np.ndarray | None = None
        kind = p.prior.kind
        if kind in ("uniform", "others"):
            share = 1.0 / (K if kind == "uniform" else K - 1)
            if p.weight is None:
                self.p_const = share
            else:
                self.p_vec_all = p.weight * share
        elif kind == "class":
            assert p.prior.values is not None
            self.p_vec_all = p.prior.values if p.weight is None else p.prior.values * p.weight
        if self.p_vec_all is not None:
            self.p_vec = self.p_vec_all[k0:k1]
        self.others = kind == "others"
        # The common case (PyTorch's default and the benchmarks): integer labels over
        # whole rows with the same prior share on every class. Its terms need one row
        # sum and one gather, and its gradient one scalar subtract and one scatter.
        self.hot: Hot | None = None
        if not p.probabilistic and self.p_const is not None and k0 == 0 and k1 == K:
            self.hot = hot_constants(K, eps, self.others)
        self.fast_range = fast_exp_bounds(K)
        # sum over the window of w_k u_k, before "others" removes the label's share.
        self.prior_mass = (
            float(self.p_vec.sum())
            if self.p_vec is not None
            else (self.p_const or 0.0) * (k1 - k0)
        )

    # -- helpers ---------------------------------------------------------------
    def _label_weight(self, blk: Block) -> Any:
        """``w_y`` of the rows whose label is in the window (1.0 without weights)."""
        if self.w_all is None:
            return 1.0
        return self.w_all[blk.global_labels[blk.label_rows]]

    def _prior_share_at_label(self, blk: Block) -> Any:
        """``w_y u_y`` of the uniform prior that ``"others"`` takes back from the label."""
        if self.p_vec_all is None:
            assert self.p_const is not None
            return self.p_const
        return self.p_vec_all[blk.global_labels[blk.label_rows]]

    def _at_labels(self, values: Any, blk: Block) -> np.ndarray:
        """Scatter per-label ``values`` into a zero row vector (window-aware)."""
        out = np.zeros(blk.n, dtype=_F64)
        out[blk.label_rows] = values
        return out

    # -- forward ---------------------------------------------------------------
    def constant_mass(self) -> float | None:
        """``W`` when it is the same for every row (no weights, no per-row targets)."""
        if self.probabilistic or self.prior.kind == "sample" or self.w_all is not None:
            return None
        if self.k0 != 0 or self.k1 != self.K:
            return None
        if self.hot is not None:
            return self.hot.W
        # a * 1 + eps * (sum of u over the classes, minus the label's share for "others")
        mass = self.a + self.eps * self.prior_mass
        if self.others:
            assert self.p_const is not None
            mass -= self.eps * self.p_const
        return mass

    def mass(self, blk: Block) -> Any:
        """``W = sum_k w_k q_k`` over the window, per row (or a scalar when constant).

        Needs no logits, so the gradient-only path computes no dot product.
        """
        W: Any = 0.0
        w, a, eps = self.w, self.a, self.eps
        full = isinstance(blk.label_rows, slice)
        if a != 0.0:  # label part (absent when epsilon == 1)
            if not self.probabilistic:
                lw = a * self._label_weight(blk)
                W = W + (lw if full else self._at_labels(lw, blk))
            elif w is None:
                W = W + a * blk.targets.sum(axis=1, dtype=_F64)
            else:
                W = W + a * _dot64("ik,k->i", blk.targets, w)
        if eps != 0.0:  # prior part
            if self.prior.kind == "sample":
                u = blk.sample_prior
                W = W + eps * (u.sum(axis=1, dtype=_F64) if w is None else _dot64("ik,k->i", u, w))
            else:
                W = W + eps * self.prior_mass
                if self.others:
                    share = eps * self._prior_share_at_label(blk)
                    W = W - (share if full else self._at_labels(share, blk))
        return W

    def dot(self, x: np.ndarray, blk: Block) -> np.ndarray:
        """``T = sum_k w_k q_k x_k`` over the window, per row, in float64.

        ``x`` has shape (rows, window). May leave NaN in rows with a ``-inf`` entry;
        :meth:`exact_dot` repairs them.
        """
        if self.hot is not None:
            assert blk.flat_labels is not None
            return hot_dot(x, blk.flat_labels, self.hot)
        T = np.zeros(x.shape[0], dtype=_F64)
        w, a, eps = self.w, self.a, self.eps
        x_y = None
        if not self.probabilistic:
            rows, cols = blk.label_positions()
            x_y = x[rows, cols].astype(_F64)
        if a != 0.0:  # label part
            if x_y is not None:
                T[blk.label_rows] += a * (self._label_weight(blk) * x_y)
            elif w is None:
                T += a * _dot64("ik,ik->i", blk.targets, x)
            else:
                T += a * _dot64("ik,k,ik->i", blk.targets, w, x)
        if eps != 0.0:  # prior part
            if self.prior.kind == "sample":
                u = blk.sample_prior
                T += eps * (
                    _dot64("ik,ik->i", u, x) if w is None else _dot64("ik,k,ik->i", u, w, x)
                )
            else:
                if self.p_vec is None:
                    assert self.p_const is not None
                    T += (eps * self.p_const) * row_sums(x)
                else:
                    T += eps * _dot64("ik,k->i", x, self.p_vec)
                if self.others:
                    # u is zero on the label: take the label's term back out.
                    assert x_y is not None
                    T[blk.label_rows] -= eps * self._prior_share_at_label(blk) * x_y
        return T

    def exact_dot(
        self, z: np.ndarray, ref: np.ndarray | None, blk: Block, which: np.ndarray
    ) -> np.ndarray:
        """``T`` about ``ref`` for the rows ``which``, term by term, in float64.

        ``z`` holds the rows' logits (window columns) and ``ref`` their per-row
        reference ``c`` (None for 0), so ``x = z - c``. Two cases reach here:

        * a ``-inf`` logit: ``q_k x_k`` must read as 0 where ``q_k = 0`` (``0 log 0``);
        * a spread beyond the largest float (``1e308 - (-1e308)``): ``z - c`` overflows
          although ``T`` may be representable. Such rows are summed at a quarter scale,
          ``T = 4 sum_k w_k q_k (z_k / 4 - c / 4)``: scaling by a power of two is exact,
          ``|z_k / 4 - c / 4| <= max / 2`` cannot overflow, and the final ``4 *`` gives
          ``-inf`` only where ``T`` itself is beyond the range (then the loss is too).
        """
        K = self.K
        prior = self.prior
        if prior.kind == "sample":
            # dense_targets wants the whole class axis; pad the window's rows.
            full_u = np.zeros((int(np.count_nonzero(which)), K))
            full_u[:, self.k0 : self.k1] = blk.sample_prior[which]
            prior = Prior("sample", full_u)
        if self.probabilistic:
            labels = np.zeros((int(np.count_nonzero(which)), K))
            labels[:, self.k0 : self.k1] = blk.targets[which]
        else:
            labels = blk.global_labels[which]
        wq = dense_targets(labels, self.probabilistic, prior, self.eps, K, _F64)
        wq = wq[:, self.k0 : self.k1]
        if self.w is not None:
            wq *= self.w
        zw = z[which].astype(_F64)
        c = np.zeros((zw.shape[0], 1)) if ref is None else ref[which].astype(_F64)[:, None]
        with np.errstate(invalid="ignore", over="ignore"):
            x = zw - c
            # Overflowed differences: a finite logit whose x is infinite.
            spread = np.isinf(x) & np.isfinite(zw)
            quarter = spread.any(axis=1)
            if quarter.any():
                x[quarter] = zw[quarter] / 4 - c[quarter] / 4
            terms = wq * x
            terms[wq == 0.0] = 0.0
            result: np.ndarray = terms.sum(axis=1)
            result[quarter] *= 4
        return result

    # -- backward --------------------------------------------------------------
    def subtract_targets(self, g: np.ndarray, blk: Block, c: float) -> None:
        """``g -= c * w * q`` over the window, in place, without forming ``q``."""
        w, a, eps = self.w, self.a, self.eps
        if self.hot is not None:
            assert blk.flat_labels is not None
            hot_subtract(g, blk.flat_labels, self.hot, c)
            return
        if self.probabilistic and a != 0.0:
            t = blk.targets
            g -= (c * a) * (t if w is None else t * w)
        at_y = None
        if not self.probabilistic:
            rows, cols = blk.label_positions()
            if eps != 0.0 and self.others:
                at_y = g[rows, cols]  # read before the share is subtracted (see above)
        if eps != 0.0:
            if self.prior.kind == "sample":
                u = blk.sample_prior
                g -= (c * eps) * (u if w is None else u * w)
            elif self.p_vec is None:
                assert self.p_const is not None
                g -= g.dtype.type(c * eps * self.p_const)
            else:
                g -= (c * eps * self.p_vec).astype(g.dtype)
        if not self.probabilistic:
            # One scatter per row: the label's (1 - eps) w_y; for "others" the label
            # column is written from its value before the prior share was subtracted.
            at_label = c * (a * self._label_weight(blk))
            if at_y is not None:
                g[rows, cols] = at_y - at_label
            else:
                g[rows, cols] -= at_label
