"""smoothce.metrics: each metric against a direct NumPy reference, exact merging of
chunks, memory maps, and the validation messages of the loss functions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import smoothce
from smoothce import metrics
from smoothce._engine import BLOCK_ELEMENTS
from smoothce._exact import exact_sums
from smoothce.calibration import expected_calibration_error

RNG = np.random.default_rng(20261130)


def _data(n=3000, K=37, dtype=np.float64, scale=3.0, ignore_every=0, seed=0):
    rng = np.random.default_rng(seed)
    z = (rng.normal(size=(n, K)) * scale).astype(dtype)
    y = rng.integers(0, K, n)
    if ignore_every:
        y[::ignore_every] = -100
    return z, y


def _top_k_reference(z, y, k):
    """Label among the first k of a stable descending sort (lower index first on ties)."""
    order = np.argsort(-z.astype(np.float64), axis=1, kind="stable")[:, :k]
    return (order == y[:, None]).any(axis=1)


# -- each metric against a reference ---------------------------------------------
@pytest.mark.parametrize("epsilon", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_evaluate_matches_the_loss_functions_and_numpy_references(epsilon, weighted):
    z, y = _data(ignore_every=7)
    K = z.shape[1]
    w = np.linspace(0.5, 2.0, K) if weighted else None
    kw = dict(weight=w, ignore_index=-100)
    m = metrics.evaluate(z, y, epsilon, top_k=3, **kw)
    keep = y != -100
    # float64 logits: the engine's own sum and the exact sum agree to rounding.
    assert m.loss == pytest.approx(float(smoothce.cross_entropy(z, y, epsilon, **kw)), rel=1e-12)
    assert m.nll == pytest.approx(float(smoothce.cross_entropy(z, y, 0.0, **kw)), rel=1e-12)
    assert m.perplexity == pytest.approx(math.exp(m.nll), rel=1e-12)
    assert m.accuracy == np.mean(z[keep].argmax(axis=1) == y[keep])
    assert m.top_k_accuracy == np.mean(_top_k_reference(z[keep], y[keep], 3))
    assert m.ece == expected_calibration_error(z, y, ignore_index=-100)  # one arithmetic
    assert (m.counted, m.elements) == (int(keep.sum()), len(y))
    assert m.nll == pytest.approx(metrics.nll(z, y, **kw), rel=1e-15)
    assert m.accuracy == metrics.accuracy(z, y, ignore_index=-100)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_low_precision_logits_agree_with_float64_to_their_rounding(dtype):
    z, y = _data(dtype=dtype)
    m = metrics.evaluate(z, y, 0.1)
    ref = metrics.evaluate(z.astype(np.float64), y, 0.1)
    # The engine computes float16/float32 in float32: relative error of a few ulps
    # of float32 per element (2**-24 each), far below this bound. The smoothed loss
    # is the engine's own (float16 rounds its label term in float16 today, so it is
    # compared with the engine, not with float64).
    assert m.loss == pytest.approx(float(smoothce.cross_entropy(z, y, 0.1)), rel=2**-20)
    assert m.nll == pytest.approx(ref.nll, rel=2**-20)
    assert (m.accuracy, m.top_k_accuracy) == (ref.accuracy, ref.top_k_accuracy)
    assert m.ece == pytest.approx(ref.ece, abs=2 / len(y))  # a bin edge may flip one row


def test_accuracy_breaks_ties_by_lower_class_index():
    z = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [3.0, 3.0, 3.0]])
    assert metrics.accuracy(z, [0, 1, 0]) == 1.0
    assert metrics.accuracy(z, [1, 2, 1]) == 0.0
    assert metrics.accuracy(z, [1, 2, 1], top_k=2) == 1.0
    # Class 2 ranks third in rows 1 and 3, second in row 2 (after class 1, same logit).
    assert metrics.accuracy(z, [2, 2, 2], top_k=2) == 1 / 3


@given(
    st.integers(1, 40),
    st.integers(1, 8),
    st.integers(1, 10),
    st.integers(0, 2**32 - 1),
)
def test_top_k_accuracy_matches_a_stable_sort(n, K, k, seed):
    rng = np.random.default_rng(seed)
    z = rng.integers(-2, 3, size=(n, K)).astype(np.float32)  # many ties
    y = rng.integers(0, K, n)
    assert metrics.accuracy(z, y, top_k=k) == np.mean(_top_k_reference(z, y, k))


def test_classes_on_another_axis_match_moveaxis():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(4, 6, 5))
    y = rng.integers(0, 6, size=(4, 5))
    a = metrics.evaluate(z, y, 0.2, axis=1)
    b = metrics.evaluate(np.moveaxis(z, 1, -1), y, 0.2)
    assert a.as_dict() == pytest.approx(b.as_dict(), rel=1e-15)


def test_one_sample_is_a_batch_of_one():
    m = metrics.evaluate(np.array([2.0, 0.0, -1.0]), 0, top_k=1)
    assert m.counted == 1
    assert m.nll == pytest.approx(float(smoothce.cross_entropy([2.0, 0.0, -1.0], 0)))


# -- edge cases -------------------------------------------------------------------
def test_every_label_ignored_gives_the_means_over_nothing():
    z, _ = _data(n=10)
    m = metrics.evaluate(z, np.full(10, -1), ignore_index=-1)
    assert (m.loss, m.nll, m.perplexity, m.accuracy, m.top_k_accuracy, m.ece) == (
        0.0, 0.0, 1.0, 0.0, 0.0, 0.0,
    )  # fmt: skip
    assert (m.counted, m.elements) == (0, 10)


def test_undefined_softmax_makes_every_metric_nan():
    z, y = _data(n=10)
    z[3, 2] = np.nan
    m = metrics.evaluate(z, y)
    assert all(math.isnan(v) for v in (m.loss, m.nll, m.accuracy, m.ece))
    assert math.isnan(metrics.accuracy(z, y))
    # ...unless that element is ignored.
    y[3] = -1
    assert not math.isnan(metrics.evaluate(z, y, ignore_index=-1).nll)


def test_label_ruled_out_by_minus_inf_has_infinite_nll_and_a_finite_confidence():
    z = np.array([[0.0, 2.0, -np.inf], [1.0, 0.0, 0.0]])
    m = metrics.evaluate(z, [2, 0], n_bins=10)
    assert m.nll == math.inf
    assert m.ece == expected_calibration_error(z, [2, 0], n_bins=10)


def test_top_k_at_least_the_number_of_classes_counts_everything():
    z, y = _data(n=50, K=4)
    assert metrics.accuracy(z, y, top_k=4) == 1.0
    assert metrics.evaluate(z, y, top_k=9).top_k_accuracy == 1.0


# -- one pass per chunk -----------------------------------------------------------
@pytest.mark.parametrize("K", [7, BLOCK_ELEMENTS + 3])  # whole rows, streamed rows
@pytest.mark.parametrize("options", [{}, {"epsilon": 0.1}, {"epsilon": 0.1, "weight": "w"}])
def test_evaluate_makes_one_engine_pass_per_chunk_whatever_the_options(monkeypatch, K, options):
    """The smoothed loss, the NLL and the confidence come from the same pass."""
    from smoothce import _engine

    calls = []
    for name in ("_rows", "_streamed"):
        original = getattr(_engine, name)
        monkeypatch.setattr(
            _engine, name, lambda *a, _f=original: calls.append(1) or _f(*a),
        )  # fmt: skip
    z, y = _data(n=3 if K > 1000 else 200, K=K)
    if options.get("weight") == "w":
        options = {**options, "weight": np.linspace(0.5, 2.0, K)}
    m = metrics.evaluate(z, y, **options)
    assert len(calls) == 1
    eps = options.get("epsilon", 0.0)
    w = options.get("weight")
    assert m.loss == pytest.approx(float(smoothce.cross_entropy(z, y, eps, weight=w)), rel=1e-13)
    assert m.nll == pytest.approx(float(smoothce.cross_entropy(z, y, 0.0, weight=w)), rel=1e-13)


# -- exact merging ----------------------------------------------------------------
def test_merging_is_exact_in_any_order():
    z, y = _data(n=900, ignore_every=5)
    parts = [metrics.accumulate(z[a : a + 300], y[a : a + 300], 0.1, ignore_index=-100)
             for a in (0, 300, 600)]  # fmt: skip
    a, b, c = parts
    assert (a + b) + c == a + (b + c) == c.merge(b).merge(a)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_any_chunking_gives_identical_metrics(dtype):
    """A row's values never depend on its neighbours (row sums are per row), and the
    sums are exact: cuts inside the engine's blocks change no bit."""
    K = 1000
    z, y = _data(n=2000, K=K, dtype=dtype, ignore_every=9)
    rows = BLOCK_ELEMENTS // K  # the engine's block: 131 rows
    whole = metrics.accumulate(z, y, 0.1, ignore_index=-100, weight=np.linspace(1, 2, K))
    for cuts in ([rows], [1, 2, 7], [rows * 3 + 5, rows * 4 - 1], [999]):
        edges = [0, *cuts, len(y)]
        acc = None
        for lo, hi in itertools.pairwise(edges):
            part = metrics.accumulate(
                z[lo:hi], y[lo:hi], 0.1, ignore_index=-100, weight=np.linspace(1, 2, K)
            )
            acc = part if acc is None else acc + part
        assert acc == whole
        assert acc.result() == whole.result()


@given(st.lists(st.integers(1, 299), max_size=6, unique=True))
def test_any_chunking_gives_the_same_metrics_to_the_bit(cuts):
    """The module's promise (exact merging): any cuts, the metrics of the whole."""
    z, y = _data(n=300, K=50, ignore_every=11)
    whole = metrics.evaluate(z, y, 0.1, ignore_index=-100)
    edges = [0, *sorted(cuts), 300]
    acc = None
    for lo, hi in itertools.pairwise(edges):
        part = metrics.accumulate(z[lo:hi], y[lo:hi], 0.1, ignore_index=-100)
        acc = part if acc is None else acc + part
    got = acc.result()
    assert got.as_dict() == whole.as_dict()  # every metric, compared with ==
    for field in ("count", "confidence", "correct"):
        np.testing.assert_array_equal(getattr(got.bins, field), getattr(whole.bins, field))


def test_accumulators_of_other_settings_do_not_merge():
    z, y = _data(n=10)
    with pytest.raises(ValueError, match=r"same settings .* got \(37, 0.0, 5, 15, False\)"):
        metrics.accumulate(z, y) + metrics.accumulate(z, y, n_bins=10)


@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=30))
def test_exact_sums_are_correctly_rounded_and_merge_exactly(values):
    from fractions import Fraction

    v = np.array(values, dtype=np.float64)
    exact = sum((Fraction(x) for x in values), Fraction(0))
    try:
        expected = float(exact)
    except OverflowError:
        expected = math.inf if exact > 0 else -math.inf
    (s,) = exact_sums(v)
    assert s.value() == expected
    (a,), (b,) = exact_sums(v[: len(v) // 2]), exact_sums(v[len(v) // 2 :])
    assert a + b == s


# -- memory maps ------------------------------------------------------------------
def test_memmap_is_evaluated_in_chunks_with_the_in_memory_result(tmp_path, monkeypatch):
    z, y = _data(n=4000, K=300, dtype=np.float32, ignore_every=13)
    np.save(tmp_path / "z.npy", z)
    zm = np.load(tmp_path / "z.npy", mmap_mode="r")
    whole = metrics.accumulate(z, y, 0.1, ignore_index=-100).result()
    monkeypatch.setattr(metrics, "CHUNK_ELEMENTS", 100_000)  # 3 chunks of whole blocks
    assert len(metrics._chunks(metrics._prepare(zm, y, ignore_index=-100))) > 3
    seen = []
    got = metrics.evaluate(zm, y, 0.1, ignore_index=-100, progress=lambda *a: seen.append(a))
    assert got == whole
    assert seen[-1] == (4000, 4000)
    assert len(seen) > 3
    assert metrics.nll(zm, y, ignore_index=-100) == whole.nll
    assert metrics.accuracy(zm, y, ignore_index=-100) == whole.accuracy


# -- validation: the loss functions' messages -----------------------------------
@pytest.mark.parametrize(
    ("logits", "labels", "kwargs"),
    [
        (np.zeros((2, 3)), [0, 3], {}),
        (np.zeros((2, 3)), [0, -5], {"ignore_index": -100}),
        (np.zeros((2, 3)), [0, 1, 2], {}),
        (np.zeros((2, 3)), [0, 1], {"axis": 2}),
        (np.zeros((2, 3)), [0, 1], {"weight": [1.0, -1.0, 1.0]}),
        (np.zeros((2, 3), dtype=complex), [0, 1], {}),
        (np.zeros((2, 3)), [0, 1], {"ignore_index": 1.5}),
    ],
)
def test_bad_input_gets_the_loss_functions_message(logits, labels, kwargs):
    with pytest.raises((TypeError, ValueError)) as expected:
        smoothce.cross_entropy(logits, labels, **kwargs)
    for func in (metrics.evaluate, metrics.nll, metrics.accumulate):
        with pytest.raises(expected.type) as got:
            func(logits, labels, **kwargs)
        assert str(got.value) == str(expected.value)


def test_bad_epsilon_and_metric_arguments_are_named():
    z, y = _data(n=4)
    with pytest.raises(ValueError, match=r"epsilon must be in \[0, 1\]; got epsilon=1.5"):
        metrics.evaluate(z, y, 1.5)
    with pytest.raises(ValueError, match="top_k must be at least 1; got top_k=0"):
        metrics.accuracy(z, y, top_k=0)
    with pytest.raises(TypeError, match=r"top_k must be an integer; got top_k=2\.0"):
        metrics.evaluate(z, y, top_k=2.0)
    with pytest.raises(ValueError, match=r"n_bins must be in \[1, 1000000\]; got n_bins=0"):
        metrics.evaluate(z, y, n_bins=0)
    with pytest.raises(TypeError, match="labels must be integer class indices for metrics"):
        metrics.evaluate(z, np.full(z.shape, 0.25))


def test_nothing_handed_over_is_modified():
    z, y = _data(n=100, dtype=np.float32, ignore_every=3)
    z0, y0 = z.copy(), y.copy()
    metrics.evaluate(z, y, 0.1, ignore_index=-100, weight=np.ones(37))
    np.testing.assert_array_equal(z, z0)
    np.testing.assert_array_equal(y, y0)


# Powers of two scale the weights exactly; 1e-310 is subnormal, its products keep
# ~44 bits (relative rounding 2**-44 = 6e-14 per weight).
@pytest.mark.parametrize(
    ("scale", "rel"), [(2.0**-1020, 1e-15), (2.0**1000, 1e-15), (1e-310, 1e-12)]
)
def test_weights_beyond_the_engine_range_give_the_weighted_mean(scale, rel):
    """Regression: the metrics divided losses in true units by a denominator in the
    engine's scaled weight units (2.2e-310 instead of 2.48 for weights of 1e-310)."""
    z, y = _data(n=300, K=7, ignore_every=4)
    w = np.linspace(1.0, 3.0, 7)
    m = metrics.evaluate(z, y, 0.1, weight=w * scale, ignore_index=-100)
    ref = metrics.evaluate(z, y, 0.1, weight=w, ignore_index=-100)
    assert m.loss == pytest.approx(ref.loss, rel=rel)
    assert m.nll == pytest.approx(ref.nll, rel=rel)
    got_nll = metrics.nll(z, y, weight=w * scale, ignore_index=-100)
    assert got_nll == pytest.approx(ref.nll, rel=rel)
    loss = smoothce.cross_entropy(z, y, 0.1, weight=w * scale, ignore_index=-100)
    assert m.loss == pytest.approx(float(loss), rel=rel + 1e-15)


@pytest.mark.parametrize("offset", [2.0**20, 1e10, 2.0**44])
def test_nll_of_shifted_float64_logits_keeps_its_digits(offset):
    """Regression: the NLL was formed as ``lse - z_y`` with ``lse = log S + max``,
    so the offset's rounding (ulp(1e10) = 2e-6) landed in a loss of order 1: 9e-8
    relative error at an offset of 1e10, 2e-3 at 2**44. Softmax is
    shift-invariant and these shifted logits are exact, so the NLL and the
    confidence of the ECE must stay those of the unshifted logits to a few float64
    rounding steps."""
    z, y = _data(n=200, K=5, scale=2.0)
    z = np.round(z * 64) / 64  # exactly representable after the shift
    shifted = z + offset
    assert np.array_equal(shifted - offset, z)
    ref = metrics.evaluate(z, y)
    got = metrics.evaluate(shifted, y)
    assert got.nll == pytest.approx(ref.nll, rel=1e-14)
    assert metrics.nll(shifted, y) == pytest.approx(ref.nll, rel=1e-14)
    assert got.ece == pytest.approx(ref.ece, abs=1e-14)
    assert got.nll == pytest.approx(float(smoothce.cross_entropy(shifted, y)), rel=1e-14)


def test_zero_class_weight_on_a_ruled_out_label_counts_nothing_not_nan():
    """Regression: the weighted NLL was formed as ``w_y * (lse - z_y)``, so a label
    of weight 0 whose logit is -inf gave ``0 * inf = NaN`` for the NLL (and for the
    loss at epsilon 0) where :func:`smoothce.cross_entropy` and the metrics before
    the one-pass rewrite give the weighted mean over the other elements."""
    z = np.array([[-np.inf, 0.0, 1.0], [0.0, 1.0, 2.0], [2.0, 0.0, -1.0]])
    y = np.array([0, 1, 2])
    w = np.array([0.0, 1.0, 2.0])
    for epsilon in (0.0, 0.1):
        want = float(smoothce.cross_entropy(z, y, epsilon, weight=w))
        m = metrics.evaluate(z, y, epsilon, weight=w)
        assert m.loss == pytest.approx(want, rel=1e-15)
    want_nll = float(smoothce.cross_entropy(z, y, weight=w))
    assert np.isfinite(want_nll)
    assert metrics.evaluate(z, y, 0.1, weight=w).nll == pytest.approx(want_nll, rel=1e-15)
    assert metrics.nll(z, y, weight=w) == pytest.approx(want_nll, rel=1e-15)


def test_nll_beyond_the_float64_range_with_a_small_weight_is_finite_and_quiet():
    """Regression: ``z_y - max`` of a row spanning [-1e308, 1e308] overflowed in the
    metrics, with a RuntimeWarning (an error under pytest), and the NLL of weight
    1e-10 became inf; the engine sums such rows at a quarter scale and gives
    2e298 (issue 7, item 4)."""
    z = np.array([[-1e308, 1e308, 0.0], [0.0, 1.0, 2.0]])
    y = np.array([0, 1])
    w = np.array([1e-10, 1.0, 1.0])
    want = float(smoothce.cross_entropy(z, y, weight=w))
    assert np.isfinite(want)
    assert metrics.nll(z, y, weight=w) == pytest.approx(want, rel=1e-15)
    m = metrics.evaluate(z, y, weight=w)
    assert m.nll == pytest.approx(want, rel=1e-15)
    assert m.loss == pytest.approx(want, rel=1e-15)
    # unweighted, the NLL itself is beyond range: inf, quietly
    assert metrics.nll(z, y) == np.inf


@pytest.mark.parametrize("streamed", [False, True])
def test_float32_nll_beyond_float32s_range_is_the_finite_float64_value(monkeypatch, streamed):
    # float32 logits 6e38 apart: the label's shifted logit z_y - max overflowed in
    # float32, so a whole row's NLL came out inf while the same call's smoothed loss
    # (and a streamed row's NLL, formed in float64) gave the finite 6e38.
    if streamed:
        monkeypatch.setattr(smoothce._engine, "BLOCK_ELEMENTS", 1)
    z = np.array([[3e38, -3e38, 0.0]], dtype=np.float32)
    z64 = z.astype(np.float64)
    want = float(z64[0, 0] - z64[0, 1])  # log(1 + e^-3e38 + e^-6e38) is 0 in float64
    K, u = 3, 2.0**-24
    tol = (K + 4) * u * (2 * abs(want) + 1)  # the contract's (K + 4) u M
    m = metrics.evaluate(z, [1])
    assert abs(m.nll - want) <= tol, (m.nll, want)
    assert metrics.nll(z, [1]) == m.nll
    assert m.loss == m.nll  # epsilon 0: the loss is the NLL


def test_top_k_ties_go_to_the_lower_index_unlike_scikit_learn():
    """The docs say so (accuracy, evaluate's top_k): scikit-learn's
    top_k_accuracy_score documents the opposite tie rule, highest index first."""
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    z = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0]])
    for y, ours, theirs in (([0, 1], 1.0, 0.0), ([1, 2], 0.0, 1.0)):
        assert metrics.accuracy(z, y, top_k=1) == ours
        assert metrics.evaluate(z, y, top_k=1).top_k_accuracy == ours
        assert sklearn_metrics.top_k_accuracy_score(y, z, k=1, labels=[0, 1, 2]) == theirs
