"""smoothce.dask on Dask arrays of every chunk structure, against the in-memory functions.

Unknown chunk sizes (NaN) along any batch axis, as boolean indexing and
``dask.dataframe``'s ``to_dask_array()`` make them; labels and per-sample priors of
unknown chunks; and odd known chunkings (one row per chunk, empty chunks, the class
axis cut). On a real two-process ``distributed.LocalCluster`` (started and stopped for
the module) and on the synchronous scheduler.

What the module promises, and so what is checked: element losses, gradients and metrics
equal to the in-memory ones to the bit (a row's values depend on that row alone, and
the metrics' sums are exact); reduced losses the same bits for every chunking, and the
in-memory loss within float64's rounding (exact sums against the engine's fsum of
block sums: 1e-12 relative).
"""

from __future__ import annotations

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
pytest.importorskip("distributed")

import dask  # noqa: E402
from cluster import local_cluster, on  # noqa: E402

import smoothce  # noqa: E402
import smoothce.dask as sdask  # noqa: E402
from smoothce import metrics  # noqa: E402

PAD = -100


@pytest.fixture(scope="module")
def client():
    with local_cluster() as c:
        yield c


def sync(*collections):
    out = dask.compute(*collections, scheduler="sync")
    return out[0] if len(out) == 1 else out


def _data(n=300, K=11, dtype=np.float64, seed=0):
    """Logits, labels with every fifth one padding, and the padding mask."""
    rng = np.random.default_rng(seed)
    z = (rng.normal(size=(n, K)) * 3).astype(dtype)
    y = rng.integers(0, K, n)
    y[::5] = PAD
    return z, y


def _unknown(z, y, chunks=40, *arrays):
    """``z[keep]``, ``y[keep]`` (and the other arrays) as Dask arrays of unknown chunk
    sizes, with the kept rows in memory."""
    keep = y != PAD
    kd = da.from_array(keep, chunks=chunks)
    out = [da.from_array(a, chunks=(chunks, *a.shape[1:]))[kd] for a in (z, y, *arrays)]
    assert all(np.isnan(c) for c in out[0].chunks[0])
    return out, [a[keep] for a in (z, y, *arrays)]


def _assert_same_loss(got, want, dtype=np.float64):
    """A reduced loss: the in-memory value within float64's rounding (the exact sum
    against the engine's fsum of block sums), in the in-memory dtype."""
    assert np.asarray(got).dtype == np.asarray(want).dtype
    rel = 1e-12 if dtype == np.float64 else float(np.finfo(np.float32).eps)
    assert float(got) == pytest.approx(float(want), rel=rel, abs=0.0)


# -- the crash ----------------------------------------------------------------------
def test_unknown_chunk_sizes_no_longer_raise_typeerror_float_as_integer():
    """Regression: logits of unknown chunk sizes (``logits[labels != pad]``) made every
    function fail with NumPy's "TypeError: 'float' object cannot be interpreted as an
    integer" (zero-stride stand-ins and block offsets built from NaN sizes)."""
    z, y = _data()
    (zd, yd), (zk, yk) = _unknown(z, y)
    loss, grad = sdask.cross_entropy_with_grad(zd, yd, 0.1)
    got = sync(
        sdask.cross_entropy(zd, yd, 0.1),
        sdask.cross_entropy(zd, yd, 0.1, reduction="none"),
        sdask.cross_entropy_grad(zd, yd, 0.1),
        loss,
        grad,
        sdask.evaluate(zd, yd, 0.1),
    )
    ref_loss, ref_grad = smoothce.cross_entropy_with_grad(zk, yk, 0.1)
    _assert_same_loss(got[0], ref_loss)
    np.testing.assert_array_equal(got[1], smoothce.cross_entropy(zk, yk, 0.1, reduction="none"))
    np.testing.assert_array_equal(got[2], ref_grad)
    assert got[3] == got[0]
    np.testing.assert_array_equal(got[4], ref_grad)
    assert got[5] == metrics.evaluate(zk, yk, 0.1)


# -- unknown sizes: the in-memory results, on the cluster ----------------------------
OPTIONS = [
    {},
    {"weight": np.linspace(0.5, 2.0, 11), "prior": "others"},
    {"z_loss": 1e-3, "softcap": 4.0},
    {"weight": np.linspace(0.5, 2.0, 11), "z_loss": 1e-2},
]


@pytest.mark.parametrize("options", OPTIONS, ids=["plain", "weights", "lm", "weights-zloss"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_unknown_chunk_sizes_give_the_in_memory_results_on_the_cluster(client, reduction, options):
    z, y = _data()
    (zd, yd), (zk, yk) = _unknown(z, y)
    kw = dict(reduction=reduction, **options)
    loss = sdask.cross_entropy(zd, yd, 0.1, **kw)
    grad = sdask.cross_entropy_grad(zd, yd, 0.1, **kw)
    loss2, grad2 = sdask.cross_entropy_with_grad(zd, yd, 0.1, **kw)
    # The gradient's chunks are the logits': unknown where theirs are.
    assert grad.chunks == grad2.chunks
    assert np.isnan(grad.chunks[0]).all()
    assert grad.chunks[1] == (11,)
    got_loss, got_grad, got_loss2, got_grad2 = on(client, loss, grad, loss2, grad2)
    ref_loss, ref_grad = smoothce.cross_entropy_with_grad(zk, yk, 0.1, **kw)
    np.testing.assert_allclose(got_grad, ref_grad, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(got_grad2, got_grad)
    if reduction == "none":
        assert np.isnan(loss.chunks[0]).all()
        np.testing.assert_array_equal(got_loss, ref_loss)
        np.testing.assert_array_equal(got_loss2, ref_loss)
        return
    _assert_same_loss(got_loss, ref_loss)
    assert got_loss2 == got_loss
    # The same rows with known chunks (one per block): the same bits.
    known = da.from_array(zk, chunks=(25, 11)), da.from_array(yk, chunks=25)
    assert on(client, sdask.cross_entropy(*known, 0.1, **kw)) == got_loss
    np.testing.assert_array_equal(
        on(client, sdask.cross_entropy_grad(*known, 0.1, **kw)), got_grad
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_unknown_chunk_sizes_give_the_in_memory_metrics_bitwise_on_the_cluster(client, dtype):
    z, y = _data(dtype=dtype)
    (zd, yd), (zk, yk) = _unknown(z, y, 33)
    got = on(client, sdask.evaluate(zd, yd, 0.1, ignore_index=PAD, top_k=3))
    assert got == metrics.evaluate(zk, yk, 0.1, ignore_index=PAD, top_k=3)
    assert got.counted == len(yk)


def test_dask_dataframe_to_dask_array_gives_the_in_memory_results(client):
    pd = pytest.importorskip("pandas")
    dd = pytest.importorskip("dask.dataframe")
    z, y = _data(K=6)
    y[y == PAD] = 0
    frame = pd.DataFrame(z, columns=[f"class{k}" for k in range(6)]).assign(label=y)
    parts = dd.from_pandas(frame, npartitions=5)
    zd = parts[[f"class{k}" for k in range(6)]].to_dask_array()
    yd = parts["label"].to_dask_array()
    assert np.isnan(zd.chunks[0]).all()
    assert np.isnan(yd.chunks[0]).all()
    loss, grad = sdask.cross_entropy_with_grad(zd, yd, 0.2)
    got_loss, got_grad, got_metrics = on(client, loss, grad, sdask.evaluate(zd, yd, 0.2))
    ref_loss, ref_grad = smoothce.cross_entropy_with_grad(z, y, 0.2)
    _assert_same_loss(got_loss, ref_loss)
    np.testing.assert_array_equal(got_grad, ref_grad)
    assert got_metrics == metrics.evaluate(z, y, 0.2)


def test_probability_targets_and_a_per_sample_prior_of_unknown_chunks(client):
    rng = np.random.default_rng(1)
    z, y = _data(K=7)
    t = rng.dirichlet(np.ones(7), size=len(y))
    u = rng.dirichlet(np.ones(7), size=len(y))
    (zd, _, td, ud), (zk, _, tk, uk) = _unknown(z, y, 50, t, u)
    for reduction in ("mean", "sum", "none"):
        loss, grad = sdask.cross_entropy_with_grad(zd, td, 0.3, prior=ud, reduction=reduction)
        got_loss, got_grad = on(client, loss, grad)
        ref_loss, ref_grad = smoothce.cross_entropy_with_grad(
            zk, tk, 0.3, prior=uk, reduction=reduction
        )
        np.testing.assert_allclose(got_grad, ref_grad, rtol=1e-12, atol=0)
        if reduction == "none":
            np.testing.assert_array_equal(got_loss, ref_loss)
        else:
            _assert_same_loss(got_loss, ref_loss)


def test_a_prior_broadcast_along_rows_of_unknown_size(client):
    z, y = _data(K=5)
    (zd, yd), (zk, yk) = _unknown(z, y)
    u = np.array([[0.1, 0.2, 0.3, 0.2, 0.2]])  # (1, K): every row's prior
    got = on(client, sdask.cross_entropy(zd, yd, 0.5, prior=u, reduction="none"))
    np.testing.assert_array_equal(
        got, smoothce.cross_entropy(zk, yk, 0.5, prior=u, reduction="none")
    )


def test_unknown_sizes_along_a_later_batch_axis_and_in_three_dimensions():
    z, y = _data(K=4)
    keep = y != PAD
    # Classes first, the rows of unknown size on axis 1.
    zt = da.from_array(np.ascontiguousarray(z.T), chunks=(4, 60))[:, da.from_array(keep, 60)]
    yk = da.from_array(y, chunks=60)[da.from_array(keep, 60)]
    assert np.isnan(zt.chunks[1]).all()
    loss, grad = sdask.cross_entropy_with_grad(zt, yk, 0.1, axis=0, reduction="none")
    got_loss, got_grad = sync(loss, grad)
    ref_loss, ref_grad = smoothce.cross_entropy_with_grad(
        z[keep].T, y[keep], 0.1, axis=0, reduction="none"
    )
    np.testing.assert_array_equal(got_loss, ref_loss)
    np.testing.assert_array_equal(got_grad, ref_grad)
    assert grad.chunks[0] == (4,)
    assert np.isnan(grad.chunks[1]).all()
    # (sequences, tokens, classes) with whole sequences dropped: axis 0 unknown.
    z3 = z.reshape(30, 10, 4)
    y3 = y.reshape(30, 10)
    seq = y3[:, 0] != PAD
    z3d = da.from_array(z3, chunks=(7, 5, 4))[da.from_array(seq, 7)]
    y3d = da.from_array(y3, chunks=(7, 5))[da.from_array(seq, 7)]
    got = sync(sdask.cross_entropy_grad(z3d, y3d, 0.1, ignore_index=PAD))
    np.testing.assert_array_equal(
        got, smoothce.cross_entropy_grad(z3[seq], y3[seq], 0.1, ignore_index=PAD)
    )
    assert sync(sdask.evaluate(z3d, y3d, ignore_index=PAD)) == metrics.evaluate(
        z3[seq], y3[seq], ignore_index=PAD
    )


def test_empty_blocks_of_unknown_size_and_nothing_kept():
    z, y = _data(n=100, K=5)
    keep = np.zeros(100, dtype=bool)
    keep[45:55] = True  # blocks 0, 1, 3, 4 of five come out empty
    kd = da.from_array(keep, chunks=20)
    zd, yd = da.from_array(z, chunks=(20, 5))[kd], da.from_array(y, chunks=20)[kd]
    loss, grad = sdask.cross_entropy_with_grad(zd, yd, 0.1, ignore_index=PAD)
    got_loss, got_grad = sync(loss, grad)
    ref_loss, ref_grad = smoothce.cross_entropy_with_grad(z[keep], y[keep], 0.1, ignore_index=PAD)
    _assert_same_loss(got_loss, ref_loss)
    np.testing.assert_array_equal(got_grad, ref_grad)
    nothing = da.zeros(100, chunks=20, dtype=bool)
    zd, yd = da.from_array(z, chunks=(20, 5))[nothing], da.from_array(y, chunks=20)[nothing]
    loss, grad = sdask.cross_entropy_with_grad(zd, yd, 0.1)
    got_loss, got_grad, got_metrics = sync(loss, grad, sdask.evaluate(zd, yd))
    assert got_loss == smoothce.cross_entropy(z[:0], y[:0], 0.1) == 0.0
    assert got_grad.shape == (0, 5)
    assert got_metrics == metrics.evaluate(z[:0], y[:0])


def test_one_chunk_of_unknown_size_pairs_with_numpy_labels():
    z, y = _data()
    keep = y != PAD
    zd = da.from_array(z, chunks=(300, 11))[da.from_array(keep, chunks=300)]
    got = sync(sdask.cross_entropy_grad(zd, y[keep], 0.1))
    np.testing.assert_array_equal(got, smoothce.cross_entropy_grad(z[keep], y[keep], 0.1))


# -- odd known chunkings: the bits of one chunk ---------------------------------------
ODD = {
    "a chunk per row": ((1,) * 60, (9,)),
    "one-row chunks beside large ones": ((1, 1, 1, 50, 1, 1, 5), (9,)),
    "empty chunks": ((0, 30, 0, 0, 30, 0), (9,)),
    "classes cut": ((60,), (2, 3, 4)),
    "rows and classes cut to ones": ((1,) * 60, (1,) * 9),
}


@pytest.mark.parametrize("chunks", ODD.values(), ids=ODD.keys())
def test_odd_known_chunkings_give_the_in_memory_results_on_the_cluster(client, chunks):
    z, y = _data(n=60, K=9, dtype=np.float32)
    zd = da.from_array(z).rechunk(chunks)
    yd = da.from_array(y).rechunk((chunks[0],))
    kw = dict(ignore_index=PAD, z_loss=1e-3)
    loss, grad = sdask.cross_entropy_with_grad(zd, yd, 0.1, **kw)
    none = sdask.cross_entropy(zd, yd, 0.1, reduction="none", **kw)
    assert grad.chunks == zd.chunks
    assert none.chunks == (chunks[0],)
    got_loss, got_grad, got_none, got_metrics = on(
        client, loss, grad, none, sdask.evaluate(zd, yd, 0.1, ignore_index=PAD)
    )
    ref_loss, ref_grad = smoothce.cross_entropy_with_grad(z, y, 0.1, **kw)
    _assert_same_loss(got_loss, ref_loss, np.float32)
    np.testing.assert_array_equal(got_grad, ref_grad)
    np.testing.assert_array_equal(
        got_none, smoothce.cross_entropy(z, y, 0.1, reduction="none", **kw)
    )
    assert got_metrics == metrics.evaluate(z, y, 0.1, ignore_index=PAD)
    one = da.from_array(z, chunks=(60, 9)), da.from_array(y, chunks=60)
    assert on(client, sdask.cross_entropy(*one, 0.1, **kw)) == got_loss


def test_classes_cut_and_rows_of_unknown_size():
    z, y = _data(K=12)
    (zd, yd), (zk, yk) = _unknown(z, y)
    zd = zd.rechunk({1: 5})
    assert zd.numblocks[1] == 3
    assert np.isnan(zd.chunks[0]).all()
    grad = sdask.cross_entropy_grad(zd, yd, 0.1)
    assert grad.chunks[1] == (5, 5, 2)
    np.testing.assert_array_equal(sync(grad), smoothce.cross_entropy_grad(zk, yk, 0.1))


# -- pairing arrays of unknown chunks -------------------------------------------------
def test_labels_of_another_mask_are_caught_block_by_block():
    z, y = _data()
    (zd, _), _ = _unknown(z, y)
    other = da.from_array(y, chunks=40)[da.from_array(y % 3 != 0, chunks=40)]
    assert other.numblocks == zd.numblocks[:1]
    with pytest.raises(ValueError, match=r"labels must line up with logits block for block") as e:
        sync(sdask.cross_entropy(zd, other, ignore_index=PAD))
    assert "compute_chunk_sizes()" in str(e.value)
    assert "in block (0, 0)" in str(e.value)


def test_numpy_labels_with_one_chunk_of_unknown_size_of_another_length():
    z, y = _data()
    keep = y != PAD
    zd = da.from_array(z, chunks=(300, 11))[da.from_array(keep, chunks=300)]
    with pytest.raises(ValueError, match=r"got 239 against 240 in block \(0, 0\)"):
        sync(sdask.cross_entropy(zd, y[keep][:-1]))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (
            "known labels, unknown logits",
            r"labels must be chunked like logits along axis 0, whose",
        ),
        ("unknown labels, known logits", r"labels must have known chunk sizes along axis 0"),
        ("another number of chunks", r"labels must have as many chunks as logits along axis 0"),
        ("known prior, unknown logits", r"prior must be chunked like logits along axis 0"),
        ("classes of unknown size", r"logits must have a known size along axis 1"),
    ],
)
def test_no_known_pairing_is_an_error_naming_compute_chunk_sizes(case, message):
    z, y = _data()
    (zd, yd), (zk, yk) = _unknown(z, y)
    if case == "known labels, unknown logits":
        args, kw = (zd, yk), {}
    elif case == "unknown labels, known logits":
        args, kw = (da.from_array(zk, chunks=(40, 11)), yd), {}
    elif case == "another number of chunks":
        y2 = da.from_array(y, chunks=30)[da.from_array(y != PAD, chunks=30)]
        args, kw = (zd, y2), {}
    elif case == "known prior, unknown logits":
        u = np.full((len(yk), 11), 1 / 11)
        args, kw = (zd, yd), {"prior": u, "epsilon": 0.1}
    else:
        classes = da.from_array(np.arange(11) != 3, chunks=11)
        args, kw = (da.from_array(z, chunks=(40, 11))[:, classes], da.from_array(y)), {}
    for func in (sdask.cross_entropy, sdask.cross_entropy_grad, sdask.evaluate):
        if func is sdask.evaluate and "prior" in kw:
            continue
        with pytest.raises(ValueError, match=message) as e:
            func(*args, **kw)  # when the graph is built, before anything runs
        assert "compute_chunk_sizes()" in str(e.value)


# -- errors: in-memory messages, positions in the whole array ------------------------
def test_a_bad_label_is_named_at_its_position_in_the_whole_array_with_unknown_sizes(client):
    z, y = _data()
    y[201], y[266] = 11, -7  # after masking: labels[160] and labels[212]
    (zd, yd), (zk, yk) = _unknown(z, y)
    with pytest.raises(ValueError, match="class indices") as expected:
        smoothce.cross_entropy(zk, yk)
    assert str(expected.value) == "labels must be class indices in [0, 11); got labels[160] = 11."
    for graph in (
        sdask.cross_entropy(zd, yd),
        sdask.cross_entropy(zd, yd, reduction="sum"),
        sdask.cross_entropy(zd, yd, reduction="none"),
        sdask.cross_entropy_grad(zd, yd),
        sdask.cross_entropy_with_grad(zd, yd, reduction="sum")[1],
        sdask.evaluate(zd, yd),
    ):
        for run in (sync, lambda g: on(client, g)):
            with pytest.raises(ValueError, match="class indices") as got:
                run(graph)
            assert str(got.value) == str(expected.value)


def test_a_bad_prior_row_is_named_at_its_position_with_unknown_sizes():
    rng = np.random.default_rng(5)
    z, y = _data(K=6)
    u = rng.dirichlet(np.ones(6), size=len(y))
    u[223, 1] = -0.25  # kept row 178
    u[223, 2] += 0.25
    (zd, yd, ud), (zk, yk, uk) = _unknown(z, y, 40, u)
    with pytest.raises(ValueError, match="non-negative") as expected:
        smoothce.cross_entropy(zk, yk, 0.2, prior=uk)
    assert "prior[178, 1]" in str(expected.value)
    for graph in (
        sdask.cross_entropy(zd, yd, 0.2, prior=ud),
        sdask.cross_entropy(zd, yd, 0.2, prior=ud, reduction="none"),
        sdask.cross_entropy_grad(zd, yd, 0.2, prior=ud, reduction="sum"),
    ):
        with pytest.raises(ValueError, match="non-negative") as got:
            sync(graph)
        assert str(got.value) == str(expected.value)


def test_a_bad_target_in_an_array_result_of_unknown_sizes_names_its_block():
    """Without labels to check first, an array result of probability targets learns no
    chunk size before its blocks run: the position is given within its block, and the
    message says so (a reduction still names the position in the whole array)."""
    rng = np.random.default_rng(6)
    z, y = _data(K=4)
    t = rng.dirichlet(np.ones(4), size=len(y))
    t[123, 3] = np.nan  # kept row 98; block 3 starts at kept row 96
    (zd, _, td), (zk, _, tk) = _unknown(z, y, 40, t)
    with pytest.raises(ValueError, match="probabilities") as expected:
        smoothce.cross_entropy(zk, tk)
    assert "labels[98, 3] = nan" in str(expected.value)
    with pytest.raises(ValueError, match="probabilities") as got:
        sync(sdask.cross_entropy(zd, td))
    assert str(got.value) == str(expected.value)
    with pytest.raises(ValueError, match="probabilities") as got:
        sync(sdask.cross_entropy_grad(zd, td, reduction="sum"))
    assert str(got.value).startswith(
        "labels must be non-negative and finite (probabilities); got labels[2, 3] = nan. "
        "(The position is within block (3, 0) of the logits"
    )
    assert "compute_chunk_sizes()" in str(got.value)


def test_a_graph_of_many_blocks_is_built_without_culling(monkeypatch):
    """Regression: building a call of n blocks took time in n**2 (44 s for 2,000 blocks
    of one row pair each, so a chunk per row was out of reach): every dask.delayed call
    culled the whole graph of its Delayed arguments. The tasks are written as one graph
    layer now, and nothing is culled until Dask computes."""
    from dask.highlevelgraph import HighLevelGraph

    culls = []
    original = HighLevelGraph.cull

    def counting(self, keys):
        culls.append(1)
        return original(self, keys)

    monkeypatch.setattr(HighLevelGraph, "cull", counting)
    z, y = _data(n=400, K=3)
    zd, yd = da.from_array(z, chunks=(1, 3)), da.from_array(y, chunks=1)
    for reduction in ("mean", "none"):
        loss, grad = sdask.cross_entropy_with_grad(
            zd, yd, 0.1, reduction=reduction, ignore_index=PAD
        )
    graph = sdask.evaluate(zd, yd, ignore_index=PAD)
    assert culls == []
    got_loss, got_grad, got_metrics = sync(loss, grad, graph)
    ref_loss, ref_grad = smoothce.cross_entropy_with_grad(
        z, y, 0.1, reduction="none", ignore_index=PAD
    )
    np.testing.assert_array_equal(got_loss, ref_loss)
    np.testing.assert_array_equal(got_grad, ref_grad)
    assert got_metrics == metrics.evaluate(z, y, ignore_index=PAD)
