"""Calibration metrics against a direct loop-based reference."""

from __future__ import annotations

import numpy as np
import pytest

from smoothce.calibration import (
    BinCounts,
    bin_counts,
    expected_calibration_error,
    reliability_curve,
)


def _reference_ece(probs, labels, n_bins):
    """Textbook ECE, one bin at a time (bins right-closed, 0 in the first)."""
    conf = probs.max(axis=1)
    pred = probs.argmax(axis=1)
    edges = np.linspace(0, 1, n_bins + 1)
    total = 0.0
    for b in range(n_bins):
        lo, hi = edges[b], edges[b + 1]
        inside = (conf > lo) & (conf <= hi) if b else (conf >= lo) & (conf <= hi)
        if inside.any():
            total += (
                inside.sum()
                / len(conf)
                * abs((pred[inside] == labels[inside]).mean() - conf[inside].mean())
            )
    return total


def _softmax(z, axis=-1):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("n_bins", [1, 5, 15])
def test_matches_reference_from_probabilities_and_logits(n_bins):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(500, 6)) * 2
    y = rng.integers(0, 6, size=500)
    p = _softmax(z)
    expected = _reference_ece(p, y, n_bins)
    assert expected_calibration_error(p, y, n_bins=n_bins, from_logits=False) == pytest.approx(
        expected, abs=1e-12
    )
    assert expected_calibration_error(z, y, n_bins=n_bins) == pytest.approx(expected, abs=1e-12)


def test_any_class_axis():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(4, 5, 7))  # classes on axis 1
    y = rng.integers(0, 5, size=(4, 7))
    flat = np.moveaxis(z, 1, -1).reshape(-1, 5)
    assert expected_calibration_error(z, y, axis=1) == expected_calibration_error(
        flat, y.reshape(-1)
    )


def test_extremes():
    confident_wrong = np.array([[1.0, 0.0]] * 4)
    assert expected_calibration_error(confident_wrong, [1, 1, 1, 1], from_logits=False) == 1.0
    assert expected_calibration_error(np.zeros((0, 3)), np.zeros(0, int)) == 0.0


def test_chunks_add_up_to_the_whole():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(300, 4))
    y = rng.integers(0, 4, size=300)
    total = BinCounts.empty(10)
    for r0 in range(0, 300, 70):
        total += bin_counts(z[r0 : r0 + 70], y[r0 : r0 + 70], n_bins=10)
    assert total.ece() == pytest.approx(expected_calibration_error(z, y, n_bins=10), abs=1e-15)


def test_ignore_index_leaves_elements_out():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(50, 3))
    y = rng.integers(0, 3, size=50)
    y_ign = y.copy()
    y_ign[::5] = -1
    keep = y_ign != -1
    assert expected_calibration_error(z, y_ign, ignore_index=-1) == pytest.approx(
        expected_calibration_error(z[keep], y[keep]), abs=1e-15
    )


def test_reliability_curve_values():
    probs = np.array([[0.95, 0.05], [0.55, 0.45], [0.3, 0.7], [0.9, 0.1]])
    conf, acc, count, edges = reliability_curve(probs, [0, 1, 1, 1], n_bins=2, from_logits=False)
    np.testing.assert_array_equal(count, [0, 4])
    np.testing.assert_allclose(conf, [np.nan, (0.95 + 0.55 + 0.7 + 0.9) / 4])
    np.testing.assert_allclose(acc, [np.nan, 0.5])
    np.testing.assert_allclose(edges, [0, 0.5, 1])


def test_large_logits_do_not_overflow():
    z = np.array([[1000.0, 0.0], [0.0, 1000.0]])
    assert expected_calibration_error(z, [0, 1]) == 0.0


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (
            lambda: expected_calibration_error(np.ones((2, 2)), [0, 1], n_bins=0),
            ValueError,
            r"n_bins must be in \[1, 1000000\]; got n_bins=0",
        ),
        (
            lambda: expected_calibration_error(np.ones((2, 2)), [0, 1], n_bins=2.5),
            TypeError,
            "n_bins must be an integer",
        ),
        (
            lambda: expected_calibration_error(np.full((2, 2), 2.0), [0, 1], from_logits=False),
            ValueError,
            r"scores must be probabilities in \[0, 1\] .*got scores\[0, 0\] = 2\.0",
        ),
        (
            lambda: expected_calibration_error(np.ones((2, 2)), [0, 2]),
            ValueError,
            r"got labels\[1\] = 2",
        ),
        (
            lambda: expected_calibration_error(np.ones((2, 2)), [0.0, 1.0]),
            TypeError,
            "labels must be integer class indices",
        ),
        (
            lambda: expected_calibration_error(np.ones((2, 2)), [0, 1, 1]),
            ValueError,
            r"got shape \(3,\)",
        ),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
