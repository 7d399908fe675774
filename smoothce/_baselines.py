"""Reference points for timing: the code users write, and the exp floor.

These are *baselines*, not part of the loss API: the benchmarks and the command line
time smoothce against them on the same arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["exp_floor", "naive_loss", "naive_loss_and_grad"]


def _naive_terms(
    logits: np.ndarray, labels: np.ndarray, epsilon: float
) -> tuple[Any, np.ndarray, np.ndarray]:
    n, k = logits.shape
    q = np.full(logits.shape, epsilon / k, dtype=logits.dtype)
    q[np.arange(n), labels] += 1.0 - epsilon
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    loss = -(q * np.log(p)).sum(axis=1).mean()
    return loss, p, q


def naive_loss_and_grad(
    logits: np.ndarray, labels: np.ndarray, epsilon: float
) -> tuple[Any, np.ndarray]:
    """Label-smoothed cross-entropy the way it is usually written in NumPy.

    Builds the dense target ``q``, takes ``log(softmax(z))`` and forms ``p - q``:
    several full (N, K) temporaries, and ``-inf`` where a probability underflows.
    """
    loss, p, q = _naive_terms(logits, labels, epsilon)
    return loss, (p - q) / logits.shape[0]


def naive_loss(logits: np.ndarray, labels: np.ndarray, epsilon: float) -> Any:
    """The loss part of :func:`naive_loss_and_grad` alone (the same code, no ``p - q``)."""
    return _naive_terms(logits, labels, epsilon)[0]


def exp_floor(logits: np.ndarray, out: np.ndarray) -> np.ndarray:
    """One exponential of every logit into a preallocated buffer: the least any exact
    method must do (each element is exponentiated at least once)."""
    result: np.ndarray = np.exp(logits, out=out)
    return result
