"""An independent dense reference: the textbook formula, in float64, building q.

It shares no code with smoothce: log-softmax is the max-shifted log-sum-exp written
out here, the one-hot target matrix is built densely, and ``0 * log 0`` is handled by
masking the terms whose weighted target mass is zero. Slow and memory-hungry on
purpose; used only on small inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def dense_q(
    labels: np.ndarray, K: int, epsilon: float, prior: Any, probabilistic: bool
) -> np.ndarray:
    """Targets with the class axis last, shape labels.shape (+ (K,) for indices)."""
    if probabilistic:
        t = labels.astype(np.float64)
    else:
        t = np.zeros((*labels.shape, K))
        np.put_along_axis(t, labels[..., None], 1.0, axis=-1)
    if prior is None or (isinstance(prior, str) and prior == "uniform"):
        u = np.full(K, 1.0 / K)
    elif isinstance(prior, str) and prior == "others":
        u = (1.0 - t) / (K - 1)
    else:
        u = np.asarray(prior, dtype=np.float64)
    return (1.0 - epsilon) * t + epsilon * u


def dense_problem(
    logits: Any,
    labels: Any,
    epsilon: float = 0.0,
    *,
    axis: int = -1,
    prior: Any = None,
    weight: Any = None,
    ignore_index: int | None = None,
) -> dict[str, Any]:
    """The problem in float64 with the class axis last: logits ``z``, weighted targets
    ``wq``, the ``counted`` mask, and the mean's ``den`` (PyTorch's denominator)."""
    z = np.moveaxis(np.asarray(logits, dtype=np.float64), axis, -1)
    K = z.shape[-1]
    y = np.asarray(labels)
    probabilistic = y.dtype.kind == "f"
    if probabilistic:
        y = np.moveaxis(y, axis, -1)
        counted = np.ones(z.shape[:-1], dtype=bool)
        safe = y
    else:
        counted = np.ones(y.shape, dtype=bool) if ignore_index is None else y != ignore_index
        safe = np.where(counted, y, 0)
    if prior is not None and not isinstance(prior, str):
        prior = np.asarray(prior, dtype=np.float64)
        if prior.shape != (K,):
            prior = np.moveaxis(np.broadcast_to(prior, np.shape(logits)), axis, -1)
    q = dense_q(safe, K, epsilon, prior, probabilistic)
    w = np.ones(K) if weight is None else np.asarray(weight, dtype=np.float64)
    den = float(counted.size) if probabilistic else float((w[safe] * counted).sum())
    return {"z": z, "wq": w * q, "counted": counted, "den": den}


def reference(
    logits: Any,
    labels: Any,
    epsilon: float = 0.0,
    *,
    axis: int = -1,
    reduction: str = "mean",
    prior: Any = None,
    weight: Any = None,
    ignore_index: int | None = None,
) -> tuple[Any, np.ndarray]:
    """(loss, gradient) in float64 by the dense formula; gradient in logits' layout."""
    d = dense_problem(
        logits, labels, epsilon, axis=axis, prior=prior, weight=weight, ignore_index=ignore_index
    )
    z, wq, counted, den = d["z"], d["wq"], d["counted"], d["den"]
    logp = _log_softmax(z)
    with np.errstate(invalid="ignore"):
        terms = np.where(wq == 0.0, 0.0, -wq * logp)
    per = np.where(counted, terms.sum(axis=-1), 0.0)
    with np.errstate(invalid="ignore"):
        p = np.exp(logp)
    grad = wq.sum(axis=-1, keepdims=True) * p - wq
    grad = np.where(counted[..., None], grad, 0.0)
    if reduction == "none":
        return per, np.moveaxis(grad, -1, axis)
    if reduction == "sum":
        return per.sum(), np.moveaxis(grad, -1, axis)
    if den == 0.0:
        return 0.0, np.zeros_like(np.moveaxis(grad, -1, axis))
    return per.sum() / den, np.moveaxis(grad / den, -1, axis)
