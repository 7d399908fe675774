"""The lean path: small calls of the common case with the least Python work.

Training loops call the loss on small batches (32-1024 rows), where a call's fixed
cost, not its arithmetic, decides the speed. The common case there is a 2-D,
C-contiguous float32/float64 array with the classes last, integer labels, any
epsilon, the uniform or ``"others"`` prior, optionally ``ignore_index`` and class
weights, fitting one block. :func:`lean_call` recognises it with a few type and shape
tests, sets up the block's :class:`~smoothce._terms.Terms` and
:class:`~smoothce._terms.Block` directly (no :class:`~smoothce._validation.Problem`),
and runs :func:`smoothce._kernel.run_block` on it: the very function the engine runs
on the same block, so results are bitwise those of the general path, for every value
of the logits (no value sends a call elsewhere).

Validation is not skipped, it is *deferred*: every argument the lean path does not
recognise as valid at a glance (a list, a negative label or weight, a float epsilon
outside [0, 1], an unknown reduction, weights needing rescaling...) sends the whole
call to the general path, whose validation raises the documented error. Nothing is
written to ``out`` that the general path would not overwrite.

``benchmarks/small_calls.py`` measures the time it saves.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _engine
from ._compat import Quiet
from ._kernel import Plan, run_block
from ._terms import Block, Terms, common_terms, label_denominator
from ._validation import UNSCALED_WEIGHTS, Prior, labels_in_range

__all__ = ["lean_call"]

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_INTP = np.dtype(np.intp)
_REDUCTIONS = ("mean", "sum", "none")
# Weights the general path converts to float64 and uses as given (check_weight's
# `weight_scale == 1` range); anything else is validated and rescaled there.
_WEIGHT_DTYPES = (np.dtype(np.float16), _F32, _F64)
_W_LO, _W_HI = UNSCALED_WEIGHTS
_PRIORS = {False: Prior("uniform"), True: Prior("others")}
# ufunc reductions called directly: the ndarray methods add a Python frame each.
_min, _max, _add = np.minimum.reduce, np.maximum.reduce, np.add.reduce


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


_PLANS: dict[tuple[Any, ...], Plan] = {}


def _plan(terms: Terms, want_loss: bool, want_grad: bool, c: float, dtype: Any) -> Plan:
    """The call's :class:`~smoothce._kernel.Plan`, cached: a training loop repeats the
    same one (the terms of weighted calls are new each time, so theirs is not kept)."""
    key = (id(terms), want_loss, want_grad, c, dtype)
    plan = _PLANS.get(key)
    if plan is None or plan.terms is not terms:
        plan = Plan(terms, want_loss, want_grad, c, dtype, dtype)
        if terms.w_all is None:  # common_terms are cached and live on: ids stay valid
            if len(_PLANS) >= 64:
                _PLANS.clear()
            _PLANS[key] = plan
    return plan


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
    if dtype.char not in "fd" or not dtype.isnative:  # a char test: dtype == costs more
        return None
    N, K = logits.shape
    if N == 0 or K == 0 or N * K > _engine.BLOCK_ELEMENTS or labels.shape[0] != N:
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
    if y.dtype is not _INTP:  # uint64 + the int64 row offsets would give float64
        y = y.astype(np.intp)
    # -- evaluate: the engine's block, set up directly ---------------------------------
    ws = out if want_grad and out is not None else np.empty((N, K), dtype=dtype)
    terms = common_terms(K, eps, others) if w is None else Terms(K, eps, _PRIORS[others], w)
    den = 1.0
    if reduction == "mean":
        den = label_denominator(N, y, counted, w)
    # The gradient's factor: weights needing no rescaling leave the units as they are.
    plan = _plan(terms, want_loss, want_grad, 1.0 / den if den > 0.0 else 0.0, dtype)
    with Quiet():
        losses, _ = run_block(plan, logits, ws, Block.whole_rows(y, counted, K))
        loss: Any = None
        if losses is not None:
            if reduction == "none":
                loss = losses.astype(dtype)
            else:
                # The engine's float64 partial sum of its one block, then its reduction.
                total = float(_add(losses))
                if reduction == "mean":
                    total = total / den if den > 0.0 else 0.0
                loss = dtype.type(total)  # beyond float32's range: inf, quietly
    return loss, (ws if want_grad else None)
