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
