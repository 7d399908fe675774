"""The benchmark's method and wording (``python -m smoothce bench``), without long timings.

The verdict and memory wordings are pure functions of their inputs and are tested as
such; the timing loop is tested against a fake clock, so that what is asserted is the
method (autorange, interleaving, thread counts set outside the timed region), never a
speed.
"""

from __future__ import annotations

import importlib
import io
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from smoothce import _bench, _bench_report, _cli
from smoothce._bench import Measurement, Spread, memory_wording, verdict

# -- verdicts -------------------------------------------------------------------------


def test_verdict_says_how_many_times_faster():
    assert verdict([1.0, 1.1, 1.2], [2.9, 3.0, 3.1]) == "2.7x faster"


def test_verdict_says_slower_rather_than_a_ratio_below_one():
    # The old wording printed 0.7 as "0.7x faster"; the ratio is now always >= 1.
    assert verdict([1.0, 1.0, 1.0], [0.7, 0.7, 0.7]) == "1.4x slower"


def test_verdict_is_within_noise_when_the_spreads_overlap():
    ours = [1.0, 1.2, 1.4, 1.6, 2.0]  # q1-q3 = 1.2-1.6
    theirs = [1.5, 1.7, 1.9, 2.1, 2.3]  # q1-q3 = 1.7-2.1: medians differ, ranges do not
    assert verdict(ours, theirs) == "1.4x faster"
    theirs_overlapping = [1.3, 1.5, 1.9, 2.1, 2.3]  # q1-q3 = 1.5-2.1 overlaps 1.2-1.6
    assert verdict(ours, theirs_overlapping) == "within noise"


def test_verdict_ranges_that_touch_count_as_overlapping():
    assert verdict([1.0, 2.0, 3.0], [2.0, 3.0, 4.0]) == "within noise"  # 1.5-2.5, 2.5-3.5
    assert verdict([1.0, 2.0, 3.0, 4.0, 5.0], [3.0, 4.0, 5.0, 6.0, 7.0]) == "within noise"
    assert verdict([1.0, 2.0, 3.0], [2.2, 3.2, 4.2]) == "1.6x faster"  # 2.7-3.7


def test_verdict_keeps_two_decimals_where_one_would_print_one():
    assert verdict([1.00, 1.00, 1.00], [1.04, 1.04, 1.04]) == "1.04x faster"
    assert verdict([1.00, 1.00, 1.00], [1.2, 1.2, 1.2]) == "1.2x faster"


def test_verdict_from_fewer_than_three_samples_says_there_is_no_spread():
    text = verdict([1.0], [2.0])
    assert text.startswith("2.0x faster")
    assert "no spread" in text
    assert "1 sample" in text


def test_spread_of_no_samples_is_an_error():
    with pytest.raises(ValueError, match="samples must not be empty"):
        Spread.of([])


times = st.lists(st.floats(1e-7, 10.0), min_size=3, max_size=15)


@given(times, times)
def test_verdict_wording_follows_the_medians(ours, theirs):
    text = verdict(ours, theirs)
    if text == "within noise":
        a, b = Spread.of(ours), Spread.of(theirs)
        assert a.q1 <= b.q3
        assert b.q1 <= a.q3
        return
    match = re.fullmatch(r"(\d+\.\d+)x (faster|slower)", text)
    assert match is not None, text
    ratio, word = float(match[1]), match[2]
    assert ratio >= 1.0
    mo, mt = np.median(ours), np.median(theirs)
    assert word == ("faster" if mo < mt else "slower")
    assert ratio == pytest.approx(max(mo, mt) / min(mo, mt), abs=0.051)


# -- memory ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "logits", "text"),
    [
        (1153434, 25_600_000, "+1.1 MiB (4.5% of the logits)"),
        (23432, 10240, "+22.9 KiB (2.3x the logits)"),
        (538192, 10240, "+525.6 KiB (52.6x the logits)"),  # once "5255.8% of the logits"
        (0, 1000, "+0 B (0.0% of the logits)"),
        (-2048, 8192, "-2.0 KiB (25.0% of the logits)"),
        (3 * 2**30, 2**30, "+3072.0 MiB (3.0x the logits)"),
    ],
)
def test_memory_wording(extra, logits, text):
    assert memory_wording(extra, logits) == text


# -- the timing loop, against a fake clock --------------------------------------------


class FakeClock:
    """perf_counter for the bench: advances only when a candidate is called."""

    def __init__(self):
        self.now = 0.0
        self.log = []

    def perf_counter(self):
        self.log.append("clock")
        return self.now

    def candidate(self, name, seconds):
        def call():
            self.log.append(name)
            self.now += seconds

        return call


def test_each_sample_times_enough_calls_to_last_the_minimum(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(_bench.time, "perf_counter", clock.perf_counter)
    for cost in (1e-6, 3e-4, 7e-3, 0.02, 0.5):
        number = _bench._calls_per_sample(clock.candidate("f", cost), 0.02)
        assert number * cost >= 0.02
        assert number == 1 or (number - 1) * cost < 0.02 * 1.5  # not far past it


def test_rounds_interleave_candidates_and_set_threads_outside_the_timed_region(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(_bench.time, "perf_counter", clock.perf_counter)
    cands = [
        _bench.Candidate(name, name, "torch", 2, clock.candidate(name, cost))
        for name, cost in [("a", 1e-3), ("b", 5e-3), ("c", 0.03)]
    ]

    def set_threads(c):
        clock.log.append("set")

    samples, numbers = _bench._run_rounds(cands, set_threads, 4, 0.02, None)
    assert {k: len(v) for k, v in samples.items()} == {"a": 4, "b": 4, "c": 4}
    assert samples["a"] == [pytest.approx(1e-3)] * 4  # time per call, not per sample
    assert numbers["c"] == 1
    # Between the two clock readings of a sample there are only calls of one candidate.
    log = clock.log
    i = log.index("set")  # the timed rounds start after calibration
    timed = log[i:]
    starts = [j for j, e in enumerate(timed) if e == "clock"][::2]
    ends = [j for j, e in enumerate(timed) if e == "clock"][1::2]
    order = []
    for s, e in zip(starts, ends, strict=True):
        inside = set(timed[s + 1 : e])
        assert len(inside) == 1, timed[s : e + 1]
        assert "set" not in inside
        order.append(inside.pop())
    order = order[-12:]  # the four rounds, after the calibration samples
    rounds = [order[j : j + 3] for j in range(0, 12, 3)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)
    assert len({tuple(r) for r in rounds}) == 3  # the order rotates


def test_a_candidate_that_slows_down_after_calibration_gets_fewer_calls(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(_bench.time, "perf_counter", clock.perf_counter)
    cost = [1e-3]

    def fn():
        clock.now += cost[0]

    c = _bench.Candidate("a", "a", "naive", 1, fn)
    number = _bench._calls_per_sample(fn, 0.02)
    cost[0] = 1e-2  # ten times slower from now on: samples would last ten times longer
    samples, numbers = _bench._run_rounds([c], lambda c: None, 3, 0.02, None)
    assert samples["a"] == [pytest.approx(1e-2)] * 3
    assert numbers["a"] < number
    assert numbers["a"] * 1e-2 >= 0.02


# -- a real, tiny measurement ---------------------------------------------------------


def _tiny(**kwargs):
    options = {"workers": [1], "rounds": 3, "min_sample_seconds": 1e-4}
    options.update(kwargs)
    return _bench.measure_shape((16, 5), **options)


def test_a_measurement_reports_median_spread_and_memory_per_candidate():
    m = _tiny()
    assert {"exp floor", "smoothce fwd+grad w1", "naive forward", "naive fwd+grad"} <= set(m.times)
    for key, t in m.times.items():
        q1, q3 = m.spread[key]
        assert q1 <= t <= q3
        assert len(m.samples[key]) == 3
        assert m.calls_per_sample[key] >= 1
    assert set(m.extra_memory) >= {"smoothce forward w1", "naive fwd+grad"}


def test_the_table_explains_its_names_and_words_every_verdict():
    m = _tiny()
    out = io.StringIO()
    _bench_report.print_legend(out)
    _bench_report.format_table([m], out)
    text = out.getvalue()
    for explained in ("calls/sample", "q1-q3", "x exp", "NumPy exp", "smoothce fwd+grad"):
        assert f"  {explained} " in text
    assert " w1 " not in text
    assert " t1 " not in text  # the JSON keys' shorthand stays out of the table
    verdicts = re.findall(r"  - smoothce .* vs .*: (.*)", text)
    assert verdicts
    for v in verdicts:
        assert re.fullmatch(r"within noise|\d+\.\d+x (faster|slower)", v), v
    assert re.search(r"\+[\d.]+ (B|KiB|MiB) \([\d.]+(% of|x) the logits\)", text)


def test_float16_is_timed_in_float16():
    m = _tiny(dtype="float16", kinds={"exp floor", "smoothce fwd+grad", "naive fwd+grad"})
    assert m.dtype == "float16"
    assert m.logits_bytes == 16 * 5 * 2
    assert set(m.times) == {"exp floor", "smoothce fwd+grad w1", "naive fwd+grad"}


def test_a_candidate_over_the_memory_limit_is_skipped_and_says_why():
    m = _tiny(max_memory_bytes=3 * 16 * 5 * 4)  # 3x the logits: naive needs 6x
    assert "naive fwd+grad" not in m.times
    assert "over the limit" in m.skipped["naive fwd+grad"]
    assert "smoothce fwd+grad w1" in m.times


@pytest.fixture
def without_torch(monkeypatch):
    """PyTorch is optional: make importing it fail as if it were not installed."""
    real = importlib.import_module

    def fake(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(_bench.importlib, "import_module", fake)


@pytest.mark.usefixtures("without_torch")
def test_the_bench_runs_without_torch(capsys):
    m = _tiny()
    assert not any(key.startswith("torch") for key in m.times)
    assert m.skipped["torch"] == "PyTorch is not installed"
    argv = ["bench", "--shape", "16", "5", "--workers", "1", "--rounds", "3"]
    assert _cli.main([*argv, "--min-sample-ms", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "torch: not timed: PyTorch is not installed" in out
    assert "smoothce fwd+grad, 1 thread vs naive fwd+grad:" in out


def test_the_sweep_grids_word_each_cell():
    def m(shape, ours, naive, torch):
        x = Measurement(shape, "float32", 0.1, 4 * shape[0] * shape[1])
        x.samples = {"smoothce fwd+grad w1": ours, "naive fwd+grad": naive}
        if torch is not None:
            x.samples["torch fwd+bwd t1"] = torch
        else:
            x.skipped["torch fwd+bwd"] = "PyTorch is not installed"
        x.times = {k: float(np.median(v)) for k, v in x.samples.items()}
        return x

    results = [
        m((32, 10), [1, 1, 1], [2, 2, 2], [0.5, 1.5, 2]),
        m((32, 100), [3, 3, 3], [2, 2, 2], None),
    ]
    out = io.StringIO()
    _bench_report.format_sweep(results, 1, out)
    lines = out.getvalue().splitlines()
    (naive_row,) = [ln for ln in lines if ln.split()[:1] == ["32"]][:1]
    assert naive_row.split() == ["32", "2.0x", "1.5x", "slower"]
    torch_row = [ln for ln in lines if ln.split()[:1] == ["32"]][1]
    assert torch_row.split() == ["32", "~", "-"]
    assert "(32, 100): torch fwd+bwd not timed: PyTorch is not installed" in out.getvalue()


def test_rounds_one_runs_one_round_and_says_it_has_no_spread(capsys):
    argv = ["bench", "--shape", "8", "3", "--workers", "1", "--rounds", "1"]
    assert _cli.main([*argv, "--min-sample-ms", "0.1"]) == 0
    captured = capsys.readouterr()
    assert "1 sample(s) per candidate" in captured.out
    assert "no verdict can tell a difference from noise" in captured.out
    assert "round" not in captured.err  # capsys is no terminal: no progress unless asked
    assert _cli.main([*argv, "--min-sample-ms", "0.1", "--progress"]) == 0
    captured = capsys.readouterr()
    assert "round 1/1" in captured.err
    assert "round 2/" not in captured.err


def test_sweep_refuses_shapes(capsys):
    assert _cli.main(["bench", "--sweep", "--shape", "8", "3"]) == 2
    assert "--sweep times its own grid" in capsys.readouterr().err


def test_sweep_prints_a_grid_against_naive_and_one_against_torch(monkeypatch, capsys):
    monkeypatch.setattr(_cli, "SWEEP_N", (4, 8))
    monkeypatch.setattr(_cli, "SWEEP_K", (3, 5))
    argv = ["bench", "--sweep", "--rounds", "3", "--min-sample-ms", "0.1", "--logits", "normal"]
    assert _cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "smoothce fwd+grad, 1 thread, against naive fwd+grad" in out
    assert "smoothce fwd+grad, 1 thread, against torch fwd+bwd, 1 thread" in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["4"], ["8"])]
    assert len(rows) == 4  # two rows in each of the two grids
    assert all(len(row) >= 3 for row in rows)


def test_lm_options_and_the_linear_head_are_timed_and_compared(capsys):
    argv = ["bench", "--shape", "16", "5", "--workers", "1", "--rounds", "3", "--lm",
            "--linear", "12", "4", "7", "--min-sample-ms", "0.1"]  # fmt: skip
    assert _cli.main(argv) == 0
    out = capsys.readouterr().out
    for label in ("smoothce fwd+grad z_loss=0.0001", "smoothce fwd+grad softcap=30.0"):
        assert f"- {label} vs smoothce fwd+grad, 1 thread: " in out
    assert "(12, 7) float32, linear head, d=4" in out
    assert "- smoothce linear, fused vs logits, loss, products: normal: " in out
    assert "- smoothce linear, fused vs the 3 matrix products: normal: " in out
    assert re.search(r"- smoothce linear, fused: (normal: )?\+", out)  # its extra memory


def test_measure_linear_times_three_candidates_on_the_unfused_logits_size():
    # Fused against unfused exactness is tests/test_linear.py's; here the bench's view.
    from smoothce._bench import measure_linear

    m = measure_linear(9, 3, 5, rounds=2, min_sample_seconds=1e-4, memory=False)
    assert {"linear fused", "linear unfused", "linear products"} <= set(m.times)
    assert m.shape == (9, 5)
    assert m.logits_bytes == 9 * 5 * 4
    assert all(len(v) == 2 for v in m.samples.values())


def test_the_linear_head_is_timed_with_blas_on_one_thread_and_on_every_core(monkeypatch):
    # Issue 15: the fused head ran 2.3x slower than the unfused one on a busy 2-core
    # machine, engine threads against BLAS's; the bench held BLAS at one thread and so
    # could not show it. The fused head is now also timed as a user calls it, with
    # BLAS on every core, and the threads each call really ran with are checked here.
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from smoothce import _linear
    from smoothce._bench import measure_linear
    from smoothce._parallel import available_cores

    cores = available_cores()
    if cores < 2:
        pytest.skip("one core: nothing to thread")
    original = _linear.linear_cross_entropy_with_grad
    seen: list[tuple[int, object]] = []

    def spy(*args, **kwargs):
        blas = [i["num_threads"] for i in threadpoolctl.threadpool_info()
                if i["user_api"] == "blas"]  # fmt: skip
        seen.append((max(blas), kwargs.get("workers")))
        return original(*args, **kwargs)

    monkeypatch.setattr(_linear, "linear_cross_entropy_with_grad", spy)
    m = measure_linear(9, 3, 5, rounds=2, min_sample_seconds=1e-4, memory=False)
    assert set(m.times) == {"linear fused", "linear unfused", "linear products",
                            "linear fused blas", "linear unfused blas"}  # fmt: skip
    assert set(seen) == {(1, 1), (cores, None)}
    assert m.labels["linear fused blas"] == f"fused, BLAS on {cores} threads"


def test_linear_and_sweep_do_not_mix(capsys):
    assert _cli.main(["bench", "--sweep", "--linear", "4", "2", "3"]) == 2
    assert "drop --linear" in capsys.readouterr().err


# -- the logits: one place draws every benchmark's distributions -----------------------

from smoothce._bench_logits import (  # noqa: E402
    DISTRIBUTIONS,
    NAMES,
    draw_linear_head,
    draw_logits,
    logit_stats,
)

# Sample statistics are held to six standard errors of their estimate: a failure is
# then a wrong distribution, not bad luck (about 2e-9 for a normal statistic).
SE = 6.0


def _mean_and_std_bounds(values, mean, std):
    n = values.size
    assert abs(values.mean() - mean) <= SE * std / np.sqrt(n)
    # The sample standard deviation of n normals has a standard error of std / sqrt(2n).
    assert abs(values.std() - std) <= SE * std / np.sqrt(2 * n)


@pytest.mark.parametrize("name", NAMES)
def test_every_distribution_draws_what_its_table_says(name):
    d = DISTRIBUTIONS[name]
    z, y = draw_logits(name, (4000, 50), np.float64)
    assert z.shape == (4000, 50)
    assert y.shape == (4000,)
    assert y.dtype == np.int64
    assert y.min() >= 0
    assert y.max() < 50
    rows = np.arange(len(y))
    base = z.copy()
    base[rows, y] -= d.label_margin  # undo the margin: what is left is scale N(0, 1) + offset
    _mean_and_std_bounds(base, d.offset, d.scale)


def test_trained_logits_put_the_label_on_top_in_most_rows():
    # 3 N(0, 1) + 10 against the largest of K - 1 others: at K = 10 the label wins unless
    # the others' maximum beats it by 10 / 3 standard deviations of their difference.
    z, y = draw_logits("trained", (10_000, 10))
    share = np.mean(z.argmax(axis=1) == y)
    assert share > 0.9
    assert logit_stats(z, y, max_rows=len(y))["label_is_max"] == pytest.approx(share)
    normal, y_normal = draw_logits("normal", (10_000, 10))
    assert np.mean(normal.argmax(axis=1) == y_normal) < 0.2  # about 1/K without a margin


def test_offset_logits_have_a_mean_of_fifty():
    z, y = draw_logits("offset", (2000, 100))
    stats = logit_stats(z, y)
    assert abs(stats["mean"] - 50.0) <= SE / np.sqrt(4096 * 100)
    assert stats["max"] > 50.0


def test_draws_are_seeded_and_standard_normals_are_the_old_draws():
    a, ya = draw_logits("wide", (30, 7), seed=3)
    b, yb = draw_logits("wide", (30, 7), seed=3)
    assert np.array_equal(a, b)
    assert np.array_equal(ya, yb)
    c, _ = draw_logits("wide", (30, 7), seed=4)
    assert not np.array_equal(a, c)
    # Before there was a choice, the benchmarks drew logits, then labels, from seed 0.
    rng = np.random.default_rng(0)
    old = rng.standard_normal((30, 7), dtype=np.float32)
    old_labels = rng.integers(0, 7, size=30)
    z, y = draw_logits("normal", (30, 7))
    assert np.array_equal(z, old)
    assert np.array_equal(y, old_labels)


def test_a_generator_draws_chunks_from_one_stream():
    rng = np.random.default_rng(5)
    first, _ = draw_logits("normal", (4, 3), seed=rng)
    second, _ = draw_logits("normal", (4, 3), seed=rng)
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "bfloat16"])
def test_low_precision_logits_are_the_float32_draw_rounded(name, dtype):
    if dtype == "bfloat16":
        dtype = np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    z, y = draw_logits(name, (20, 6), dtype)
    assert z.dtype == np.dtype(dtype)
    assert z.flags.c_contiguous
    if z.dtype != np.float64:
        wide, y32 = draw_logits(name, (20, 6), np.float32)
        assert np.array_equal(z, wide.astype(dtype))
        assert np.array_equal(y, y32)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: draw_logits("uniform", (2, 3)), "logits must be one of 'normal', 'wide'"),
        (lambda: draw_logits("normal", (2, 3), np.int32), "got dtype=int32"),
        (lambda: draw_logits("normal", (2,)), "shape must be a pair (N, K); got shape=(2,)"),
        (lambda: draw_logits("normal", (2, 0)), "K must be a positive integer; got K=0"),
        (lambda: draw_linear_head("normal", 2, True, 3), "d must be a positive integer"),
    ],
)
def test_bad_draws_name_the_argument(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


@pytest.mark.parametrize("name", NAMES)
def test_the_linear_head_scales_its_logits_to_the_distribution(name):
    d = DISTRIBUTIONS[name]
    h, w, b, y = draw_linear_head(name, 2000, 64, 50, np.float64)
    assert (h.shape, w.shape, b.shape, y.shape) == ((2000, 64), (50, 64), (50,), (2000,))
    z = h @ w.T + b
    # The same draws without a margin and at unit scale: hidden, classifier, labels.
    h0, w0, _, y0 = draw_linear_head("normal", 2000, 64, 50, np.float64)
    assert np.array_equal(y, y0)
    np.testing.assert_allclose(w, d.scale * w0, rtol=1e-15)
    plain = d.scale * (h0 @ w0.T) + d.offset
    rows = np.arange(len(y))
    # The label's logit gains exactly the margin (float64 rounding of a 64-term dot).
    np.testing.assert_allclose(z[rows, y] - plain[rows, y], d.label_margin, atol=1e-10)
    others = np.ones(z.shape, dtype=bool)
    others[rows, y] = False
    if d.label_margin == 0:
        np.testing.assert_allclose(z, plain, rtol=1e-12, atol=1e-12)
        _mean_and_std_bounds(z - d.offset, 0.0, d.scale)
    else:
        # The others gain the margin times w_c . w_y / |w_y|**2: noise of standard
        # deviation about margin / sqrt(d) (the docstring's claim), on top of the spread.
        spread = np.hypot(d.scale, d.label_margin / np.sqrt(64))
        assert (z - d.offset)[others].std() == pytest.approx(spread, rel=0.05)


# -- several distributions in one measurement ----------------------------------------


def test_distributions_are_timed_in_the_same_rounds():
    ms = _bench.measure(
        (16, 5), logits=("normal", "trained"), workers=[1], rounds=3,
        min_sample_seconds=1e-4, kinds={"exp floor", "smoothce fwd+grad", "naive fwd+grad"},
    )  # fmt: skip
    assert [m.logits for m in ms] == ["normal", "trained"]
    assert all(m.timed_with == ["normal", "trained"] for m in ms)
    assert set(ms[0].times) == set(ms[1].times) == {"exp floor", "smoothce fwd+grad w1",
                                                     "naive fwd+grad"}  # fmt: skip
    assert ms[1].logit_stats["label_is_max"] > ms[0].logit_stats["label_is_max"]
    assert all(len(v) == 3 for m in ms for v in m.samples.values())


def test_rounds_interleave_the_candidates_of_every_distribution(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(_bench.time, "perf_counter", clock.perf_counter)

    def new(name):
        return Measurement((2, 2), "float32", 0.1, 16, logits=name)

    def build(name, m):
        return [
            _bench.Candidate(key, key, "naive", 1, clock.candidate(f"{name}/{key}", 0.03))
            for key in ("a", "b")
        ]

    ms = _bench._measure_together(
        ["normal", "wide"], build, new, lambda c: None, 2, 0.02, False, None
    )
    assert [sorted(m.samples) for m in ms] == [["a", "b"], ["a", "b"]]
    calls = [e for e in clock.log if e != "clock"]
    timed = calls[-8:]  # two rounds of four candidates, after calibration
    assert sorted(timed[:4]) == sorted(timed[4:]) == ["normal/a", "normal/b", "wide/a", "wide/b"]


def test_distributions_that_do_not_fit_together_are_timed_one_after_another():
    nbytes = 16 * 5 * 4
    ms = _bench.measure(
        (16, 5), logits=("normal", "offset"), workers=[1], rounds=2, min_sample_seconds=1e-4,
        kinds={"exp floor"}, max_memory_bytes=2.5 * nbytes,  # one fits (2x), two not (3x)
    )  # fmt: skip
    assert [m.timed_with for m in ms] == [["normal"], ["offset"]]
    assert all("exp floor" in m.times for m in ms)
    out = io.StringIO()
    _bench_report.format_table(ms, out)
    assert "normal and offset logits timed one after another (memory)" in out.getvalue()


def test_an_unknown_distribution_is_refused_before_timing():
    with pytest.raises(ValueError, match="logits must be one of"):
        _bench.measure((4, 3), logits=("normal", "gumbel"))


# -- the summary ----------------------------------------------------------------------


def _fake(shape, logits, samples, linear_d=None):
    m = Measurement(shape, "float32", 0.1, 4 * shape[0] * shape[1], logits=logits)
    m.linear_d = linear_d
    m.samples = {k: list(v) for k, v in samples.items()}
    m.times = {k: float(np.median(v)) for k, v in samples.items()}
    m.spread = {k: [float(np.percentile(v, 25)), float(np.percentile(v, 75))]
                for k, v in samples.items()}  # fmt: skip
    m.calls_per_sample = dict.fromkeys(samples, 1)
    m.labels = {k: k.replace(" w1", ", 1 thread") for k in samples}
    m.timed_with = ["normal", "trained"]
    m.rounds = 3
    return m


@pytest.mark.parametrize(
    ("items", "text"),
    [
        ([("A", "2.0x faster")], "2.0x faster at A"),
        ([("A", "2.0x faster"), ("B", "3.0x faster")], "faster at both shapes (2.0x-3.0x)"),
        ([("A", "within noise"), ("B", "within noise"), ("C", "1.5x slower")],
         "within noise at A and B; 1.5x slower at C"),
        ([("A", "1.2x faster"), ("B", "1.1x faster"), ("C", "4.0x faster"), ("D", "within noise")],
         "faster at 3 of 4 shapes (1.1x-4.0x); within noise at D"),
        ([("A", "2.0x slower"), ("B", "1.5x slower"), ("C", "within noise")],
         "2.0x slower at A and 1.5x at B".join(["within noise at C; ", ""])),
        ([("A", "2.0x faster (from 1 sample(s): no spread to judge the noise by)")],
         "2.0x faster at A (from fewer than 3 samples: no spread to judge the noise by)"),
    ],
)  # fmt: skip
def test_a_summary_line_words_the_verdicts_of_every_shape(items, text):
    assert _bench_report._across(items) == text


def test_the_summary_has_one_line_per_comparison_and_distribution():
    fast, slow, naive = [1.0, 1.0, 1.0], [4.0, 4.0, 4.0], [2.0, 2.0, 2.0]
    results = []
    for shape in ((32, 10), (256, 10)):
        results.append(_fake(shape, "normal", {"smoothce fwd+grad w1": fast,
                                               "naive fwd+grad": naive}))  # fmt: skip
        results.append(_fake(shape, "trained", {"smoothce fwd+grad w1": slow,
                                                "naive fwd+grad": naive}))  # fmt: skip
    out = io.StringIO()
    _bench_report.format_summary(results, out)
    lines = out.getvalue().strip().splitlines()
    assert lines[0].startswith("Summary: each comparison over the 2 shape(s)")
    assert "on normal and trained logits" in lines[0]
    assert lines[1:] == [
        "  smoothce fwd+grad, 1 thread vs naive fwd+grad, normal logits: "
        "faster at both shapes (2.0x-2.0x)",
        "  smoothce fwd+grad, 1 thread vs naive fwd+grad, trained logits: "
        "slower at both shapes (2.0x-2.0x)",
        "  smoothce fwd+grad, 1 thread, trained vs normal logits: "
        "slower at both shapes (4.0x-4.0x)",
        "  naive fwd+grad, trained vs normal logits: within noise at both shapes",
    ]


def test_the_table_puts_each_distribution_beside_the_reference():
    results = [
        _fake((32, 10), "normal", {"smoothce fwd+grad w1": [1.0, 1.1, 1.2],
                                   "naive fwd+grad": [2.0, 2.0, 2.0]}),
        _fake((32, 10), "trained", {"smoothce fwd+grad w1": [3.0, 3.1, 3.2],
                                    "naive fwd+grad": [2.0, 2.0, 2.0]}),
    ]  # fmt: skip
    out = io.StringIO()
    _bench_report.format_table(results, out)
    text = out.getvalue()
    assert "normal and trained logits timed in the same rounds" in text
    assert "vs normal" in text  # the column of verdicts against standard normals
    row = next(line for line in text.splitlines() if line.strip().startswith("trained "))
    assert row.split()[0] == "trained"
    assert row.endswith("2.8x slower")
    verdicts = [line for line in text.splitlines() if line.startswith("  - smoothce")]
    assert verdicts == [
        "  - smoothce fwd+grad, 1 thread vs naive fwd+grad: normal: 1.8x faster; "
        "trained: 1.6x slower"
    ]


def test_the_sweep_prints_each_distribution_and_its_cost_against_normal():
    def cell(shape, logits, ours):
        return _fake(shape, logits, {"smoothce fwd+grad w1": ours,
                                     "naive fwd+grad": [2.0, 2.0, 2.0]})  # fmt: skip

    results = [cell((4, 3), "normal", [1.0] * 3), cell((4, 3), "trained", [3.0] * 3)]
    out = io.StringIO()
    _bench_report.format_sweep(results, 1, out)
    text = out.getvalue()
    assert "against naive fwd+grad, on normal logits" in text
    assert "against naive fwd+grad, on trained logits" in text
    assert "on trained logits against normal logits" in text
    rows = [line.split() for line in text.splitlines() if line.split()[:1] == ["4"]]
    # naive and torch grids per distribution, then trained against normal
    assert rows == [["4", "2.0x"], ["4", "-"], ["4", "1.5x", "slower"], ["4", "-"],
                    ["4", "3.0x", "slower"]]  # fmt: skip


# -- the performance page -------------------------------------------------------------


def test_the_page_heatmaps_tell_noise_from_not_measured(tmp_path, monkeypatch):
    # Both kinds of cell were drawn plain white, with no colour bar to read the rest by.
    plt = pytest.importorskip("matplotlib.pyplot")
    import dataclasses
    import json
    import runpy
    from pathlib import Path

    ours, naive = "smoothce fwd+grad w1", "naive fwd+grad"
    results = []
    for logits in ("normal", "trained"):
        for shape, theirs in (((32, 10), [1.0, 1.1, 1.2]), ((32, 100), [3.0, 3.0, 3.0])):
            m = _fake(shape, logits, {"exp floor": [0.5] * 3, "smoothce forward w1": [0.9] * 3,
                                      ours: [1.0, 1.1, 1.2], naive: theirs})  # fmt: skip
            results.append(dataclasses.asdict(m))  # no PyTorch: "not measured"
    (tmp_path / "data").mkdir()
    (tmp_path / "examples").mkdir()
    logits = {n: {"formula": n, "stands_for": n} for n in ("normal", "trained")}
    doc = {"smoothce": "test", "command": "python -m smoothce bench --sweep", "cores": 2,
           "sweep": True, "load_average": 0.5, "results": results, "logits": logits}  # fmt: skip
    (tmp_path / "data" / "performance.json").write_text(json.dumps(doc))
    script = Path(__file__).parents[1] / "docs" / "examples" / "plot_performance.py"
    monkeypatch.chdir(tmp_path / "examples")
    monkeypatch.setattr(plt, "show", lambda *a, **k: None)
    plt.close("all")
    runpy.run_path(str(script))
    sweep = plt.figure(plt.get_fignums()[1])
    naive_ax = next(
        ax for ax in sweep.axes if ax.get_title() == "normal logits: against naive NumPy"
    )
    torch_ax = next(ax for ax in sweep.axes if "against PyTorch" in ax.get_title())
    # Rows N = (32,), columns K = (10, 100): within noise at K=10, 2.7x at K=100.
    ratios, special = (image.get_array() for image in naive_ax.images)
    assert np.ma.getmaskarray(ratios)[0, 0]
    assert not np.ma.getmaskarray(ratios)[0, 1]
    assert ratios[0, 1] == pytest.approx(np.log2(3.0 / 1.1))
    assert special[0, 0] == 0  # the "within noise" colour
    assert np.ma.getmaskarray(special)[0, 1]
    assert [t.get_text() for t in naive_ax.texts] == ["~", "2.7x"]
    torch_special = torch_ax.images[1].get_array()
    assert (torch_special == 1).all()  # the "not measured" colour, with no text
    assert len(torch_ax.texts) == 0
    assert any(ax.get_label() == "<colorbar>" for ax in sweep.axes)
    legend = [t.get_text() for t in sweep.legends[0].get_texts()]
    assert legend == ["~  within noise (the q1-q3 ranges overlap)", "not measured"]
    plt.close("all")
