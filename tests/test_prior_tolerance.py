"""How far from 1 a prior may sum (issue 7, item 3).

The tolerance is the rounding of K values of the prior's dtype (summed in float64),
not ``max(K, 16) * eps``, which let a float16 prior summing to 1.9 through at K=1000.
"""

from __future__ import annotations

import numpy as np
import pytest

import smoothce
from smoothce._validation import prior_sum_tolerance

DTYPES = [np.float16, np.float32, np.float64]
SIZES = [1, 2, 3, 10, 1000, 4097, 2**16, 2**20]


def _accepted_and_used_as_given(u: np.ndarray) -> None:
    """``u`` passes validation and is the prior of the targets as it is: neither
    renormalised nor replaced, its values (in float64) times epsilon."""
    K = len(u)
    q = smoothce.smooth_labels([0], K, 0.1, prior=u)
    want = np.multiply(u, 0.1, dtype=np.float64)  # dense_targets' float64 arithmetic
    want[0] += 0.9
    np.testing.assert_array_equal(q[0], want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", SIZES)
def test_uniform_priors_rounded_to_any_dtype_are_accepted(dtype, K):
    u = np.full(K, 1.0 / K, dtype=dtype)
    _accepted_and_used_as_given(u)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", [3, 1000, 2**20])
def test_normalised_random_priors_rounded_to_any_dtype_are_accepted(dtype, K):
    rng = np.random.default_rng(K)
    u = rng.exponential(size=K) ** 4  # spread over many binades, subnormals in float16
    u = (u / u.sum()).astype(dtype)
    _accepted_and_used_as_given(u)


def test_the_accepted_priors_do_not_sum_to_one():
    """The two tests above exercise the tolerance: their priors' float64 sums miss 1 by
    more than float64's own rounding, and a tolerance of that rounding would refuse
    them."""
    u16 = np.full(1000, 1 / 1000, dtype=np.float16)
    rng = np.random.default_rng(1000)
    r = rng.exponential(size=1000) ** 4
    r32 = (r / r.sum()).astype(np.float32)
    for u in (u16, r32):
        miss = abs(u.sum(dtype=np.float64) - 1.0)
        assert miss > prior_sum_tolerance(np.dtype(np.float64), 1000), miss


@pytest.mark.parametrize(
    ("dtype", "K"), [(np.float16, 1000), (np.float32, 2**20), (np.float16, 2**20)]
)
def test_prior_summing_to_1_9_is_rejected(dtype, K):
    u = np.full(K, 1.9 / K, dtype=dtype)
    with pytest.raises(ValueError, match=r"prior must sum to 1 along the class axis"):
        smoothce.cross_entropy(np.zeros((1, K), np.float32), [0], 0.1, prior=u)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", SIZES)
def test_a_prior_off_by_ten_percent_is_rejected_in_every_dtype(dtype, K):
    u = np.full(K, 1.1 / K, dtype=dtype)
    with pytest.raises(ValueError, match="must sum to 1"):
        smoothce.smooth_labels([0], K, 0.1, prior=u)


def test_tolerance_values_quoted_in_the_docstring():
    assert prior_sum_tolerance(np.dtype(np.float16), 1000) == pytest.approx(1.1e-2, rel=0.1)
    assert prior_sum_tolerance(np.dtype(np.float32), 1000) == pytest.approx(1.3e-6, rel=0.1)
    assert prior_sum_tolerance(np.dtype(np.float64), 1000) == pytest.approx(2.2e-13, rel=0.1)
    # Integer priors (one-hot) are exact: only the float64 sum's own rounding.
    assert prior_sum_tolerance(np.dtype(np.int64), 10) == 10 * np.finfo(np.float64).eps


def test_the_message_says_where_the_tolerance_comes_from():
    u = np.full(1000, 1.9 / 1000, dtype=np.float16)
    with pytest.raises(
        ValueError, match=r"the rounding of 1000 float16 values\); got a sum of 1\.89"
    ):
        smoothce.cross_entropy(np.zeros((1, 1000)), [0], 0.1, prior=u)
