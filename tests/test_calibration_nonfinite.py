"""Calibration of logits with NaN or +inf (issue 7, item 16).

A row whose logits hold a NaN or a ``+inf``, or are all ``-inf``, has no softmax and
so no confidence. As in the loss functions (which give NaN for such a row), the ECE is
then NaN; the reliability curve's confidence and accuracy are NaN in every bin (the
row could have been in any of them). Ignored rows are never looked at. Before the fix
the NaN confidence was cast to int64 ("invalid value encountered in cast"), a warning
that the test configuration turns into an error.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import smoothce
from smoothce.calibration import (
    BinCounts,
    bin_counts,
    expected_calibration_error,
    reliability_curve,
)

RNG = np.random.default_rng(7)
Z = RNG.normal(size=(40, 5))
Y = RNG.integers(0, 5, size=40)
BAD_ROWS = {
    "nan": [0.0, np.nan, 1.0, 0.0, 0.0],
    "+inf": [0.0, np.inf, 1.0, 0.0, 0.0],
    "nan and +inf": [np.nan, np.inf, 1.0, 0.0, 0.0],
    "all -inf": [-np.inf] * 5,
}


def _with_bad_row(row, dtype=np.float64):
    z = Z.astype(dtype)
    z[17] = row
    return z


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("name", BAD_ROWS)
def test_invalid_value_in_cast_nan_logits_give_a_nan_ece_quietly(name, dtype):
    z = _with_bad_row(BAD_ROWS[name], dtype)
    assert math.isnan(expected_calibration_error(z, Y))


@pytest.mark.parametrize("name", BAD_ROWS)
def test_nan_ece_agrees_with_the_loss_being_nan(name):
    z = _with_bad_row(BAD_ROWS[name])
    loss = smoothce.cross_entropy(z, Y, 0.1, reduction="none")
    assert np.isnan(loss[17])
    assert np.isnan(loss).sum() == 1
    assert math.isnan(expected_calibration_error(z, Y))


@pytest.mark.parametrize("name", BAD_ROWS)
def test_reliability_curve_of_an_undefined_row_is_nan_in_every_bin(name):
    z = _with_bad_row(BAD_ROWS[name])
    confidence, accuracy, count, edges = reliability_curve(z, Y, n_bins=4)
    assert np.isnan(confidence).all()
    assert np.isnan(accuracy).all()
    # count holds the rows that do have a confidence: all but the bad one.
    assert count.sum() == len(Y) - 1
    np.testing.assert_array_equal(edges, [0, 0.25, 0.5, 0.75, 1])


@pytest.mark.parametrize("name", BAD_ROWS)
def test_ignored_bad_rows_are_left_out(name):
    z = _with_bad_row(BAD_ROWS[name])
    y = Y.copy()
    y[17] = -100
    keep = y != -100
    assert expected_calibration_error(z, y, ignore_index=-100) == expected_calibration_error(
        z[keep], y[keep]
    )


def test_minus_inf_logits_beside_finite_ones_are_fine():
    z = Z.copy()
    z[3, [0, 2]] = -np.inf
    finite = Z.copy()
    finite[3, [0, 2]] = -1e4  # exp underflows to exactly 0 either way
    assert expected_calibration_error(z, Y) == expected_calibration_error(finite, Y)


def test_undefined_rows_add_up_over_chunks():
    z = _with_bad_row(BAD_ROWS["nan"])
    total = BinCounts.empty(10)
    for r0 in range(0, 40, 15):
        total += bin_counts(z[r0 : r0 + 15], Y[r0 : r0 + 15], n_bins=10)
    assert total.undefined == 1
    assert int(total.count.sum()) == 39
    assert math.isnan(total.ece())
    clean = BinCounts.empty(10)
    clean += bin_counts(Z, Y, n_bins=10)
    assert clean.undefined == 0
    assert not math.isnan(clean.ece())


def test_bad_rows_are_counted_on_any_class_axis():
    z = np.moveaxis(np.stack([_with_bad_row(BAD_ROWS["+inf"])] * 2), 2, 1)  # (2, 5, 40)
    c = bin_counts(z, np.stack([Y, Y]), axis=1)
    assert c.undefined == 2
