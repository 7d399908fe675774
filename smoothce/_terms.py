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
    "Terms",
    "common_terms",
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


_PRIORS = {False: Prior("uniform"), True: Prior("others")}
_ALL = slice(None)


@functools.lru_cache(maxsize=64)
def common_terms(K: int, eps: float, others: bool) -> Terms:
    """:class:`Terms` of the common case (integer labels over whole rows, no weights,
    uniform or ``"others"`` prior), cached: training loops repeat the same (K, eps)."""
    return Terms(K, eps, _PRIORS[others])


def _logs(e_y: np.ndarray, x_y: np.ndarray | None, normal: bool) -> np.ndarray:
    """``log e_y`` in float64, ``x_y`` where ``e_y`` is not a normal number of its dtype
    (``normal``: the caller knows it is, everywhere; then ``x_y`` may be None)."""
    # Widened first: log's own float32 -> float64 cast (dtype=) costs twice as much.
    logs: np.ndarray = np.log(e_y.astype(_F64))
    if not normal and len(e_y):
        assert x_y is not None
        tiny = np.finfo(e_y.dtype).tiny
        if not e_y.min() >= tiny:  # NaN rows: their x_y is NaN too
            keep = ~(e_y >= tiny)
            logs[keep] = x_y[keep]
    return logs


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
        blk.label_rows = _ALL
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

    def _at_label(self, x: np.ndarray, blk: Block) -> np.ndarray:
        """``x`` at the labels that lie in the window (a flat gather for whole rows:
        a ``take`` costs a third of 2-D fancy indexing)."""
        if blk.flat_labels is not None:  # take() indexes C-contiguous x as flat
            result: np.ndarray = x.take(blk.flat_labels)
            return result
        rows, cols = blk.label_positions()
        result = x[rows, cols]
        return result

    def dot_rest(
        self, x: np.ndarray, blk: Block, want_x_y: bool = True
    ) -> tuple[Any, np.ndarray | None]:
        """``T = sum_k w_k q_k x_k`` over the window without its label term, per row
        (float64, or the scalar 0.0 when nothing is left), and ``x_y`` (float64) of
        the rows whose label lies in the window, when ``want_x_y`` or needed by
        ``"others"`` (else None; always None for probability targets).

        ``x`` is a C-contiguous (rows, window) block. The label term ``(1 - eps) w_y
        log e_y`` needs the exponentials: :meth:`add_label_term` adds it. May leave
        NaN in rows with a ``-inf`` entry; :meth:`exact_dot` repairs them.

        Integer labels with the uniform or ``"others"`` prior and no weights, PyTorch's
        default and the benchmarks' case, need one row sum and (for ``"others"``) one
        gather.
        """
        w, a, eps = self.w, self.a, self.eps
        x_y = None
        if not self.probabilistic and (want_x_y or (self.others and eps != 0.0)):
            # Gathered into float64 before they meet a Python float: NumPy keeps
            # `float * float16_array` in float16 (11 bits).
            x_y = self._at_label(x, blk).astype(_F64)
        T: Any = 0.0
        if self.probabilistic and a != 0.0:  # the targets' part
            t = blk.targets
            T = a * (_dot64("ik,ik->i", t, x) if w is None else _dot64("ik,k,ik->i", t, w, x))
        if eps == 0.0:
            return T, x_y
        if self.prior.kind == "sample":
            u = blk.sample_prior
            term = eps * (_dot64("ik,ik->i", u, x) if w is None else _dot64("ik,k,ik->i", u, w, x))
        elif self.p_vec is None:
            assert self.p_const is not None
            term = row_sums(x)
            term *= eps * self.p_const
        else:
            term = eps * _dot64("ik,k->i", x, self.p_vec)
        if self.others:
            # u is zero on the label: take the label's term back out.
            assert x_y is not None
            term[blk.label_rows] -= eps * self._prior_share_at_label(blk) * x_y
        return (term if isinstance(T, float) else T + term), x_y

    def label_logs(
        self, e: np.ndarray, blk: Block, x_y: np.ndarray | None, normal: bool
    ) -> np.ndarray:
        """``log e_y`` (float64) of the rows whose label lies in the window, from the
        block's exponentials ``e = exp(x)``; ``x_y`` (from :meth:`dot_rest`) where
        ``e_y`` is not normal (``normal``: the caller knows it is, everywhere)."""
        return _logs(self._at_label(e, blk), x_y, normal)

    def add_label_term(self, T: Any, logs: np.ndarray | None, blk: Block) -> np.ndarray:
        """``T + (1 - eps) w_y log e_y`` for the rows whose label lies in the window, as
        a new array (``logs`` from :meth:`label_logs`, left as it is for the metrics'
        observer; None for probability targets)."""
        if logs is None or self.a == 0.0:
            result: np.ndarray = np.broadcast_to(T, (blk.n,)) if np.ndim(T) == 0 else T
            return result
        if self.w_all is None:
            term = logs * self.a if self.a != 1.0 else logs.copy()
        else:
            term = self.a * (self._label_weight(blk) * logs)
        if isinstance(blk.label_rows, slice):  # every row has its label here
            if not isinstance(T, float):
                term += T
            return term
        full = np.zeros(blk.n, dtype=_F64) if isinstance(T, float) else T
        full[blk.label_rows] += term
        return full

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
        """``g -= c * w * q`` over the window, in place, without forming ``q``.

        For integer labels: one subtraction of the prior's share over the block and
        one scatter at the labels (a flat one for whole rows).
        """
        w, a, eps = self.w, self.a, self.eps
        if self.probabilistic and a != 0.0:
            t = blk.targets
            g -= (c * a) * (t if w is None else t * w)
        at_y = None
        if not self.probabilistic and eps != 0.0 and self.others:
            # "others" gives the label no share of epsilon. Its entries are read before
            # the share is subtracted from every class and then written directly:
            # subtracting the share and adding it back would cancel catastrophically
            # (p_y - 1 + 1 at eps = 1 keeps only float32's absolute accuracy).
            at_y = self._at_label(g, blk)
        if eps != 0.0:
            if self.prior.kind == "sample":
                u = blk.sample_prior
                g -= (c * eps) * (u if w is None else u * w)
            elif self.p_vec is None:
                assert self.p_const is not None
                # A Python float meets g as g's dtype, rounded once (NumPy 2's weak
                # scalars and NumPy 1's value-based casting agree here).
                g -= c * (eps * self.p_const)
            else:
                g -= (c * eps * self.p_vec).astype(g.dtype)
        if self.probabilistic:
            return
        # One scatter per row: the label's (1 - eps) w_y.
        at_label = c * (a * self._label_weight(blk))
        if blk.flat_labels is not None:
            flat = g.reshape(-1)  # a view: whole rows are C-contiguous blocks
            if at_y is not None:
                flat[blk.flat_labels] = at_y - at_label
            else:
                flat[blk.flat_labels] -= at_label
            return
        rows, cols = blk.label_positions()
        if at_y is not None:
            g[rows, cols] = at_y - at_label
        else:
            g[rows, cols] -= at_label
