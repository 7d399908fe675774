"""The fused linear head (issue 9, item 4): ``linear_cross_entropy[_with_grad]``.

Contract: equal to the unfused computation (the logits ``hidden @ classifier.T + bias``,
then :func:`smoothce.cross_entropy_with_grad`, then the products ``G @ classifier``,
``G.T @ hidden`` and ``G.sum(0)``) within rounding, 1e-12 relative in float64 and 1e-5
in float32, for every option; and an extra memory peak independent of the batch.
"""

from __future__ import annotations

import itertools
from typing import Any
from unittest import mock

import numpy as np
import pytest

import smoothce
from smoothce import _engine

V, D = 13, 6


def _inputs(dtype: Any, N: int = 37, seed: int = 0, shape: tuple[int, ...] | None = None):
    rng = np.random.default_rng(seed)
    shape = (N,) if shape is None else shape
    h = rng.standard_normal((*shape, D)).astype(dtype)
    W = (rng.standard_normal((V, D)) * 0.8).astype(dtype)
    b = rng.standard_normal(V).astype(dtype)
    y = rng.integers(0, V, shape)
    return h, W, b, y


def _unfused(h, W, y, eps, *, bias=None, **kw):
    """The computation the fused head replaces, in the compute dtype."""
    d = h.shape[-1]
    h2 = h.reshape(-1, d)
    logits = h2 @ W.T
    if bias is not None:
        logits = logits + bias
    loss, G = smoothce.cross_entropy_with_grad(logits, y.reshape(-1), eps, **kw)
    if kw.get("reduction") == "none":
        loss = loss.reshape(y.shape)
    db = None if bias is None else G.sum(axis=0)
    return loss, ((G @ W).reshape(h.shape), G.T @ h2, db)


def _close(got: Any, want: Any, rtol: float) -> None:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


GRID = list(
    itertools.product(
        [None, "others", "class"],  # prior
        [False, True],  # weight
        [None, 3],  # ignore_index
        [0.0, 1e-3],  # z_loss
        [None, 4.0],  # softcap
    )
)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize(("prior", "weighted", "ignore", "zl", "cap"), GRID)
def test_fused_equals_unfused_over_the_option_grid(
    dtype, reduction, with_bias, prior, weighted, ignore, zl, cap
):
    h, W, b, y = _inputs(dtype)
    rng = np.random.default_rng(1)
    kw: dict[str, Any] = {"reduction": reduction, "z_loss": zl, "softcap": cap}
    if prior == "class":
        u = rng.random(V)
        kw["prior"] = u / u.sum()
    else:
        kw["prior"] = prior
    if weighted:
        kw["weight"] = rng.random(V) * 2
    if ignore is not None:
        kw["ignore_index"] = -1
        y = np.where(rng.random(y.shape) < 0.2, -1, y)
    bias = b if with_bias else None
    want_loss, want = _unfused(h, W, y, 0.1, bias=bias, **kw)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    # 100 bytes: blocks of one or two rows; 4 KiB: a ragged last block; the default.
    for workspace in (100, 4096, smoothce._linear.DEFAULT_WORKSPACE):
        loss_only = smoothce.linear_cross_entropy(
            h, W, y, 0.1, bias=bias, workspace=workspace, **kw
        )
        loss, grads = smoothce.linear_cross_entropy_with_grad(
            h, W, y, 0.1, bias=bias, workspace=workspace, **kw
        )
        _close(loss, want_loss, rtol)
        _close(loss_only, want_loss, rtol)
        if reduction == "none":
            assert loss.shape == y.shape
            assert loss.dtype == dtype
        else:
            assert type(loss) is np.dtype(dtype).type
        for got, exp in zip(grads, want, strict=True):
            if exp is None:
                assert got is None
            else:
                assert got.dtype == dtype
                assert got.shape == exp.shape
                _close(got, exp, rtol)


def test_blocks_add_their_sums_exactly_and_the_mean_is_global():
    # One row per block: the loss is the same as with one block to the last bit of
    # float64 rounding of the per-row losses (fsum), and the mean divides once by the
    # whole batch's total weight.
    h, W, _, y = _inputs(np.float64, N=50, seed=3)
    w = np.linspace(0.1, 3.0, V)
    a = smoothce.linear_cross_entropy(h, W, y, 0.1, weight=w, workspace=1, z_loss=1e-2)
    c = smoothce.linear_cross_entropy(h, W, y, 0.1, weight=w, z_loss=1e-2)
    logits = h @ W.T
    per = smoothce.cross_entropy(logits, y, 0.1, weight=w, reduction="none")
    lse = np.log(np.exp(logits).sum(axis=1))
    exact = np.float64(np.sum(per) / w[y].sum() + 1e-2 * np.sum(lse**2) / 50)
    np.testing.assert_allclose([a, c], [exact, exact], rtol=1e-14)


def test_extra_dimensions_and_workers():
    h, W, b, y = _inputs(np.float64, shape=(3, 4))
    loss, g = smoothce.linear_cross_entropy_with_grad(h, W, y, bias=b, reduction="none")
    want_loss, want = _unfused(h, W, y, 0.0, bias=b, reduction="none")
    assert loss.shape == (3, 4)
    assert g.hidden.shape == (3, 4, D)
    _close(loss, want_loss, 1e-12)
    _close(g.hidden, want[0], 1e-12)
    l1 = smoothce.linear_cross_entropy(h, W, y, workers=1, workspace=200)
    l2 = smoothce.linear_cross_entropy(h, W, y, workers=2, workspace=200)
    assert l1 == l2


def test_streamed_rows_inside_the_blocks():
    # Vocabularies beyond the engine's block are streamed by the engine; patch its
    # block to 5 logits so that every row of 13 classes is cut into chunks.
    h, W, b, y = _inputs(np.float64, N=9)
    want_loss, want = _unfused(h, W, y, 0.2, bias=b, z_loss=1e-2, softcap=3.0)
    with mock.patch.object(_engine, "BLOCK_ELEMENTS", 5):
        loss, g = smoothce.linear_cross_entropy_with_grad(
            h, W, y, 0.2, bias=b, z_loss=1e-2, softcap=3.0, workspace=300
        )
    _close(loss, want_loss, 1e-12)
    for got, exp in zip(g, want, strict=True):
        _close(got, exp, 1e-12)


@pytest.mark.parametrize("low", ["float16", "bfloat16"])
def test_low_precision_inputs_are_computed_in_float32(low):
    dtype = np.dtype(pytest.importorskip("ml_dtypes").bfloat16) if low == "bfloat16" else low
    h, W, b, y = _inputs(np.float32)
    h, W = h.astype(dtype), W.astype(dtype)
    loss, g = smoothce.linear_cross_entropy_with_grad(h, W, y, 0.1, bias=b, workspace=500)
    want_loss, want = _unfused(h.astype(np.float32), W.astype(np.float32), y, 0.1, bias=b)
    assert type(loss) is np.float32
    assert g.hidden.dtype == g.classifier.dtype == dtype
    assert g.bias.dtype == np.float32
    _close(loss, want_loss, 1e-5)
    # Each gradient is the float32 value rounded once to its dtype.
    rel = 2.0**-8 if low == "bfloat16" else 2.0**-11
    for got, exp in zip(g, want, strict=True):
        _close(got, exp, rel)


def test_mixed_precision_computes_in_float64():
    h, W, b, y = _inputs(np.float64)
    loss, g = smoothce.linear_cross_entropy_with_grad(h.astype(np.float32), W, y, bias=b)
    assert type(loss) is np.float64
    assert g.hidden.dtype == np.float32
    assert g.classifier.dtype == np.float64


def test_empty_batch_and_nothing_counted():
    h, W, b, y = _inputs(np.float32, N=0)
    loss, g = smoothce.linear_cross_entropy_with_grad(h, W, y, bias=b)
    assert loss == 0.0
    assert g.hidden.shape == (0, D)
    assert not g.classifier.any()
    h, W, b, y = _inputs(np.float32, N=4)
    loss, g = smoothce.linear_cross_entropy_with_grad(h, W, np.full(4, -1), ignore_index=-1)
    assert loss == 0.0
    assert not g.classifier.any()


def test_inputs_are_not_modified():
    h, W, b, y = _inputs(np.float32)
    copies = [a.copy() for a in (h, W, b, y)]
    smoothce.linear_cross_entropy_with_grad(h, W, y, 0.1, bias=b, softcap=2.0, workspace=300)
    for a, c in zip((h, W, b, y), copies, strict=True):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"labels": np.full((37, V), 1.0 / V)}, TypeError, r"labels must be integer class"),
        ({"labels": np.zeros(36, dtype=int)}, ValueError, r"labels must have the shape of hidden"),
        ({"classifier": np.zeros((V, D + 1))}, ValueError, r"hidden's last axis must match"),
        ({"classifier": np.zeros(V)}, ValueError, r"classifier must have shape \(V, d\)"),
        ({"hidden": np.zeros((37, D), dtype=int)}, TypeError, r"hidden must be a floating"),
        ({"bias": np.zeros(V + 1)}, ValueError, r"bias must have shape \(13,\)"),
        ({"prior": np.full((37, V), 1.0 / V)}, ValueError, r"per-sample prior"),
        ({"workspace": 0}, ValueError, r"workspace must be a positive number of bytes"),
        ({"workspace": 1.5}, TypeError, r"workspace must be a positive integer"),
        ({"epsilon": 2.0}, ValueError, r"epsilon must be in \[0, 1\]"),
        ({"z_loss": -1.0}, ValueError, r"z_loss must be non-negative"),
        ({"labels": np.full(37, V)}, ValueError, r"labels must be class indices in \[0, 13\)"),
    ],
)
def test_bad_arguments_are_named(change, error, message):
    h, W, _, y = _inputs(np.float32)
    args = {"hidden": h, "classifier": W, "labels": y, "epsilon": 0.1, **change}
    for f in (smoothce.linear_cross_entropy, smoothce.linear_cross_entropy_with_grad):
        with pytest.raises(error, match=message):
            f(**args)


def _extra_peak(N: int, workspace: int, d: int = 32, K: int = 4000) -> int:
    """Peak bytes allocated by a fused call beyond its outputs (tracemalloc sees
    NumPy's allocations)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    h = rng.standard_normal((N, d)).astype(np.float32)
    W = rng.standard_normal((K, d)).astype(np.float32) * 0.1
    b = np.zeros(K, dtype=np.float32)
    y = rng.integers(0, K, N)
    tracemalloc.start()
    try:
        smoothce.linear_cross_entropy_with_grad(
            h, W, y, 0.1, bias=b, workspace=workspace, workers=1
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    outputs = h.nbytes + W.nbytes + b.nbytes
    return peak - outputs


@pytest.mark.parametrize(("d", "K"), [(32, 4000), (512, 64)])
def test_extra_memory_is_independent_of_the_batch(d, K):
    # The workspace, the class-slab and d_hidden scratches (each bounded by the
    # workspace, 1 MiB here), the engine's 512 KiB block and per-block vectors: the
    # same at 2,048 and 16,384 rows, far below the logits. (512, 64): features
    # outnumber classes, so the blocks are long and d_hidden's scratch is cut.
    workspace = 2**20
    _extra_peak(256, workspace, d, K)  # first calls allocate lasting caches (NumPy, BLAS)
    small, large = _extra_peak(2048, workspace, d, K), _extra_peak(16384, workspace, d, K)
    budget = 3 * workspace + (1 << 17) * 4 + 2**20 // 2
    assert small < budget, small
    assert large < budget, large
