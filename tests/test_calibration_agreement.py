"""One ECE: calibration, metrics and ``eval`` agree to the bit, at every logit dtype
(issue 17, item 2).

``smoothce.calibration`` rounded ``log_softmax`` to the logits' dtype before ``exp``,
so float16/bfloat16 rows changed bins (0.434388 where the same values in float32 gave
0.434433), and it summed the bins in another arithmetic than ``smoothce.metrics``.
Contract: half-precision logits are as exact as float32 logits holding the same
values (here: identical, as both are computed in float32 from the same numbers), and
every route to the ECE of the same data gives the same float.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tracemalloc
from fractions import Fraction

import numpy as np
import pytest

from smoothce import calibration, metrics
from smoothce.calibration import BinCounts, bin_counts, expected_calibration_error

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
CALIBRATION = [expected_calibration_error, calibration.reliability_curve, bin_counts]


def _data(dtype, N=3000, K=10, scale=3.0, seed=0):
    """Logits (N, K, 2) with the classes on axis 1, labels (N, 2) with some -100."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((N, K, 2)) * scale
    y = rng.integers(0, K, (N, 2))
    y[::13, 1] = -100
    if np.dtype(dtype).kind in "iu":
        return np.round(z).astype(dtype), y
    return z.astype(dtype), y


def _same(a, b):
    """Equal to the bit, whatever a and b are (floats, arrays, BinCounts, tuples)."""
    if isinstance(a, BinCounts):
        for f in ("count", "confidence", "correct"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f), strict=True)
        assert a.undefined == b.undefined
    elif isinstance(a, tuple):
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    else:
        np.testing.assert_array_equal(a, b, strict=True)


@pytest.mark.parametrize("low", [np.float16, BF16])
@pytest.mark.parametrize("fn", CALIBRATION)
def test_half_precision_logits_calibrate_as_float32_holding_the_same_values(low, fn):
    z, y = _data(low)
    kw = {"axis": 1, "ignore_index": -100, "n_bins": 15}
    _same(fn(z, y, **kw), fn(z.astype(np.float32), y, **kw))


@pytest.mark.parametrize("dtype", [np.float16, BF16, np.float32, np.float64, np.int16])
@pytest.mark.parametrize("n_bins", [1, 15, 1000])
def test_calibration_and_metrics_give_the_same_bins_and_ece(dtype, n_bins):
    z, y = _data(dtype)
    kw = {"axis": 1, "ignore_index": -100, "n_bins": n_bins}
    m = metrics.evaluate(z, y, 0.1, **kw)
    ece = expected_calibration_error(z, y, **kw)
    assert ece == m.ece == m.bins.ece()
    assert 0.0 < ece < 1.0
    _same(bin_counts(z, y, **kw), m.bins)
    confidence, accuracy, count, _ = calibration.reliability_curve(z, y, **kw)
    with np.errstate(invalid="ignore", divide="ignore"):  # empty bins are NaN
        _same((confidence, accuracy, count), (
            m.bins.confidence / m.bins.count, m.bins.correct / m.bins.count, m.bins.count
        ))  # fmt: skip


def test_rows_without_a_confidence_make_both_nan():
    z, y = _data(np.float32, N=50)
    z[7, 3, 0] = np.nan
    m = metrics.evaluate(z, y, axis=1, ignore_index=-100)
    assert math.isnan(m.ece)
    assert math.isnan(m.bins.ece())
    assert m.bins.undefined == bin_counts(z, y, axis=1, ignore_index=-100).undefined == 1


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_calibration_agrees_with_the_eval_command_to_the_bit(tmp_path, dtype):
    z, y = _data(dtype, N=2000)
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "y.npy", y)
    out = subprocess.run(
        [sys.executable, "-m", "smoothce", "eval", tmp_path / "z.npy", tmp_path / "y.npy",
         "--axis", "1", "--ignore-index", "-100", "--bins", "20", "--json",
         "--chunk-elements", "3000"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    reported = json.loads(out.stdout)["ece"]  # JSON writes a float's shortest repr: exact
    assert reported == expected_calibration_error(z, y, axis=1, ignore_index=-100, n_bins=20)


def test_the_ece_is_the_exact_gap_rounded_once():
    rng = np.random.default_rng(5)
    count = rng.integers(0, 10**6, 40)
    correct = np.floor(count * rng.random(40))
    confidence = count * rng.random(40)
    bins = BinCounts(count, confidence, correct)
    exact = sum(
        (abs(Fraction(c) - Fraction(s)) for c, s in zip(correct, confidence, strict=True)),
        Fraction(0),
    ) / int(count.sum())
    assert bins.ece() == float(exact)  # Fraction -> float rounds correctly
    # Gaps a float64 sum loses (1 + 2**-53 rounds to 1, twice): exactly 1 + 2**-52.
    tiny = BinCounts(np.array([1, 1, 1]), np.array([0.0, 2**-53, 2**-53]), np.array([1.0, 0, 0]))
    assert tiny.ece() == float((1 + Fraction(2) ** -52) / 3) != 1 / 3


def test_many_bins_cost_under_100_bytes_each():
    """metrics.evaluate(..., n_bins=10**5) allocated 1.6 GiB (10**6 bins: 16 GiB): the
    exact per-bin sums kept a float64 counter for every (bin, exponent) pair."""
    z, y = _data(np.float64, N=100)
    n_bins = 10**5
    for fn in (metrics.evaluate, expected_calibration_error):
        tracemalloc.start()
        try:
            fn(z, y, axis=1, ignore_index=-100, n_bins=n_bins)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 100 * n_bins + 2**20, peak
