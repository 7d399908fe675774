"""smoothce against an independent float64 reference and mpmath constants."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
from cases import case_id, combinations, make_case
from reference import reference

import smoothce

COMBOS = combinations()


@pytest.mark.parametrize("combo", COMBOS, ids=[case_id(c) for c in COMBOS])
def test_matches_dense_reference(combo):
    logits, labels, eps, kw = make_case(combo)
    loss, grad = smoothce.cross_entropy_with_grad(logits, labels, eps, **kw)
    ref_loss, ref_grad = reference(logits, labels, eps, **kw)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("combo", COMBOS[::5], ids=[case_id(c) for c in COMBOS[::5]])
def test_fused_call_equals_separate_calls_bitwise(combo):
    logits, labels, eps, kw = make_case(combo)
    loss, grad = smoothce.cross_entropy_with_grad(logits, labels, eps, **kw)
    np.testing.assert_array_equal(loss, smoothce.cross_entropy(logits, labels, eps, **kw))
    np.testing.assert_array_equal(grad, smoothce.cross_entropy_grad(logits, labels, eps, **kw))


def _mp_loss(z, y, eps, prior="uniform", weight=None):
    """One element's loss, exactly (mpmath, 50 digits)."""
    with mpmath.workdps(50):
        zs = [mpmath.mpf(float(v)) for v in z]
        K = len(zs)
        lse = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in zs))
        w = [mpmath.mpf(1)] * K if weight is None else [mpmath.mpf(float(v)) for v in weight]
        total = mpmath.mpf(0)
        for k in range(K):
            t = mpmath.mpf(1) if k == y else mpmath.mpf(0)
            if prior == "uniform":
                u = mpmath.mpf(1) / K
            elif prior == "others":
                u = mpmath.mpf(0) if k == y else mpmath.mpf(1) / (K - 1)
            else:
                u = mpmath.mpf(float(prior[k]))
            q = (1 - mpmath.mpf(eps)) * t + mpmath.mpf(eps) * u
            total += w[k] * q * (lse - zs[k])
        return total


@pytest.mark.parametrize(
    ("z", "y", "eps", "prior", "weight"),
    [
        ([2.0, 0.0, -1.0], 0, 0.1, "uniform", None),
        ([0.0, 1.0, 0.0], 2, 0.1, "uniform", None),
        ([1000.0, 999.0, -1000.0], 1, 0.25, "uniform", None),
        ([-30.0, 30.0, 0.5, 7.0], 0, 0.2, "others", None),
        ([0.3, -0.2, 0.1], 1, 0.5, [0.5, 0.25, 0.25], [1.0, 2.0, 0.5]),
        ([1e-8, -1e-8, 0.0], 2, 1.0, "uniform", [3.0, 1.0, 2.0]),
    ],
)
def test_float64_matches_mpmath(z, y, eps, prior, weight):
    # Expected values are computed here with mpmath at 50 significant digits.
    expected = float(_mp_loss(z, y, eps, prior, weight))
    got = smoothce.cross_entropy(
        np.array([z]),
        [y],
        eps,
        prior=None if prior == "uniform" else prior,
        weight=weight,
        reduction="none",
    )
    assert got.dtype == np.float64
    assert abs(float(got[0]) - expected) <= 4e-16 * max(abs(expected), 1.0)


def _float32_case(K, scale, center, rows=2, seed=0):
    rng = np.random.default_rng(seed)
    z = (center + scale * rng.standard_normal((rows, K))).astype(np.float32)
    y = rng.integers(0, K, size=rows)
    return z, y


@pytest.mark.parametrize(
    ("K", "center", "options"),
    [
        (1_000, 3e4, {}),
        (1_000_000, 0.0, {}),
        (1_000_000, 3e4, {}),
        (1_000_000, 3e4, {"weight": "random"}),
        (1_000_000, 3e4, {"prior": "others"}),
        (1_000_000, 3e4, {"prior": "class"}),
    ],
)
def test_float32_within_1e6_of_float64_truth(K, center, options):
    """float32 results within 1e-6 relative of float64 on the *same* (float32) inputs.

    Logits near 3e4 make ``logsumexp(z) - z_y`` lose every digit in float32; the
    shifted formula keeps them.
    """
    z32, y = _float32_case(K, scale=3.0, center=center)
    kw = {}
    rng = np.random.default_rng(1)
    if options.get("weight"):
        kw["weight"] = rng.random(K) + 0.5
    if options.get("prior") == "others":
        kw["prior"] = "others"
    elif options.get("prior") == "class":
        u = rng.random(K)
        kw["prior"] = u / u.sum()
    for reduction in ("none", "mean"):
        got = smoothce.cross_entropy(z32, y, 0.1, reduction=reduction, **kw)
        truth, _ = reference(z32.astype(np.float64), y, 0.1, reduction=reduction, **kw)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got.astype(np.float64), truth, rtol=1e-6, atol=0)


def test_float32_probability_targets_at_one_million_classes():
    z32, _ = _float32_case(1_000_000, scale=3.0, center=3e4)
    t = np.random.default_rng(2).random(z32.shape).astype(np.float32)
    t /= t.sum(axis=1, keepdims=True)
    got = smoothce.cross_entropy(z32, t, 0.1, reduction="none")
    truth, _ = reference(z32.astype(np.float64), t.astype(np.float64), 0.1, reduction="none")
    np.testing.assert_allclose(got.astype(np.float64), truth, rtol=1e-6, atol=0)


def test_float32_gradient_close_to_float64():
    z32, y = _float32_case(50_000, scale=3.0, center=3e4, rows=4)
    g = smoothce.cross_entropy_grad(z32, y, 0.1)
    _, g_ref = reference(z32.astype(np.float64), y, 0.1)
    assert g.dtype == np.float32
    np.testing.assert_allclose(g, g_ref, rtol=2e-6, atol=1e-11)


def test_many_blocks_match_reference():
    """Inputs spanning many row blocks, including a layout whose rows are not views."""
    rng = np.random.default_rng(3)
    z = rng.normal(size=(40, 7, 300))  # classes on axis 1: rows are strided
    y = rng.integers(0, 7, size=(40, 300))
    for reduction in ("mean", "none"):
        loss, grad = smoothce.cross_entropy_with_grad(z, y, 0.2, axis=1, reduction=reduction)
        ref_loss, ref_grad = reference(z, y, 0.2, axis=1, reduction=reduction)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-12, atol=1e-15)
        assert grad.flags.c_contiguous
