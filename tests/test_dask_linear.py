"""``smoothce.dask``'s linear head on a real two-process cluster, against memory.

Contract (issue 16, item 2): ``linear_cross_entropy``, ``linear_cross_entropy_with_grad``
and ``evaluate_linear`` on Dask arrays equal the in-memory functions within the
rounding of the float64 merges (float64: 1e-12 relative; float32: the in-memory
contract, 1e-5), for every chunking of the rows (known or unknown sizes) and of the
vocabulary, and on every scheduler; the classifier split along its vocabulary needs no
worker to hold all of it. Metric counts are equal on data without logits tied within
the products' rounding (``linear_head.ambiguous_rows``).
"""

from __future__ import annotations

import logging
import pickle
import warnings
from typing import Any

import numpy as np
import pytest
from linear_head import ambiguous_rows, assert_metrics_close, materialise, rounding

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import dask  # noqa: E402
from distributed.diagnostics.plugin import WorkerPlugin  # noqa: E402

import smoothce  # noqa: E402
import smoothce.dask as sdask  # noqa: E402
from smoothce import metrics  # noqa: E402

TIMEOUT = 120
V, D, N = 37, 8, 200
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
# Rows: even, uneven with a short last block, single rows beside a large block, whole.
ROWS = [(50,) * 4, (37, 100, 60, 3), (1, 198, 1), (N,)]
# The vocabulary: whole (NumPy), one Dask chunk, uneven chunks, single classes.
VOCAB = ["numpy", (V,), (7, 20, 10), (1, 1, 35)]


def _cluster(memory_limit: Any, **config: Any) -> tuple[Any, Any]:
    with warnings.catch_warnings(), dask.config.set(config):
        # distributed may warn about its own environment (ports, resource limits).
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, memory_limit=memory_limit,
            dashboard_address=None, silence_logs=logging.ERROR,
        )  # fmt: skip
        client = distributed.Client(cluster, set_as_default=False, timeout=TIMEOUT)
    return cluster, client


def _close(cluster: Any, client: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client.close()
        cluster.close()


@pytest.fixture(scope="module")
def client():
    cluster, client = _cluster("1GiB")
    yield client
    _close(cluster, client)


def on(client, *collections):
    """Compute on the cluster, waiting at most TIMEOUT seconds."""
    futures = client.compute(list(collections))
    results = [f.result(timeout=TIMEOUT) for f in futures]
    return results[0] if len(results) == 1 else results


def _data(dtype: Any = np.float64, seed: int = 0, ignore: bool = True):
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((N, D)).astype(dtype)
    W = (rng.standard_normal((V, D)) * 0.7).astype(dtype)
    b = rng.standard_normal(V).astype(dtype)
    y = rng.integers(0, V, N)
    if ignore:
        y[:41] = -100  # the first row blocks of some chunkings hold no counted row
        y[100::9] = -100
    return h, W, b, y


def _classifier(W: np.ndarray, vocab: Any) -> Any:
    return W if vocab == "numpy" else da.from_array(W, chunks=(vocab, D))


def _bias(b: np.ndarray, vocab: Any) -> Any:
    return b if vocab == "numpy" else da.from_array(b, chunks=(vocab,))


def _close_arrays(got: Any, want: Any, rtol: float) -> None:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


# -- evaluate_linear ---------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("vocab", VOCAB)
def test_evaluate_linear_on_the_cluster_for_every_chunking(client, dtype, vocab):
    h, W, b, y = _data(dtype, seed=1)
    kw = dict(ignore_index=-100, softcap=3.0, prior="others", top_k=3)
    z = materialise(h, W, b, 3.0)
    assert not ambiguous_rows(z, rounding(h, W, b), y, 15).any()
    want = metrics.evaluate_linear(h, W, y, 0.1, bias=b, **kw)
    rtol = RTOL[np.dtype(dtype)]
    got_all = []
    for rows in ROWS:
        hd, yd = da.from_array(h, chunks=(rows, D)), da.from_array(y, chunks=rows)
        graph = sdask.evaluate_linear(
            hd, _classifier(W, vocab), yd, 0.1, bias=_bias(b, vocab), workspace=256, **kw
        )
        got = on(client, graph)
        assert_metrics_close(got, want, rtol)
        got_all.append(got)
    # Each row's values come from its row alone and the sums are exact: the chunking
    # of the rows moves nothing but what BLAS rounds differently for another block.
    for got in got_all[1:]:
        assert_metrics_close(got, got_all[0], rtol)


def test_evaluate_linear_with_weights_numpy_labels_and_a_class_prior(client):
    h, W, b, y = _data(np.float64, seed=2, ignore=False)
    rng = np.random.default_rng(3)
    w, u = rng.random(V) + 0.5, rng.dirichlet(np.ones(V))
    want = metrics.evaluate_linear(h, W, y, 0.2, bias=b, weight=w, prior=u, top_k=V)
    for vocab in ("numpy", (10, 27)):
        got = on(
            client,
            sdask.evaluate_linear(
                da.from_array(h, chunks=(64, D)),
                _classifier(W, vocab),
                y,
                0.2,
                bias=_bias(b, vocab),
                weight=da.from_array(w),
                prior=u,
                top_k=V,
            ),
        )
        assert_metrics_close(got, want, 1e-12)


# -- the losses and the gradients --------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    ("vocab", "dtype"),
    [
        ("numpy", np.float32),
        ((V,), np.float64),
        ((7, 20, 10), np.float32),
        ((1, 1, 35), np.float64),
    ],
)
def test_loss_and_gradients_on_the_cluster_for_every_chunking(client, dtype, reduction, vocab):
    h, W, b, y = _data(dtype, seed=4)
    kw: dict[str, Any] = dict(
        reduction=reduction, ignore_index=-100, z_loss=1e-3, softcap=4.0,
        weight=np.linspace(0.5, 2.0, V),
    )  # fmt: skip
    want_loss, want = smoothce.linear_cross_entropy_with_grad(h, W, y, 0.1, bias=b, **kw)
    rtol = RTOL[np.dtype(dtype)]
    lazy = []
    for rows in ROWS[1:3]:
        hd, yd = da.from_array(h, chunks=(rows, D)), da.from_array(y, chunks=rows)
        Wd, bd = _classifier(W, vocab), _bias(b, vocab)
        loss_only = sdask.linear_cross_entropy(hd, Wd, yd, 0.1, bias=bd, workspace=200, **kw)
        loss, g = sdask.linear_cross_entropy_with_grad(
            hd, Wd, yd, 0.1, bias=bd, workspace=200, **kw
        )
        assert g.hidden.chunks == hd.chunks
        assert g.classifier.chunks == (((V,), (D,)) if vocab == "numpy" else Wd.chunks)
        assert g.bias.chunks == (((V,),) if vocab == "numpy" else bd.chunks)
        lazy += [loss_only, loss, *g]
    values = on(client, *lazy)
    results = [values[:5], values[5:]]
    for got in results:
        _close_arrays(got[0], want_loss, rtol)
        _close_arrays(got[1], want_loss, rtol)
        for value, exp in zip(got[2:], want, strict=True):
            assert value.dtype == exp.dtype
            _close_arrays(value, exp, rtol)
    for a, c in zip(results[1], results[0], strict=True):
        _close_arrays(a, c, rtol)


def test_gradients_are_the_same_bits_on_every_scheduler(client):
    h, W, b, y = _data(np.float32, seed=5)
    hd, yd = da.from_array(h, chunks=(37, D)), da.from_array(y, chunks=37)
    for Wd in (W, da.from_array(W, chunks=(9, D))):
        loss, g = sdask.linear_cross_entropy_with_grad(hd, Wd, yd, 0.1, bias=b, ignore_index=-100)
        ref = dask.compute(loss, *g, scheduler="sync")
        for scheduler in ("threads", "processes"):
            got = dask.compute(loss, *g, scheduler=scheduler)
            for a, c in zip(got, ref, strict=True):
                np.testing.assert_array_equal(a, c)
        for a, c in zip(on(client, loss, *g), ref, strict=True):
            np.testing.assert_array_equal(a, c)


def test_half_precision_gradients_are_rounded_once_after_the_float64_merge(client):
    # float16 inputs are computed in float32; the classifier's gradient summed over
    # the row blocks in float64 and rounded to float16 once, as in memory (within
    # float16's own rounding of the float32 result).
    h, W, _, y = _data(np.float32, seed=6, ignore=False)
    h16, W16 = h.astype(np.float16), W.astype(np.float16)
    _, want = smoothce.linear_cross_entropy_with_grad(h16, W16, y, 0.1, reduction="sum")
    _, g = sdask.linear_cross_entropy_with_grad(
        da.from_array(h16, chunks=(20, D)), da.from_array(W16, chunks=(12, D)), y, 0.1,
        reduction="sum",
    )  # fmt: skip
    dh, dW = on(client, g.hidden, g.classifier)
    assert (dh.dtype, dW.dtype) == (np.float16, np.float16)
    for got, exp in ((dh, want.hidden), (dW, want.classifier)):
        # float32 values within the contract's 1e-5 of each other, each rounded to
        # float16 once: at most one float16 spacing apart beyond that.
        spacing = np.spacing(np.abs(exp)).astype(np.float64)
        err = np.abs(got.astype(np.float64) - exp.astype(np.float64))
        assert np.all(err <= spacing + 1e-5 * float(np.abs(exp).max()))


# -- unknown chunk sizes -------------------------------------------------------------------
def test_unknown_chunk_sizes_from_a_padding_mask(client):
    h, W, b, y = _data(np.float64, seed=7)
    keep = y != -100
    mask = da.from_array(keep, chunks=50)
    hd = da.from_array(h, chunks=(50, D))[mask]
    yd = da.from_array(y, chunks=50)[mask]
    assert np.isnan(hd.chunks[0][0])
    want_m = metrics.evaluate_linear(h[keep], W, y[keep], 0.1, bias=b)
    want_loss, want = smoothce.linear_cross_entropy_with_grad(h[keep], W, y[keep], 0.1, bias=b)
    for Wd in (W, da.from_array(W, chunks=(10, D))):
        m = on(client, sdask.evaluate_linear(hd, Wd, yd, 0.1, bias=b))
        assert_metrics_close(m, want_m, 1e-12)
        loss, g = sdask.linear_cross_entropy_with_grad(hd, Wd, yd, 0.1, bias=b)
        assert np.isnan(g.hidden.chunks[0][0])
        none = sdask.linear_cross_entropy(hd, Wd, yd, 0.1, bias=b, reduction="none")
        got = on(client, loss, none, *g)
        _close_arrays(got[0], want_loss, 1e-12)
        _close_arrays(got[1], smoothce.linear_cross_entropy(
            h[keep], W, y[keep], 0.1, bias=b, reduction="none"), 1e-12)  # fmt: skip
        for value, exp in zip(got[2:], want, strict=True):
            _close_arrays(value, exp, 1e-12)


@pytest.mark.parametrize("keep", ["a block of padding", "no row"])
def test_split_classifier_gradients_of_an_empty_row_block(client, keep):
    # A row block with no rows (a chunk that was all padding, or no hidden states at
    # all) failed in the task shaping its hidden gradient: reshape(0, -1) cannot
    # infer the feature axis of an empty block ("cannot reshape array of size 0").
    h, W, b, y = _data(np.float32, seed=3)
    rows = np.arange(N) >= (50 if keep == "a block of padding" else N)
    hd = da.from_array(h, chunks=(50, D))[da.from_array(rows, chunks=50)]
    yd = da.from_array(y, chunks=50)[da.from_array(rows, chunks=50)]
    want_loss, want = smoothce.linear_cross_entropy_with_grad(
        h[rows], W, y[rows], 0.1, bias=b, ignore_index=-100
    )
    Wd, bd = _classifier(W, (7, 20, 10)), _bias(b, (7, 20, 10))
    loss, g = sdask.linear_cross_entropy_with_grad(hd, Wd, yd, 0.1, bias=bd, ignore_index=-100)
    got = on(client, loss, *g)
    _close_arrays(got[0], want_loss, 1e-5)
    for value, exp in zip(got[1:], want, strict=True):
        assert value.shape == exp.shape
        assert value.dtype == exp.dtype
        _close_arrays(value, exp, 1e-5)


def test_unknown_chunk_sizes_need_labels_cut_the_same_way():
    h, W, _, y = _data()
    hd = da.from_array(h, chunks=(50, D))[da.from_array(y != -100, chunks=50)]
    for labels in (y, da.from_array(y, chunks=100)):
        with pytest.raises(ValueError, match=r"compute_chunk_sizes\(\)"):
            sdask.evaluate_linear(hd, W, labels)
    # Labels of unknown sizes beside hidden states of known ones: no pairing known.
    unknown = da.from_array(y, chunks=50)[da.from_array(y != -100, chunks=50)]
    with pytest.raises(ValueError, match=r"labels must have known chunk sizes.*compute_chunk"):
        sdask.evaluate_linear(da.from_array(h, chunks=(50, D)), W, unknown)
    # Cut with another mask: the blocks' rows differ, said when computed.
    other = da.from_array(y, chunks=50)[da.from_array(y != 3, chunks=50)]
    with pytest.raises(ValueError, match=r"labels must line up with hidden block for block"):
        sdask.evaluate_linear(hd, W, other).compute(scheduler="sync")


# -- errors -------------------------------------------------------------------------------------
def test_bad_labels_are_named_at_their_position_in_the_whole_array(client):
    h, W, _, y = _data()
    y = y.copy()
    y[163], y[77] = V + 1, -7  # the first in C order is row 77
    hd, yd = da.from_array(h, chunks=(37, D)), da.from_array(y, chunks=37)
    message = (
        r"labels must be class indices in \[0, 37\) or ignore_index=-100; got labels\[77\] = -7"
    )
    for Wd in (W, da.from_array(W, chunks=(10, D))):
        for lazy in (
            sdask.evaluate_linear(hd, Wd, yd, ignore_index=-100),
            sdask.linear_cross_entropy(hd, Wd, yd, ignore_index=-100),
            sdask.linear_cross_entropy(hd, Wd, yd, ignore_index=-100, reduction="none"),
            sdask.linear_cross_entropy_with_grad(hd, Wd, yd, ignore_index=-100)[1].classifier,
        ):
            with pytest.raises(ValueError, match=message):
                on(client, lazy)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        # The message named a stand-in's shape, (0, 8), not the hidden states'.
        (
            {"classifier": np.zeros((V, D + 1))},
            ValueError,
            r"hidden's last axis must match .* got hidden of shape \(200, 8\) and",
        ),
        ({"labels": np.zeros(N - 1, int)}, ValueError, r"labels must have the shape of hidden"),
        ({"labels": np.zeros(N)}, TypeError, r"labels must be integer class indices"),
        ({"bias": np.zeros(V + 1)}, ValueError, r"bias must have shape \(37,\)"),
        ({"hidden": np.zeros(D)}, ValueError, r"needs a batch axis"),
        ({"epsilon": 2.0}, ValueError, r"epsilon"),
        ({"prior": np.full((N, V), 1 / V)}, ValueError, r"per-sample prior"),
        ({"prior": da.full((N, V), 1 / V, chunks=(50, V))}, ValueError, r"per-sample prior"),
        ({"workspace": 0}, ValueError, r"workspace must be a positive number"),
    ],
)
def test_argument_errors_are_raised_when_the_graph_is_built(kwargs, error, match):
    h, W, _, y = _data()
    args = {"hidden": da.from_array(h, chunks=(50, D)), "classifier": W, "labels": y, **kwargs}
    rest = {k: v for k, v in args.items() if k not in ("hidden", "classifier", "labels")}
    for func in (sdask.evaluate_linear, sdask.linear_cross_entropy):
        with pytest.raises(error, match=match):
            func(args["hidden"], args["classifier"], args["labels"], **rest)


def test_no_warnings_from_overflowing_products():
    h, W, b, y = _data(np.float32, ignore=False)
    h[5] = np.finfo(np.float32).max
    W[0] = 1.0  # row 5's logit of class 0: +inf, no softmax
    hd = da.from_array(h, chunks=(50, D))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for Wd in (W, da.from_array(W, chunks=(10, D))):
            m = sdask.evaluate_linear(hd, Wd, y, bias=b).compute(scheduler="sync")
            assert np.isnan(m.nll)
            loss, g = sdask.linear_cross_entropy_with_grad(hd, Wd, y, bias=b)
            values = dask.compute(loss, *g, scheduler="sync")
            assert np.isnan(values[0])


# -- the classifier reaches each worker once; split, no task holds all of it ------------------
def test_a_numpy_classifier_is_one_key_of_the_graph():
    _, W, _, y = _data()
    W = np.random.default_rng(8).standard_normal((V, 2000))  # 592 KB
    hd = da.from_array(np.zeros((N, 2000)), chunks=(20, 2000))  # 10 row blocks
    for lazy in (
        sdask.evaluate_linear(hd, W, y, ignore_index=-100),
        sdask.linear_cross_entropy_with_grad(hd, W, y, ignore_index=-100)[1].classifier,
    ):
        graph = dict(lazy.__dask_graph__())
        size = len(pickle.dumps(graph))
        # the hidden states (3.2 MB) and one copy of the classifier, not ten
        assert size < hd.nbytes + 2 * W.nbytes


class _LargestTaskInput(WorkerPlugin):
    """Records the most bytes of inputs any task of the worker started with."""

    name = "largest-task-input"

    def setup(self, worker: Any) -> None:
        self.worker, self.largest = worker, 0

    def transition(self, key: Any, start: Any, finish: Any, **kwargs: Any) -> None:
        if finish == "executing":
            ts = self.worker.state.tasks[key]
            self.largest = max(self.largest, sum(d.nbytes or 0 for d in ts.dependencies))


def test_a_classifier_larger_than_each_workers_memory_limit_split_along_the_vocabulary():
    # A 4 MiB classifier in 16 chunks of classes, made on the workers themselves; each
    # worker's memory limit is 3 MiB, which distributed enforces on every task: one
    # whose inputs exceed it fails with a MemoryError. A worker process needs ~100 MiB
    # for itself, so the thresholds on the process's memory (spill, pause, terminate)
    # are off; the data a worker holds beyond 60% of the limit is spilled to disk.
    Vb, Db = 4096, 256
    limit = 3 << 20
    cluster, client = _cluster(
        limit,
        **{
            "distributed.worker.memory.spill": False,
            "distributed.worker.memory.pause": False,
            "distributed.worker.memory.terminate": False,
        },
    )
    try:
        client.register_plugin(_LargestTaskInput())
        rng = da.random.default_rng(9)
        Wd = rng.standard_normal((Vb, Db), chunks=(256, Db), dtype=np.float32) * np.float32(0.05)
        assert Wd.nbytes > limit
        hd = rng.standard_normal((512, Db), chunks=(128, Db), dtype=np.float32)
        yd = (da.arange(512, chunks=128) * 7919) % Vb
        metrics_lazy = sdask.evaluate_linear(hd, Wd, yd, 0.1, workspace=1 << 16)
        loss, g = sdask.linear_cross_entropy_with_grad(hd, Wd, yd, 0.1, workspace=1 << 16)
        # The classifier's gradient is as large as the classifier: fetched chunk by chunk.
        dW_chunks = [g.classifier.blocks[j] for j in range(g.classifier.numblocks[0])]
        got_m, got_loss, dh, *dW = on(client, metrics_lazy, loss, g.hidden, *dW_chunks)
        largest = client.run(lambda dask_worker: dask_worker.plugins["largest-task-input"].largest)
    finally:
        _close(cluster, client)
    # The same random chunks, made here.
    W, h = dask.compute(Wd, hd, scheduler="sync")
    y = (np.arange(512) * 7919) % Vb
    # 4096 random logits per row: many lie within float32's rounding of another.
    ambiguous = int(ambiguous_rows(materialise(h, W), rounding(h, W), y, 15).sum())
    want_m = metrics.evaluate_linear(h, W, y, 0.1)
    assert_metrics_close(got_m, want_m, 1e-5, ambiguous=ambiguous)
    want_loss, want = smoothce.linear_cross_entropy_with_grad(h, W, y, 0.1)
    _close_arrays(got_loss, want_loss, 1e-5)
    _close_arrays(dh, want.hidden, 1e-5)
    _close_arrays(np.concatenate(dW), want.classifier, 1e-5)
    # No task needed the whole classifier: at most one chunk of it and its partners.
    assert max(largest.values()) < W.nbytes / 2
