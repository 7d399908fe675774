"""The lean path: small calls of the common case with the least Python and NumPy work.

Training loops call the loss on small batches (32-1024 rows), where a call's fixed
cost, not its arithmetic, decides the speed. The common case there is a 2-D,
C-contiguous float32/float64 array with the classes last, integer labels, any
epsilon, the uniform or ``"others"`` prior, optionally ``ignore_index`` and class
weights, fitting one block. :func:`lean_call` recognises it with a few type and shape
tests and evaluates it with the engine's own functions, called in the order
:meth:`smoothce._engine._Call.rows` calls them for that block, so results are bitwise
those of the general path:

* without weights, the :class:`~smoothce._terms.Hot` constants and their functions
  (:func:`~smoothce._terms.hot_dot`, :func:`~smoothce._terms.hot_subtract`);
* with weights, the general :class:`~smoothce._terms.Terms` of a
  :class:`~smoothce._validation.Problem` built directly (no second validation);
* for both, :func:`~smoothce._stable.row_sums`, :func:`~smoothce._stable.shift_rows`,
  :func:`~smoothce._engine.row_losses`, :func:`~smoothce._engine.scale_exponentials`
  and the mean's denominator :func:`~smoothce._terms.label_denominator`.

Validation is not skipped, it is *deferred*: every argument the lean path does not
recognise as valid at a glance (a list, a negative label or weight, a float epsilon
outside [0, 1], an unknown reduction, weights needing rescaling, a row outside the
fast range, a ``-inf`` logit...) sends the whole call to the general path, whose
validation raises the documented error or whose engine handles the edge. Nothing is
written to ``out`` that the general path would not overwrite.

Where a small call's time goes (float32, (32, 10), forward and gradient, counted
with callgrind): about 175k instructions, of which 77% are the general path's own
operations (two BLAS row sums and their float64 conversions, the label gather and
the prior term of ``T``, the loss rows and their float64 total, the gradient's
scaling and scatter) and 23% the lean path's checks and set-up (the label range,
the overlap tests on ``out``, the flat label positions, the fast-range test on
``S``, the quiet error state, the recognition). ``benchmarks/small_calls.py``
measures the time.
"""

from __future__ import annotations

import math
from contextvars import ContextVar
from typing import Any, cast

import numpy as np

from ._engine import row_losses, scale_exponentials
from ._stable import BLOCK_ELEMENTS, fast_exp_bounds, row_sums, shift_rows
from ._terms import (
    Block,
    Terms,
    _row_offsets,
    hot_constants,
    hot_dot,
    hot_subtract,
    label_denominator,
)
from ._validation import UNSCALED_WEIGHTS, Prior, Problem, Reduction, labels_in_range

__all__ = ["lean_call"]

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_REDUCTIONS = ("mean", "sum", "none")
# Weights the general path converts to float64 and uses as given (check_weight's
# `weight_scale == 1` range); anything else is validated and rescaled there.
_WEIGHT_DTYPES = (np.dtype(np.float16), _F32, _F64)
_W_LO, _W_HI = UNSCALED_WEIGHTS
_PRIORS = {False: Prior("uniform"), True: Prior("others")}
# ufunc reductions called directly: the ndarray methods add a Python frame each.
_min, _max, _sum = np.minimum.reduce, np.maximum.reduce, np.add.reduce

# The error state. `np.errstate` builds a new state from the current one on every
# entry (a tenth of a small call); in NumPy 2 the state is a context variable, so the
# quiet version of each current state is built once and set directly. The cache is
# keyed by the state object itself (kept alive by the key, so never confused with a
# later one) and bounded; NumPy 1.x, which has no such variable, uses np.errstate.
_err_state: ContextVar[Any] | None
try:
    from numpy._core import _ufunc_config

    _err_state = getattr(_ufunc_config, "_extobj_contextvar", None)
    if not isinstance(_err_state, ContextVar):  # pragma: no cover - a later NumPy
        _err_state = None
except ImportError:  # pragma: no cover - NumPy 1.x
    _err_state = None
_QUIET: dict[Any, Any] = {}


def _quiet_state(current: Any) -> Any:
    """The state ``current`` with overflow and invalid operations ignored."""
    assert _err_state is not None
    with np.errstate(over="ignore", invalid="ignore"):
        quiet = _err_state.get()
    if len(_QUIET) < 16:
        _QUIET[current] = quiet
    return quiet


def _lean_weight(weight: Any, K: int) -> np.ndarray | None:
    """``weight`` as the general path's float64 copy, or None unless it is a plain
    (K,) float array of finite non-negative values needing no rescaling."""
    if type(weight) is not np.ndarray or weight.shape != (K,):
        return None
    if weight.dtype not in _WEIGHT_DTYPES:
        return None
    # A copy, as check_weight makes: `out` may share memory with the caller's weights.
    w = weight.astype(_F64)
    top = float(_max(w))
    # NaN fails every comparison; -0.0 passes, as in check_distribution_array.
    if not (_min(w) >= 0.0 and (top == 0.0 or _W_LO <= top <= _W_HI)):
        return None
    return w


def lean_call(
    logits: Any,
    labels: Any,
    epsilon: Any,
    axis: Any,
    reduction: Any,
    prior: Any,
    weight: Any,
    ignore_index: Any,
    num_classes: Any,
    workers: Any,
    out: Any,
    want_loss: bool,
    want_grad: bool,
) -> tuple[Any, np.ndarray | None] | None:
    """``(loss, grad)`` for the common case, or None to take the general path.

    Arguments are those of :func:`smoothce.cross_entropy_with_grad`; ``loss`` is None
    without ``want_loss``, ``grad`` None without ``want_grad``.
    """
    # -- recognise the case: identity and type tests, no NumPy calls ----------------
    if type(logits) is not np.ndarray or type(labels) is not np.ndarray:
        return None
    if logits.ndim != 2 or labels.ndim != 1 or not logits.flags.c_contiguous:
        return None
    dtype = logits.dtype
    if dtype != _F32 and dtype != _F64:  # also rejects non-native byte order
        return None
    N, K = logits.shape
    if N == 0 or K == 0 or N * K > BLOCK_ELEMENTS or labels.shape[0] != N:
        return None
    if labels.dtype.kind not in "iu" or num_classes is not None:
        return None
    if type(axis) is not int or (axis != -1 and axis != 1):
        return None
    if type(epsilon) is not float and type(epsilon) is not int:
        return None
    eps = float(epsilon)
    if not 0.0 <= eps <= 1.0:
        return None
    if type(reduction) is not str or reduction not in _REDUCTIONS:
        return None
    if prior is None:
        others = False
    elif type(prior) is str and (prior == "uniform" or prior == "others"):
        others = prior == "others"
        if others and K < 2:
            return None
    else:
        return None
    if workers is not None and (type(workers) is not int or workers < 1):
        return None
    if ignore_index is not None and type(ignore_index) is not int:
        return None
    if out is not None and want_grad:
        if type(out) is not np.ndarray or out.shape != logits.shape or out.dtype != dtype:
            return None
        if not (out.flags.c_contiguous and out.flags.writeable):
            return None
        if np.may_share_memory(out, logits) or np.may_share_memory(out, labels):
            return None  # in place, or an overlap the general path refuses
    w = None
    if weight is not None:
        w = _lean_weight(weight, K)
        if w is None:
            return None
    # -- labels: one reduction, the rule check_class_indices applies ---------------
    counted = None
    y = labels
    if ignore_index is not None and (0 <= ignore_index < K or not labels_in_range(y, K)):
        # Only a label outside [0, K) can equal an ignore_index outside it, so the
        # mask is built only when some label is (or ignore_index is a class).
        ignored = labels == ignore_index
        if ignored.any():
            counted = ~ignored
            y = np.where(counted, labels, 0)
        if not labels_in_range(y, K):
            return None
    elif ignore_index is None and not labels_in_range(y, K):
        return None
    flat = _row_offsets(N, K) + y
    # -- evaluate: the engine's functions, in the order _Call.rows calls them ---------
    ws = out if want_grad and out is not None else np.empty((N, K), dtype=dtype)
    hot = hot_constants(K, eps, others)
    W: Any = hot.W
    # With weights: the general path's Terms and Block for this one block.
    tb: tuple[Terms, Block] | None = None
    if w is not None:
        p = Problem(
            z=logits,
            logits_shape=(N, K),
            axis=1,
            num_classes=K,
            compute_dtype=dtype,
            grad_dtype=dtype,
            epsilon=eps,
            labels=y.astype(np.intp, copy=False),
            probabilistic=False,
            counted=counted,
            prior=_PRIORS[others],
            weight=w,
            reduction=cast(Reduction, reduction),
        )
        tb = Terms(p), Block(p, (slice(0, N),), 0, K)
    den = 1.0
    if reduction == "mean":
        den = label_denominator(N, y, counted, w)
    c = 1.0 / den if den > 0.0 else 0.0
    loss: Any = None
    # One quiet error state for the whole evaluation: rows that overflow or meet
    # inf - inf are refused below, and results beyond the dtype's range (a float32
    # loss above 3.4e38) are inf quietly, as in the general path.
    if _err_state is not None:
        current = _err_state.get()
        quiet = _QUIET.get(current)
        token = _err_state.set(_quiet_state(current) if quiet is None else quiet)
    else:  # pragma: no cover - NumPy 1.x
        errstate = np.errstate(over="ignore", invalid="ignore")
        errstate.__enter__()
    try:
        # _exp_and_dot of the engine, without its repairs (the general path's job).
        if dtype == _F32:  # its fast path: no shift, while S stays in fast_exp_bounds
            np.exp(logits, out=ws, dtype=ws.dtype)
            S = row_sums(ws)
            T = None
            if want_loss:
                T = hot_dot(logits, flat, hot) if tb is None else tb[0].dot(logits, tb[1])
            lo, hi = fast_exp_bounds(K)
            # argmin/argmax find NaN too (as the smallest and the largest), and cost
            # a third of a reduction on short rows.
            if not (lo <= S[S.argmin()] and S[S.argmax()] <= hi):
                return None
        else:
            shift_rows(logits, ws)
            T = None
            if want_loss:
                T = hot_dot(ws, flat, hot) if tb is None else tb[0].dot(ws, tb[1])
            np.exp(ws, out=ws)
            S = row_sums(ws)
        if tb is not None:
            W = tb[0].mass(tb[1])
        if T is not None:
            rows = row_losses(S, T, W, counted)
            # The general path's float64 partial sum, also the check its repairs
            # need: a counted row whose T is not finite (a -inf or NaN logit; T is
            # never +inf here, the logits being bounded above in the fast range and
            # shifted to <= 0 otherwise) has an inf or NaN loss, so the total is not
            # finite and the engine repairs the row. Ignored rows' losses are zeroed,
            # and their repair changes nothing the caller sees. A total that merely
            # overflows goes to the general path too, which costs only time.
            total = float(_sum(rows, dtype=_F64))
            if not math.isfinite(total):
                return None
            if reduction == "none":
                loss = rows.astype(dtype)
            else:
                if reduction == "mean":
                    total = total / den if den > 0.0 else 0.0
                loss = dtype.type(total)
        if not want_grad:
            return loss, None
        scale_exponentials(ws, c, W, S)
        if tb is None:
            hot_subtract(ws, flat, hot, c)
        else:
            tb[0].subtract_targets(ws, tb[1], c)
    finally:
        if _err_state is not None:
            _err_state.reset(token)
        else:  # pragma: no cover - NumPy 1.x
            errstate.__exit__(None, None, None)
    if counted is not None:
        ws[~counted] = 0
    return loss, ws
