"""smoothce.dask on a real two-process cluster, against the in-memory functions.

Skipped where the `dask` extra is not installed. The cluster is started once for the
module, every computation waits a bounded time, and it is torn down at the end.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
pytest.importorskip("distributed")

import dask  # noqa: E402
from cluster import local_cluster, on  # noqa: E402

import smoothce  # noqa: E402
import smoothce.dask as sdask  # noqa: E402
from smoothce import metrics  # noqa: E402
from smoothce._engine import BLOCK_ELEMENTS  # noqa: E402


@pytest.fixture(scope="module")
def client():
    with local_cluster() as c:
        yield c


def _data(n, K, dtype=np.float64, seed=0, ignore=()):
    rng = np.random.default_rng(seed)
    z = (rng.normal(size=(n, K)) * 3).astype(dtype)
    y = rng.integers(0, K, n)
    for lo, hi in ignore:
        y[lo:hi] = -100
    return z, y


# Row chunkings of 1000 rows: even, uneven with a short last chunk, one chunk whose
# labels are all ignored (rows 0-136), and single rows next to large chunks.
CHUNKINGS = [(250,) * 4, (137, 400, 400, 63), (1, 998, 1), (1000,)]


@pytest.mark.parametrize("chunks", CHUNKINGS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_losses_match_in_memory_on_the_cluster(client, chunks, reduction):
    z, y = _data(1000, 40, ignore=[(0, 137)])
    w = np.linspace(0.5, 1.5, 40)
    kw = dict(reduction=reduction, ignore_index=-100, weight=w, prior="others")
    zd = da.from_array(z, chunks=(chunks, 40))
    yd = da.from_array(y, chunks=(chunks,))
    loss = sdask.cross_entropy(zd, yd, 0.1, **kw)
    grad = sdask.cross_entropy_grad(zd, yd, 0.1, **kw)
    loss2, grad2 = sdask.cross_entropy_with_grad(zd, yd, 0.1, **kw)
    assert grad.chunks == zd.chunks
    assert grad2.chunks == zd.chunks
    got_loss, got_grad, got_loss2, got_grad2 = on(client, loss, grad, loss2, grad2)
    ref_loss, ref_grad = smoothce.cross_entropy_with_grad(z, y, 0.1, **kw)
    # float64: exact partial sums agree with the engine's float64 sum to rounding.
    np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-12, atol=0)
    np.testing.assert_allclose(got_loss2, ref_loss, rtol=1e-12, atol=0)
    np.testing.assert_allclose(got_grad, ref_grad, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(got_grad2, ref_grad, rtol=1e-12, atol=1e-300)
    assert np.asarray(got_loss).dtype == ref_loss.dtype
    if reduction == "none":
        assert loss.chunks == (chunks,)


@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_evaluate_matches_in_memory_on_the_cluster(client, chunks):
    z, y = _data(1000, 40, ignore=[(0, 137)])
    zd = da.from_array(z, chunks=(chunks, 40))
    yd = da.from_array(y, chunks=(chunks,))
    got = on(client, sdask.evaluate(zd, yd, 0.1, ignore_index=-100, top_k=3))
    ref = metrics.evaluate(z, y, 0.1, ignore_index=-100, top_k=3)
    assert got == ref  # every value, to the bit


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_any_chunking_of_short_float32_rows_gives_the_in_memory_metrics_bitwise(client, dtype):
    """Regression: BLAS's matrix-vector row sums made a row's bits depend on the rows
    sharing its engine block, so chunks cutting blocks changed the last bits."""
    K = 1000
    rows = BLOCK_ELEMENTS // K  # the engine's block of rows
    n = rows * 9 + 17
    z, y = _data(n, K, dtype=dtype, ignore=[(0, rows)])
    ref = metrics.evaluate(z, y, 0.1, ignore_index=-100)
    ref_loss = smoothce.cross_entropy(z, y, 0.1, ignore_index=-100)
    losses = []
    for chunks in ((rows, rows * 3, rows * 5, 17), (7, 600, 1, n - 608)):  # blocks cut
        zd = da.from_array(z, chunks=(chunks, K))
        yd = da.from_array(y, chunks=(chunks,))
        got, loss = on(
            client,
            sdask.evaluate(zd, yd, 0.1, ignore_index=-100),
            sdask.cross_entropy(zd, yd, 0.1, ignore_index=-100),
        )
        assert got == ref
        assert loss == pytest.approx(float(ref_loss), rel=1e-12)
        losses.append(loss)
    assert losses[0] == losses[1]  # exact sums: the chunking changes no bit


def test_results_do_not_depend_on_the_number_of_workers_or_the_scheduler(client):
    z, y = _data(600, 30, dtype=np.float32, ignore=[(100, 200)])
    zd = da.from_array(z, chunks=(77, 30))
    yd = da.from_array(y, chunks=77)
    graph = sdask.evaluate(zd, yd, 0.1, ignore_index=-100)
    loss = sdask.cross_entropy(zd, yd, 0.1, ignore_index=-100)
    on_cluster = on(client, graph, loss)
    for scheduler in ("sync", "threads"):
        assert dask.compute(graph, loss, scheduler=scheduler) == tuple(on_cluster)
    with dask.config.set(num_workers=1):
        assert dask.compute(graph, loss, scheduler="threads") == tuple(on_cluster)


def test_process_scheduler():
    z, y = _data(300, 20)
    zd = da.from_array(z, chunks=(100, 20))
    got = sdask.cross_entropy(zd, da.from_array(y, chunks=100), 0.1).compute(
        scheduler="processes", num_workers=2
    )
    assert got == pytest.approx(float(smoothce.cross_entropy(z, y, 0.1)), rel=1e-12)


def test_with_grad_runs_the_engine_once_per_block(monkeypatch):
    from smoothce.dask import _blocks

    calls = []
    original = _blocks.run

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(_blocks, "run", counting)
    z, y = _data(100, 8)
    loss, grad = sdask.cross_entropy_with_grad(da.from_array(z, chunks=(25, 8)), y, 0.1)
    dask.compute(loss, grad, scheduler="sync")
    assert len(calls) == 4


# -- errors: the in-memory messages, positions in the whole array -------------
def test_bad_label_is_reported_at_its_position_in_the_whole_array(client):
    z, y = _data(1000, 40)
    y[613] = 40
    with pytest.raises(ValueError, match="class indices") as expected:
        smoothce.cross_entropy(z, y)
    zd = da.from_array(z, chunks=(250, 40))
    yd = da.from_array(y, chunks=250)
    for graph in (
        sdask.cross_entropy(zd, yd),
        sdask.cross_entropy(zd, yd, reduction="none"),
        sdask.cross_entropy_grad(zd, yd),
        sdask.evaluate(zd, yd),
    ):
        with pytest.raises(ValueError, match="class indices") as got:
            on(client, graph)
        assert (
            str(got.value)
            == str(expected.value)
            == ("labels must be class indices in [0, 40); got labels[613] = 40.")
        )


def test_bad_position_in_a_three_dimensional_batch():
    z = np.zeros((4, 6, 5))
    y = np.zeros((4, 5), dtype=np.int64)
    y[3, 2] = 9
    with pytest.raises(ValueError, match="class indices") as expected:
        smoothce.cross_entropy(z, y, axis=1)
    with pytest.raises(ValueError, match="class indices") as got:
        sdask.cross_entropy(da.from_array(z, chunks=(2, 6, 2)), y, axis=1).compute(
            scheduler="sync"
        )
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize(
    ("labels", "kwargs"),
    [
        (np.zeros(10, dtype=np.int64), {"epsilon": 1.5}),
        (np.zeros(10, dtype=np.int64), {"axis": 2}),
        (np.zeros(10, dtype=np.int64), {"weight": np.ones(3)}),
        (np.zeros(10, dtype=np.int64), {"reduction": "avg"}),
        (np.zeros(10, dtype=np.int64), {"prior": "others", "ignore_index": 1.5}),
        (np.zeros(9, dtype=np.int64), {}),
        (np.zeros((10, 4)), {"ignore_index": -100}),
        (np.zeros(10, dtype=np.int64), {"prior": np.array([0.5, 0.5, 0.5, 0.5])}),
    ],
)
def test_argument_errors_are_raised_when_the_graph_is_built(labels, kwargs):
    z = np.zeros((10, 4), dtype=np.float32)
    with pytest.raises((TypeError, ValueError)) as expected:
        smoothce.cross_entropy(z, labels, **kwargs)
    for func in (sdask.cross_entropy, sdask.cross_entropy_grad, sdask.cross_entropy_with_grad):
        with pytest.raises(expected.type) as got:
            func(da.from_array(z, chunks=5), da.from_array(labels), **kwargs)
        assert str(got.value) == str(expected.value)


def test_evaluate_needs_class_labels_and_a_batch_axis():
    z = da.zeros((10, 4), chunks=5)
    with pytest.raises(TypeError, match="integer class indices for metrics"):
        sdask.evaluate(z, da.zeros((10, 4)))
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        sdask.evaluate(z, da.zeros(10, dtype=int), top_k=0)
    with pytest.raises(ValueError, match="needs a batch axis"):
        sdask.cross_entropy(da.zeros(4), 1)


def test_class_axis_in_several_chunks_is_rechunked_and_warns_when_large(monkeypatch):
    z, y = _data(200, 30)
    zd = da.from_array(z, chunks=(50, 7))
    ref = smoothce.cross_entropy_grad(z, y, 0.2)
    grad = sdask.cross_entropy_grad(zd, y, 0.2)
    assert grad.chunks == zd.chunks  # back to the input's chunks
    np.testing.assert_allclose(grad.compute(scheduler="sync"), ref, rtol=1e-12, atol=1e-300)
    monkeypatch.setattr(sdask, "RECHUNK_WARN_BYTES", 0)
    with pytest.warns(da.PerformanceWarning, match="chunked along the class axis 1"):
        sdask.cross_entropy(zd, y, 0.2)


def test_probability_targets_and_a_per_sample_prior():
    rng = np.random.default_rng(3)
    z, _ = _data(120, 6)
    t = rng.dirichlet(np.ones(6), size=120)
    u = rng.dirichlet(np.ones(6), size=120)
    zd = da.from_array(z, chunks=(50, 6))
    got = sdask.cross_entropy(zd, da.from_array(t, chunks=(40, 6)), 0.3, prior=u)
    ref = smoothce.cross_entropy(z, t, 0.3, prior=u)
    assert got.compute(scheduler="sync") == pytest.approx(float(ref), rel=1e-12)


# -- larger than the cluster's memory ---------------------------------------------
def test_zarr_array_larger_than_the_cluster_memory(tmp_path):
    zarr = pytest.importorskip("zarr")
    # 2 workers x 192 MiB (a worker needs about 90 MiB for itself); 470 MB of float32
    # logits in 8 MiB chunks (whole engine blocks), generated and written by the
    # workers themselves, uncompressed (random numbers do not compress; it only costs
    # time). Sized to run in well under a minute here.
    n, K, rows = 448 * 1024, 256, 8192

    def logits(xp, i):  # cheap, deterministic, irregular: sin of a scaled index
        return (xp.sin(i.astype(np.float32) * np.float32(0.618)) * np.float32(4)).reshape(n, K)

    z = logits(da, da.arange(n * K, chunks=rows * K))
    y = (da.arange(n, chunks=rows) * 7919) % K
    no_compression = (
        {"compressors": None} if int(zarr.__version__.split(".")[0]) >= 3 else {"compressor": None}
    )
    with local_cluster("192MiB") as client:
        on(client, da.to_zarr(z, str(tmp_path / "z.zarr"), compute=False, **no_compression))
        on(client, da.to_zarr(y, str(tmp_path / "y.zarr"), compute=False))
        zd = da.from_zarr(str(tmp_path / "z.zarr"))
        yd = da.from_zarr(str(tmp_path / "y.zarr"))
        limit = sum(w["memory_limit"] for w in client.scheduler_info()["workers"].values())
        assert zd.nbytes > limit
        got = on(client, sdask.evaluate(zd, yd, 0.1))
    z_mem, y_mem = logits(np, np.arange(n * K)), (np.arange(n) * 7919) % K
    assert got == metrics.evaluate(z_mem, y_mem, 0.1)
    assert not math.isnan(got.nll)
    assert got.counted == n


def test_a_per_sample_prior_as_a_dask_array_is_checked_per_block():
    rng = np.random.default_rng(4)
    z, y = _data(90, 5)
    u = rng.dirichlet(np.ones(5), size=90)
    zd = da.from_array(z, chunks=(30, 5))
    ud = da.from_array(u, chunks=(45, 5))
    got = sdask.cross_entropy(zd, y, 0.3, prior=ud).compute(scheduler="sync")
    assert got == pytest.approx(float(smoothce.cross_entropy(z, y, 0.3, prior=u)), rel=1e-12)
    u[50, 2] = -0.5
    u[50, 3] += 0.5
    with pytest.raises(ValueError, match="prior must be non-negative") as expected:
        smoothce.cross_entropy(z, y, 0.3, prior=u)
    with pytest.raises(ValueError, match="prior must be non-negative") as got_error:
        sdask.cross_entropy(zd, y, 0.3, prior=da.from_array(u, chunks=(45, 5))).compute(
            scheduler="sync"
        )
    assert str(got_error.value) == str(expected.value)


def test_several_bad_labels_report_the_first_in_c_order_as_in_memory():
    z = np.zeros((4, 60, 6))
    y = np.zeros((60, 6), dtype=np.int64)
    y[41, 5] = 9  # in a block that a worker may well reach first
    y[3, 2] = -1
    with pytest.raises(ValueError, match="class indices") as expected:
        smoothce.cross_entropy(z, y, axis=0)
    assert "labels[3, 2] = -1" in str(expected.value)
    zd = da.from_array(z, chunks=(4, 13, 4))
    yd = da.from_array(y, chunks=(13, 4))
    for graph in (
        sdask.cross_entropy(zd, yd, axis=0),
        sdask.cross_entropy(zd, yd, axis=0, reduction="none"),
        sdask.cross_entropy_with_grad(zd, yd, axis=0)[1],
        sdask.evaluate(zd, yd, axis=0),
    ):
        for scheduler in ("sync", "threads"):
            with pytest.raises(ValueError, match="class indices") as got:
                dask.compute(graph, scheduler=scheduler)
            assert str(got.value) == str(expected.value)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("targets", ["labels", "probabilities"])
def test_weights_beyond_the_engine_range_give_the_in_memory_loss_and_gradient(reduction, targets):
    """Regression: a weighted mean divided losses in true units by a denominator in the
    engine's scaled weight units (2.2e-310 instead of 2.48 for weights of 1e-310), and
    the gradient of probability targets left out the weights' scale."""
    z, y = _data(200, 7)
    if targets == "probabilities":
        y = np.random.default_rng(3).dirichlet(np.ones(7), size=200)
    w = np.linspace(1.0, 3.0, 7) * 2.0**-1020  # needs the engine's weight scale
    zd = da.from_array(z, chunks=(37, 7))
    yd = da.from_array(y, chunks=(37, *y.shape[1:]))
    loss, grad = sdask.cross_entropy_with_grad(zd, yd, 0.1, weight=w, reduction=reduction)
    loss, grad = dask.compute(loss, grad, scheduler="sync")
    ref_loss, ref_grad = smoothce.cross_entropy_with_grad(z, y, 0.1, weight=w, reduction=reduction)
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-12)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-12, atol=0)
    only_loss = sdask.cross_entropy(zd, yd, 0.1, weight=w, reduction=reduction)
    assert float(only_loss.compute(scheduler="sync")) == pytest.approx(float(ref_loss), rel=1e-12)


def test_gradient_of_probability_targets_with_the_mean_reduction():
    """Regression: the mean's denominator read probability targets as class indices
    and refused them ("must have the shape of logits (37, 7, 7)")."""
    z, _ = _data(200, 7)
    q = np.random.default_rng(4).dirichlet(np.ones(7), size=200)
    zd, qd = da.from_array(z, chunks=(37, 7)), da.from_array(q, chunks=(37, 7))
    grad = sdask.cross_entropy_grad(zd, qd, 0.2).compute(scheduler="sync")
    np.testing.assert_allclose(grad, smoothce.cross_entropy_grad(z, q, 0.2), rtol=1e-12, atol=0)


@pytest.mark.parametrize("epsilon", [0.0, 0.1])
@pytest.mark.parametrize("probabilistic", [False, True])
def test_sum_with_subnormal_weights_is_rounded_once_as_in_memory(probabilistic, epsilon):
    """Regression: each block's element losses were scaled back to true units (a
    subnormal product for weights of ~5e-324) before the exact sum, so every element
    was rounded to a multiple of 5e-324 and the Dask sum came out 197 units instead
    of the in-memory (and correctly rounded) 195. The sum is scaled once, at the end,
    as in memory: the same value for any chunking."""
    rng = np.random.default_rng(4)
    n, K = 40, 6
    z = rng.normal(size=(n, K)) * 2
    y = rng.integers(0, K, n)
    y[::5] = -100
    if probabilistic:
        labels, kw = rng.dirichlet(np.ones(K), size=n), {}
    else:
        labels, kw = y, {"ignore_index": -100}
    w = np.linspace(1.0, 3.0, K) * 5e-324
    zd = da.from_array(z, chunks=(7, K))
    ld = da.from_array(labels, chunks=(7, K) if probabilistic else 7)
    # The sum is exact in both, then rounded once: equal. The mean divides a rounded
    # sum in memory and the exact one here: the 1e-12.
    for reduction, rel in (("sum", 0.0), ("mean", 1e-12)):
        want = smoothce.cross_entropy(z, labels, epsilon, weight=w, reduction=reduction, **kw)
        got = sdask.cross_entropy(zd, ld, epsilon, weight=w, reduction=reduction, **kw)
        assert got.compute(scheduler="sync") == pytest.approx(want, rel=rel, abs=0.0)
        loss, _ = sdask.cross_entropy_with_grad(
            zd, ld, epsilon, weight=w, reduction=reduction, **kw
        )
        assert loss.compute(scheduler="sync") == pytest.approx(want, rel=rel, abs=0.0)
