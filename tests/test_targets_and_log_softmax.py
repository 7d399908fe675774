"""smooth_labels builds the documented q; log_softmax matches the reference."""

from __future__ import annotations

import numpy as np
import pytest
from reference import _log_softmax, dense_q

import smoothce


@pytest.mark.parametrize("eps", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("prior", [None, "others", "class"])
def test_smooth_labels_matches_dense_definition(eps, prior):
    K = 5
    y = np.array([[0, 4], [2, 2]])
    u = np.arange(1.0, K + 1) / np.arange(1.0, K + 1).sum() if prior == "class" else prior
    q = smoothce.smooth_labels(y, K, eps, prior=u)
    assert q.shape == (2, 2, K)
    assert q.flags.c_contiguous
    np.testing.assert_allclose(q, dense_q(y, K, eps, u, False), rtol=1e-15)
    np.testing.assert_allclose(q.sum(axis=-1), 1.0, rtol=1e-15)


def test_smooth_labels_worked_values():
    # PyTorch convention: [1 - 0.1 + 0.1/3, 0.1/3, 0.1/3]; fairseq variant: 0.9 on the label.
    np.testing.assert_allclose(
        smoothce.smooth_labels([0], 3, 0.1), [[0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3]], rtol=1e-15
    )
    np.testing.assert_allclose(
        smoothce.smooth_labels([0], 3, 0.1, prior="others"), [[0.9, 0.05, 0.05]], rtol=1e-15
    )


def test_smooth_labels_probability_input_and_per_sample_prior():
    t = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    u = np.array([[0.2, 0.2, 0.6], [1 / 3, 1 / 3, 1 / 3]])
    q = smoothce.smooth_labels(t, 3, 0.5, prior=u, dtype=np.float32)
    assert q.dtype == np.float32
    np.testing.assert_allclose(q, 0.5 * t + 0.5 * u, rtol=1e-7)


def test_smooth_labels_of_a_scalar_label():
    np.testing.assert_allclose(smoothce.smooth_labels(1, 2, 0.2), [0.1, 0.9])


def test_loss_with_dense_q_equals_loss_with_labels():
    """Passing smooth_labels(y) as probability targets at epsilon=0 is the same loss."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 4))
    y = rng.integers(0, 4, size=6)
    for prior in (None, "others"):
        q = smoothce.smooth_labels(y, 4, 0.3, prior=prior)
        np.testing.assert_allclose(
            smoothce.cross_entropy(z, q),
            smoothce.cross_entropy(z, y, 0.3, prior=prior),
            rtol=1e-14,
        )


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_log_softmax_matches_reference_on_any_axis(axis):
    z = np.random.default_rng(1).normal(size=(3, 4, 5)) * 50
    expected = np.moveaxis(_log_softmax(np.moveaxis(z, axis, -1)), -1, axis)
    got = smoothce.log_softmax(z, axis=axis)
    np.testing.assert_allclose(got, expected, rtol=1e-14, atol=1e-12)
    assert got.flags.c_contiguous


def test_log_softmax_float32_at_large_offsets():
    z = (3e4 + np.random.default_rng(2).normal(size=(2, 100_000))).astype(np.float32)
    got = smoothce.log_softmax(z)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, _log_softmax(z.astype(np.float64)), rtol=1e-6)
