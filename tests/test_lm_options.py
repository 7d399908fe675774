"""z-loss and logit soft-capping (issue 9, items 1 and 2).

Definitions (Liger-Kernel's ``lse_square_scale`` and ``softcap``): the logits become
``softcap * tanh(z / softcap)`` before everything; every counted element adds
``z_loss * lse**2`` (``lse`` the log-sum-exp of its capped logits), without class
weights, and ``"mean"`` divides the z-loss sum by the number of counted elements.
Checked against a dense float64 NumPy reference of those definitions, PyTorch
autograd (when installed) and central finite differences.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from reference import reference

import smoothce
from smoothce import _engine


def lm_reference(
    z: Any,
    y: Any,
    eps: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
    reduction: str = "mean",
    weight: Any = None,
    ignore_index: int | None = None,
    prior: Any = None,
) -> tuple[Any, np.ndarray]:
    """Dense float64 reference of Liger's definitions, on 2-D logits with integer labels."""
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y)
    t = np.tanh(z / softcap) if softcap is not None else None
    zc = softcap * t if t is not None else z
    loss, grad = reference(
        zc, y, eps, reduction=reduction, weight=weight, ignore_index=ignore_index, prior=prior
    )
    counted = np.ones(y.shape, bool) if ignore_index is None else y != ignore_index
    m = zc.max(axis=-1, keepdims=True)
    lse = (m + np.log(np.exp(zc - m).sum(axis=-1, keepdims=True)))[:, 0]
    p = np.exp(zc - lse[:, None])
    zrows = np.where(counted, z_loss * lse**2, 0.0)
    cz = 1.0
    if reduction == "mean":
        n = counted.sum()
        cz = 1.0 / n if n else 0.0
    zgrad = np.where(counted[:, None], cz * 2 * z_loss * lse[:, None] * p, 0.0)
    loss = loss + (zrows if reduction == "none" else zrows.sum() * cz)
    grad = grad + zgrad
    if t is not None:
        grad = grad * (1.0 - t * t)
    return loss, grad


def _problem(seed: int, N: int = 12, K: int = 7, scale: float = 4.0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N, K)) * scale, rng.integers(0, K, N)


OPTIONS = [
    {"z_loss": 1e-2},
    {"softcap": 3.0},
    {"z_loss": 0.5, "softcap": 2.0},
    {"z_loss": 1e-4, "softcap": 30.0, "ignore_index": 2},
    {"z_loss": 0.1, "weight": np.linspace(0.0, 3.0, 7)},
    {"z_loss": 0.1, "softcap": 5.0, "weight": np.linspace(0.5, 3.0, 7), "ignore_index": 0},
    {"z_loss": 0.1, "prior": "others"},
]


@pytest.mark.parametrize("opts", OPTIONS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("streamed", [False, True])
def test_z_loss_and_softcap_match_the_dense_reference(opts, reduction, streamed):
    z, y = _problem(1)
    patch = mock.patch.object(_engine, "BLOCK_ELEMENTS", 3 if streamed else 1 << 17)
    with patch:
        loss, grad = smoothce.cross_entropy_with_grad(z, y, 0.1, reduction=reduction, **opts)
        loss_only = smoothce.cross_entropy(z, y, 0.1, reduction=reduction, **opts)
        grad_only = smoothce.cross_entropy_grad(z, y, 0.1, reduction=reduction, **opts)
    ref_loss, ref_grad = lm_reference(z, y, 0.1, reduction=reduction, **opts)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(loss_only, ref_loss, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-10, atol=1e-15)
    np.testing.assert_array_equal(grad_only, grad)


@pytest.mark.parametrize("opts", OPTIONS)
def test_float32_with_the_new_options_is_float32_exact(opts):
    z, y = _problem(2, N=40, K=7)
    z32 = z.astype(np.float32)
    for reduction in ("mean", "sum"):
        got = smoothce.cross_entropy(z32, y, 0.1, reduction=reduction, **opts)
        truth, _ = lm_reference(z32, y, 0.1, reduction=reduction, **opts)
        assert type(got) is np.float32
        assert abs(float(got) - truth) <= 2e-6 * abs(truth)
    _, g = smoothce.cross_entropy_with_grad(z32, y, 0.1, reduction="sum", **opts)
    _, ref = lm_reference(z32, y, 0.1, reduction="sum", **opts)
    assert g.dtype == np.float32
    np.testing.assert_allclose(g, ref, rtol=0, atol=64 * 2.0**-24 * (1 + np.abs(z).max()))


def _finite_difference(f: Any, z: np.ndarray, h: float = 1e-6) -> np.ndarray:
    g = np.zeros_like(z)
    for idx in np.ndindex(z.shape):
        zp, zm = z.copy(), z.copy()
        zp[idx] += h
        zm[idx] -= h
        g[idx] = (f(zp) - f(zm)) / (2 * h)
    return g


@pytest.mark.parametrize("opts", OPTIONS)
def test_gradient_matches_finite_differences(opts):
    z, y = _problem(3, N=4, K=7, scale=2.0)
    f = lambda zz: float(smoothce.cross_entropy(zz, y, 0.2, **opts))  # noqa: E731
    _, g = smoothce.cross_entropy_with_grad(z, y, 0.2, **opts)
    np.testing.assert_allclose(g, _finite_difference(f, z), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("opts", OPTIONS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_pytorch_autograd_oracle(opts, reduction):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    z, y = _problem(4, N=10, K=7)
    zt = torch.tensor(z, requires_grad=True)
    yt = torch.tensor(y)
    cap, zl = opts.get("softcap"), opts.get("z_loss", 0.0)
    ignore = opts.get("ignore_index")
    zc = cap * torch.tanh(zt / cap) if cap is not None else zt
    w = opts.get("weight")
    wt = None if w is None else torch.tensor(w)
    if "prior" in opts:
        pytest.skip("PyTorch has no 'others' prior")
    ce = F.cross_entropy(
        zc,
        yt,
        weight=wt,
        ignore_index=-100 if ignore is None else ignore,
        reduction=reduction,
        label_smoothing=0.1,
    )
    mask = torch.ones(len(y), dtype=torch.bool) if ignore is None else yt != ignore
    zrows = zl * torch.logsumexp(zc, dim=-1) ** 2 * mask
    if reduction == "none":
        total = ce + zrows
    elif reduction == "sum":
        total = ce + zrows.sum()
    else:
        total = ce + zrows.sum() / mask.sum()
    total.sum().backward()
    loss, grad = smoothce.cross_entropy_with_grad(z, y, 0.1, reduction=reduction, **opts)
    np.testing.assert_allclose(loss, total.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grad, zt.grad.numpy(), rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_in_place_and_out_with_softcap(dtype):
    z, y = _problem(5, N=30, K=9)
    z = z.astype(dtype)
    expected = smoothce.cross_entropy_with_grad(z, y, 0.1, softcap=2.0, z_loss=1e-3)
    buf = z.copy()
    loss, g = smoothce.cross_entropy_with_grad(buf, y, 0.1, softcap=2.0, z_loss=1e-3, out=buf)
    assert g is buf
    assert loss == expected[0]
    np.testing.assert_array_equal(g, expected[1])
    # Logits with the classes on axis 0 (a strided view of the same memory).
    zt = np.ascontiguousarray(z.T)
    _, gt = smoothce.cross_entropy_with_grad(zt, y, 0.1, axis=0, softcap=2.0, out=zt)
    np.testing.assert_array_equal(gt.T, smoothce.cross_entropy_grad(z, y, 0.1, softcap=2.0))


def test_softcap_is_stable_for_huge_logits():
    z = np.array([[1e30, -1e30, 0.0], [np.inf, 0.0, -np.inf], [1e300, 1e300, -1e300]])
    loss, g = smoothce.cross_entropy_with_grad(z, [1, 0, 2], softcap=10.0, reduction="none")
    ref, _ = lm_reference(z, [1, 0, 2], softcap=10.0, reduction="none")
    np.testing.assert_allclose(loss, ref, rtol=1e-13)
    assert np.all(np.isfinite(g))
    # Saturated logits have zero gradient (the true factor underflows); the finite one
    # keeps its derivative exactly 1 / cosh(0)**2 = 1 times the capped gradient.
    assert g[0, 0] == 0.0
    assert g[0, 1] == 0.0
    assert g[0, 2] != 0.0


def test_softcap_derivative_keeps_relative_accuracy_where_tanh_saturates():
    # 1 - tanh(x)**2 at x = 15 is 3.7e-13 but 1 - 0.9999999999998128**2 keeps 3 digits.
    z = np.array([[150.0, 0.0]])
    g = smoothce.cross_entropy_grad(z, [1], softcap=10.0, reduction="sum")
    p0 = 1.0 / (1.0 + np.exp(-10.0 * np.tanh(15.0)))
    np.testing.assert_allclose(g[0, 0], p0 / np.cosh(15.0) ** 2, rtol=1e-14)


@pytest.mark.parametrize("streamed", [False, True])
def test_bfloat16_with_the_new_options_equals_float32_on_the_same_values(streamed):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    z, y = _problem(8, N=20, K=9)
    zb = z.astype(ml_dtypes.bfloat16)
    opts = {"z_loss": 1e-2, "softcap": 4.0}
    with mock.patch.object(_engine, "BLOCK_ELEMENTS", 4 if streamed else 1 << 17):
        lb, gb = smoothce.cross_entropy_with_grad(zb, y, 0.1, **opts)
        l32, g32 = smoothce.cross_entropy_with_grad(zb.astype(np.float32), y, 0.1, **opts)
    assert lb == l32
    np.testing.assert_array_equal(gb, g32.astype(ml_dtypes.bfloat16))


def test_the_lean_path_declines_the_new_options():
    # Small C-contiguous float32 calls take the lean path; with z_loss or softcap they
    # must give what the general path gives on a layout the lean path never takes.
    z, y = _problem(6, N=16, K=5)
    z32 = z.astype(np.float32)
    fortran = np.asfortranarray(z32)
    for opts in ({"z_loss": 0.1}, {"softcap": 3.0}):
        a = smoothce.cross_entropy_with_grad(z32, y, 0.1, **opts)
        b = smoothce.cross_entropy_with_grad(fortran, y, 0.1, **opts)
        assert a[0] == b[0]
        np.testing.assert_array_equal(a[1], b[1])
        assert a[0] != smoothce.cross_entropy(z32, y, 0.1)


def test_zero_z_loss_and_no_softcap_change_nothing():
    z, y = _problem(7, N=300, K=600)  # beyond the lean path: the general engine
    a = smoothce.cross_entropy_with_grad(z, y, 0.1)
    b = smoothce.cross_entropy_with_grad(z, y, 0.1, z_loss=0.0, softcap=None)
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])


def test_mean_over_no_counted_element_with_z_loss_is_zero():
    loss, g = smoothce.cross_entropy_with_grad(
        np.ones((2, 3)), [-1, -1], ignore_index=-1, z_loss=1.0
    )
    assert loss == 0.0
    assert not g.any()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"z_loss": -0.1},
            ValueError,
            r"z_loss must be non-negative and finite; got z_loss=-0.1\.",
        ),
        ({"z_loss": float("nan")}, ValueError, r"got z_loss=nan\."),
        (
            {"z_loss": True},
            TypeError,
            r"z_loss must be a non-negative real number; got z_loss=True",
        ),
        ({"z_loss": "1"}, TypeError, r"got z_loss='1'\."),
        ({"softcap": 0.0}, ValueError, r"softcap must be positive and finite; got softcap=0.0\."),
        ({"softcap": np.float64(np.inf)}, ValueError, r"got softcap=inf\."),
        ({"softcap": "30"}, TypeError, r"softcap must be None or a positive real number"),
    ],
)
def test_bad_new_options_are_named(kwargs, error, message):
    for f in (smoothce.cross_entropy, smoothce.cross_entropy_grad):
        with pytest.raises(error, match=message):
            f(np.zeros((2, 3), dtype=np.float32), np.array([0, 1]), **kwargs)


@given(
    z_loss=st.floats(0.0, 1.0),
    softcap=st.one_of(st.none(), st.floats(0.5, 50.0)),
    eps=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
    reduction=st.sampled_from(["mean", "sum", "none"]),
)
def test_property_against_the_reference(z_loss, softcap, eps, seed, reduction):
    rng = np.random.default_rng(seed)
    K = int(rng.integers(1, 9))
    z = rng.standard_normal((5, K)) * 10
    y = rng.integers(0, K, 5)
    loss, grad = smoothce.cross_entropy_with_grad(
        z, y, eps, z_loss=z_loss, softcap=softcap, reduction=reduction
    )
    ref_loss, ref_grad = lm_reference(
        z, y, eps, z_loss=z_loss, softcap=softcap, reduction=reduction
    )
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_probability_targets_with_z_loss_and_softcap(reduction):
    # With probability targets every element counts: the z-loss mean divides by N.
    rng = np.random.default_rng(9)
    z = rng.standard_normal((6, 5)) * 3
    t = rng.dirichlet(np.ones(5), size=6)
    loss, grad = smoothce.cross_entropy_with_grad(
        z, t, 0.1, z_loss=0.05, softcap=2.0, reduction=reduction
    )
    tanh = np.tanh(z / 2.0)
    zc = 2.0 * tanh
    ce, g_ce = reference(zc, t, 0.1, reduction=reduction)
    lse = np.log(np.exp(zc).sum(axis=1))
    p = np.exp(zc - lse[:, None])
    cz = 1.0 / 6 if reduction == "mean" else 1.0
    want = ce + (0.05 * lse**2 if reduction == "none" else cz * 0.05 * np.sum(lse**2))
    want_grad = (g_ce + cz * 2 * 0.05 * lse[:, None] * p) * (1 - tanh**2)
    np.testing.assert_allclose(loss, want, rtol=1e-12)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-15)


def test_a_subnormal_softcap_leaks_no_divide_overflow_warning():
    # cross_entropy(z, y, softcap=5e-324) warned "overflow encountered in divide":
    # z / softcap is +-inf, which tanh maps to +-1 (the capped logits are +-softcap).
    # The whole block is now computed in one quiet error state; the results are those
    # of logits capped to (almost) zero: a uniform softmax.
    z = np.array([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]])
    y = [0, 2]
    loss = smoothce.cross_entropy(z, y, softcap=5e-324, reduction="none")
    np.testing.assert_allclose(loss, np.log(3.0), rtol=1e-15)
    _, g = smoothce.cross_entropy_with_grad(z, y, softcap=5e-324)
    assert np.all(np.isfinite(g))
