"""The lean path: small calls of the common case with the least Python and NumPy work.

Training loops call the loss on small batches (32-1024 rows), where a call's fixed
cost, not its arithmetic, decides the speed. The common case there is a 2-D,
C-contiguous float32/float64 array with the classes last, integer labels, any
epsilon, the uniform or ``"others"`` prior, optionally ``ignore_index``, no class
weights, fitting one block. :func:`lean_call` recognises it with a few type and
shape tests and evaluates it with the engine's own functions
(:func:`~smoothce._engine.hot_exp_and_dot`, :func:`~smoothce._engine.row_losses`,
:func:`~smoothce._engine.scale_exponentials`, :func:`~smoothce._terms.hot_subtract`),
called in the order :meth:`smoothce._engine._Call.rows` calls them, so results are
bitwise those of the general path.

Validation is not skipped, it is *deferred*: every argument the lean path does not
recognise as valid at a glance (a list, a negative label, a float epsilon outside
[0, 1], an unknown reduction, a row outside the fast range, a ``-inf`` logit...)
sends the whole call to the general path, whose validation raises the documented
error or whose engine handles the edge. Nothing is written to ``out`` that the
general path would not overwrite.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._engine import hot_exp_and_dot, row_losses, scale_exponentials
from ._stable import BLOCK_ELEMENTS
from ._terms import _row_offsets, hot_constants, hot_subtract
from ._validation import labels_in_range

__all__ = ["lean_call"]

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_REDUCTIONS = ("mean", "sum", "none")


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
    if labels.dtype.kind not in "iu" or weight is not None or num_classes is not None:
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
    # -- labels: one reduction, the rule check_class_indices applies ---------------
    counted = None
    y = labels
    if ignore_index is not None:
        ignored = labels == ignore_index
        if ignored.any():
            counted = ~ignored
            y = np.where(counted, labels, 0)
    if not labels_in_range(y, K):
        return None
    flat = _row_offsets(N, K) + y
    # -- evaluate: the engine's functions, in the order _Call.rows calls them ---------
    hot = hot_constants(K, eps, others)
    if want_grad:
        ws = out if out is not None else np.empty((N, K), dtype=dtype)
    else:
        ws = np.empty((N, K), dtype=dtype)
    # One error-state context for the whole evaluation (each costs a few
    # microseconds): rows that overflow or meet inf - inf are refused above, and
    # results beyond the dtype's range (a float32 loss above 3.4e38) are inf quietly.
    with np.errstate(over="ignore", invalid="ignore"):
        found = hot_exp_and_dot(logits, ws, flat, hot, want_loss, dtype == _F32)
        if found is None:
            return None
        S, T = found
        den = 1.0
        if reduction == "mean":  # mean_denominator without weights
            den = float(N if counted is None else np.count_nonzero(counted))
        c = 1.0 / den if den > 0.0 else 0.0
        loss: Any = None
        if T is not None:
            rows = row_losses(S, T, hot.W, counted)
            if reduction == "none":
                loss = rows.astype(dtype)
            else:
                total = float(rows.sum(dtype=_F64))
                if reduction == "mean":
                    total = total / den if den > 0.0 else 0.0
                loss = dtype.type(total)
        if not want_grad:
            return loss, None
        scale_exponentials(ws, c, hot.W, S)
        hot_subtract(ws, flat, hot, c)
    if counted is not None:
        ws[~counted] = 0
    return loss, ws
