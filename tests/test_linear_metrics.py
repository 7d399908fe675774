"""``metrics.evaluate_linear``: a linear head's metrics from its hidden states.

Contract (issue 16, item 1): the ``Metrics`` of ``metrics.evaluate`` on the
materialised logits ``hidden @ classifier.T + bias`` (soft-capped first), within the
rounding of computing those logits (1e-12 relative in float64, 1e-5 in float32), with
``counted``/``elements`` equal and the accuracy counts equal except where two logits
tie within that rounding (``linear_head.ambiguous_rows``: every test checks that its
data has no such row before it asks for equal counts); extra memory bounded by the
workspace plus O(N); memory maps streamed; no warnings.
"""

from __future__ import annotations

import itertools
import tracemalloc
import warnings
from typing import Any

import numpy as np
import pytest
from linear_head import ambiguous_rows, assert_metrics_close, materialise, rounding

import smoothce
from smoothce import _engine, metrics
from smoothce._linear import DEFAULT_WORKSPACE

V, D = 13, 6
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def _inputs(dtype: Any, N: int = 61, seed: int = 0, shape: tuple[int, ...] | None = None):
    rng = np.random.default_rng(seed)
    shape = (N,) if shape is None else shape
    h = rng.standard_normal((*shape, D)).astype(dtype)
    W = (rng.standard_normal((V, D)) * 0.8).astype(dtype)
    b = rng.standard_normal(V).astype(dtype)
    y = rng.integers(0, V, shape)
    return h, W, b, y


def _check(h, W, y, eps, *, bias=None, softcap=None, top_k=5, n_bins=15, workspaces=None, **kw):
    """evaluate_linear against evaluate on the materialised logits, for several
    workspaces; returns the reference."""
    z = materialise(h, W, bias, softcap)
    labels = np.asarray(y).reshape(-1)
    assert not ambiguous_rows(z, rounding(h, W, bias), labels, n_bins).any(), (
        "the test's data has logits tied within the products' rounding: pick other data"
    )
    want = metrics.evaluate(z, labels, eps, top_k=top_k, n_bins=n_bins, **kw)
    rtol = RTOL[z.dtype]
    for workspace in workspaces or (100, 4096, DEFAULT_WORKSPACE):
        got = metrics.evaluate_linear(
            h, W, y, eps, bias=bias, softcap=softcap, top_k=top_k, n_bins=n_bins,
            workspace=workspace, **kw,
        )  # fmt: skip
        assert_metrics_close(got, want, rtol)
    return want


GRID = list(
    itertools.product(
        [None, "others", "class"],  # prior
        [False, True],  # weight
        [False, True],  # ignore_index
        [None, 2.5],  # softcap
    )
)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize(("prior", "weighted", "ignore", "cap"), GRID)
def test_equals_evaluate_on_the_materialised_logits_over_the_option_grid(
    dtype, with_bias, prior, weighted, ignore, cap
):
    h, W, b, y = _inputs(dtype)
    rng = np.random.default_rng(1)
    kw: dict[str, Any] = {}
    if prior == "class":
        u = rng.random(V)
        kw["prior"] = u / u.sum()
    else:
        kw["prior"] = prior
    if weighted:
        kw["weight"] = rng.random(V) * 2
    if ignore:
        kw["ignore_index"] = -100
        y = np.where(rng.random(y.shape) < 0.2, -100, y)
    want = _check(h, W, y, 0.1, bias=b if with_bias else None, softcap=cap, top_k=3, **kw)
    assert want.counted > 0


@pytest.mark.parametrize("top_k", [1, 2, V, V + 5])
@pytest.mark.parametrize("n_bins", [1, 7])
def test_every_top_k_and_number_of_bins(top_k, n_bins):
    h, W, b, y = _inputs(np.float64, seed=2)
    _check(h, W, y, 0.0, bias=b, top_k=top_k, n_bins=n_bins, workspaces=(100, DEFAULT_WORKSPACE))


def test_batch_axes_and_a_single_row():
    h, W, b, y = _inputs(np.float64, shape=(3, 5))
    _check(h, W, y, 0.2, bias=b)
    want = metrics.evaluate(materialise(h[1, 2], W, b), y[1, 2:3], 0.2)
    assert metrics.evaluate_linear(h[1, 2], W, y[1, 2], 0.2, bias=b) == want


def test_no_rows_gives_the_metrics_of_nothing():
    h, W, _, y = _inputs(np.float32)
    got = metrics.evaluate_linear(h[:0], W, y[:0], 0.1)
    assert got == metrics.evaluate(np.zeros((0, V), np.float32), y[:0], 0.1)
    assert (got.counted, got.nll, got.perplexity) == (0, 0.0, 1.0)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_hidden_states_are_computed_in_float32(dtype):
    if dtype == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    h, W, b, y = _inputs(np.float32, seed=3)
    h, W = h.astype(dtype), W.astype(dtype)
    # The reference: the same (half-precision) values, in float32.
    want = _check(h.astype(np.float32), W.astype(np.float32), y, 0.1, bias=b)
    got = metrics.evaluate_linear(h, W, y, 0.1, bias=b)
    assert_metrics_close(got, want, RTOL[np.dtype(np.float32)])


def test_workers_give_the_same_bits():
    h, W, b, y = _inputs(np.float32, N=500, seed=4)
    one = metrics.evaluate_linear(h, W, y, 0.1, bias=b, workers=1, workspace=4096)
    two = metrics.evaluate_linear(h, W, y, 0.1, bias=b, workers=2, workspace=4096)
    assert one == two
    assert one.ece == two.ece  # compare=False on the bins; the ECE is compared above


def test_softcap_reaches_the_top_class_scan_of_rows_longer_than_a_block(monkeypatch):
    # Rows longer than an engine block are streamed; their top class, maximum and label
    # logit are read by a separate scan of the logits, which must see them soft-capped
    # as the engine does (a cap of 1 saturates most of these logits: uncapped, the
    # confidence and the NLL come out of another distribution).
    monkeypatch.setattr(_engine, "BLOCK_ELEMENTS", 4)
    h, W, b, y = _inputs(np.float64, seed=5)
    want = metrics.evaluate(materialise(h, W, b, 1.0), y, 0.1)
    got = metrics.evaluate_linear(h, W, y, 0.1, bias=b, softcap=1.0)
    assert_metrics_close(got, want, RTOL[np.dtype(np.float64)])


def test_memory_maps_are_streamed_with_memory_bounded_by_the_workspace(tmp_path):
    rng = np.random.default_rng(6)
    d, K = 16, 1000
    W = rng.standard_normal((K, d)).astype(np.float32)
    path = tmp_path / "hidden.npy"
    N = 8192  # logits: 33 MB
    mm = np.lib.format.open_memmap(path, "w+", np.float32, (N, d))
    mm[:] = rng.standard_normal((N, d), dtype=np.float32)
    mm.flush()
    del mm
    h = np.load(path, mmap_mode="r")
    y = rng.integers(0, K, N)
    workspace = 1 << 17
    want = metrics.evaluate_linear(np.array(h), W, y, 0.1, workspace=workspace)

    def peak(n):
        tracemalloc.start()
        try:
            got = metrics.evaluate_linear(h[:n], W, y[:n], 0.1, workspace=workspace)
            return got, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    got, big = peak(N)
    assert got == want  # the same blocks from the map as from memory: the same bits
    _, small = peak(N // 8)
    # Extra memory: the workspace and the engine's per-block scratch (a few blocks of
    # 2**17 float64 values: 1 MiB each), whatever N; the labels are the caller's.
    assert big < workspace + 4 * _engine.BLOCK_ELEMENTS * 8
    # O(N) at most: the per-row values of one block at a time, not of the batch.
    assert big - small < 16 * N
    assert big < N * K * 4 / 8  # far below the logits


def test_progress_counts_rows_to_the_end():
    h, W, b, y = _inputs(np.float32, N=3000, seed=7)
    calls = []
    metrics.evaluate_linear(h, W, y, bias=b, workspace=4096, progress=lambda *a: calls.append(a))
    assert calls[-1] == (3000, 3000)
    assert [c[0] for c in calls] == sorted({c[0] for c in calls})


def test_overflowing_products_give_undefined_metrics_without_warnings():
    h, W, b, y = _inputs(np.float32, seed=8)
    h[4] = np.finfo(np.float32).max
    W[0] = 1.0  # the logit of class 0 in row 4 is 6 * max: +inf, no softmax
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = metrics.evaluate_linear(h, W, y, bias=b)
        W2 = W.copy()
        W2[3, 0] = np.inf
        inf_classifier = metrics.evaluate_linear(h[:4], W2, y[:4])
    assert np.isnan(got.nll)
    assert np.isnan(got.accuracy)
    assert np.isnan(got.ece)
    assert np.isnan(inf_classifier.nll)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"classifier": np.zeros((V, D + 1))}, ValueError, r"hidden's last axis must match"),
        ({"labels": np.zeros(5, int)}, ValueError, r"labels must have the shape of hidden"),
        ({"labels": np.zeros(61)}, TypeError, r"labels must be integer class indices"),
        ({"labels": np.full(61, V)}, ValueError, r"labels\[0\] = 13"),
        ({"bias": np.zeros(V + 1)}, ValueError, r"bias must have shape \(13,\)"),
        ({"prior": np.full((61, V), 1 / V)}, ValueError, r"per-sample prior"),
        ({"top_k": 0}, ValueError, r"top_k must be at least 1"),
        ({"n_bins": 0}, ValueError, r"n_bins"),
        ({"workspace": 0}, ValueError, r"workspace must be a positive number"),
        ({"softcap": -1.0}, ValueError, r"softcap"),
        ({"hidden": np.zeros((61, D), np.int64)}, TypeError, r"hidden must be a floating"),
    ],
)
def test_argument_errors_are_those_of_the_linear_head_and_the_metrics(kwargs, error, match):
    h, W, _, y = _inputs(np.float64)
    args = {"hidden": h, "classifier": W, "labels": y, **kwargs}
    rest = {k: v for k, v in args.items() if k not in ("hidden", "classifier", "labels")}
    with pytest.raises(error, match=match):
        metrics.evaluate_linear(args["hidden"], args["classifier"], args["labels"], **rest)


def _unaligned(a: np.ndarray) -> np.ndarray:
    """A copy of ``a`` at an odd byte offset, as a Dask worker unpickles arrays."""
    buf = np.empty(a.nbytes + 1, dtype=np.uint8)
    out = buf[1:].view(a.dtype).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned
    return out


def test_unaligned_inputs_give_the_bits_of_aligned_ones():
    # NumPy hands only aligned arrays to BLAS; its own loops round differently (and
    # run several times slower): an unaligned classifier changed the bits of the
    # hidden states' gradient (found on a Dask worker, which unpickles at any offset).
    rng = np.random.default_rng(9)
    h = rng.standard_normal((37, 8)).astype(np.float32)
    W = rng.standard_normal((37, 8)).astype(np.float32)
    b = rng.standard_normal(37).astype(np.float32)
    y = rng.integers(0, 37, 37)
    want_m = metrics.evaluate_linear(h, W, y, 0.1, bias=b)
    want_loss, want = smoothce.linear_cross_entropy_with_grad(h, W, y, 0.1, bias=b)
    hu, Wu, bu = _unaligned(h), _unaligned(W), _unaligned(b)
    assert metrics.evaluate_linear(hu, Wu, y, 0.1, bias=bu) == want_m
    loss, grads = smoothce.linear_cross_entropy_with_grad(hu, Wu, y, 0.1, bias=bu)
    assert loss == want_loss
    for got, exp in zip(grads, want, strict=True):
        np.testing.assert_array_equal(got, exp)
