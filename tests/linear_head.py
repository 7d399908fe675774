"""Shared references for a linear head's results: the materialised logits, the rounding
of the products that form them, and rows whose ranking that rounding could change.

``metrics.evaluate_linear`` (and its Dask twins) promise the values of
``metrics.evaluate`` on the materialised logits within the rounding of computing those
logits; BLAS may round a row's products differently in a block of another size, so
two logits closer than twice that rounding may come out in either order. The bound is
the textbook one for a dot product of length d in floating point (Higham, *Accuracy
and Stability of Numerical Algorithms*, 3.1): ``|fl(h . w) - h . w| <= gamma_d |h| .
|w|`` with ``gamma_d = d u / (1 - d u)``, plus one rounding ``u |z|`` for the bias.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def compute_dtype(*arrays: Any) -> np.dtype[Any]:
    wide = any(a is not None and np.asarray(a).dtype == np.float64 for a in arrays)
    return np.dtype(np.float64 if wide else np.float32)


def materialise(h, W, b=None, softcap=None):
    """The logits ``hidden @ classifier.T + bias`` (soft-capped), rows flattened, in
    the compute dtype: what ``metrics.evaluate`` is given as the reference."""
    dt = compute_dtype(h, W, b)
    d = W.shape[1]
    z = np.asarray(h).reshape(-1, d).astype(dt) @ np.asarray(W).astype(dt).T
    if b is not None:
        z = z + np.asarray(b).astype(dt)
    if softcap is not None:
        z = softcap * np.tanh(z / softcap)
    return z


def rounding(h, W, b=None):
    """Per-logit bound on the rounding of the products (float64, rows flattened)."""
    dt = compute_dtype(h, W, b)
    u = float(np.finfo(dt).eps) / 2
    d = W.shape[1]
    gamma = d * u / (1 - d * u)
    mag = (
        np.abs(np.asarray(h, dtype=np.float64).reshape(-1, d))
        @ np.abs(np.asarray(W, dtype=np.float64)).T
    )
    if b is not None:
        mag = mag + np.abs(np.asarray(b, dtype=np.float64))
    return (gamma + u) * mag


def ambiguous_rows(z, err, labels, n_bins):
    """Rows whose label's rank, or whose confidence's bin, two roundings of the
    logits could change: another logit within ``2 (err_j + err_y)`` of the label's,
    or a confidence within its rounding of a bin edge (``|d log conf| <= 4 max err``:
    the maximum and the log-sum-exp each move by at most twice the largest error).

    Rows of ignored labels (negative) are never ambiguous."""
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(labels).reshape(-1)
    keep = (y >= 0) & (y < z.shape[1])
    ys = np.where(keep, y, 0)
    rows = np.arange(len(y))
    zy, ey = z[rows, ys], err[rows, ys]
    close = np.abs(z - zy[:, None]) <= 2 * (err + ey[:, None])
    close[rows, ys] = False
    rank = close.any(axis=1)
    m = z.max(axis=1)
    lse = m + np.log(np.exp(z - m[:, None]).sum(axis=1))
    conf = np.exp(m - lse)
    slack = conf * np.expm1(4 * err.max(axis=1))
    edges = np.arange(1, n_bins) / n_bins
    edge = (np.abs(conf[:, None] - edges) <= slack[:, None]).any(axis=1)
    return (rank | edge) & keep


def assert_metrics_close(got, want, rtol, *, exact_counts=True, ambiguous=0):
    """Every value within ``rtol`` relative (the contract's), counts equal; with
    ``ambiguous`` rows (``ambiguous_rows``), the accuracy counts within that many rows
    and the ECE within ``3 ambiguous / counted`` more (a row changing bins moves the
    sum of the bins' gaps by at most 2, its top-1 verdict by at most 1)."""
    n = max(want.counted, 1)
    for name in ("loss", "nll", "perplexity", "ece"):
        g, w = getattr(got, name), getattr(want, name)
        atol = rtol * 1e-3 + (3 * ambiguous / n if name == "ece" else 0.0)
        assert np.isclose(g, w, rtol=rtol, atol=atol, equal_nan=True), (name, g, w)
    assert (got.counted, got.elements) == (want.counted, want.elements)
    assert (got.epsilon, got.top_k, got.n_bins) == (want.epsilon, want.top_k, want.n_bins)
    if exact_counts:
        for name in ("accuracy", "top_k_accuracy"):
            g, w = getattr(got, name), getattr(want, name)
            assert abs(g - w) * n <= ambiguous or (np.isnan(g) and np.isnan(w)), (name, g, w)
        if not ambiguous:
            np.testing.assert_array_equal(got.bins.count, want.bins.count)
