"""`python -m smoothce` end to end, through a subprocess as a user runs it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

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
    assert "no spread to judge the noise by" in result.stdout  # 2 rounds: said so


def test_quick_timing_shows_its_spread_on_normal_and_trained_logits():
    # It printed one ratio, no spread: 16.4x on one run, 4.0x on the next.
    result = _run("--shape", "64", "10", "--repeats", "3")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    times = re.findall(
        r"(smoothce|naive softmax-then-log) +([\d.]+) ms \(([\d.]+)-([\d.]+)\)", out
    )
    assert len(times) == 4  # two candidates on two distributions
    for _, median, q1, q3 in times:
        assert float(q1) <= float(median) <= float(q3)
    assert "normal logits (N(0, 1))" in out
    assert "trained logits (3 N(0, 1), +10 on the label's logit)" in out
    verdicts = re.findall(r"smoothce against naive: (.*)", out)
    assert len(verdicts) == 2
    assert all(re.fullmatch(r"within noise|\d+\.\d+x (faster|slower)", v) for v in verdicts)
    assert "python -m smoothce bench" in out


def test_quick_timing_warns_of_a_busy_machine(monkeypatch, capsys):
    monkeypatch.setattr(_cli, "load_average", lambda: 9.5)
    assert _cli.main(["--shape", "8", "3", "--repeats", "3"]) == 0
    assert "note: load average 9.5" in capsys.readouterr().out


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
    for name in ("NumPy exp", "smoothce forward, 1 thread", "smoothce fwd+grad, 2 threads"):
        assert name in out
    assert "smoothce fwd+grad, 1 thread vs naive fwd+grad: " in out
    assert "smoothce fwd+grad, 2 threads vs smoothce fwd+grad, 1 thread: " in out
    assert "extra peak memory" in out


def test_bench_help_reads_well():
    result = _run("bench", "--help")
    assert result.returncode == 0
    assert "NumPy's exp" in result.stdout
    assert "--workers" in result.stdout
    assert "--logits NAME[,NAME...]" in result.stdout
    for name in ("normal", "wide", "trained", "offset"):
        assert f"\n  {name} " in result.stdout  # each distribution explained
    assert "--json docs/data/performance.json" in result.stdout  # the page's one command


def test_bench_json_output():
    result = _run(
        "bench", "--shape", "32", "20", "--workers", "1", "--rounds", "3", "--json",
        "--min-sample-ms", "1", "--logits", "offset",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    (m,) = data["results"]
    assert m["shape"] == [32, 20]
    assert m["dtype"] == "float32"
    assert m["logits"] == "offset"
    assert m["logit_stats"]["mean"] > 49
    assert list(data["logits"]) == ["offset"]
    assert data["logits"]["offset"]["formula"] == "N(0, 1) + 50"
    assert data["command"].startswith("python -m smoothce bench --shape 32 20")
    assert set(m["times"]) >= {"exp floor", "smoothce forward w1", "naive fwd+grad"}
    assert all(t > 0 for t in m["times"].values())
    for key, (q1, q3) in m["spread"].items():
        assert q1 <= m["times"][key] <= q3
        assert len(m["samples"][key]) == 3


_QUICK = ("--shape", "8", "3", "--workers", "1", "--rounds", "3", "--min-sample-ms", "0.1")


def test_bench_progress_lines_stay_out_of_a_log_file():
    # The carriage-return progress lines ended up in log files: stderr here is a pipe.
    result = _run("bench", *_QUICK)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr
    assert "round 1/" not in result.stderr


def _run_on_a_terminal(*args):
    """Run ``python -m smoothce`` with its standard error on a pseudo-terminal; return
    (exit status, standard output, what the terminal received)."""
    pty = pytest.importorskip("pty")
    leader, follower = pty.openpty()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "smoothce", *args], stdout=out, stderr=follower
        )
        os.close(follower)
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the child has closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        os.close(leader)
        status = proc.wait()
        out.seek(0)
        return status, out.read().decode(), seen.decode()


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_bench_progress_shows_on_a_terminal():
    status, out, terminal = _run_on_a_terminal("bench", *_QUICK)
    assert status == 0, terminal
    assert "\r  8 x 3 float32, normal and trained logits: round 3/3" in terminal
    assert "round 1/" not in out
    status, out, terminal = _run_on_a_terminal("bench", *_QUICK, "--no-progress")
    assert status == 0, terminal
    assert "round 1/" not in terminal


def test_bench_default_run_ends_with_a_summary():
    # The default run's ~130 lines ended without one.
    result = _run("bench", *_QUICK)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.rstrip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Summary: "))
    summary = lines[start + 1 :]
    assert summary  # everything after the heading is a summary line, to the end
    for line in summary:
        assert re.fullmatch(r"  .+, (normal|trained|trained vs normal) logits: .+", line), line
    assert any(", trained vs normal logits: " in line for line in summary)
    assert any(line.startswith("  smoothce fwd+grad, 1 thread vs naive fwd+grad, trained logits:")
               for line in summary)  # fmt: skip


def test_bench_reports_the_trained_logits_beside_the_normal_ones_by_default():
    result = _run("bench", *_QUICK)
    out = result.stdout
    assert "normal and trained logits" in out.splitlines()[0]
    assert "normal and trained logits timed in the same rounds" in out
    assert re.search(r"^  normal: +N\(0, 1\): mean", out, re.M)
    assert re.search(r"^  trained: 3 N\(0, 1\), \+10 on the label's logit: mean", out, re.M)


@pytest.mark.parametrize(
    ("flags", "names"),
    [
        (["--logits", "wide"], ["wide"]),
        (["--logits", "offset,normal"], ["offset", "normal"]),
        (["--logits", "wide", "--logits", "trained,wide"], ["wide", "trained"]),
    ],
)
def test_bench_logits_take_a_comma_list_or_repeat(flags, names):
    result = _run("bench", *_QUICK, "--json", *flags)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [m["logits"] for m in data["results"]] == names
    assert list(data["logits"]) == names


@pytest.mark.parametrize("value", ["gumbel", "normal,", "normal,Wide"])
def test_bench_refuses_an_unknown_distribution(value):
    result = _run("bench", "--logits", value)
    assert result.returncode == 2
    assert "argument --logits: invalid distribution" in result.stderr
    assert "choose from normal, wide, trained, offset" in result.stderr


def test_bench_json_to_a_file_keeps_the_tables_on_stdout(tmp_path):
    path = tmp_path / "out.json"
    result = _run("bench", *_QUICK, "--logits", "normal", "--json", str(path))
    assert result.returncode == 0, result.stderr
    assert "Summary: " in result.stdout
    data = json.loads(path.read_text())
    assert data["results"][0]["shape"] == [8, 3]
    assert data["command"].endswith(f"--json {path}")


def test_bench_linear_says_which_logits_and_threads_it_ran_with():
    result = _run(
        "bench", "--shape", "8", "3", "--linear", "16", "8", "20", "--rounds", "3",
        "--min-sample-ms", "0.1", "--workers", "1", "--logits", "wide,trained",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "(16, 20) float32, linear head, d=8" in out
    assert re.search(r"^  wide: +5 N\(0, 1\): mean [-\d.]+, std [\d.]+, max", out, re.M)
    assert re.search(r"^  trained: 3 N\(0, 1\), \+10 on the label's logit: mean", out, re.M)
    threads = re.search(r"^  threads: (.*)$", out, re.M)
    assert threads is not None
    assert "smoothce workers=1" in threads[1]
    assert "environment: " in threads[1]
    assert "BLAS" in threads[1]


def test_bench_sweep_takes_logits(monkeypatch, capsys):
    monkeypatch.setattr(_cli, "SWEEP_N", (4,))
    monkeypatch.setattr(_cli, "SWEEP_K", (3,))
    argv = ["bench", "--sweep", "--rounds", "3", "--min-sample-ms", "0.1", "--logits",
            "normal,offset", "--json"]  # fmt: skip
    assert _cli.main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["sweep"] is True
    assert [m["logits"] for m in data["results"]] == ["normal", "offset"]
    # Everything the performance page draws: NumPy's exp, smoothce, naive and PyTorch.
    for m in data["results"]:
        assert {"exp floor", "smoothce forward w1", "smoothce fwd+grad w1",
                "naive fwd+grad"} <= set(m["times"])  # fmt: skip


@pytest.mark.parametrize("where", ["missing/out.json", "."])
def test_bench_refuses_a_json_file_it_could_not_write_before_timing(tmp_path, where):
    # A sweep wrote nothing after six minutes of timing: its --json directory was gone.
    path = tmp_path / where
    result = _run("bench", *_QUICK, "--json", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: --json {path}: ")
    assert result.stdout == ""  # refused before timing anything
