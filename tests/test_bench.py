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

from smoothce import _bench, _cli
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
    _bench.print_legend(out)
    _bench.format_table([m], out)
    text = out.getvalue()
    for explained in ("calls/sample", "q1-q3", "x floor", "exp floor", "smoothce fwd+grad"):
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
    _bench.format_sweep(results, 1, out)
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
    assert "round 1/1" in captured.err
    assert "round 2/" not in captured.err


def test_sweep_refuses_shapes(capsys):
    assert _cli.main(["bench", "--sweep", "--shape", "8", "3"]) == 2
    assert "--sweep times its own grid" in capsys.readouterr().err


def test_sweep_prints_a_grid_against_naive_and_one_against_torch(monkeypatch, capsys):
    monkeypatch.setattr(_cli, "SWEEP_N", (4, 8))
    monkeypatch.setattr(_cli, "SWEEP_K", (3, 5))
    assert _cli.main(["bench", "--sweep", "--rounds", "3", "--min-sample-ms", "0.1"]) == 0
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
    assert "(12, 7) float32" in out
    assert "- smoothce linear, fused vs logits, loss, products: " in out
    assert "- smoothce linear, fused vs the 3 matrix products: " in out
    assert "- smoothce linear, fused: +" in out  # its extra memory


def test_measure_linear_times_three_candidates_on_the_unfused_logits_size():
    # Fused against unfused exactness is tests/test_linear.py's; here the bench's view.
    from smoothce._bench import measure_linear

    m = measure_linear(9, 3, 5, rounds=2, min_sample_seconds=1e-4, memory=False)
    assert set(m.times) == {"linear fused", "linear unfused", "linear products"}
    assert m.shape == (9, 5)
    assert m.logits_bytes == 9 * 5 * 4
    assert all(len(v) == 2 for v in m.samples.values())


def test_linear_and_sweep_do_not_mix(capsys):
    assert _cli.main(["bench", "--sweep", "--linear", "4", "2", "3"]) == 2
    assert "drop --linear" in capsys.readouterr().err
