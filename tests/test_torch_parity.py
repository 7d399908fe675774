"""Parity with torch.nn.functional.cross_entropy: loss and autograd gradient.

Skipped cleanly where PyTorch is not installed; `.ci/run` installs torch==2.13.0.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import smoothce

torch = pytest.importorskip("torch")
F = torch.nn.functional

CASES = [
    c
    for c in itertools.product(
        ("int", "prob"),
        (False, True),  # weight
        (False, True),  # ignore_index
        ("mean", "sum", "none"),
        (0.0, 0.1, 0.7),
        ("2d", "3d", "4d"),
    )
    if not (c[0] == "prob" and c[2])  # PyTorch: ignore_index needs class indices
]


def _case(target, weighted, ignore, layout, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    K = 5
    shape = {"2d": (6, K), "3d": (3, K, 4), "4d": (2, K, 3, 2)}[layout]
    z = (rng.normal(size=shape) * 2).astype(dtype)
    batch = shape[:1] + shape[2:]
    if target == "int":
        y = rng.integers(0, K, size=batch)
        if ignore:
            y.flat[[0, 3]] = -100
    else:
        y = rng.random(shape).astype(dtype)
        y /= y.sum(axis=1, keepdims=True)
    w = (rng.random(K) + 0.2).astype(dtype) if weighted else None
    return z, y, w


def _torch(z, y, w, eps, reduction, ignore):
    zt = torch.tensor(z, requires_grad=True)
    kw = {"reduction": reduction, "label_smoothing": eps}
    if w is not None:
        kw["weight"] = torch.tensor(w)
    if ignore:
        kw["ignore_index"] = -100
    loss = F.cross_entropy(zt, torch.tensor(y), **kw)
    loss.sum().backward()
    return loss.detach().numpy(), zt.grad.numpy()


@pytest.mark.parametrize(("target", "weighted", "ignore", "reduction", "eps", "layout"), CASES)
def test_matches_torch_float64(target, weighted, ignore, reduction, eps, layout):
    z, y, w = _case(target, weighted, ignore, layout)
    t_loss, t_grad = _torch(z, y, w, eps, reduction, ignore)
    loss, grad = smoothce.cross_entropy_with_grad(
        z, y, eps, axis=1, reduction=reduction, weight=w, ignore_index=-100 if ignore else None
    )
    np.testing.assert_allclose(loss, t_loss, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grad, t_grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("target", ["int", "prob"])
def test_matches_torch_float32(target, reduction):
    z, y, w = _case(target, True, False, "4d", seed=1, dtype=np.float32)
    t_loss, t_grad = _torch(z, y, w, 0.1, reduction, False)
    loss, grad = smoothce.cross_entropy_with_grad(z, y, 0.1, axis=1, reduction=reduction, weight=w)
    assert np.asarray(loss).dtype == np.float32
    assert grad.dtype == np.float32
    np.testing.assert_allclose(loss, t_loss, rtol=2e-6)
    np.testing.assert_allclose(grad, t_grad, rtol=2e-5, atol=1e-7)


def test_all_ignored_mean_differs_from_torch_as_documented():
    z = np.zeros((2, 3))
    y = np.array([-100, -100])
    t_loss, _ = _torch(z, y, None, 0.1, "mean", True)
    assert np.isnan(t_loss)  # PyTorch: 0 / 0
    loss, grad = smoothce.cross_entropy_with_grad(z, y, 0.1, ignore_index=-100)
    assert loss == 0.0
    assert not grad.any()


def test_masked_class_matches_torch_where_target_mass_is_zero():
    z = np.array([[0.5, -np.inf, 1.0], [2.0, 0.0, -np.inf]])
    y = np.array([0, 1])
    t_loss, t_grad = _torch(z, y, None, 0.0, "none", False)
    loss, grad = smoothce.cross_entropy_with_grad(z, y, reduction="none")
    np.testing.assert_allclose(loss, t_loss, rtol=1e-15)
    np.testing.assert_allclose(grad, t_grad, rtol=1e-15)
