"""``python -m smoothce eval HIDDEN LABELS --classifier W``: the report of ``eval`` on
the materialised logits (issue 16, item 3), from memory-mapped hidden states, and the
same one-line errors (exit 2) naming the file, the row and the value.

Tolerances are ``evaluate_linear``'s contract (float32: 1e-5 relative), with equal
counts on data that has no logits tied within the products' rounding.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from linear_head import ambiguous_rows, materialise, rounding

from smoothce import _cli

V, D = 40, 12


@pytest.fixture
def files(tmp_path):
    # Data without logits tied within the products' rounding (linear_head.ambiguous_rows).
    rng = np.random.default_rng(1)
    h = rng.standard_normal((300, D)).astype(np.float32)
    W = (rng.standard_normal((V, D)) * 0.7).astype(np.float32)
    b = rng.standard_normal(V).astype(np.float32)
    y = rng.integers(0, V, 300)
    y[::11] = -100
    for name, a in {"h": h, "W": W, "b": b, "y": y}.items():
        np.save(tmp_path / f"{name}.npy", a)
    return tmp_path, h, W, b, y


def _eval(capsys, *args):
    code = _cli.main(["eval", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(capsys, args, pattern):
    code, out, err = _eval(capsys, *args)
    assert code == 2, (code, err)
    assert out == ""
    assert err.startswith("error: ")
    assert err.count("\n") == 1, err
    assert re.search(pattern, err), err
    return err


@pytest.mark.parametrize("softcap", [None, 2.0])
@pytest.mark.parametrize("chunk", [None, 100])
def test_report_is_that_of_eval_on_the_materialised_logits(files, capsys, softcap, chunk):
    tmp, h, W, b, y = files
    z = materialise(h, W, b, softcap)
    assert not ambiguous_rows(z, rounding(h, W, b), y, 15).any()
    np.save(tmp / "z.npy", z)
    common = ["--ignore-index", -100, "--epsilon", 0.2, "--json"]
    extra = [] if chunk is None else ["--chunk-elements", chunk]
    head = ["--classifier", tmp / "W.npy", "--bias", tmp / "b.npy"]
    if softcap is not None:
        head += ["--softcap", softcap]
    code, out, err = _eval(capsys, tmp / "h.npy", tmp / "y.npy", *head, *common, *extra)
    assert code == 0, err
    got = json.loads(out)
    code, out, err = _eval(capsys, tmp / "z.npy", tmp / "y.npy", *common)
    assert code == 0, err
    want = json.loads(out)
    assert got.pop("hidden") == str(tmp / "h.npy")
    assert got.pop("classifier") == str(tmp / "W.npy")
    assert got.pop("bias") == str(tmp / "b.npy")
    assert got.pop("softcap") == softcap
    want.pop("logits")
    for key in ("smoothed_loss", "nll", "perplexity", "ece"):
        assert got.pop(key) == pytest.approx(want.pop(key), rel=1e-5), key
    assert got == want  # labels, elements, counted, classes, epsilon, bins, accuracy


def test_text_report_names_the_head_and_runs_as_a_command(files):
    tmp, *_ = files
    out = subprocess.run(
        [sys.executable, "-m", "smoothce", "eval", tmp / "h.npy", tmp / "y.npy",
         "--classifier", tmp / "W.npy", "--ignore-index", "-100"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["hidden", "states", str(tmp / "h.npy")]
    assert lines[1].split() == ["classifier", str(tmp / "W.npy")]
    assert f"{300 - 28} counted), {V} classes" in out.stdout
    assert "NLL (cross-entropy)" in out.stdout


def test_progress_bar_counts_rows(files, capsys):
    tmp, *_ = files
    code, _, err = _eval(
        capsys, tmp / "h.npy", tmp / "y.npy", "--classifier", tmp / "W.npy",
        "--ignore-index", -100, "--progress", "--chunk-elements", 2000,
    )  # fmt: skip
    assert code == 0
    assert "100.0% of 300 elements" in err


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (
            lambda d: np.save(d / "W.npy", np.zeros((V, D + 1), np.float32)),
            r"classifier file '.*W\.npy' has 13 features per class \(shape \(40, 13\)\) but the "
            r"hidden states in '.*h\.npy' have 12 \(shape \(300, 12\)\); the logits are "
            r"hidden @ classifier\.T\.$",
        ),
        (
            lambda d: np.save(d / "W.npy", np.zeros(D, np.float32)),
            r"classifier file '.*' must have shape \(V, d\), one row per class; it has shape "
            r"\(12,\)",
        ),
        (
            lambda d: np.save(d / "y.npy", np.zeros(299, int)),
            r"labels must have the shape of the hidden states without their feature axis, "
            r"\(300,\); '.*y\.npy' has shape \(299,\)",
        ),
        (
            lambda d: np.save(d / "y.npy", np.zeros(300)),
            r"labels must be integer class indices; '.*' holds float64 values",
        ),
        (
            lambda d: np.save(d / "h.npy", np.zeros((300, D), int)),
            r"hidden file '.*' holds int64 values; give floating ones",
        ),
        (
            lambda d: np.save(d / "b.npy", np.zeros(V - 1, np.float32)),
            r"bias file '.*' must have shape \(40,\)",
        ),
        (
            lambda d: np.save(d / "y.npy", np.full(300, V)),
            r"labels must be class indices in \[0, 40\) or ignore_index=-100; "
            r"got labels\[0\] = 40",
        ),
        (lambda d: (d / "W.npy").unlink(), r"classifier file '.*' does not exist"),
    ],
)
def test_errors_of_shapes_and_files_are_one_line(files, capsys, edit, pattern):
    tmp, *_ = files
    edit(tmp)
    args = [tmp / "h.npy", tmp / "y.npy", "--classifier", tmp / "W.npy", "--bias", tmp / "b.npy"]
    _one_line_error(capsys, [*args, "--ignore-index", -100], pattern)


@pytest.mark.parametrize("chunk", [None, 120])
def test_a_nan_hidden_state_is_named_by_its_row_in_the_file(files, capsys, chunk):
    tmp, h, *_ = files
    h = h.copy()
    h[0, 3] = np.nan  # an ignored row (label -100): never looked at
    h[157, 4] = np.inf
    h[212, 0] = np.nan
    np.save(tmp / "h.npy", h)
    extra = [] if chunk is None else ["--chunk-elements", chunk]
    _one_line_error(
        capsys,
        [tmp / "h.npy", tmp / "y.npy", "--classifier", tmp / "W.npy", "--ignore-index", -100,
         *extra],
        r"hidden file '.*h\.npy' has a non-finite value in row \[157\]: hidden\[157, 4\] = "
        r"inf; its logits have no softmax, so the file is corrupt\.$",
    )  # fmt: skip


def test_bad_rows_of_three_dimensional_hidden_states_are_named_in_its_shape(tmp_path, capsys):
    rng = np.random.default_rng(1)
    h = rng.standard_normal((4, 5, D)).astype(np.float32)
    h[2, 3, 1] = np.nan
    np.save(tmp_path / "h.npy", h)
    np.save(tmp_path / "y.npy", rng.integers(0, V, (4, 5)))
    np.save(tmp_path / "W.npy", rng.standard_normal((V, D)).astype(np.float32))
    _one_line_error(
        capsys,
        [tmp_path / "h.npy", tmp_path / "y.npy", "--classifier", tmp_path / "W.npy"],
        r"non-finite value in row \[2, 3\]: hidden\[2, 3, 1\] = nan",
    )


@pytest.mark.parametrize(
    ("which", "pattern"),
    [
        ("W", r"classifier file '.*' has a non-finite weight: classifier\[7, 2\] = nan"),
        ("b", r"bias file '.*' has bias\[7\] = inf; NaN and \+inf logits have no softmax"),
        ("overflow", r"the logits of row \[5\] have no softmax: logits\[5, \d+\] = "),
    ],
)
def test_undefined_logits_from_the_head_name_their_cause(files, capsys, which, pattern):
    tmp, h, W, b, _ = files
    if which == "W":
        W = W.copy()
        W[7, 2] = np.nan
        np.save(tmp / "W.npy", W)
    elif which == "b":
        b = b.copy()
        b[7] = np.inf
        np.save(tmp / "b.npy", b)
    else:
        h = h.copy()
        h[5] = np.float32(1e38)  # products beyond float32: +-inf logits
        np.save(tmp / "h.npy", h)
    _one_line_error(
        capsys,
        [tmp / "h.npy", tmp / "y.npy", "--classifier", tmp / "W.npy", "--bias", tmp / "b.npy",
         "--ignore-index", -100],
        pattern,
    )  # fmt: skip


def test_options_that_belong_to_logits_or_to_the_head(files, capsys):
    tmp, *_ = files
    _one_line_error(
        capsys,
        [tmp / "h.npy", tmp / "y.npy", "--classifier", tmp / "W.npy", "--axis", 0],
        r"--axis applies to logits; hidden states have their features on the last axis",
    )
    _one_line_error(
        capsys, [tmp / "h.npy", tmp / "y.npy", "--bias", tmp / "b.npy"], r"--bias and --softcap"
    )


def test_help_names_the_head_options(capsys):
    with pytest.raises(SystemExit):
        _cli.main(["eval", "--help"])
    out = capsys.readouterr().out
    for option in ("--classifier W.npy", "--bias B.npy", "--softcap C"):
        assert option in out
