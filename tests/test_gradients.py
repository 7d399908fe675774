"""Gradients against 4th-order central finite differences, for every option combination."""

from __future__ import annotations

import numpy as np
import pytest
from cases import case_id, combinations, make_case

import smoothce

COMBOS = combinations(epsilons=(0.0, 0.3, 1.0))


def central_difference(f, x, h=1e-3):
    """d f / d x by the 4th-order stencil (-f(2h) + 8 f(h) - 8 f(-h) + f(-2h)) / 12h."""
    grad = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        vals = []
        for step in (2.0, 1.0, -1.0, -2.0):
            xs = x.copy()
            xs[idx] += step * h
            vals.append(f(xs))
        grad[idx] = (-vals[0] + 8.0 * vals[1] - 8.0 * vals[2] + vals[3]) / (12.0 * h)
    return grad


@pytest.mark.parametrize("combo", COMBOS, ids=[case_id(c) for c in COMBOS])
def test_gradient_matches_finite_differences(combo):
    logits, labels, eps, kw = make_case(combo, seed=7, N=3, K=4)

    def total(z):
        # "none" returns per-element losses; its gradient is that of their sum.
        return float(np.sum(smoothce.cross_entropy(z, labels, eps, **kw)))

    numeric = central_difference(total, logits)
    analytic = smoothce.cross_entropy_grad(logits, labels, eps, **kw)
    # Truncation error is O(h^4) ~ 1e-12 and rounding ~ 1e-16 / h ~ 1e-13.
    np.testing.assert_allclose(analytic, numeric, rtol=1e-8, atol=1e-9)


def test_log_softmax_gradient_is_consistent():
    """d/dz sum(log_softmax(z) * v) = v - p * sum(v): checks log_softmax by differences."""
    rng = np.random.default_rng(0)
    z, v = rng.normal(size=(2, 5)), rng.normal(size=(2, 5))
    numeric = central_difference(lambda x: float(np.sum(smoothce.log_softmax(x) * v)), z)
    p = np.exp(smoothce.log_softmax(z))
    np.testing.assert_allclose(numeric, v - p * v.sum(axis=1, keepdims=True), atol=1e-9)
