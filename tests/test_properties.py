"""Properties a person would state about the loss, checked with hypothesis."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from reference import reference
from strategies import finite_floats, nd_problems, problems

import smoothce


def _lse(z):
    m = z.max(axis=-1)
    return m + np.log(np.exp(z - m[..., None]).sum(axis=-1))


@given(problems())
def test_matches_reference(case):
    z, y, eps = case["logits"], case["labels"], case["epsilon"]
    loss, grad = smoothce.cross_entropy_with_grad(z, y, eps, reduction="none")
    ref_loss, ref_grad = reference(z, y, eps, reduction="none")
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-10, atol=1e-12)


@given(problems(), st.integers(-10_000, 10_000))
def test_invariant_under_shifting_each_row(case, c):
    z, y, eps = case["logits"], case["labels"], case["epsilon"]
    shifts = c * np.arange(1, z.shape[0] + 1, dtype=np.float64)[:, None] % 7919
    base = smoothce.cross_entropy(z, y, eps, reduction="none")
    moved = smoothce.cross_entropy(z + shifts, y, eps, reduction="none")
    # z + shift rounds at ulp(2e4) ~ 4e-12; the loss moves by at most a few of those.
    np.testing.assert_allclose(moved, base, rtol=1e-9, atol=1e-9)


@given(problems())
def test_epsilon_zero_is_plain_cross_entropy(case):
    z, y = case["logits"], case["labels"]
    plain = _lse(z) - z[np.arange(len(y)), y] if len(y) else np.zeros(0)
    got = smoothce.cross_entropy(z, y, 0.0, reduction="none")
    np.testing.assert_allclose(got, plain, rtol=1e-10, atol=1e-8)


@given(problems())
def test_epsilon_one_uniform_is_lse_minus_mean_logit(case):
    z, y = case["logits"], case["labels"]
    got = smoothce.cross_entropy(z, y, 1.0, reduction="none")
    expected = _lse(z) - z.mean(axis=-1) if len(y) else np.zeros(0)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-8)


@given(problems())
def test_unweighted_gradient_rows_sum_to_zero(case):
    z, y, eps = case["logits"], case["labels"], case["epsilon"]
    g = smoothce.cross_entropy_grad(z, y, eps, reduction="none")
    np.testing.assert_allclose(g.sum(axis=-1), 0.0, atol=1e-12)


@given(nd_problems())
def test_moving_the_class_axis_changes_nothing(case):
    z, y, axis, eps = case["logits"], case["labels"], case["axis"], case["epsilon"]
    loss, grad = smoothce.cross_entropy_with_grad(z, y, eps, axis=axis, reduction="none")
    z_last = np.moveaxis(z, axis, -1)
    loss_last, grad_last = smoothce.cross_entropy_with_grad(z_last, y, eps, reduction="none")
    np.testing.assert_array_equal(loss, loss_last)
    np.testing.assert_array_equal(grad, np.moveaxis(grad_last, -1, axis))


@given(nd_problems(), st.sampled_from(["mean", "sum", "none"]))
def test_with_grad_equals_separate_calls(case, reduction):
    z, y, axis, eps = case["logits"], case["labels"], case["axis"], case["epsilon"]
    kw = {"axis": axis, "reduction": reduction}
    loss, grad = smoothce.cross_entropy_with_grad(z, y, eps, **kw)
    np.testing.assert_array_equal(loss, smoothce.cross_entropy(z, y, eps, **kw))
    np.testing.assert_array_equal(grad, smoothce.cross_entropy_grad(z, y, eps, **kw))


@given(problems(min_classes=2), st.integers(0, 3))
def test_loss_is_mixture_of_hard_and_prior_cross_entropies(case, seed):
    """(1 - eps) H(t, p) + eps H(u, p): the decomposition into hard and prior parts."""
    z, y, eps = case["logits"], case["labels"], case["epsilon"]
    u = np.random.default_rng(seed).random(case["K"]) + 0.01
    u /= u.sum()
    hard = smoothce.cross_entropy(z, y, 0.0, reduction="none")
    soft = smoothce.cross_entropy(z, y, 1.0, prior=u, reduction="none")
    mixed = smoothce.cross_entropy(z, y, eps, prior=u, reduction="none")
    np.testing.assert_allclose(mixed, (1 - eps) * hard + eps * soft, rtol=1e-9, atol=1e-8)


@given(st.lists(finite_floats, min_size=1, max_size=8))
def test_log_softmax_exponentiates_to_a_distribution(values):
    lp = smoothce.log_softmax(np.array(values))
    assert np.all(lp <= 0.0)
    np.testing.assert_allclose(np.exp(lp).sum(), 1.0, rtol=1e-12)
