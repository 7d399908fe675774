"""`python -m smoothce eval` on Dask (issue 10, item 4): Zarr input, the threaded
scheduler, ``--dask-workers`` and ``--scheduler``, against the memmap path's report.

Skipped where the `dask` extra is not installed. The cluster for ``--scheduler`` is
started once for the module (two worker processes) and closed at its end; every
subprocess has a time limit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")

import dask  # noqa: E402

from smoothce import _cli  # noqa: E402

TIMEOUT = 120  # seconds for any one subprocess
N, K = 1000, 7
# Memmap chunks of 128 rows: several chunks, so block boundaries matter.
CHUNK = ["--chunk-elements", str(128 * K)]


def _zarr(path: Path, a: np.ndarray, chunks: tuple[int, ...], zarr_format: int = 3) -> Path:
    arr = zarr.create_array(
        store=str(path), shape=a.shape, chunks=chunks, dtype=a.dtype, zarr_format=zarr_format
    )
    arr[...] = a
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """float32 and float64 logits (N, K) and labels with ignored rows, as .npy files and
    as Zarr arrays: chunks that tile the memmap chunks (64 rows), chunks that do not
    (100 rows), and chunks across the class axis."""
    d = tmp_path_factory.mktemp("eval-dask")
    rng = np.random.default_rng(0)
    z64 = rng.standard_normal((N, K)) * 3
    z32 = z64.astype(np.float32)
    y = rng.integers(0, K, N)
    y[::9] = -100
    for name, a in (("z32", z32), ("z64", z64), ("y", y)):
        np.save(d / f"{name}.npy", a)
    _zarr(d / "z32.zarr", z32, (64, K))
    _zarr(d / "z32_100.zarr", z32, (100, K))
    _zarr(d / "z32_split.zarr", z32, (64, 3))
    _zarr(d / "z64_100.zarr", z64, (100, K), zarr_format=2)
    _zarr(d / "y.zarr", y, (100,), zarr_format=2)
    return d


@pytest.fixture(scope="module")
def scheduler():
    """The address of a two-process LocalCluster, closed after the module."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # distributed's notes on its environment
        cluster = distributed.LocalCluster(
            n_workers=2,
            processes=True,
            threads_per_worker=1,
            dashboard_address=None,
            silence_logs=logging.CRITICAL,
        )
    yield cluster.scheduler_address
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster.close()


def _main(capsys, *args: object) -> tuple[int, str, str]:
    status = _cli.main(["eval", *map(str, args)])
    out = capsys.readouterr()
    return status, out.out, out.err


def _report(capsys, *args: object) -> dict[str, object]:
    status, out, err = _main(capsys, *args, "--json", "--ignore-index", -100, *CHUNK)
    assert status == 0, err
    report: dict[str, object] = json.loads(out)
    return report


def _same(got: dict[str, object], ref: dict[str, object]) -> None:
    """Every value of the report equal to the bit (the file names aside): a token's
    values depend on its row alone and the sums are exact, whatever the chunking."""
    for key, value in ref.items():
        if key not in ("logits", "labels"):
            assert got[key] == value, key


def _one_line_error(status: int, out: str, err: str, pattern: str) -> str:
    assert status == 2, err
    assert out == ""
    assert "Traceback" not in err
    assert err.startswith("error: "), err
    assert err.count("\n") == 1, err
    assert re.search(pattern, err), err
    return err


# -- the same report on every path ------------------------------------------------------
@pytest.mark.parametrize(
    ("logits", "labels"),
    [("z32.zarr", "y.zarr"), ("z32.zarr", "y.npy"), ("z32.npy", "y.zarr")],
)
def test_zarr_on_the_threaded_scheduler_gives_the_memmap_report(data, capsys, logits, labels):
    ref = _report(capsys, data / "z32.npy", data / "y.npy")
    got = _report(capsys, data / logits, data / labels)
    _same(got, ref)
    assert got["logits"] == str(data / logits)


def test_zarr_chunks_that_do_not_tile_the_memmap_chunks(data, capsys):
    """Blocks of whole storage chunks (100 rows), which cut the engine's blocks: a
    token's values depend on its row alone and the sums are exact, so the report is
    the memmap report bit for bit, float64 and float32 alike."""
    ref = _report(capsys, data / "z64.npy", data / "y.npy")
    _same(_report(capsys, data / "z64_100.zarr", data / "y.zarr"), ref)
    ref = _report(capsys, data / "z32.npy", data / "y.npy")
    _same(_report(capsys, data / "z32_100.zarr", data / "y.npy"), ref)


def test_zarr_chunked_across_the_class_axis_is_read_in_whole_rows_with_one_note(data, capsys):
    ref = _report(capsys, data / "z32.npy", data / "y.npy")
    status, out, err = _main(
        capsys, data / "z32_split.zarr", data / "y.zarr", "--json", "--ignore-index", -100, *CHUNK
    )
    assert status == 0, err
    _same(json.loads(out), ref)
    assert err.count("\n") == 1, err
    assert re.match(r"note: logits Zarr array '.*z32_split\.zarr' is stored in 3 chunks", err)


@pytest.mark.parametrize(
    ("logits", "labels", "memmap"),
    [
        ("z32.npy", "y.npy", "z32.npy"),
        ("z32.zarr", "y.zarr", "z32.npy"),
        ("z32_100.zarr", "y.npy", "z32.npy"),
        ("z64_100.zarr", "y.npy", "z64.npy"),
    ],
)
def test_scheduler_option_gives_the_memmap_report(data, capsys, scheduler, logits, labels, memmap):
    ref = _report(capsys, data / memmap, data / "y.npy")
    got = _report(capsys, data / logits, data / labels, "--scheduler", scheduler)
    _same(got, ref)  # any chunking: the same bits


def test_scheduler_option_on_classes_in_the_middle_axis(tmp_path, capsys, scheduler):
    rng = np.random.default_rng(1)
    z = (rng.standard_normal((60, 5, 4)) * 2).astype(np.float32)  # classes on axis 1
    y = rng.integers(0, 5, (60, 4))
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "y.npy", y)
    _zarr(tmp_path / "z.zarr", z, (10, 5, 4))
    args = ("--axis", 1, "--json", "--chunk-elements", 200)  # memmap chunks of 10 rows
    status, ref, err = _main(capsys, tmp_path / "z.npy", tmp_path / "y.npy", *args)
    assert status == 0, err
    for logits in ("z.npy", "z.zarr"):
        status, out, err = _main(
            capsys, tmp_path / logits, tmp_path / "y.npy", *args, "--scheduler", scheduler
        )
        assert status == 0, err
        _same(json.loads(out), json.loads(ref))


def _run(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smoothce", "eval", *map(str, args)],
        capture_output=True, text=True, check=False, timeout=TIMEOUT, env=env,
    )  # fmt: skip


def test_dask_workers_start_a_local_cluster_and_give_the_memmap_report(data, capsys):
    ref = _report(capsys, data / "z32.npy", data / "y.npy")
    out = _run(
        data / "z32.zarr", data / "y.npy", "--dask-workers", 2, "--json", "--ignore-index",
        -100, "--progress", *CHUNK,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    _same(json.loads(out.stdout), ref)
    # distributed's own progress bar, on standard error (standard output is the JSON)
    assert "100% Completed" in out.stderr
    assert "Traceback" not in out.stderr


# -- progress ------------------------------------------------------------------------------
def test_progress_on_the_threaded_scheduler_is_dasks_bar_on_stderr(data, capsys):
    status, out, err = _main(capsys, data / "z32.zarr", data / "y.zarr", "--progress", "--json",
                             "--ignore-index", -100)  # fmt: skip
    assert status == 0, err
    json.loads(out)
    assert "100% Completed" in err
    status, out, err = _main(capsys, data / "z32.zarr", data / "y.zarr", "--ignore-index", -100)
    assert (status, err) == (0, "")  # small data, and stderr is not a terminal


def test_progress_on_a_cluster(data, capsys, scheduler):
    status, out, err = _main(capsys, data / "z32.npy", data / "y.npy", "--scheduler", scheduler,
                             "--progress", "--json", "--ignore-index", -100)  # fmt: skip
    assert status == 0, err
    json.loads(out)
    assert "100% Completed" in err


# -- the errors of the memmap path -----------------------------------------------------------
def _message(err: str) -> str:
    """The message without the file's name (the .npy and the Zarr path differ)."""
    return re.sub(r"'[^']*'", "'FILE'", err)


@pytest.fixture(params=["threads", "scheduler"])
def where(request, data):
    """Extra arguments: the threaded scheduler, or the module's cluster."""
    if request.param == "threads":
        return []
    return ["--scheduler", request.getfixturevalue("scheduler")]


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (
            lambda z, y: z.__setitem__((700, 3), np.nan) or z.__setitem__((900, 1), np.inf),
            r"has a non-finite logit in row \[700\]: logits\[700, 3\] = nan; NaN and \+inf",
        ),
        (
            lambda z, y: z.__setitem__(300, -np.inf),
            r"has a row of only -inf logits: row \[300\] has no softmax",
        ),
        (
            lambda z, y: y.__setitem__(650, 11) or y.__setitem__(990, 12),
            r"labels must be class indices in \[0, 7\) or ignore_index=-100; "
            r"got labels\[650\] = 11",
        ),
        (lambda z, y: y.fill(-100), "no element to evaluate: every label equals ignore_index"),
    ],
    ids=["nan", "row of -inf", "label out of range", "all ignored"],
)
def test_bad_data_gives_the_memmap_message(tmp_path, capsys, data, where, edit, pattern):
    z, y = np.load(data / "z32.npy"), np.load(data / "y.npy")
    y[900] = 3  # a bad row must be counted
    edit(z, y)
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "y.npy", y)
    _zarr(tmp_path / "z.zarr", z, (64, K))
    _zarr(tmp_path / "y.zarr", y, (100,))
    ref = _one_line_error(
        *_main(capsys, tmp_path / "z.npy", tmp_path / "y.npy", "--ignore-index", -100, *CHUNK),
        pattern,
    )
    for logits, labels in (("z.zarr", "y.zarr"), ("z.npy", "y.npy")):
        if logits == "z.npy" and not where:
            continue  # .npy without a Dask option is the memmap path itself
        err = _one_line_error(
            *_main(capsys, tmp_path / logits, tmp_path / labels, "--ignore-index", -100, *where),
            pattern,
        )
        assert _message(err) == _message(ref)


def test_a_corrupt_row_in_one_dimensional_logits_on_a_cluster(tmp_path, capsys, scheduler):
    np.save(tmp_path / "z.npy", np.array([0.0, np.inf, 1.0]))
    np.save(tmp_path / "y.npy", np.array(0))
    _one_line_error(
        *_main(capsys, tmp_path / "z.npy", tmp_path / "y.npy", "--scheduler", scheduler),
        r"has a non-finite logit in its only row: logits\[1\] = inf;",
    )


def test_wrong_shape_missing_array_and_group(tmp_path, capsys, data):
    _zarr(tmp_path / "short.zarr", np.zeros(N - 1, np.int64), (100,))
    _one_line_error(
        *_main(capsys, data / "z32.zarr", tmp_path / "short.zarr"),
        r"labels must have the shape of the logits without the class axis 1, \(1000,\); "
        r"'.*short\.zarr' has shape \(999,\)",
    )
    _one_line_error(
        *_main(capsys, tmp_path / "nope.zarr", data / "y.zarr"),
        r"logits file '.*nope\.zarr' does not exist",
    )
    zarr.open_group(str(tmp_path / "group.zarr"), mode="w")
    _one_line_error(
        *_main(capsys, tmp_path / "group.zarr", data / "y.zarr"),
        r"logits Zarr array '.*group\.zarr' is a Zarr group, not an array",
    )


@pytest.mark.parametrize("module", ["zarr", "dask", "distributed"])
def test_missing_extra_says_how_to_install_it(data, capsys, monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails
    extra = ["--dask-workers", 2] if module == "distributed" else []
    _one_line_error(
        *_main(capsys, data / "z32.zarr", data / "y.zarr", *extra),
        rf"'{module}' is not installed: pip install \"smoothce\[dask\]\", or pip install "
        r'-e "\.\[dask\]" in a checkout$',
    )


def test_scheduler_and_dask_workers_are_exclusive(data, capsys):
    with pytest.raises(SystemExit) as stop:
        _cli.main(["eval", str(data / "z32.npy"), str(data / "y.npy"),
                   "--scheduler", "tcp://127.0.0.1:8786", "--dask-workers", "2"])  # fmt: skip
    assert stop.value.code == 2
    assert "argument --dask-workers: not allowed with argument --scheduler" in (
        capsys.readouterr().err
    )


def test_unreachable_scheduler_is_a_one_line_error(data, capsys):
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        _one_line_error(
            *_main(capsys, data / "z32.npy", data / "y.npy", "--scheduler", "tcp://127.0.0.1:9"),
            r"cannot connect to the Dask scheduler at 'tcp://127\.0\.0\.1:9': ",
        )


@pytest.mark.parametrize(
    "address", ["bogus://x", "tcp://host:notaport", "tls://127.0.0.1:1"],
    ids=["unknown scheme", "no port", "tls without a context"],
)  # fmt: skip
def test_a_bad_scheduler_address_exits_at_once_with_one_line(data, address):
    """``--scheduler bogus://x`` printed the right line, then hung 60 s and printed
    ``Exception ignored in Client.__del__ ... TimeoutError``: distributed leaves the
    half-built Client to be closed at exit, when its event loop has stopped. The bound
    is generous (the fix takes about a second), not a timing."""
    try:
        out = subprocess.run(
            [sys.executable, "-m", "smoothce", "eval", str(data / "z32.npy"),
             str(data / "y.npy"), "--ignore-index", "-100", "--scheduler", address],
            capture_output=True, text=True, check=False, timeout=30,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"still running after 30 s; stderr so far: {exc.stderr!r}") from None
    assert "Exception ignored" not in out.stderr
    assert "Traceback" not in out.stderr
    _one_line_error(
        out.returncode, out.stdout, out.stderr,
        rf"^error: cannot connect to the Dask scheduler at '{re.escape(address)}': \S",
    )  # fmt: skip


# -- a per-sample prior, read in blocks like the logits --------------------------------------
def test_per_sample_prior_gives_one_report_on_every_path_and_stays_out_of_the_graph(
    tmp_path, capsys, monkeypatch, scheduler
):
    """A per-sample prior (N, K) failed on the memmap path past one chunk and travelled
    inside the graph on a cluster (34 MiB, and distributed's warning). It is read in
    blocks like the logits: the memmap path, the threaded scheduler, a LocalCluster
    (with the prior as .npy, Zarr or shards) and ``metrics.evaluate`` in memory agree
    to the bit, and the graph stays far below a threshold the prior exceeds."""
    from smoothce import metrics

    n, k = 12_000, 50
    rng = np.random.default_rng(7)
    z = rng.standard_normal((n, k), dtype=np.float32) * 2
    y = rng.integers(0, k, n)
    y[::13] = -100
    u = rng.random((n, k)) + 0.05
    u /= u.sum(axis=1, keepdims=True)  # float64: 4.8 MB
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "u.npy", u)
    _zarr(tmp_path / "u.zarr", u, (1000, k))
    _zarr(tmp_path / "z.zarr", z, (500, k))
    _shards(tmp_path / "us", u, [5000, 5100])
    chunk = ["--chunk-elements", 500 * k]  # 24 blocks
    common = ("--json", "--epsilon", 0.3, "--ignore-index", -100, *chunk)

    def report(*args: object) -> dict[str, object]:
        status, out, err = _main(capsys, *args, *common)
        assert status == 0, err
        assert err == ""
        got: dict[str, object] = json.loads(out)
        return got

    monkeypatch.setattr(metrics, "CHUNK_ELEMENTS", 2000 * k)  # several chunks there too
    m = metrics.evaluate(z, y, 0.3, prior=u, ignore_index=-100, top_k=1)
    ref = report(tmp_path / "z.npy", tmp_path / "y.npy", "--prior", tmp_path / "u.npy")
    fields = ("smoothed_loss", "nll", "perplexity", "accuracy", "ece", "counted")
    assert [ref[f] for f in fields] == [m.loss, m.nll, m.perplexity, m.accuracy, m.ece, m.counted]
    # Above it, distributed warns of a large graph (an error here, as every warning).
    with (
        dask.config.set({"distributed.admin.large-graph-warning-threshold": "1MB"}),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("error")
        for logits, prior, extra in (
            ("z.npy", "u.npy", ["--scheduler", scheduler]),
            ("z.npy", "u.zarr", ["--scheduler", scheduler]),
            ("z.zarr", "us", ["--scheduler", scheduler]),
            ("z.zarr", "u.npy", []),  # the threaded scheduler
            ("z.npy", "u.zarr", []),  # a Zarr prior alone takes the Dask path
        ):
            got = report(tmp_path / logits, tmp_path / "y.npy", "--prior", tmp_path / prior,
                         *extra)  # fmt: skip
            _same(got, ref)
    uniform = report(tmp_path / "z.npy", tmp_path / "y.npy")
    assert uniform["smoothed_loss"] != ref["smoothed_loss"]  # the prior reached the loss


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (
            lambda u: u.__setitem__((700, 3), -0.25),
            r"prior must be non-negative and finite; got prior\[700, 3\] = -0\.25\.$",
        ),
        (
            lambda u: u.__setitem__(800, 0.25),
            r"prior must sum to 1 along the class axis .*; got a sum of 1\.75 at batch "
            r"position \[800\]\.$",
        ),
    ],
    ids=["negative", "sum"],
)
def test_bad_prior_values_give_the_memmap_message(tmp_path, capsys, data, where, edit, pattern):
    u = np.full((N, K), 1 / K)
    edit(u)
    np.save(tmp_path / "u.npy", u)
    args = (data / "y.npy", "--prior", tmp_path / "u.npy", "--ignore-index", -100)
    ref = _one_line_error(*_main(capsys, data / "z32.npy", *args, *CHUNK), pattern)
    for logits, extra in (("z32.zarr", where), ("z32.npy", where)):
        if logits == "z32.npy" and not where:
            continue  # .npy without a Dask option is the memmap path itself
        err = _one_line_error(*_main(capsys, data / logits, *args, *extra), pattern)
        assert _message(err) == _message(ref)


def test_prior_of_a_wrong_shape_gives_the_memmap_message(tmp_path, capsys, data):
    np.save(tmp_path / "u.npy", np.full((N, K + 1), 1 / (K + 1)))
    pattern = (
        rf"prior must have shape \({K},\), one value per class, or the shape of the "
        rf"logits, \({N}, {K}\), .*; '.*u\.npy' has shape \({N}, {K + 1}\)\.$"
    )
    args = (data / "y.npy", "--prior", tmp_path / "u.npy")
    ref = _one_line_error(*_main(capsys, data / "z32.npy", *args), pattern)
    err = _one_line_error(*_main(capsys, data / "z32.zarr", *args), pattern)
    assert _message(err) == _message(ref)


def test_float_labels_name_the_file_and_its_shape_on_every_path(tmp_path, capsys, data, where):
    yf = np.random.default_rng(8).random(N)
    np.save(tmp_path / "yf.npy", yf)
    _zarr(tmp_path / "yf.zarr", yf, (100,))
    pattern = (
        rf"labels must be integer class indices of shape \({N},\) \(the shape of the "
        rf"logits, \({N}, {K}\), without the class axis 1\); '.*yf\.(npy|zarr)' holds float64 "
        rf"values of shape \({N},\)\.$"
    )
    ref = _one_line_error(*_main(capsys, data / "z32.npy", tmp_path / "yf.npy", *CHUNK), pattern)
    for logits, labels in (("z32.zarr", "yf.zarr"), ("z32.npy", "yf.npy")):
        err = _one_line_error(
            *_main(capsys, data / logits, tmp_path / labels, *CHUNK, *where), pattern
        )
        assert _message(err) == _message(ref)


# -- the core stays NumPy-only ------------------------------------------------------------
def test_memmap_eval_imports_no_dask(data):
    code = (
        "import sys; import smoothce; from smoothce import _cli; "
        f"status = _cli.main(['eval', {str(data / 'z32.npy')!r}, {str(data / 'y.npy')!r}, "
        "'--ignore-index', '-100', '--json']); "
        "loaded = sorted(m for m in ('dask', 'distributed', 'zarr') if m in sys.modules); "
        "print(status, loaded, file=sys.stderr)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=TIMEOUT
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "0 []"
    assert math.isfinite(json.loads(out.stdout)["nll"])


def test_prior_and_epsilon_reach_the_dask_path(data, tmp_path, capsys):
    u = np.linspace(1, 2, K)
    np.save(tmp_path / "prior.npy", u / u.sum())
    for prior in ("others", tmp_path / "prior.npy"):
        extra = ("--prior", prior, "--epsilon", 0.3)
        ref = _report(capsys, data / "z32.npy", data / "y.npy", *extra)
        got = _report(capsys, data / "z32.zarr", data / "y.zarr", *extra)
        _same(got, ref)
        assert (
            got["smoothed_loss"]
            != _report(capsys, data / "z32.npy", data / "y.npy")["smoothed_loss"]
        )


# -- the local cluster is closed whatever happens ----------------------------------------------
class _Fake:
    """Stands for distributed.LocalCluster and distributed.Client; records close()."""

    made: ClassVar[list[_Fake]] = []

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.kwargs, self.closed = kwargs, False
        _Fake.made.append(self)

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize(
    ("failure", "status", "message"),
    [
        (KeyboardInterrupt(), 130, r"^error: interrupted$"),
        (ValueError("labels must be class indices"), 2, r"^error: labels must be class indices$"),
        (
            RuntimeError("worker died\nlong details"),
            2,
            r"^error: the Dask computation failed: RuntimeError: worker died$",
        ),
    ],
    ids=["interrupt", "bad data", "cluster failure"],
)
def test_local_cluster_is_closed_on_interrupt_and_errors(
    data, capsys, monkeypatch, failure, status, message
):
    from smoothce import _eval_dask

    _Fake.made = []
    monkeypatch.setattr(distributed, "LocalCluster", _Fake)
    monkeypatch.setattr(distributed, "Client", _Fake)

    def fail(*args: object) -> None:
        raise failure

    monkeypatch.setattr(_eval_dask, "_compute", fail)
    got, out, err = _main(capsys, data / "z32.npy", data / "y.npy", "--dask-workers", 3)
    assert (got, out) == (status, "")
    assert re.match(message, err.strip()), err
    assert err.count("\n") == 1
    cluster, client = _Fake.made
    assert cluster.kwargs == {
        "n_workers": 3, "threads_per_worker": 1, "processes": True,
        "dashboard_address": None, "silence_logs": logging.CRITICAL,
    }  # fmt: skip
    assert cluster.closed
    assert client.closed


def test_sigint_is_held_back_while_the_local_cluster_starts_then_raised():
    """Inside the block SIGINT is blocked (the workers spawned meanwhile inherit the
    mask) and recorded, not raised inside distributed's start; after it, a recorded
    SIGINT is a KeyboardInterrupt, and the handler and mask are as before."""
    from smoothce._eval_dask import _sigint_deferred

    before = signal.getsignal(signal.SIGINT)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    inside: list[set[int]] = []

    def start_a_cluster() -> None:  # interrupted while it starts
        with _sigint_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            inside.append(signal.pthread_sigmask(signal.SIG_BLOCK, set()))

    with pytest.raises(KeyboardInterrupt):
        start_a_cluster()
    assert len(inside) == 1  # the block ran to its end: not interrupted inside
    assert signal.SIGINT in inside[0]  # blocked there, and the signal still kept
    assert signal.getsignal(signal.SIGINT) is before
    assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == mask
    with _sigint_deferred():  # nothing sent: nothing raised
        pass
    assert signal.getsignal(signal.SIGINT) is before


def test_sigint_already_ignored_stays_ignored():
    """A background job (SIGINT ignored by its shell) keeps ignoring it, and so do
    the workers it spawns."""
    from smoothce._eval_dask import _sigint_deferred

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with _sigint_deferred():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


_INTERRUPTING_DRIVER = """
import os, signal, sys


def main():
    import distributed
    from smoothce import _cli

    when, target = sys.argv[1], sys.argv[2]
    start = distributed.LocalCluster

    def interrupt():  # Ctrl-C in a terminal reaches the whole process group
        if target == "group":
            os.killpg(0, signal.SIGINT)
        else:
            os.kill(os.getpid(), signal.SIGINT)

    def interrupted_local_cluster(*args, **kwargs):
        # A real cluster, with a real SIGINT before it starts its workers or once
        # they are up: either way while the command is starting it.
        if when == "before":
            interrupt()
        cluster = start(*args, **kwargs)
        if when == "after":
            interrupt()
        return cluster

    distributed.LocalCluster = interrupted_local_cluster
    return _cli.main(["eval", *sys.argv[3:]])


if __name__ == "__main__":  # the workers import this module too
    sys.exit(main())
"""


@pytest.mark.parametrize(
    ("when", "target"),
    [("before", "process"), ("before", "group"), ("after", "group")],
    ids=["before the workers, to the command", "before the workers, to the group",
         "after the workers, to the group"],
)  # fmt: skip
def test_ctrl_c_while_the_local_cluster_starts_stops_with_130(data, tmp_path, when, target):
    """Ctrl-C while --dask-workers started its cluster was dropped (SIGINT ignored
    meanwhile): the run went on to the end and exited 0. It stops with 130 and one
    line, as it does a second later; the workers, which got the Ctrl-C too when it went
    to the group, neither print a traceback nor outlive the command."""
    driver = tmp_path / "interrupt_eval.py"
    driver.write_text(_INTERRUPTING_DRIVER)
    args = [data / "z32.npy", data / "y.npy", "--ignore-index", -100, "--dask-workers", 2]
    proc = subprocess.Popen(
        [sys.executable, str(driver), when, target, *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group (id: its pid), for the SIGINT
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert (proc.returncode, out, err) == (130, "", "error: interrupted\n")
    # The cluster was closed: no worker is left (a generous bound, not a timing).
    deadline = time.monotonic() + 30
    while (alive := _processes_in_group(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive


def _processes_in_group(group: int) -> list[int]:
    """The live processes (zombies aside) of the process group ``group``."""
    import psutil

    alive = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(p.pid) == group and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p.pid)
    return alive


# -- a directory of .npy shards --------------------------------------------------------------
def _shards(d: Path, a: np.ndarray, cuts: list[int]) -> Path:
    d.mkdir()
    for i, (lo, hi) in enumerate(zip([0, *cuts], [*cuts, len(a)], strict=True)):
        np.save(d / f"shard_{i:03d}.npy", a[lo:hi])
    return d


def test_shards_are_joined_in_name_order(data, tmp_path, capsys, where):
    z, y = np.load(data / "z64.npy"), np.load(data / "y.npy")
    # Uneven shards, an empty one, and label shards cut elsewhere than the logits.
    zs = _shards(tmp_path / "zs", z, [300, 310, 310, 777])
    ys = _shards(tmp_path / "ys", y, [555])
    ref = _report(capsys, data / "z64.npy", data / "y.npy")
    for logits, labels in ((zs, ys), (zs, data / "y.npy"), (data / "z64.npy", ys)):
        # Blocks end at the shard boundaries: the same report nonetheless, to the bit.
        _same(_report(capsys, logits, labels, *where), ref)


def test_shards_that_do_not_fit_together(data, tmp_path, capsys):
    z = np.load(data / "z32.npy")
    zs = _shards(tmp_path / "zs", z, [500])
    np.save(zs / "shard_002.npy", z[:10, :5])
    _one_line_error(
        *_main(capsys, zs, data / "y.npy"),
        r"logits shards in '.*zs' must have one shape but along axis 0; shard_002\.npy has "
        r"shape \(10, 5\), shard_000\.npy \(500, 7\)\.",
    )
    np.save(zs / "shard_002.npy", z[:10].astype(np.float64))
    _one_line_error(
        *_main(capsys, zs, data / "y.npy"),
        r"logits shards in '.*zs' must share one dtype; shard_002\.npy is float64, "
        r"shard_000\.npy float32\.",
    )


def test_a_corrupt_row_in_a_shard_is_named_in_the_joined_array(data, tmp_path, capsys):
    z = np.load(data / "z32.npy")
    z[705, 4] = np.inf
    zs = _shards(tmp_path / "zs", z, [300, 700])
    _one_line_error(
        *_main(capsys, zs, data / "y.npy", "--ignore-index", -100),
        r"has a non-finite logit in row \[705\]: logits\[705, 4\] = inf;",
    )


def test_empty_scheduler_address_is_refused_not_a_new_local_cluster(data, capsys):
    # Client("") or Client(None) would quietly start a cluster of its own.
    with pytest.raises(SystemExit) as stop:
        _cli.main(["eval", str(data / "z32.npy"), str(data / "y.npy"), "--scheduler", " "])
    assert stop.value.code == 2
    assert "argument --scheduler: must be a scheduler address" in capsys.readouterr().err


def test_relative_paths_reach_workers_that_run_elsewhere(data, capsys, monkeypatch, scheduler):
    """The workers' working directory is not the command's: paths travel absolute."""
    monkeypatch.chdir(data)
    ref = _report(capsys, "z32.npy", "y.npy")
    for logits, labels in (("z32.zarr", "y.npy"), ("z32.npy", "y.zarr")):
        got = _report(capsys, logits, labels, "--scheduler", scheduler)
        _same(got, ref)
        assert (got["logits"], got["labels"]) == (logits, labels)  # as given


def test_help_names_the_dask_options_and_inputs(capsys):
    with pytest.raises(SystemExit):
        _cli.main(["eval", "--help"])
    text = capsys.readouterr().out
    for word in ("--scheduler ADDRESS", "--dask-workers N", "Zarr array", "shard_*.npy",
                 'pip install "smoothce[dask]", or', 'pip install -e ".[dask]" in a checkout',
                 "--scheduler tcp://host:8786"):  # fmt: skip
        assert word in text, word
    assert max(map(len, text.splitlines())) <= 100  # wrapped, not one long line
