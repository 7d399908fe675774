"""`python -m smoothce eval` on bad files and arguments (issue 7, items 10, 16, 17).

Each case runs the real command line (a subprocess, or ``main()`` where the failure has
to be provoked from inside) and pins the exit status 2, a true one-line message on
standard error and no traceback.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import smoothce
from smoothce import _cli, _eval
from smoothce.calibration import expected_calibration_error


def _run(*args: object, preexec_fn=None, env=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smoothce", "eval", *map(str, args)],
        capture_output=True, text=True, check=False, preexec_fn=preexec_fn, env=env,
    )  # fmt: skip


def _assert_one_line_error(out: subprocess.CompletedProcess[str], pattern: str) -> str:
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert out.stdout == ""
    assert "Traceback" not in out.stderr
    assert out.stderr.startswith("error: "), out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
    assert re.search(pattern, out.stderr), out.stderr
    return out.stderr


def _assert_usage_error(out: subprocess.CompletedProcess[str], pattern: str) -> str:
    """argparse's own format: the usage, then one line ``prog: error: message``."""
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert out.stdout == ""
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("python -m smoothce eval: error: "), out.stderr
    assert re.search(pattern, last), last
    return last


@pytest.fixture
def good(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "logits.npy", rng.standard_normal((50, 4)).astype(np.float32))
    np.save(tmp_path / "labels.npy", rng.integers(0, 4, size=50))
    return tmp_path / "logits.npy", tmp_path / "labels.npy"


# -- item 10 -------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["logits", "labels"])
def test_zero_byte_npy_is_a_one_line_error_not_an_eoferror(good, tmp_path, which):
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    logits, labels = good
    args = (empty, labels) if which == "logits" else (logits, empty)
    _assert_one_line_error(_run(*args), rf"{which} file '.*empty\.npy' is empty \(0 bytes\)")


@pytest.mark.parametrize("bins", ["1000000000000", "1000001", "0", "-3"])
def test_bins_beyond_the_bound_is_refused_not_a_memory_error(good, bins):
    _assert_usage_error(
        _run(*good, "--bins", bins), rf"argument --bins: must be in \[1, 1000000\]; got {bins}$"
    )


def test_bins_not_an_integer_names_the_option_and_the_value(good):
    last = _assert_usage_error(
        _run(*good, "--bins", "abc"), r"argument --bins: invalid value 'abc'"
    )
    assert "_positive" not in last


def test_evaluate_files_refuses_huge_bins_too(good):
    with pytest.raises(_eval.EvalError, match=r"n_bins must be in \[1, 1000000\]"):
        _eval.evaluate_files(*map(str, good), bins=10**12)


# -- item 16 -------------------------------------------------------------------------


def _save_with(tmp_path: Path, z: np.ndarray, name: str = "bad.npy") -> Path:
    np.save(tmp_path / name, z)
    return tmp_path / name


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize(
    ("value", "shown"), [(np.nan, "nan"), (np.inf, "inf")], ids=["nan", "inf"]
)
def test_nan_logits_exit_2_naming_the_first_bad_row(good, tmp_path, dtype, value, shown):
    z = np.load(good[0]).astype(dtype)
    z[23, 2] = value
    z[41, 0] = value
    bad = _save_with(tmp_path, z)
    _assert_one_line_error(
        _run(bad, good[1]),
        rf"logits file '.*bad\.npy' has a non-finite logit in row \[23\]: "
        rf"logits\[23, 2\] = {shown};",
    )


def test_a_row_of_only_minus_inf_is_corrupt_too(good, tmp_path):
    z = np.load(good[0])
    z[30] = -np.inf
    _assert_one_line_error(
        _run(_save_with(tmp_path, z), good[1]),
        r"logits file '.*' has a row of only -inf logits: row \[30\]",
    )


@pytest.mark.parametrize("chunk", [None, 12])
def test_bad_row_is_named_in_file_coordinates_whatever_the_chunk_and_axis(tmp_path, chunk):
    rng = np.random.default_rng(1)
    z = rng.standard_normal((9, 5, 4)).astype(np.float32)  # classes on axis 1
    y = rng.integers(0, 5, size=(9, 4))
    z[6, 3, 2] = np.nan
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "y.npy", y)
    extra = [] if chunk is None else ["--chunk-elements", chunk]
    _assert_one_line_error(
        _run(tmp_path / "z.npy", tmp_path / "y.npy", "--axis", 1, *extra),
        r"non-finite logit in row \[6, 2\]: logits\[6, 3, 2\] = nan;",
    )


def test_one_dimensional_logits_have_one_row(tmp_path):
    np.save(tmp_path / "z.npy", np.array([0.0, np.inf, 1.0]))
    np.save(tmp_path / "y.npy", np.array(0))
    _assert_one_line_error(
        _run(tmp_path / "z.npy", tmp_path / "y.npy"),
        r"has a non-finite logit in its only row: logits\[1\] = inf;",
    )


def test_bad_rows_whose_label_is_ignored_are_left_out(good, tmp_path):
    z = np.load(good[0])
    y = np.load(good[1])
    z[23, 2] = np.nan
    y[23] = -100
    np.save(tmp_path / "y_ign.npy", y)
    out = _run(_save_with(tmp_path, z), tmp_path / "y_ign.npy", "--ignore-index", -100, "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    keep = y != -100
    assert report["counted"] == 49
    # eval takes the confidence from the engine's log-sum-exp (smoothce.metrics), the
    # calibration module from a float32 log-softmax: both float32-accurate on float32
    # logits, so they agree to a few float32 units.
    expected = expected_calibration_error(z[keep], y[keep])
    assert report["ece"] == pytest.approx(expected, abs=8 * 2.0**-24)


def _strict_json(text: str) -> dict[str, object]:
    def refuse(token: str) -> None:
        raise AssertionError(f"invalid JSON token {token}")

    result: dict[str, object] = json.loads(text, parse_constant=refuse)
    return result


def test_json_never_holds_nan_or_infinity(good, tmp_path):
    """A -inf logit on the label is a legitimate +inf loss; JSON has no infinity."""
    z = np.load(good[0])
    y = np.load(good[1])
    z[5, y[5]] = -np.inf
    out = _run(_save_with(tmp_path, z), good[1], "--json")
    assert out.returncode == 0, out.stderr
    report = _strict_json(out.stdout)
    assert report["smoothed_loss"] is None
    assert report["nll"] is None
    assert report["perplexity"] is None
    assert report["accuracy"] == pytest.approx(float((z.argmax(1) == y).mean()))
    text = _run(_save_with(tmp_path, z), good[1])
    assert text.returncode == 0
    assert re.search(r"NLL \(cross-entropy\)\s+inf", text.stdout)


def test_json_of_a_huge_perplexity_is_null(tmp_path):
    z = np.array([[0.0, -800.0]] * 3)
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "y.npy", np.ones(3, int))
    out = _run(tmp_path / "z.npy", tmp_path / "y.npy", "--json")
    assert out.returncode == 0, out.stderr
    report = _strict_json(out.stdout)
    assert report["nll"] == pytest.approx(800.0)
    assert report["perplexity"] is None


def test_json_of_a_clean_file_is_strict_json(good):
    out = _run(*good, "--json")
    assert out.returncode == 0, out.stderr
    report = _strict_json(out.stdout)
    z, y = np.load(good[0]), np.load(good[1])
    assert report["nll"] == pytest.approx(
        float(smoothce.cross_entropy(z.astype(np.float64), y)), rel=1e-6
    )


# -- item 17 -------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["1,2,3\n4,5,6\n", "not an array", "\x80\x05pickle"])
def test_text_file_is_not_a_npy_file_and_no_pickle_advice(good, tmp_path, text):
    (tmp_path / "data.csv").write_text(text)
    message = _assert_one_line_error(
        _run(tmp_path / "data.csv", good[1]),
        r"logits file '.*data\.csv' is not a \.npy file \(it does not start with the "
        r"\.npy signature\)",
    )
    assert "pickle" not in message


@pytest.mark.parametrize("which", ["logits", "labels", "prior"])
def test_directory_is_a_directory_not_missing(good, tmp_path, which):
    (tmp_path / "adir.npy").mkdir()
    logits, labels = good
    args: list[object] = {
        "logits": [tmp_path / "adir.npy", labels],
        "labels": [logits, tmp_path / "adir.npy"],
        "prior": [logits, labels, "--prior", tmp_path / "adir.npy"],
    }[which]
    _assert_one_line_error(_run(*args), rf"{which} file '.*adir\.npy' is a directory")


def test_missing_file_still_says_so(good, tmp_path):
    _assert_one_line_error(
        _run(tmp_path / "nope.npy", good[1]), r"logits file '.*nope\.npy' does not exist"
    )


@pytest.mark.parametrize("ignore", [None, -100])
def test_empty_array_has_no_rows_not_every_label_ignored(tmp_path, ignore):
    np.save(tmp_path / "z.npy", np.zeros((0, 3), np.float32))
    np.save(tmp_path / "y.npy", np.zeros(0, np.int64))
    extra = [] if ignore is None else ["--ignore-index", ignore]
    message = _assert_one_line_error(
        _run(tmp_path / "z.npy", tmp_path / "y.npy", *extra),
        r"logits file '.*z\.npy' has no rows \(shape \(0, 3\)\)",
    )
    assert "ignore_index" not in message


def test_padding_of_minus_100_names_the_option_not_the_keyword(good, tmp_path):
    # Found by a newcomer's run of the docs: the hint said "pass ignore_index=-100",
    # the Python keyword, to a user of the command line, where it is --ignore-index.
    y = np.load(good[1])
    y[7] = -100
    np.save(tmp_path / "y.npy", y)
    message = _assert_one_line_error(
        _run(good[0], tmp_path / "y.npy"), r"got labels\[7\] = -100\. -100 is PyTorch's"
    )
    assert "pass --ignore-index -100 to leave these elements out." in message
    assert "ignore_index=-100" not in message


def test_every_label_ignored_still_says_so(good, tmp_path):
    np.save(tmp_path / "y.npy", np.full(50, -100))
    _assert_one_line_error(
        _run(good[0], tmp_path / "y.npy", "--ignore-index", -100),
        "every label equals ignore_index",
    )


@pytest.mark.parametrize("value", ["abc", "", "0.1x"])
def test_epsilon_abc_names_the_option_not_the_function(good, value):
    last = _assert_usage_error(
        _run(*good, "--epsilon", value),
        rf"argument --epsilon: invalid value '{value}': not a number",
    )
    assert "_epsilon" not in last


def test_epsilon_out_of_range_still_says_the_rule(good):
    _assert_usage_error(_run(*good, "--epsilon", "1.5"), r"must be in \[0, 1\]; got 1\.5")


def _npy_with_header_of(size: int) -> bytes:
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"
    header += " " * (size - len(header) - 1) + "\n"
    return b"\x93NUMPY\x02\x00" + struct.pack("<I", len(header)) + header.encode() + bytes(24)


def test_huge_header_gives_no_allow_pickle_advice(good, tmp_path):
    (tmp_path / "huge.npy").write_bytes(_npy_with_header_of(20_096))
    message = _assert_one_line_error(
        _run(tmp_path / "huge.npy", good[1]),
        r"logits file '.*huge\.npy' has a \.npy header of 20096 bytes",
    )
    assert "allow_pickle" not in message
    assert "pickle" not in message


def test_object_array_is_refused_without_unpickling(good, tmp_path):
    np.save(tmp_path / "obj.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True)
    message = _assert_one_line_error(
        _run(tmp_path / "obj.npy", good[1]), r"logits file '.*obj\.npy' holds Python objects"
    )
    assert "allow_pickle" not in message


def test_truncated_file_says_so(good, tmp_path):
    data = good[0].read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[:-40])
    _assert_one_line_error(
        _run(tmp_path / "cut.npy", good[1]),
        r"logits file '.*cut\.npy' is truncated: its header describes 800 bytes of data "
        r"\(shape \(50, 4\), float32\) but 760 follow",
    )


def test_damaged_header_says_so(good, tmp_path):
    header = "{'descr': 'not a dtype', 'fortran_order': False, 'shape': (2, 3), }"
    header += " " * (63 - 10 - len(header)) + "\n"
    data = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode()
    (tmp_path / "bad.npy").write_bytes(data + bytes(24))
    _assert_one_line_error(
        _run(tmp_path / "bad.npy", good[1]),
        r"logits file '.*bad\.npy' has a damaged \.npy header: ",
    )


def test_npz_archive_is_named(good, tmp_path):
    np.savez(tmp_path / "both.npz", a=np.zeros(3), b=np.zeros(3))
    _assert_one_line_error(
        _run(tmp_path / "both.npz", good[1]), r"logits file '.*both\.npz' is a \.npz archive"
    )


def _limit_address_space() -> None:  # pragma: no cover - runs in the child
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is Linux's")
def test_enomem_is_a_memory_message_not_unreadable(tmp_path):
    """mmap of a file larger than the address-space limit fails with ENOMEM."""
    big = tmp_path / "big.npy"
    shape = (1 << 22, 1024)  # 16 GiB of float32, sparse: no disk is written
    with big.open("wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": shape}
        )
        offset = f.tell()
    os.truncate(big, offset + 4 * shape[0] * shape[1])
    np.save(tmp_path / "y.npy", np.zeros(shape[0], np.int64))
    # One BLAS thread: a many-core machine's per-thread buffers must not use up the limit.
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    message = _assert_one_line_error(
        _run(big, tmp_path / "y.npy", preexec_fn=_limit_address_space, env=env),
        r"not enough memory to map logits file '.*big\.npy' \(16\.0 GiB\)",
    )
    assert "not a readable" not in message


def test_memory_error_while_computing_is_a_memory_message(good, monkeypatch, capsys):
    def no_memory(*args: object, **kwargs: object) -> None:
        raise MemoryError("Unable to allocate 7.28 TiB for an array")

    monkeypatch.setattr(_eval, "accumulate", no_memory)
    status = _cli.main(["eval", *map(str, good)])
    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert re.match(
        r"error: not enough memory to evaluate '.*logits\.npy': Unable to allocate 7\.28 TiB",
        captured.err,
    ), captured.err


@pytest.mark.parametrize("chunk", [None, 500])
def test_label_out_of_range_is_named_in_file_coordinates_not_the_chunks(tmp_path, chunk):
    # With chunks of 100 rows, eval named labels[0] for a bad label in row 700: the
    # position within its chunk.
    rng = np.random.default_rng(2)
    np.save(tmp_path / "z.npy", rng.standard_normal((1000, 5)).astype(np.float32))
    y = rng.integers(0, 5, 1000)
    y[700], y[800] = 9, -3
    np.save(tmp_path / "y.npy", y)
    extra = [] if chunk is None else ["--chunk-elements", chunk]
    _assert_one_line_error(
        _run(tmp_path / "z.npy", tmp_path / "y.npy", *extra),
        r"labels must be class indices in \[0, 5\); got labels\[700\] = 9\.$",
    )


def test_label_position_is_shifted_along_the_chunked_axis_only(tmp_path):
    rng = np.random.default_rng(3)
    np.save(tmp_path / "z.npy", rng.standard_normal((40, 5, 3)).astype(np.float32))
    y = rng.integers(0, 5, (40, 3))
    y[33, 2] = 5
    np.save(tmp_path / "y.npy", y)
    _assert_one_line_error(
        _run(tmp_path / "z.npy", tmp_path / "y.npy", "--axis", 1, "--chunk-elements", 30),
        r"got labels\[33, 2\] = 5\.$",
    )


# -- inputs read in chunks: messages in the files' terms, never a chunk's --------------


@pytest.mark.parametrize(
    ("shape", "chunk"), [((40_000, 200), None), ((4000, 20), 2000)], ids=["default", "small"]
)
def test_float_labels_name_the_file_and_its_shape_not_a_chunks(tmp_path, shape, chunk):
    # A 40,000-row file with float labels was refused as "must have the shape of logits
    # (20971, 200)": the shape of the first chunk, not of the file.
    rng = np.random.default_rng(4)
    np.save(tmp_path / "z.npy", rng.standard_normal(shape, dtype=np.float32))
    np.save(tmp_path / "yf.npy", rng.random(shape[0]))
    extra = [] if chunk is None else ["--chunk-elements", chunk]
    n, k = shape
    err = _assert_one_line_error(
        _run(tmp_path / "z.npy", tmp_path / "yf.npy", *extra),
        rf"labels must be integer class indices of shape \({n},\) \(the shape of the "
        rf"logits, \({n}, {k}\), without the class axis 1\); '.*yf\.npy' holds float64 values of "
        rf"shape \({n},\)\.$",
    )
    assert f"({n}, {k})" in err  # the file's shape, and no other
    assert not re.search(rf"\((?!{n}\b)\d+, {k}\)", err), err


@pytest.mark.parametrize("chunk", [None, 500])
def test_logits_without_classes_name_the_file_and_its_shape(tmp_path, chunk):
    # With chunks of 500 elements this was "got shape (500, 0)": a chunk's shape.
    np.save(tmp_path / "z.npy", np.zeros((1000, 0), np.float32))
    np.save(tmp_path / "y.npy", np.zeros(1000, np.int64))
    extra = [] if chunk is None else ["--chunk-elements", chunk]
    _assert_one_line_error(
        _run(tmp_path / "z.npy", tmp_path / "y.npy", *extra),
        r"^error: logits must have at least one class along axis 1; '.*z\.npy' has shape "
        r"\(1000, 0\)\.$",
    )


def test_labels_that_are_not_numbers_name_the_file(tmp_path):
    np.save(tmp_path / "z.npy", np.zeros((30, 4), np.float32))
    np.save(tmp_path / "yb.npy", np.zeros(30, bool))
    _assert_one_line_error(
        _run(tmp_path / "z.npy", tmp_path / "yb.npy"),
        r"labels must be integer class indices of shape \(30,\) .*; '.*yb\.npy' holds bool "
        r"values of shape \(30,\)\.$",
    )


def _prior_files(tmp_path: Path, n: int = 3000, k: int = 7) -> tuple[Path, Path, np.ndarray]:
    rng = np.random.default_rng(5)
    np.save(tmp_path / "z.npy", rng.standard_normal((n, k), dtype=np.float32))
    np.save(tmp_path / "y.npy", rng.integers(0, k, n))
    u = rng.random((n, k)) + 0.1
    return tmp_path / "z.npy", tmp_path / "y.npy", u / u.sum(axis=1, keepdims=True)


def test_prior_of_a_wrong_shape_names_the_file_and_its_shape(tmp_path):
    z, y, u = _prior_files(tmp_path)
    np.save(tmp_path / "u.npy", u[:-1])
    _assert_one_line_error(
        _run(z, y, "--prior", tmp_path / "u.npy", "--chunk-elements", 700),
        r"prior must have shape \(7,\), one value per class, or the shape of the logits, "
        r"\(3000, 7\), one distribution per row \(or a shape that broadcasts to it\); "
        r"'.*u\.npy' has shape \(2999, 7\)\.$",
    )


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (
            lambda u: u.__setitem__((2500, 3), -0.25),
            r"prior must be non-negative and finite; got prior\[2500, 3\] = -0\.25\.$",
        ),
        (
            lambda u: u.__setitem__(2600, 0.25),
            r"prior must sum to 1 along the class axis .*; got a sum of 1\.75 at batch "
            r"position \[2600\]\.$",
        ),
    ],
    ids=["negative", "sum"],
)
@pytest.mark.parametrize("chunk", [None, 700])
def test_bad_prior_values_are_named_in_file_coordinates(tmp_path, edit, pattern, chunk):
    z, y, u = _prior_files(tmp_path)
    edit(u)
    np.save(tmp_path / "u.npy", u)
    extra = [] if chunk is None else ["--chunk-elements", chunk]
    _assert_one_line_error(_run(z, y, "--prior", tmp_path / "u.npy", *extra), pattern)
