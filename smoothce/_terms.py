r"""The target terms of the closed form, over a window of classes.

With class weights ``w`` (1 without ``weight``) and ``q = (1 - eps) t + eps u``, the
loss of one row in coordinates ``x = z - c`` (any per-row reference ``c``) is

.. math::

    \ell = W \log \sum_k e^{x_k} - T,
    \qquad W = \sum_k w_k q_k, \quad T = \sum_k w_k q_k x_k ,

and its gradient is ``W p - w q``. This module computes ``W``, ``T`` and the
``- w q`` part of the gradient without building ``q`` for integer labels:

* label part, one-hot ``t``: ``W_t = w_y``, ``T_t = w_y log e_y`` (one gather per row),
  where ``e_y`` is the label's exponential as the engine computed it (see below);
* uniform prior: ``W_u = mean(w)``, ``T_u = sum_k w_k x_k / K`` (a row sum);
* ``"others"``: the uniform sums over ``K - 1`` classes minus the label's share;
* class prior ``u``: ``T_u = x @ (w u)``; per-sample prior: a row-wise dot product.

Every quantity is restricted to a *window* of classes ``[k0, k1)``: the whole row for
ordinary blocks, one chunk of it when a row is too long for one block and is
streamed (:mod:`smoothce._engine` then adds the windows up).

The label term reads ``log e_y`` rather than ``x_y``: the two differ by the rounding
of one exponential (at most about one unit in the last place of ``e_y``), but ``S``
contains that same rounded ``e_y``, so in ``W log S - T`` it cancels. A row whose
softmax is one-hot (``S == e_y``) then costs exactly 0, and a confident row's small
loss ``log(1 + sum_{k != y} e_k / e_y)`` keeps its relative accuracy instead of
carrying an absolute error of one rounding of ``e_y``. Where ``e_y`` is not a normal
number (a label logit more than ~87 below the row's reference in float32) its log is
not accurate and ``x_y`` is used.

Masked classes: a ``-inf`` logit gives ``x_k = -inf``; where ``q_k = 0`` the term
``q_k x_k`` must count as 0 (``0 log 0 = 0``), but floating point says NaN. The fast
formulas leave NaN exactly in such rows; :meth:`Terms.exact_dot` recomputes them term
by term from the dense target and gives ``+inf`` loss only where ``q_k > 0``.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ._stable import Key, row_sums
from ._targets import dense_targets
from ._validation import Prior, Problem

__all__ = [
    "Block",
    "Hot",
    "Terms",
    "common_terms",
    "hot_constants",
    "hot_dot_rest",
    "hot_subtract",
    "label_denominator",
    "label_logs",
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

    Its terms need one row sum and two gathers (:func:`hot_dot_rest`,
    :func:`label_logs`), its gradient one
    scalar subtract and one scatter (:func:`hot_subtract`), and its mass ``W`` is the
    same on every row. Both the general engine and the lean path for small calls
    (:mod:`smoothce._lean`) take these constants from here.
    """

    __slots__ = ("K", "W", "a", "eps", "others", "p_const", "share")

    def __init__(self, K: int, eps: float, others: bool) -> None:
        self.K, self.eps, self.a, self.others = K, eps, 1.0 - eps, others
        self.p_const = 1.0 / (K - 1 if others else K)
        self.share = eps * self.p_const  # epsilon * u_k on every class
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


_PRIORS = {False: Prior("uniform"), True: Prior("others")}


@functools.lru_cache(maxsize=64)
def common_terms(K: int, eps: float, others: bool) -> Terms:
    """:class:`Terms` of the common case (integer labels over whole rows, no weights,
    uniform or ``"others"`` prior), cached: training loops repeat the same (K, eps)."""
    return Terms(K, eps, _PRIORS[others])


def hot_dot_rest(
    x: np.ndarray, flat_labels: np.ndarray, hot: Hot, want_x_y: bool
) -> tuple[Any, np.ndarray | None]:
    """``(T without its label term, x_y)`` per row, in float64, for :class:`Hot`.

    ``x`` is a C-contiguous (rows, K) block; ``flat_labels`` the labels' positions in it
    when flattened. The rest of ``T`` is ``eps u0 sum_k x_k`` (minus the label's share
    ``eps u0 x_y`` for ``"others"``); it is the scalar 0.0 without smoothing. ``x_y``
    is gathered when asked for or needed ("others"), else None.
    """
    x_y = None
    if want_x_y or (hot.others and hot.share != 0.0):
        # Gathered into float64 before they meet a Python float: NumPy keeps
        # `float * float16_array` in float16 (11 bits).
        x_y = x.reshape(-1).take(flat_labels).astype(_F64)
    if hot.share == 0.0:
        return 0.0, x_y
    rest = row_sums(x)
    rest *= hot.share
    if hot.others:
        assert x_y is not None
        rest -= hot.share * x_y
    return rest, x_y


def label_logs(
    e: np.ndarray, flat_labels: np.ndarray, x_y: np.ndarray | None, normal: bool
) -> np.ndarray:
    """``log e_y`` per row (float64) from the exponentials ``e`` (C-contiguous block),
    or ``x_y`` where ``e_y`` is not a normal number of its dtype.

    ``normal`` says that the caller knows every ``e_y`` to be normal (the engine's
    unshifted blocks, whose logits lie in a bounded range), which skips the test.
    """
    return _logs(e.reshape(-1).take(flat_labels), x_y, normal)


def _logs(e_y: np.ndarray, x_y: np.ndarray | None, normal: bool) -> np.ndarray:
    """``log e_y`` in float64, ``x_y`` where ``e_y`` is not normal (see :func:`label_logs`).

    ``x_y`` may be None only when ``normal``."""
    # Widened first: log's own float32 -> float64 cast (dtype=) costs twice as much.
    logs: np.ndarray = np.log(e_y.astype(_F64))
    if not normal and len(e_y):
        assert x_y is not None
        tiny = np.finfo(e_y.dtype).tiny
        if not e_y.min() >= tiny:  # NaN rows: their x_y is NaN too
            keep = ~(e_y >= tiny)
            logs[keep] = x_y[keep]
    return logs


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

    @classmethod
    def whole_rows(cls, labels: np.ndarray, counted: np.ndarray | None, K: int) -> Block:
        """The block of a 1-D array of safe integer ``labels`` over all ``K`` classes,
        built directly (no ``Problem``): the lean path's block."""
        blk = cls.__new__(cls)
        blk.K, blk.n, blk.counted, blk.t, blk.u = K, labels.shape[0], counted, None, None
        blk.labels = blk.label_cols = labels
        blk.label_rows = slice(None)
        blk.flat_labels = _row_offsets(blk.n, K) + labels
        return blk

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

    def label_positions(self) -> tuple[Any, np.ndarray]:
        """``(rows, local columns)`` of the labels that fall in this block's window."""
        if self.label_cols is None:
            raise AssertionError("probability targets have no label positions")
        rows = np.arange(self.n) if isinstance(self.label_rows, slice) else self.label_rows
        return rows, self.label_cols


class Terms:
    """Per-call constants of the closed form for the classes ``[k0, k1)``.

    Built from a :class:`~smoothce._validation.Problem` (:meth:`of`), or for the common
    case of integer labels with the uniform or ``"others"`` prior and no weights
    directly (:func:`common_terms`, which the lean path uses without a ``Problem``).
    """

    def __init__(
        self,
        K: int,
        eps: float,
        prior: Prior,
        weight: np.ndarray | None = None,
        probabilistic: bool = False,
        k0: int = 0,
        k1: int | None = None,
    ) -> None:
        k1 = K if k1 is None else k1
        self.K, self.k0, self.k1 = K, k0, k1
        self.eps, self.a = eps, 1.0 - eps
        self.w_all = weight
        self.w = None if weight is None else weight[k0:k1]
        self.probabilistic = probabilistic
        self.prior = prior
        # Uniform, "others" and class priors make the prior term a dot product of x
        # with one vector; without weights the vector is constant and a row sum
        # replaces the dot product.
        self.p_const: float | None = None
        self.p_vec: np.ndarray | None = None
        self.p_vec_all: np.ndarray | None = None
        kind = prior.kind
        if kind in ("uniform", "others"):
            share = 1.0 / (K if kind == "uniform" else K - 1)
            if weight is None:
                self.p_const = share
            else:
                self.p_vec_all = weight * share
        elif kind == "class":
            assert prior.values is not None
            self.p_vec_all = prior.values if weight is None else prior.values * weight
        if self.p_vec_all is not None:
            self.p_vec = self.p_vec_all[k0:k1]
        self.others = kind == "others"
        # The common case (PyTorch's default and the benchmarks): integer labels over
        # whole rows with the same prior share on every class. Its terms need one row
        # sum and one gather, and its gradient one scalar subtract and one scatter.
        self.hot: Hot | None = None
        if not probabilistic and self.p_const is not None and k0 == 0 and k1 == K:
            self.hot = hot_constants(K, eps, self.others)
        # sum over the window of w_k u_k, before "others" removes the label's share.
        self.prior_mass = (
            float(self.p_vec.sum())
            if self.p_vec is not None
            else (self.p_const or 0.0) * (k1 - k0)
        )

    @classmethod
    def of(cls, p: Problem, k0: int = 0, k1: int | None = None) -> Terms:
        """The terms of ``p`` over the classes ``[k0, k1)`` (default: all of them)."""
        return cls(p.num_classes, p.epsilon, p.prior, p.weight, p.probabilistic, k0, k1)

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

    def dot_rest(
        self, x: np.ndarray, blk: Block, want_x_y: bool = True
    ) -> tuple[Any, np.ndarray | None]:
        """``T = sum_k w_k q_k x_k`` over the window without its label term, per row
        (float64, or the scalar 0.0), and ``x_y`` of the rows whose label lies in the
        window (None for probability targets, and in the common case unless
        ``want_x_y``).

        ``x`` has shape (rows, window). The label term ``(1 - eps) w_y log e_y`` needs
        the exponentials: :meth:`add_label_term` adds it. May leave NaN in rows with a
        ``-inf`` entry; :meth:`exact_dot` repairs them.
        """
        if self.hot is not None:
            assert blk.flat_labels is not None
            return hot_dot_rest(x, blk.flat_labels, self.hot, want_x_y)
        T = np.zeros(x.shape[0], dtype=_F64)
        w, a, eps = self.w, self.a, self.eps
        x_y = None
        if not self.probabilistic:
            rows, cols = blk.label_positions()
            x_y = x[rows, cols].astype(_F64)
        elif a != 0.0:  # the targets' part
            if w is None:
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
        return T, x_y

    def label_logs(
        self, e: np.ndarray, blk: Block, x_y: np.ndarray | None, normal: bool
    ) -> np.ndarray:
        """``log e_y`` (float64) of the rows whose label lies in the window, from the
        block's exponentials ``e = exp(x)``; ``x_y`` (from :meth:`dot_rest`) where
        ``e_y`` is not normal (``normal``: the caller knows it is, everywhere)."""
        if self.hot is not None:
            assert blk.flat_labels is not None
            return label_logs(e, blk.flat_labels, x_y, normal)
        rows, cols = blk.label_positions()
        return _logs(e[rows, cols], x_y, normal)

    def add_label_term(self, T: Any, logs: np.ndarray | None, blk: Block) -> np.ndarray:
        """``T + (1 - eps) w_y log e_y`` for the rows whose label lies in the window
        (``logs`` from :meth:`label_logs`; None for probability targets)."""
        if logs is None or self.a == 0.0:
            result: np.ndarray = np.broadcast_to(T, (blk.n,)) if np.ndim(T) == 0 else T
            return result
        if self.hot is not None:
            scalar = isinstance(T, float)  # T is the scalar 0.0 without smoothing
            if self.a == 1.0:
                # A new array either way: `logs` goes to the observer unchanged.
                term: np.ndarray = logs.copy() if scalar else logs + T
                return term
            term = logs * self.a
            if not scalar:
                term += T
            return term
        T[blk.label_rows] += self.a * (self._label_weight(blk) * logs)
        result = T
        return result

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
