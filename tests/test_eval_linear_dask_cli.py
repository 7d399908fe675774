"""``python -m smoothce eval HIDDEN LABELS --classifier W`` on Dask (issue 16, item 3):
Zarr arrays and shards of hidden states, a Zarr classifier chunked along its
vocabulary (split over the tasks), ``--dask-workers`` and ``--scheduler``; the report
of the memmap path within ``evaluate_linear``'s contract (float32: 1e-5 relative,
equal counts on data without logits tied within the products' rounding), and its
one-line errors.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from linear_head import ambiguous_rows, materialise, rounding

pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")

from smoothce import _cli  # noqa: E402

N, D, V = 400, 12, 60
CHUNK = ["--chunk-elements", str(64 * V)]  # blocks of 64 rows


def _zarr(path: Path, a: np.ndarray, chunks: tuple[int, ...]) -> Path:
    arr = zarr.create_array(store=str(path), shape=a.shape, chunks=chunks, dtype=a.dtype)
    arr[...] = a
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval-linear-dask")
    rng = np.random.default_rng(0)
    h = rng.standard_normal((N, D)).astype(np.float32)
    W = (rng.standard_normal((V, D)) * 0.7).astype(np.float32)
    b = rng.standard_normal(V).astype(np.float32)
    y = rng.integers(0, V, N)
    y[::13] = -100
    for bias in (b, None):  # no logits tied within the products' rounding
        for cap in (None, 2.0):
            z = materialise(h, W, bias, cap)
            assert not ambiguous_rows(z, rounding(h, W, bias), y, 15).any()
    for name, a in (("h", h), ("W", W), ("b", b), ("y", y)):
        np.save(d / f"{name}.npy", a)
    _zarr(d / "h.zarr", h, (100, D))
    _zarr(d / "y.zarr", y, (100,))
    _zarr(d / "W.zarr", W, (16, D))  # four chunks of classes: split over the tasks
    _zarr(d / "b.zarr", b, (16,))
    (d / "h_shards").mkdir()
    (d / "W_shards").mkdir()
    for i, (lo, hi) in enumerate([(0, 150), (150, 151), (151, N)]):
        np.save(d / "h_shards" / f"shard_{i:03d}.npy", h[lo:hi])
    for i, (lo, hi) in enumerate([(0, 25), (25, V)]):
        np.save(d / "W_shards" / f"shard_{i:03d}.npy", W[lo:hi])
    return d


@pytest.fixture(scope="module")
def scheduler():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None,
            silence_logs=logging.CRITICAL,
        )  # fmt: skip
    yield cluster.scheduler_address
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster.close()


def _main(capsys, *args):
    status = _cli.main(["eval", *map(str, args)])
    out = capsys.readouterr()
    return status, out.out, out.err


def _report(capsys, hidden, labels, classifier, *extra):
    status, out, err = _main(
        capsys, hidden, labels, "--classifier", classifier, "--json", "--ignore-index", -100,
        *CHUNK, *extra,
    )  # fmt: skip
    assert status == 0, err
    return json.loads(out)


def _same(got, ref):
    for key, value in ref.items():
        if key in ("hidden", "labels", "classifier", "bias"):
            continue
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, rel=1e-5), key
        else:
            assert got[key] == value, key


@pytest.mark.parametrize(
    ("hidden", "labels", "classifier", "bias"),
    [
        ("h.zarr", "y.zarr", "W.npy", "b.npy"),  # a whole classifier, read by one task
        ("h.zarr", "y.npy", "W.zarr", "b.zarr"),  # split along the vocabulary
        ("h_shards", "y.npy", "W_shards", None),  # shards of rows and of classes
        ("h.npy", "y.zarr", "W.zarr", None),
    ],
)
def test_dask_paths_give_the_memmap_report(data, capsys, hidden, labels, classifier, bias):
    extra = [] if bias is None else ["--bias", data / bias]
    ref = _report(capsys, data / "h.npy", data / "y.npy", data / "W.npy", *extra)
    got = _report(capsys, data / hidden, data / labels, data / classifier, *extra)
    _same(got, ref)
    assert got["classifier"] == str(data / classifier)


def test_dask_workers_and_scheduler_with_a_split_classifier(data, capsys, scheduler):
    ref = _report(capsys, data / "h.npy", data / "y.npy", data / "W.npy", "--softcap", 2.0)
    for option in (["--dask-workers", 2], ["--scheduler", scheduler]):
        got = _report(
            capsys, data / "h.zarr", data / "y.zarr", data / "W.zarr", "--softcap", 2.0, *option
        )
        _same(got, ref)


def _one_line_error(status, out, err, pattern):
    assert status == 2, err
    assert out == ""
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    assert re.search(pattern, err), err


def test_a_nan_hidden_state_is_named_by_its_row_in_the_joined_shards(data, tmp_path, capsys):
    h = np.load(data / "h.npy")
    h[151 + 40, 7] = np.nan  # row 191: in the third shard
    (tmp_path / "h").mkdir()
    np.save(tmp_path / "h" / "shard_000.npy", h[:151])
    np.save(tmp_path / "h" / "shard_001.npy", h[151:])
    _one_line_error(
        *_main(
            capsys,
            tmp_path / "h",
            data / "y.npy",
            "--classifier",
            data / "W.zarr",
            "--ignore-index",
            -100,
            *CHUNK,
        ),
        r"hidden file '.*' has a non-finite value in row \[191\]: hidden\[191, 7\] = nan",
    )


def test_a_non_finite_weight_in_a_zarr_classifier_is_named(data, tmp_path, capsys):
    W = np.load(data / "W.npy")
    W[37, 3] = np.inf
    _zarr(tmp_path / "W.zarr", W, (16, D))
    _one_line_error(
        *_main(
            capsys,
            data / "h.zarr",
            data / "y.zarr",
            "--classifier",
            tmp_path / "W.zarr",
            "--ignore-index",
            -100,
        ),
        r"classifier file '.*' has a non-finite weight: classifier\[37, 3\] = inf",
    )


def test_shape_errors_on_the_dask_path(data, tmp_path, capsys):
    _zarr(tmp_path / "W.zarr", np.zeros((V, D + 1), np.float32), (16, D + 1))
    _one_line_error(
        *_main(capsys, data / "h.zarr", data / "y.zarr", "--classifier", tmp_path / "W.zarr"),
        r"has 13 features per class \(shape \(60, 13\)\) but the hidden states in .* have 12",
    )
    y = np.load(data / "y.npy")
    y[333] = V + 2
    np.save(tmp_path / "y.npy", y)
    _one_line_error(
        *_main(
            capsys,
            data / "h.zarr",
            tmp_path / "y.npy",
            "--classifier",
            data / "W.zarr",
            "--ignore-index",
            -100,
            *CHUNK,
        ),
        r"got labels\[333\] = 62",
    )
