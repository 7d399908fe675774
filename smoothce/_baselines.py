"""Reference points for timing: the code users write, and NumPy's exp over the logits.

These are *baselines*, not part of the loss API: the benchmarks and the command line
time smoothce against them on the same arrays (drawn by :mod:`smoothce._bench_logits`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["exp_floor", "naive_eval", "naive_loss", "naive_loss_and_grad"]


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
    """One ``np.exp`` of every logit into a preallocated buffer: NumPy's exp over the
    logits, the yardstick the benchmarks report times against ("x exp").

    Not a lower bound: every exact method exponentiates each element, but with an exp
    of its own, which may be faster than NumPy's (PyTorch's forward runs under this at
    some shapes). The name is kept for the benchmarks' history.
    """
    result: np.ndarray = np.exp(logits, out=out)
    return result


def naive_eval(
    logits: np.ndarray,
    labels: np.ndarray,
    epsilon: float,
    n_bins: int = 15,
    chunk_elements: int = 1 << 22,
) -> dict[str, float]:
    """The metrics of ``python -m smoothce eval`` the way a NumPy user writes the loop.

    Rows are read in chunks of about ``chunk_elements`` logits (so a memory map is
    never loaded whole) and converted to float32; each chunk takes one shifted
    log-softmax (max, subtract, exp, sum, log), then the label's log-probability,
    the uniform term, the argmax and the confidence ``exp(-lse)`` (the top class's
    shifted logit is 0). Sums are float64. (N, K) logits, integer labels, uniform
    prior, no ``ignore_index``.
    """
    n, k = logits.shape
    step = max(1, chunk_elements // k)
    loss = nll = correct = 0.0
    count = np.zeros(n_bins)
    conf_sum = np.zeros(n_bins)
    right = np.zeros(n_bins)
    for i in range(0, n, step):
        z = np.asarray(logits[i : i + step], dtype=np.float32)
        y = labels[i : i + step]
        rows = np.arange(len(y))
        s = z - z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(s).sum(axis=1))
        nll_rows = lse - s[rows, y]
        smoothed = (1.0 - epsilon) * nll_rows + epsilon * (lse - s.mean(axis=1))
        loss += smoothed.sum(dtype=np.float64)
        nll += nll_rows.sum(dtype=np.float64)
        hit = z.argmax(axis=1) == y
        correct += np.count_nonzero(hit)
        conf = np.exp(-lse).astype(np.float64)
        b = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
        count += np.bincount(b, minlength=n_bins)
        conf_sum += np.bincount(b, weights=conf, minlength=n_bins)
        right += np.bincount(b, weights=hit, minlength=n_bins)
    return {
        "loss": loss / n,
        "nll": nll / n,
        "accuracy": correct / n,
        "ece": float(np.abs(right - conf_sum).sum() / n),
    }
