"""bfloat16 logits (issue 9, item 3): computed in float32, as exact as float32 logits
holding the same values; gradients and per-element losses returned in bfloat16.

Contract: reduced losses within 2e-6 relative of the float64 truth; per-element
results are the float32-accurate value rounded once to bfloat16 (half a bfloat16
spacing plus float32's own error). ml_dtypes is a test dependency only.
"""

from __future__ import annotations

import numpy as np
import pytest
from reference import reference

import smoothce
from smoothce import _engine

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)


def _half_bf16_spacing(ref: np.ndarray) -> np.ndarray:
    """Half the bfloat16 spacing at ``ref``: float32's spacing times 2**16 (bfloat16
    keeps 7 of float32's 23 fraction bits, with the same exponent range)."""
    return np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64) * 2.0**15


def _problem(seed: int, N: int = 64, K: int = 33) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((N, K)) * 8).astype(BF16), rng.integers(0, K, N)


def test_bfloat16_is_recognised_and_computed_in_float32():
    z, y = _problem(0)
    loss, grad = smoothce.cross_entropy_with_grad(z, y, 0.1)
    assert type(loss) is np.float32
    assert grad.dtype == BF16
    assert smoothce.cross_entropy(z, y, reduction="none").dtype == BF16
    assert smoothce.cross_entropy_grad(z, y).dtype == BF16


@pytest.mark.parametrize("prior", [None, "others"])
@pytest.mark.parametrize("eps", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("streamed", [False, True])
def test_bfloat16_reduced_loss_is_float32_exact(prior, eps, streamed, monkeypatch):
    z, y = _problem(7)
    if streamed:
        monkeypatch.setattr(_engine, "BLOCK_ELEMENTS", 8)
    z32 = z.astype(np.float32)  # the same values, exactly
    for reduction in ("mean", "sum"):
        for rows in [slice(None), slice(0, 1), slice(5, 6)]:
            got = smoothce.cross_entropy(z[rows], y[rows], eps, prior=prior, reduction=reduction)
            truth, _ = reference(
                z32[rows].astype(np.float64), y[rows], eps, prior=prior, reduction=reduction
            )
            assert abs(float(got) - truth) <= 2e-6 * abs(truth)
            assert got == smoothce.cross_entropy(
                z32[rows], y[rows], eps, prior=prior, reduction=reduction
            )


@pytest.mark.parametrize("streamed", [False, True])
def test_bfloat16_per_element_results_are_the_float32_value_rounded_once(streamed, monkeypatch):
    z, y = _problem(3, N=200, K=17)
    if streamed:
        monkeypatch.setattr(_engine, "BLOCK_ELEMENTS", 8)
    w = np.linspace(0.5, 2.0, 17)
    loss, grad = smoothce.cross_entropy_with_grad(z, y, 0.2, weight=w, reduction="none")
    ref_loss, ref_grad = reference(z.astype(np.float64), y, 0.2, weight=w, reduction="none")
    assert loss.dtype == grad.dtype == BF16
    for got, ref in ((loss, ref_loss), (grad, ref_grad)):
        # float32's own error: a few units of 2**-24 of terms of size <= 8 * 4 * 2.
        tol = _half_bf16_spacing(ref) + 1e-5
        assert np.all(np.abs(got.astype(np.float64) - ref) <= tol)


def test_bfloat16_in_place_and_out():
    z, y = _problem(5)
    expected_loss, expected = smoothce.cross_entropy_with_grad(z, y, 0.1)
    buf = z.copy()
    loss, g = smoothce.cross_entropy_with_grad(buf, y, 0.1, out=buf)
    assert g is buf
    assert loss == expected_loss
    np.testing.assert_array_equal(g.astype(np.float32), expected.astype(np.float32))
    out = np.empty_like(z)
    _, g2 = smoothce.cross_entropy_with_grad(z, y, 0.1, out=out)
    assert g2 is out
    np.testing.assert_array_equal(out.astype(np.float32), expected.astype(np.float32))


def test_bfloat16_strided_and_class_axis_first():
    z, y = _problem(9, N=12, K=5)
    zt = np.ascontiguousarray(z.T)  # classes on axis 0
    a = smoothce.cross_entropy(zt, y, 0.1, axis=0, reduction="none")
    b = smoothce.cross_entropy(z, y, 0.1, reduction="none")
    np.testing.assert_array_equal(a.astype(np.float32), b.astype(np.float32))


def test_bfloat16_gradient_overflow_and_edges_are_quiet():
    # -inf masks a class, a NaN row is NaN, all quietly (pytest turns warnings into errors).
    z = np.array([[0.0, -np.inf, 1.0], [np.nan, 0.0, 0.0]], dtype=BF16)
    loss, grad = smoothce.cross_entropy_with_grad(z, [0, 1], reduction="none")
    assert np.isfinite(float(loss[0]))
    assert np.isnan(float(loss[1]))
    assert float(grad[0, 1]) == 0.0


def test_log_softmax_of_bfloat16_is_float32_rounded_once():
    z, _ = _problem(11, N=8, K=9)
    got = smoothce.log_softmax(z)
    ref = smoothce.log_softmax(z.astype(np.float64))
    assert got.dtype == BF16
    assert np.all(np.abs(got.astype(np.float64) - ref) <= _half_bf16_spacing(ref) + 1e-5)


# -- bfloat16 beside the logits: weights, priors, probability targets (issue 17, item 7)
def _same_values(a: np.ndarray) -> np.ndarray:
    """``a`` rounded to bfloat16, as float32: the values a bfloat16 argument holds."""
    return a.astype(BF16).astype(np.float32)


@pytest.mark.parametrize("logits_dtype", [np.float32, np.float64, BF16])
@pytest.mark.parametrize("argument", ["weight", "class prior", "sample prior", "targets"])
def test_bfloat16_weights_priors_and_targets_are_their_float32_values(logits_dtype, argument):
    """They were refused as "must be a real floating or integer array; got dtype
    bfloat16". Accepted now, as Liger-Kernel accepts bfloat16 class weights: the result
    is that of the same values in float32, to the bit."""
    rng = np.random.default_rng(3)
    N, K = 12, 8
    z = rng.standard_normal((N, K)).astype(logits_dtype)
    y = rng.integers(0, K, N)
    # Dyadic priors sum to 1 exactly in bfloat16, so float32 accepts the same values.
    dyadic = np.array([8, 4, 4, 2, 2, 1, 1, 10]) / 32
    given = {
        "weight": {"weight": rng.random(K) * 3},
        "class prior": {"prior": dyadic},
        "sample prior": {"prior": np.array([rng.permutation(dyadic) for _ in range(N)])},
        "targets": {"labels": rng.dirichlet(np.ones(K), size=N)},
    }[argument]
    as_bf16 = {k: v.astype(BF16) for k, v in given.items()}
    as_f32 = {k: _same_values(v) for k, v in given.items()}
    for f in (smoothce.cross_entropy, smoothce.cross_entropy_with_grad):
        for reduction in ("mean", "none"):
            got = f(**{"logits": z, "labels": y, "epsilon": 0.1, **as_bf16}, reduction=reduction)
            want = f(**{"logits": z, "labels": y, "epsilon": 0.1, **as_f32}, reduction=reduction)
            got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
            for g, w in zip(got, want, strict=True):
                assert np.asarray(g).dtype == np.asarray(w).dtype
                np.testing.assert_array_equal(g, w)


def test_bfloat16_weights_and_priors_in_the_linear_head_and_smooth_labels():
    rng = np.random.default_rng(4)
    h, W, y = rng.standard_normal((10, 4)), rng.standard_normal((6, 4)), rng.integers(0, 6, 10)
    weight, prior = rng.random(6), np.array([8, 8, 4, 4, 4, 4]) / 32
    got = smoothce.linear_cross_entropy(
        h, W, y, 0.2, weight=weight.astype(BF16), prior=prior.astype(BF16)
    )
    want = smoothce.linear_cross_entropy(
        h, W, y, 0.2, weight=_same_values(weight), prior=_same_values(prior)
    )
    assert got == want
    targets = rng.dirichlet(np.ones(6), size=3)
    np.testing.assert_array_equal(
        smoothce.smooth_labels(targets.astype(BF16), 6, 0.1, prior=prior.astype(BF16)),
        smoothce.smooth_labels(_same_values(targets), 6, 0.1, prior=_same_values(prior)),
    )


@pytest.mark.parametrize("K", [3, 1000, 2048])
def test_bfloat16_priors_are_held_to_bfloat16_rounding(K):
    """A normalised prior rounded to bfloat16 passes (its sum may be off by about 2**-8
    per level of the normalisation's sum, far beyond float32's tolerance); one summing
    to 1.1 is refused, the message naming bfloat16."""
    rng = np.random.default_rng(K)
    u = rng.exponential(size=K) ** 4
    u = (u / u.sum()).astype(BF16)
    smoothce.cross_entropy(np.zeros((1, K), np.float32), [0], 0.1, prior=u)
    off = np.full(K, 1.1 / K).astype(BF16)
    with pytest.raises(ValueError, match=rf"the rounding of {K} bfloat16 values\); got a sum"):
        smoothce.cross_entropy(np.zeros((1, K), np.float32), [0], 0.1, prior=off)


def test_bfloat16_targets_must_still_be_probabilities():
    t = np.full((2, 3), 1 / 3)
    t[1, 2] = -0.5
    with pytest.raises(ValueError, match=r"labels must be non-negative and finite .*-0\.5"):
        smoothce.cross_entropy(np.zeros((2, 3)), t.astype(BF16))
    with pytest.raises(TypeError, match=r"labels must be integer class indices for metrics"):
        smoothce.metrics.evaluate(np.zeros((2, 3)), np.full((2, 3), 1 / 3).astype(BF16))
