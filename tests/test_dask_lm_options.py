"""``z_loss=`` and ``softcap=`` in the Dask loss functions, against the in-memory ones.

The README promises both "on every loss function"; on Dask they have the in-memory
semantics and denominators: the z-loss is not weighted, ignored elements get none, and
``"mean"`` divides its sum by the number of counted elements (of elements for
probability targets) even where class weights make the cross-entropy's denominator
their total weight. Reduced losses agree with memory within float64's rounding (exact
sums against the engine's fsum of block sums) and are the same bits for every chunking;
element losses and gradients are the in-memory ones (the weighted mean's denominator,
summed exactly here and pairwise in memory, may differ by its last bit: 1e-12).
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
from smoothce import _engine  # noqa: E402

PAD = -100
K = 13


@pytest.fixture(scope="module")
def client():
    with local_cluster() as c:
        yield c


def _data(targets, n=240, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    z = (rng.normal(size=(n, K)) * 6).astype(dtype)  # spread enough for softcap to act
    y = rng.integers(0, K, n)
    y[::6] = PAD
    if targets == "probabilities":
        return z, rng.dirichlet(np.ones(K), size=n), {}
    return z, y, {"ignore_index": PAD}


def _compare(got_loss, got_grad, ref_loss, ref_grad, reduction, dtype=np.float64):
    rel = 1e-12 if dtype == np.float64 else float(np.finfo(np.float32).eps)
    np.testing.assert_allclose(got_grad, ref_grad, rtol=rel, atol=0)
    if reduction == "none":
        np.testing.assert_array_equal(got_loss, ref_loss)
    else:
        assert np.asarray(got_loss).dtype == np.asarray(ref_loss).dtype
        assert float(got_loss) == pytest.approx(float(ref_loss), rel=rel, abs=0.0)


def test_z_loss_and_softcap_no_longer_raise_typeerror_in_smoothce_dask():
    """Regression: ``smoothce.dask.cross_entropy(..., z_loss=...)`` raised "TypeError:
    cross_entropy() got an unexpected keyword argument 'z_loss'" (and so did softcap=,
    and the gradient functions), while the README says both work on every loss
    function."""
    z, y, kw = _data("labels")
    zd, yd = da.from_array(z, chunks=(50, K)), da.from_array(y, chunks=50)
    kw.update(z_loss=1e-3, softcap=10.0)
    loss, grad = sdask.cross_entropy_with_grad(zd, yd, 0.1, **kw)
    got = dask.compute(
        sdask.cross_entropy(zd, yd, 0.1, **kw),
        sdask.cross_entropy_grad(zd, yd, 0.1, **kw),
        loss,
        grad,
        scheduler="sync",
    )
    ref_loss, ref_grad = smoothce.cross_entropy_with_grad(z, y, 0.1, **kw)
    _compare(got[0], got[1], ref_loss, ref_grad, "mean")
    _compare(got[2], got[3], ref_loss, ref_grad, "mean")


OPTIONS = {
    "z-loss": {"z_loss": 1e-2},
    "softcap": {"softcap": 5.0},
    "both": {"z_loss": 1e-3, "softcap": 5.0},
    "weighted z-loss": {"z_loss": 1e-2, "weight": np.linspace(0.1, 3.0, K)},
    "weighted both, class prior": {
        "z_loss": 1e-3,
        "softcap": 3.0,
        "weight": np.linspace(3.0, 0.1, K),
        "prior": np.linspace(1.0, 2.0, K) / np.linspace(1.0, 2.0, K).sum(),
    },
}


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("targets", ["labels", "probabilities"])
def test_the_three_loss_functions_on_the_cluster_match_memory(client, targets, reduction, options):
    z, y, kw = _data(targets)
    kw.update(options, reduction=reduction)
    zd = da.from_array(z, chunks=(37, K))
    yd = da.from_array(y, chunks=(37, *y.shape[1:]))
    loss = sdask.cross_entropy(zd, yd, 0.2, **kw)
    grad = sdask.cross_entropy_grad(zd, yd, 0.2, **kw)
    loss2, grad2 = sdask.cross_entropy_with_grad(zd, yd, 0.2, **kw)
    got_loss, got_grad, got_loss2, got_grad2 = on(client, loss, grad, loss2, grad2)
    ref_loss, ref_grad = smoothce.cross_entropy_with_grad(z, y, 0.2, **kw)
    _compare(got_loss, got_grad, ref_loss, ref_grad, reduction)
    np.testing.assert_array_equal(got_loss2, got_loss)
    np.testing.assert_array_equal(got_grad2, got_grad)
    if reduction != "none":
        # Another chunking, the same bits.
        other = (da.from_array(z, chunks=(100, K)), da.from_array(y, chunks=(7, *y.shape[1:])))
        assert on(client, sdask.cross_entropy(*other, 0.2, **kw)) == got_loss


def test_float32_logits_with_z_loss_and_softcap():
    z, y, kw = _data("labels", dtype=np.float32)
    kw.update(z_loss=1e-3, softcap=8.0)
    zd, yd = da.from_array(z, chunks=(64, K)), da.from_array(y, chunks=64)
    loss, grad = sdask.cross_entropy_with_grad(zd, yd, 0.1, **kw)
    got_loss, got_grad = dask.compute(loss, grad, scheduler="sync")
    ref_loss, ref_grad = smoothce.cross_entropy_with_grad(z, y, 0.1, **kw)
    _compare(got_loss, got_grad, ref_loss, ref_grad, "mean", np.float32)
    assert got_grad.dtype == np.float32


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_z_loss_of_streamed_rows(monkeypatch, reduction):
    """Rows longer than an engine block are streamed; the z-loss rows come from the
    streamed rows' sums (the engine's other observer)."""
    monkeypatch.setattr(_engine, "BLOCK_ELEMENTS", 4)  # K = 13: three windows per row
    z, y, kw = _data("labels", n=40)
    kw.update(z_loss=1e-2, softcap=4.0, reduction=reduction, weight=np.linspace(1, 2, K))
    zd, yd = da.from_array(z, chunks=(9, K)), da.from_array(y, chunks=9)
    loss, grad = sdask.cross_entropy_with_grad(zd, yd, 0.1, **kw)
    got = dask.compute(sdask.cross_entropy(zd, yd, 0.1, **kw), loss, grad, scheduler="sync")
    ref_loss, ref_grad = smoothce.cross_entropy_with_grad(z, y, 0.1, **kw)
    _compare(got[0], got[2], ref_loss, ref_grad, reduction)
    assert got[1] == got[0]


def test_a_mean_over_nothing_with_z_loss_is_zero():
    z, y, kw = _data("labels", n=30)
    y[:] = PAD
    zd, yd = da.from_array(z, chunks=(10, K)), da.from_array(y, chunks=10)
    loss, grad = sdask.cross_entropy_with_grad(zd, yd, 0.1, z_loss=1e-2, **kw)
    got_loss, got_grad = dask.compute(loss, grad, scheduler="sync")
    assert got_loss == smoothce.cross_entropy(z, y, 0.1, z_loss=1e-2, **kw) == 0.0
    assert not got_grad.any()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"z_loss": -1.0}, "z_loss must be non-negative and finite; got z_loss=-1.0."),
        ({"z_loss": "big"}, "z_loss must be a non-negative real number; got z_loss='big'."),
        ({"softcap": 0.0}, "softcap must be positive and finite; got softcap=0.0."),
        ({"softcap": True}, "softcap must be None or a positive real number; got softcap=True."),
    ],
)
def test_bad_z_loss_and_softcap_are_refused_when_the_graph_is_built(option, message):
    z, y, _ = _data("labels", n=20)
    with pytest.raises((TypeError, ValueError)) as expected:
        smoothce.cross_entropy(z, y, **option)
    assert str(expected.value) == message
    for func in (sdask.cross_entropy, sdask.cross_entropy_grad, sdask.cross_entropy_with_grad):
        with pytest.raises(expected.type) as got:
            func(da.from_array(z, chunks=(5, K)), y, **option)
        assert str(got.value) == message


def test_a_reduced_loss_with_z_loss_and_its_gradient_take_one_engine_pass_per_block(
    monkeypatch,
):
    # The engine added the z-loss rows to the loss rows it stored, which have another
    # denominator, so smoothce.dask ran a second pass per block to keep them apart.
    # run(..., z_rows=) now keeps them apart in the one pass.
    calls = []
    real = _engine._rows
    monkeypatch.setattr(_engine, "_rows", lambda *a: calls.append(1) or real(*a))
    rng = np.random.default_rng(3)
    z = rng.standard_normal((40, 7))
    y = rng.integers(0, 7, 40)
    zd, yd = da.from_array(z, chunks=(10, 7)), da.from_array(y, chunks=10)
    loss, grad = sdask.cross_entropy_with_grad(zd, yd, 0.1, z_loss=1e-3)
    got_loss, got_grad = dask.compute(loss, grad, scheduler="sync")
    assert len(calls) == 4  # one per block
    expected = smoothce.cross_entropy_with_grad(z, y, 0.1, z_loss=1e-3)
    np.testing.assert_allclose(got_loss, expected[0], rtol=1e-12)
    np.testing.assert_allclose(got_grad, expected[1], rtol=1e-12, atol=1e-15)
