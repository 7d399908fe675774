"""`python -m smoothce` end to end, through a subprocess as a user runs it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from smoothce import _cli


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "smoothce", *args], capture_output=True, text=True, check=False
    )


def test_main_job_prints_the_worked_examples_and_a_timing():
    result = _run("--shape", "64", "10", "--repeats", "2")
    assert result.returncode == 0, result.stderr
    for value in ("0.927312", "0.435038", "0.185182"):
        assert f"loss = {value}" in result.stdout
    assert result.stdout.count(" ok") == 3
    assert "naive softmax-then-log" in result.stdout
    assert "(64, 10)" in result.stdout


def test_version_flag():
    result = _run("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("smoothce ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shape", "0", "5"], "must be a positive integer; got 0"),
        (["--repeats", "0"], "--repeats"),
        (["bench", "--epsilon", "2"], "must be in [0, 1]; got 2.0"),
        (["bench", "--workers", "0"], "must be a non-zero integer"),
        (["bench", "--dtype", "int8"], "invalid choice: 'int8'"),
        (["bench", "--max-memory", "0"], "must be a positive number; got 0"),
        (["bench", "--min-sample-ms", "nan"], "must be a positive number; got nan"),
        (["bench", "--max-memory", "lots"], "must be a positive number; got 'lots'"),
    ],
)
def test_bad_arguments_exit_with_status_2(args, message):
    result = _run(*args)
    assert result.returncode == 2
    assert message in result.stderr


def test_a_wrong_example_makes_the_exit_status_nonzero(monkeypatch, capsys):
    wrong = [(*_cli.WORKED_EXAMPLES[0][:4], 0.5)]
    monkeypatch.setattr(_cli, "WORKED_EXAMPLES", wrong)
    assert _cli.main(["--no-timing"]) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_bench_times_every_candidate_and_prints_the_verdicts():
    result = _run(
        "bench", "--shape", "64", "50", "--workers", "1", "--workers", "2", "--rounds", "3",
        "--min-sample-ms", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for name in ("exp floor", "smoothce forward, 1 thread", "smoothce fwd+grad, 2 threads"):
        assert name in out
    assert "smoothce fwd+grad, 1 thread vs naive fwd+grad: " in out
    assert "smoothce fwd+grad, 2 threads vs smoothce fwd+grad, 1 thread: " in out
    assert "extra peak memory" in out
    assert "round 3/3" in result.stderr  # progress goes to stderr


def test_bench_help_reads_well():
    result = _run("bench", "--help")
    assert result.returncode == 0
    assert "exp floor" in result.stdout
    assert "--workers" in result.stdout


def test_bench_json_output():
    import json

    result = _run(
        "bench", "--shape", "32", "20", "--workers", "1", "--rounds", "3", "--json",
        "--min-sample-ms", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    (m,) = data["results"]
    assert m["shape"] == [32, 20]
    assert m["dtype"] == "float32"
    assert set(m["times"]) >= {"exp floor", "smoothce forward w1", "naive fwd+grad"}
    assert all(t > 0 for t in m["times"].values())
    for key, (q1, q3) in m["spread"].items():
        assert q1 <= m["times"][key] <= q3
        assert len(m["samples"][key]) == 3
