"""`python -m smoothce eval` end to end, through a subprocess, on files the test writes."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

import smoothce
from smoothce.calibration import expected_calibration_error


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "smoothce", "eval", *map(str, args)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    z = (rng.standard_normal((400, 6, 3)) * 2).astype(np.float32)  # classes on axis 1
    y = rng.integers(0, 6, size=(400, 3))
    y[::7, 0] = -100
    np.save(tmp_path / "logits.npy", z)
    np.save(tmp_path / "labels.npy", y)
    return tmp_path, z, y


def _expected(z, y, eps, prior=None):
    kw = {"axis": 1, "ignore_index": -100}
    keep = y != -100
    nll = float(smoothce.cross_entropy(z.astype(np.float64), y, 0.0, **kw))
    pred = z.argmax(axis=1)
    return {
        "smoothed_loss": float(
            smoothce.cross_entropy(z.astype(np.float64), y, eps, prior=prior, **kw)
        ),
        "nll": nll,
        "perplexity": float(np.exp(nll)),
        "accuracy": float((pred == y)[keep].mean()),
        "ece": expected_calibration_error(z, y, axis=1, ignore_index=-100),
        "counted": int(keep.sum()),
        "elements": y.size,
    }


@pytest.mark.parametrize("chunk", [None, 500])
def test_json_report_matches_the_library(files, chunk):
    tmp, z, y = files
    extra = [] if chunk is None else ["--chunk-elements", chunk]
    out = _run(tmp / "logits.npy", tmp / "labels.npy", "--axis", 1, "--ignore-index", -100,
               "--epsilon", 0.2, "--json", *extra)  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    expected = _expected(z, y, 0.2)
    for key, value in expected.items():
        assert report[key] == pytest.approx(value, rel=1e-6), key
    assert report["num_classes"] == 6
    assert report["bins"] == 15


def test_text_report_and_priors(files, tmp_path):
    tmp, z, y = files
    u = np.linspace(1, 2, 6)
    np.save(tmp_path / "prior.npy", u / u.sum())
    for prior, lib_prior in (("others", "others"), (tmp_path / "prior.npy", u / u.sum())):
        out = _run(tmp / "logits.npy", tmp / "labels.npy", "--axis", 1, "--ignore-index", -100,
                   "--prior", prior)  # fmt: skip
        assert out.returncode == 0, out.stderr
        expected = _expected(z, y, 0.1, prior=lib_prior)
        assert f"{expected['smoothed_loss']:.6f}" in out.stdout
        assert "accuracy" in out.stdout
        assert "ECE (15 bins)" in out.stdout


def test_progress_bar_on_request(files):
    tmp, _, _ = files
    out = _run(tmp / "logits.npy", tmp / "labels.npy", "--axis", 1, "--ignore-index", -100,
               "--progress", "--chunk-elements", 1000)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "100.0% of 1200 elements" in out.stderr
    assert out.stderr.count("% of 1200 elements") > 3  # redrawn chunk by chunk


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: (d / "missing.npy", d / "labels.npy", []), "logits file .* does not exist"),
        (
            lambda d: (d / "logits.npy", d / "labels.npy", []),
            r"labels must have the shape .*class axis 2",
        ),
        (
            lambda d: (d / "logits.npy", d / "labels.npy", ["--axis", 1]),
            r"labels must be class indices .* got labels\[0, 0\] = -100",
        ),
        (lambda d: (d / "text.npy", d / "labels.npy", []), r"is not a \.npy file"),
        (
            lambda d: (
                d / "logits.npy",
                d / "all_ignored.npy",
                ["--axis", 1, "--ignore-index", 3],
            ),
            "no element to evaluate",
        ),
        (
            lambda d: (d / "logits.npy", d / "labels.npy", ["--axis", 5]),
            r"axis must be in \[-3, 2\]",
        ),
    ],
)
def test_errors_exit_with_status_2_and_a_message(files, make, message):
    tmp, _, y = files
    (tmp / "text.npy").write_text("not an array")
    np.save(tmp / "all_ignored.npy", np.full(y.shape, 3))
    logits, labels, extra = make(tmp)
    out = _run(logits, labels, *extra)
    assert out.returncode == 2
    assert out.stdout == ""
    assert re.search(message, out.stderr), out.stderr
    assert out.stderr.startswith("error: ")


def test_help_reads_well():
    out = _run("--help")
    assert out.returncode == 0
    for text in (
        "LOGITS.npy",
        "LABELS.npy",
        "--epsilon",
        "--ignore-index",
        "--prior",
        "--json",
        "memory-mapped",
    ):
        assert text in out.stdout


def test_float16_file_gives_the_float64_smoothed_loss_of_its_values(tmp_path):
    # eval on a float16 file printed 5.330846 where the values' loss is 5.330454: the
    # label logit was multiplied in float16 (issue 7, item 1).
    rng = np.random.default_rng(5)
    # Few rows (over thousands the old per-row rounding errors averaged out) of
    # moderate logits (the unshifted fast path, where the float16 values were used).
    z = (rng.standard_normal((4, 200)) * 2).astype(np.float16)
    y = rng.integers(0, 200, 4)
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "y.npy", y)
    out = _run(tmp_path / "z.npy", tmp_path / "y.npy", "--epsilon", 0.1, "--json")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)["smoothed_loss"]
    truth = float(smoothce.cross_entropy(z.astype(np.float64), y, 0.1))
    assert abs(got - truth) <= 2e-6 * truth


@pytest.mark.parametrize(
    ("logits_shape", "axis", "prior_shape"),
    [
        ((3000, 7), -1, (3000, 7)),  # one distribution per row, cut like the logits
        ((3000, 7), -1, (1, 7)),  # the same for every row: broadcast, never cut
        ((400, 6, 3), 1, (400, 6, 3)),  # classes in the middle: cut along axis 0
        ((400, 6, 3), 1, (6, 3)),  # broadcast along the chunked axis
    ],
)
def test_per_sample_prior_is_read_in_chunks_with_the_librarys_values(
    tmp_path, monkeypatch, logits_shape, axis, prior_shape
):
    """A per-sample prior failed past the first chunk ("broadcastable to (83886, 50);
    got shape (90000, 50)"): it is cut chunk for chunk with the logits. The report is
    ``metrics.evaluate``'s to the bit (each row's values depend on that row alone and
    the sums are exact), the library's own chunks spanning several too."""
    from smoothce import metrics

    rng = np.random.default_rng(6)
    z = rng.standard_normal(logits_shape, dtype=np.float32) * 2
    ax = axis % len(logits_shape)
    K = logits_shape[ax]
    y = rng.integers(0, K, logits_shape[:ax] + logits_shape[ax + 1 :])
    y.reshape(-1)[::11] = -100
    u = rng.random(prior_shape) + 0.05
    u /= u.sum(axis=ax - (z.ndim - u.ndim), keepdims=True)  # the classes' axis in u
    for name, a in (("z", z), ("y", y), ("u", u)):
        np.save(tmp_path / f"{name}.npy", a)
    out = _run(tmp_path / "z.npy", tmp_path / "y.npy", "--prior", tmp_path / "u.npy",
               "--axis", axis, "--ignore-index", -100, "--epsilon", 0.3, "--json",
               "--chunk-elements", 40 * K * (3 if len(logits_shape) == 3 else 1))  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    monkeypatch.setattr(metrics, "CHUNK_ELEMENTS", z.size // 7)  # several chunks here too
    m = metrics.evaluate(z, y, 0.3, axis=axis, prior=u, ignore_index=-100, top_k=1)
    assert report["smoothed_loss"] == m.loss
    assert report["nll"] == m.nll
    assert report["perplexity"] == m.perplexity
    assert report["accuracy"] == m.accuracy
    assert report["ece"] == m.ece
    assert report["counted"] == m.counted
    # The prior reaches the loss: a uniform one gives another value.
    assert m.loss != metrics.evaluate(z, y, 0.3, axis=axis, ignore_index=-100).loss
