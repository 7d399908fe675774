"""Every option at once against the float64 oracle, in every floating dtype.

The contract (README, "Precision"): float64 logits are computed in float64; float32
and float16 logits in float32, float16 ones being *as exact as float32 logits holding
the same values*. So the oracle is always the dense float64 formula evaluated on the
values the caller passed (upcast exactly), and the tolerances are the rounding bounds
of the closed form in the compute dtype, derived below, never what the code gives:

* loss ``l = W log S - T``: ``S`` is a sum of ``K`` exponentials each rounded once,
  ``T`` a dot product accumulated in float64. The error is at most about
  ``(K + 4) u M`` with ``u`` the compute dtype's unit roundoff and
  ``M = W (|lse(z)| + |max z| + 1) + sum_k |w_k q_k z_k|`` the size of the terms
  that cancel (``lse`` and ``max`` are both as large as the logits);
* gradient ``c (W p_k - w_k q_k)``: ``p_k`` carries ``(|z_k - max z| + K + 4) u``
  relative error (the shifted logit is rounded, then exponentiated and divided);
* results returned in float16 (or bfloat16) are that float32 value rounded once, so
  half a float16 (bfloat16) spacing more, and no more;
* reduced losses are also held to 2e-6 relative (the issue's float32 contract);
* the oracle itself rounds ``q`` in float64: where ``epsilon * u_k`` is subnormal (an
  epsilon of 5e-324) each ``q_k`` is off by up to half the smallest subnormal, which
  moves its loss by ``2**-1075 sum_k w_k |lse - z_k|``, added as it is.

CI runs these properties with thousands of derandomised examples (conftest.py).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from reference import dense_problem, reference
from strategies import full_problems

import smoothce
from smoothce import _engine

U = {np.float16: 2.0**-24, np.float32: 2.0**-24, np.float64: 2.0**-53, "bfloat16": 2.0**-24}
#: Absolute floor of the rounding: the compute dtype's smallest subnormal.
TINY = {
    np.float16: float(np.finfo(np.float32).smallest_subnormal),
    np.float32: float(np.finfo(np.float32).smallest_subnormal),
    np.float64: float(np.finfo(np.float64).smallest_subnormal),
    "bfloat16": float(np.finfo(np.float32).smallest_subnormal),
}


def _oracle_scales(
    case: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, np.ndarray]:
    """``(M per element, gradient scale per logit, w q, c, Q per element)`` in the
    caller's layout, ``Q`` the effect of the oracle's own rounding of ``q``.

    ``M`` is zero for ignored elements; ``c`` is the reduction's factor (1 / the mean's
    denominator).
    """
    axis = case["axis"]
    d = dense_problem(
        case["logits"],
        case["labels"],
        case["epsilon"],
        axis=axis,
        prior=case.get("prior"),
        weight=case.get("weight"),
        ignore_index=case.get("ignore_index"),
    )
    z, wq, counted = d["z"], d["wq"], d["counted"]
    K = z.shape[-1]
    W = wq.sum(axis=-1)
    mx = z.max(axis=-1)
    lse = mx + np.log(np.exp(z - mx[..., None]).sum(axis=-1))
    M = W * (np.abs(lse) + np.abs(mx) + 1.0) + np.abs(wq * z).sum(axis=-1)
    M = np.where(counted, M, 0.0)
    w = np.ones(K) if case.get("weight") is None else np.asarray(case["weight"], np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf where a logit is infinite
        spread = np.abs(lse[..., None] - z)
    # Half the smallest subnormal (2**-1075, itself below float64's range) per unit.
    Q = 0.5 * np.where(np.isfinite(spread), w * spread, 0.0).sum(axis=-1) * 2.0**-1074
    Q = np.where(counted, Q, 0.0)
    p = np.exp(z - lse[..., None])
    gscale = W[..., None] * p * (np.abs(z - mx[..., None]) + K + 4) + 2 * wq
    gscale = np.where(counted[..., None], gscale, 0.0)
    c = 1.0
    if case["reduction"] == "mean":
        c = 1.0 / d["den"] if d["den"] > 0 else 0.0
    return M, np.moveaxis(gscale, -1, axis), np.moveaxis(wq, -1, axis), c, Q


def _call(case: dict[str, Any]) -> tuple[Any, Any, np.ndarray]:
    kwargs = {k: v for k, v in case.items() if k not in ("logits", "labels", "streamed")}
    eps = kwargs.pop("epsilon")
    z, y = case["logits"], case["labels"]
    # Streamed rows: blocks of 3 logits cut every row of more than 3 classes into
    # chunks, exercising the online log-sum-exp on these tiny shapes.
    patch = mock.patch.object(_engine, "BLOCK_ELEMENTS", 3) if case["streamed"] else nullcontext()
    with patch:
        loss_only = smoothce.cross_entropy(z, y, eps, **kwargs)
        loss, grad = smoothce.cross_entropy_with_grad(z, y, eps, **kwargs)
    return loss_only, loss, grad


def _half_spacing(values: np.ndarray, dtype: Any) -> np.ndarray:
    """Half the spacing of ``dtype`` at ``values``: the error of one final rounding."""
    if np.dtype(dtype) == np.float64:
        return np.zeros_like(values)
    if np.dtype(dtype).name == "bfloat16":
        # bfloat16 keeps 7 of float32's 23 fraction bits over the same exponent range.
        with np.errstate(over="ignore"):
            f32 = np.abs(values).astype(np.float32)
        return np.spacing(f32).astype(np.float64) * 2.0**15
    out = np.dtype(np.float32 if dtype == np.float32 else dtype)
    with np.errstate(over="ignore"):
        return np.abs(np.spacing(np.abs(values).astype(out))).astype(np.float64) / 2


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, "bfloat16"])
@given(data=st.data())
def test_every_option_matches_the_float64_oracle(dtype, data):
    key = dtype
    if dtype == "bfloat16":
        dtype = np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    _check_against_the_oracle(data.draw(full_problems(dtype=dtype)), key, dtype)


def test_a_subnormal_epsilon_is_held_to_the_oracles_own_rounding_of_q():
    # Found by the property: epsilon = 5e-324 makes the oracle's q = epsilon / 2 round
    # to 0 (its loss 0.0) where the exact loss is 3.3e-323; smoothce gives 3.5e-323.
    case = {
        "logits": np.array([53.0, 0.0]),
        "labels": np.array(0),
        "streamed": False,
        "axis": 0,
        "epsilon": 5e-324,
        "weight": np.array([0.0, 0.25]),
        "reduction": "none",
        "workers": 1,
    }
    _check_against_the_oracle(case, np.float64, np.float64)


def _check_against_the_oracle(case: dict[str, Any], key: Any, dtype: Any) -> None:
    loss_only, loss, grad = _call(case)
    ref_loss, ref_grad = reference(
        case["logits"],
        case["labels"],
        case["epsilon"],
        axis=case["axis"],
        reduction=case["reduction"],
        prior=case.get("prior"),
        weight=case.get("weight"),
        ignore_index=case.get("ignore_index"),
    )
    M, gscale, _, c, Q = _oracle_scales(case)
    u = U[key]
    K = np.shape(case["logits"])[case["axis"]]
    out_dtype = np.dtype(dtype)
    if case["reduction"] == "none":
        assert loss.dtype == out_dtype
        assert loss_only.dtype == out_dtype
        tol = (K + 4) * (u * M + TINY[key]) + Q + _half_spacing(ref_loss, dtype)
    else:
        assert type(loss) is (np.float64 if dtype == np.float64 else np.float32)
        rtol = 2e-6 if dtype != np.float64 else 0.0
        tol = (K + 4) * (u * c * M.sum() + TINY[key]) + c * Q.sum() + rtol * abs(ref_loss)
    for got in (loss, loss_only):
        err = np.abs(np.asarray(got, dtype=np.float64) - ref_loss)
        assert np.all(err <= tol), (got, ref_loss, tol)
        assert np.all(np.asarray(got) >= 0)
    assert grad.dtype == out_dtype
    gtol = (K + 4) * (u * c * gscale + TINY[key]) + _half_spacing(ref_grad, dtype)
    gerr = np.abs(grad.astype(np.float64) - ref_grad)
    assert np.all(gerr <= gtol), (grad, ref_grad, gtol)
