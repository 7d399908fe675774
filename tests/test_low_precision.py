"""float16 inputs, and float16/float32 targets and priors (issue 7, items 1 and 2).

Contract: float16 logits are computed in float32 and are as exact as float32 logits
holding the same values; targets and priors are promoted to the compute dtype once.
The general property over every option is in test_oracle.py; these pin the findings.
"""

from __future__ import annotations

import numpy as np
import pytest
from reference import reference

import smoothce


def test_float16_label_logit_is_not_rounded_to_float16():
    # The label logit was multiplied by a Python float in float16 (NumPy 2 keeps
    # float16 for `float * float16_array`): 0.5572384 instead of 0.5570919.
    z16 = np.array([[0.0, 0.333]], dtype=np.float16)
    got = smoothce.cross_entropy(z16, [1], 0.1)
    truth, _ = reference(z16.astype(np.float64), np.array([1]), 0.1)
    assert abs(float(got) - truth) <= 2e-6 * truth
    assert got == smoothce.cross_entropy(z16.astype(np.float32), [1], 0.1)


@pytest.mark.parametrize("prior", [None, "others"])
@pytest.mark.parametrize("eps", [0.0, 0.1, 1.0])
def test_float16_reduced_loss_equals_float32_on_the_same_values(prior, eps):
    rng = np.random.default_rng(7)
    z16 = (rng.standard_normal((64, 33)) * 8).astype(np.float16)
    y = rng.integers(0, 33, 64)
    for reduction in ("mean", "sum"):
        # Row by row (a batch would average the old per-row errors away) and whole.
        for rows in [slice(None)] + [slice(i, i + 1) for i in range(64)]:
            got = smoothce.cross_entropy(z16[rows], y[rows], eps, prior=prior, reduction=reduction)
            truth, _ = reference(
                z16[rows].astype(np.float64), y[rows], eps, prior=prior, reduction=reduction
            )
            assert abs(float(got) - truth) <= 2e-6 * abs(truth) + 1e-6 * 2.0**-10


def test_float16_per_element_results_are_the_float32_value_rounded_once():
    rng = np.random.default_rng(3)
    z16 = (rng.standard_normal((200, 17)) * 6).astype(np.float16)
    y = rng.integers(0, 17, 200)
    loss, grad = smoothce.cross_entropy_with_grad(z16, y, 0.2, reduction="none")
    ref_loss, ref_grad = reference(z16.astype(np.float64), y, 0.2, reduction="none")
    assert loss.dtype == grad.dtype == np.float16
    # One rounding of a float32-accurate value: half a float16 spacing plus float32's
    # own error (a few units of 2**-24 of the terms, at most 1e-5 here).
    for got, ref in ((loss, ref_loss), (grad, ref_grad)):
        half = np.spacing(np.abs(ref).astype(np.float16)).astype(np.float64) / 2
        assert np.all(np.abs(got.astype(np.float64) - ref) <= half + 1e-5 * 2.0**-10)


def test_gradient_of_float16_targets_sums_to_zero():
    # (c * a) * t was taken in float16: the row summed to 3.2e-4 instead of ~1e-16.
    t16 = np.array([[0.3, 0.7]], dtype=np.float16)
    g = smoothce.cross_entropy_grad(np.zeros((1, 2)), t16, 0.1, reduction="sum")
    g64 = smoothce.cross_entropy_grad(
        np.zeros((1, 2)), t16.astype(np.float64), 0.1, reduction="sum"
    )
    np.testing.assert_array_equal(g, g64)
    assert abs(g.sum()) <= 4 * np.finfo(np.float64).eps


def test_gradient_with_a_float16_per_sample_prior_is_float64_exact():
    # (c * eps) * u was taken in float16 (5e-4 relative); the prior's values are used
    # exactly, so float64 logits get a float64-accurate gradient.
    rng = np.random.default_rng(0)
    z = rng.standard_normal((5, 4))
    u16 = rng.dirichlet(np.ones(4), size=5).astype(np.float16)
    y = rng.integers(0, 4, 5)
    g = smoothce.cross_entropy_grad(z, y, 0.3, prior=u16, reduction="sum")
    _, ref = reference(z, y, 0.3, prior=u16.astype(np.float64), reduction="sum")
    np.testing.assert_allclose(g, ref, rtol=1e-13, atol=1e-15)


def test_gradient_of_the_others_prior_keeps_float32_accuracy_at_the_label():
    # The label column used to get the prior share subtracted and added back:
    # p_y - 1 + 1 at eps = 1 left 6e-6 relative error on a 2.5e-3 gradient entry.
    z = np.array([[0.0, 6.0]], dtype=np.float32)
    g = smoothce.cross_entropy_grad(z, [0], 1.0, prior="others", reduction="none")
    _, ref = reference(z.astype(np.float64), np.array([0]), 1.0, prior="others", reduction="none")
    # The label entry p_0 is small: float32 holds it to a few units of 2**-24. (The
    # other entry, p_1 - 1, cancels in any float32 evaluation of W p - w q.)
    np.testing.assert_allclose(g[0, 0], ref[0, 0], rtol=8 * 2.0**-24)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_smooth_labels_in_a_narrow_dtype_are_rounded_once(dtype):
    # Built in float64 and rounded once: summed in float16, (1 - eps) + eps / 7 gave
    # 0.6533 at this epsilon where the rounded exact value is 0.653.
    q = smoothce.smooth_labels([0, 2], 7, 0.40474949899799606, dtype=dtype)
    exact = smoothce.smooth_labels([0, 2], 7, 0.40474949899799606).astype(dtype)
    assert q.dtype == dtype
    np.testing.assert_array_equal(q, exact)


def test_store_float16_rounds_exactly_as_the_cast():
    # The gradient's float32 -> float16 store is integer arithmetic on the bits (NumPy's
    # cast is a scalar conversion, 26x slower on float16-subnormal results); the bits
    # must be the cast's, ties, signs, overflow and NaN payloads included.
    from smoothce._stable import store_float16

    rng = np.random.default_rng(11)
    steps = np.arange(-2100, 2100, dtype=np.float64) * 2.0**-25  # every tie below 2**-14
    values = np.concatenate(
        [
            (rng.standard_normal(20000) * 10.0 ** rng.uniform(-12, 4, 20000)),
            steps,
            [0.0, -0.0, np.inf, -np.inf, np.nan, 2.0**-14, -(2.0**-14), 65504.0, 65520.0, 1e6],
        ]
    ).astype(np.float32)
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16)
        got = np.empty_like(expected)
        store_float16(got, values.copy())
    np.testing.assert_array_equal(got.view(np.uint16), expected.view(np.uint16))


def test_store_float16_equals_the_cast_across_the_float32_bit_space():
    # Every 4099th float32 bit pattern (a prime stride: every exponent, both signs,
    # NaNs with every payload shape), and each float16 value's float32 neighbours and
    # midpoints (the ties). All 2**32 patterns agree too (checked once, offline: it
    # takes a minute).
    from smoothce._stable import store_float16

    sampled = np.arange(0, 2**32, 4099, dtype=np.uint64).astype(np.uint32)
    halves = np.arange(2**16, dtype=np.uint16).view(np.float16).astype(np.float32)
    near = halves.view(np.uint32).astype(np.int64)
    mids = np.concatenate([near + d for d in (-1, 0, 1, 1 << 12, 1 << 13)]) % 2**32
    bits = np.concatenate([sampled, mids.astype(np.uint32)])
    values = bits.view(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        expected = values.astype(np.float16)
    got = np.empty_like(expected)
    store_float16(got, values.copy())
    np.testing.assert_array_equal(got.view(np.uint16), expected.view(np.uint16))


def test_float16_gradient_equals_the_float32_gradient_cast():
    rng = np.random.default_rng(2)
    z16 = (rng.standard_normal((300, 700)) * 3).astype(np.float16)
    y = rng.integers(0, 700, 300)
    g16 = smoothce.cross_entropy_grad(z16, y, 0.1)  # mean: entries ~1e-8, subnormal in float16
    g32 = smoothce.cross_entropy_grad(z16.astype(np.float32), y, 0.1)
    np.testing.assert_array_equal(g16.view(np.uint16), g32.astype(np.float16).view(np.uint16))


def test_float16_widening_is_numpys_cast_for_every_bit_pattern():
    """The engine widens float16 blocks by table lookup; every one of the 65,536 bit
    patterns (NaN payloads, subnormals, infinities) must come out as NumPy's cast."""
    from smoothce._stable import widen_float16

    every = np.arange(1 << 16, dtype=np.uint16).view(np.float16).reshape(256, 256)
    out = np.empty(every.shape, dtype=np.float32)
    widen_float16(every, out)
    np.testing.assert_array_equal(out.view(np.uint32), every.astype(np.float32).view(np.uint32))
    strided = every[::3, 1::2]  # a strided view, as a block of logits with axis != -1
    out2 = np.empty(strided.shape, dtype=np.float32)
    widen_float16(strided, out2)
    np.testing.assert_array_equal(out2.view(np.uint32), strided.astype(np.float32).view(np.uint32))


@pytest.mark.parametrize("shape", [(64, 10), (3, 5000), (2, 140_000)])
def test_float16_logits_give_the_bits_of_float32_logits_holding_the_same_values(shape):
    rng = np.random.default_rng(5)
    z16 = (rng.standard_normal(shape) * 4).astype(np.float16)
    y = rng.integers(0, shape[1], shape[0])
    loss16, g16 = smoothce.cross_entropy_with_grad(z16, y, 0.1, reduction="sum")
    loss32, g32 = smoothce.cross_entropy_with_grad(z16.astype(np.float32), y, 0.1, reduction="sum")
    assert loss16 == loss32
    np.testing.assert_array_equal(g16, g32.astype(np.float16))
