"""The vocabulary windows of a linear head (``smoothce._vocab``), driven in memory.

What ``smoothce.dask`` does with a classifier chunked along its vocabulary, without
Dask: every (row block, window) gives its statistics, the windows of a row block are
merged, and a second pass gives the gradients. Contract (issue 16, item 2): the
in-memory ``evaluate_linear`` and ``linear_cross_entropy_with_grad`` within the
rounding of the float64 merges (float64: 1e-12 relative; float32: the in-memory
contract, 1e-5), for every split of the vocabulary; top classes ranked exactly
(ties to the lower class, as ``numpy.argmax``).
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any

import numpy as np
import pytest
from linear_head import ambiguous_rows, assert_metrics_close, materialise, rounding

import smoothce
from smoothce import _vocab, metrics
from smoothce._linear import _Head
from smoothce._scaling import Scaling

V, D = 23, 6
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
SPLITS = [[0, V], [0, 1, V], [0, 5, 6, 17, V], list(range(V + 1))]


def _inputs(dtype: Any, N: int = 45, seed: int = 0):
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((N, D)).astype(dtype)
    W = (rng.standard_normal((V, D)) * 0.8).astype(dtype)
    b = rng.standard_normal(V).astype(dtype)
    y = rng.integers(0, V, N)
    return h, W, b, y


def _windows(bounds):
    return list(itertools.pairwise(bounds))


def split_metrics(h, W, y, eps, bounds, *, bias=None, top_k=5, n_bins=15, **kw):
    head = _Head(
        h, W, y, eps, bias, "none", kw.get("prior"), kw.get("weight"),
        kw.get("ignore_index"), None, 0.0, kw.get("softcap"), kw.get("workspace", 1 << 20),
    )  # fmt: skip
    spec = _vocab.Spec.of(head, kw.get("prior"), kw.get("weight"), kw.get("ignore_index"), top_k)
    parts = [
        _vocab.window_stats_of(spec, h, W[a:c], None if bias is None else bias[a:c], y, a)
        for a, c in _windows(bounds)
    ]
    merged = _vocab.merge(spec, parts[::-1])  # any order
    return _vocab.accumulator(spec, y, merged, n_bins).result()


def split_loss_and_grads(h, W, y, eps, bounds, *, bias=None, reduction="mean", **kw):
    head = _Head(
        h, W, y, eps, bias, reduction, kw.get("prior"), kw.get("weight"),
        kw.get("ignore_index"), None, kw.get("z_loss", 0.0), kw.get("softcap"),
        kw.get("workspace", 1 << 20),
    )  # fmt: skip
    spec = _vocab.Spec.of(head, kw.get("prior"), kw.get("weight"), kw.get("ignore_index"))
    scaling = Scaling.of(head.p)
    sl = [(a, c, W[a:c], None if bias is None else bias[a:c]) for a, c in _windows(bounds)]
    merged = _vocab.merge(
        spec, [_vocab.window_stats_of(spec, h, w, bb, y, a) for a, c, w, bb in sl]
    )
    p = _vocab.rows_problem(spec, y)
    ce, z_rows, extra = _vocab.row_losses(spec, p, merged, scaling, True)
    if reduction == "none":
        loss = ce * scaling.unit + (0.0 if z_rows is None else z_rows)
    else:
        loss = scaling.reduce(ce.sum(), 0.0 if z_rows is None else z_rows.sum(), spec.dtype)
    parts = [
        _vocab.window_grads(spec, h, w, bb, y, a, merged, extra, scaling) for a, c, w, bb in sl
    ]
    dh = np.sum([g[0].astype(np.float64) for g in parts], axis=0)
    dW = np.concatenate([g[1] for g in parts])
    db = None if bias is None else np.concatenate([g[2] for g in parts])
    return loss, (dh, dW, db)


def _close(got, want, rtol):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bounds", SPLITS)
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"prior": "others", "ignore_index": -100},
        {"weight": "w", "softcap": 2.0},
        {"prior": "class", "workspace": 64},
    ],
)
def test_merged_windows_give_the_in_memory_metrics(dtype, bounds, kw):
    h, W, b, y = _inputs(dtype)
    rng = np.random.default_rng(1)
    kw = dict(kw)
    if kw.get("weight") == "w":
        kw["weight"] = rng.random(V) * 2
    if kw.get("prior") == "class":
        u = rng.random(V)
        kw["prior"] = u / u.sum()
    if "ignore_index" in kw:
        y[::5] = -100
    ref_kw = {k: v for k, v in kw.items() if k not in ("softcap", "workspace")}
    z = materialise(h, W, b, kw.get("softcap"))
    assert not ambiguous_rows(z, rounding(h, W, b), y, 15).any()
    want = metrics.evaluate(z, y, 0.1, top_k=3, **ref_kw)
    got = split_metrics(h, W, y, 0.1, bounds, bias=b, top_k=3, **kw)
    assert_metrics_close(got, want, RTOL[np.dtype(dtype)])


def test_ties_rank_the_lower_class_first_across_windows():
    # Small integers: every logit is exact, and most rows hold ties, within a window
    # and across windows; -inf biases mask whole windows and exceed top_k there.
    rng = np.random.default_rng(2)
    h = rng.integers(-2, 3, (200, D)).astype(np.float64)
    W = rng.integers(-1, 2, (V, D)).astype(np.float64)
    b = np.where(rng.random(V) < 0.3, -np.inf, 0.0)
    y = rng.integers(0, V, 200)
    y[np.isinf(b[y])] = 0
    b[0] = 0.0
    z = h @ W.T + b
    for top_k in (1, 2, 4, V):
        want = metrics.evaluate(z, y, 0.0, top_k=top_k)
        for bounds in SPLITS[1:]:
            got = split_metrics(h, W, y, 0.0, bounds, bias=b, top_k=top_k)
            assert (got.accuracy, got.top_k_accuracy) == (want.accuracy, want.top_k_accuracy)
            np.testing.assert_array_equal(got.bins.count, want.bins.count)
            assert got.nll == pytest.approx(want.nll, rel=1e-12)


@pytest.mark.parametrize("where", ["bias", "hidden", "masked"])
def test_rows_without_a_softmax_are_undefined(where):
    # A +inf logit in every row (an infinite bias), NaN logits in one row (a NaN
    # hidden state: NaN in every window, the top-k partition's NaN path), and a row
    # whose logits are all -inf (every window empty, the merge's NaN).
    h, W, b, y = _inputs(np.float64)
    if where == "bias":
        b[4] = np.inf
    elif where == "hidden":
        h[7, 2] = np.nan
    else:
        h[7] = 0.0
        b[:] = -np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = split_metrics(h, W, y, 0.1, SPLITS[2], bias=b, top_k=3)
    assert np.isnan(got.nll)
    assert np.isnan(got.accuracy)
    assert_metrics_close(got, metrics.evaluate(materialise(h, W, b), y, 0.1, top_k=3), 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("bounds", SPLITS[1:])
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"prior": "others", "ignore_index": -100, "z_loss": 1e-3},
        {"weight": "w", "softcap": 2.0, "workspace": 64},
    ],
)
def test_loss_and_gradients_from_two_passes_over_the_windows(dtype, reduction, bounds, kw):
    h, W, b, y = _inputs(dtype, seed=3)
    kw = dict(kw)
    if kw.get("weight") == "w":
        kw["weight"] = np.random.default_rng(4).random(V) * 2
    if "ignore_index" in kw:
        y[::4] = -100
    ref_kw = {k: v for k, v in kw.items() if k != "workspace"}
    want_loss, want = smoothce.linear_cross_entropy_with_grad(
        h, W, y, 0.1, bias=b, reduction=reduction, **ref_kw
    )
    loss, grads = split_loss_and_grads(h, W, y, 0.1, bounds, bias=b, reduction=reduction, **kw)
    rtol = RTOL[np.dtype(dtype)]
    _close(loss, want_loss, rtol)
    for g, w in zip(grads, want, strict=True):
        _close(g, w, rtol)
