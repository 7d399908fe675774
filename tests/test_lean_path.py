"""The lean path for small calls gives the general path's results, bit for bit.

:func:`smoothce._lean.lean_call` evaluates the common case (2-D, integer labels,
uniform or "others" prior, optional ignore_index and class weights, one block) with the
engine's own functions; anything else, and every input it cannot accept at a glance,
goes to the general path. These tests run each call both ways (the general path by
switching the lean one off) and compare bits, over the option grid and over inputs
the lean path must hand over (special values, bad arguments).
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import smoothce
from smoothce import _lean, _loss

SPECIAL = st.sampled_from([0.0, 1.0, -3.5, 88.0, 100.0, -1e4, np.inf, -np.inf, np.nan])
# Weights the lean path takes (finite, >= 0, largest in [2**-100, 2**100] or all zero)
# and those it hands over: negative, NaN, inf, or needing the general path's rescaling.
WEIGHT_SPECIAL = st.sampled_from([0.0, 1.0, 1e-35, 1e35, -1.0, np.inf, np.nan])


def _rounded(value: float, dtype: Any) -> float:
    with np.errstate(over="ignore"):  # 1e35 is inf in float16
        return float(np.float64(value).astype(dtype))


@st.composite
def weights(draw: Any, K: int) -> Any:
    dtype = draw(st.sampled_from([np.float64, np.float32, np.float16]))
    width = np.dtype(dtype).itemsize * 8
    values = st.floats(0, 10, width=width)
    if draw(st.integers(0, 3)) == 0:
        values = values | WEIGHT_SPECIAL.map(lambda v: _rounded(v, dtype))
    w = draw(arrays(dtype, (K,), elements=values))
    return w.tolist() if draw(st.integers(0, 9)) == 0 else w


@st.composite
def lean_cases(draw: Any) -> dict[str, Any]:
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    N, K = draw(st.integers(1, 40)), draw(st.integers(1, 12))
    values = (
        st.floats(-50, 50, width=32) | SPECIAL
        if draw(st.booleans())
        else st.floats(-50, 50, width=32)
    )
    z = draw(arrays(dtype, (N, K), elements=values))
    y = draw(
        arrays(
            draw(st.sampled_from([np.int64, np.int32, np.uint8])),
            (N,),
            elements=st.integers(0, K - 1),
        )
    )
    kwargs: dict[str, Any] = {
        "reduction": draw(st.sampled_from(["mean", "sum", "none"])),
        "prior": draw(st.sampled_from([None, "uniform"] + (["others"] if K >= 2 else []))),
    }
    eps = draw(st.sampled_from([0.0, 1.0, 0.1, 0.5]) | st.floats(0.0, 1.0))
    if draw(st.booleans()) and y.dtype != np.uint8:
        kwargs["ignore_index"] = ign = draw(st.integers(-1, K - 1))
        y = np.where(draw(arrays(np.bool_, (N,))), ign, y).astype(y.dtype)
    if draw(st.booleans()):
        kwargs["workers"] = draw(st.sampled_from([1, 2]))
    if draw(st.booleans()):
        kwargs["weight"] = draw(weights(K))
    return {"z": z, "y": y, "eps": eps, "kwargs": kwargs}


def _general(fn, *args, **kwargs):
    with mock.patch.object(_loss, "lean_call", return_value=None):
        return fn(*args, **kwargs)


def _taken(fn, *args, **kwargs) -> tuple[Any, bool]:
    """Call through the lean path and say whether it answered."""
    answered = []

    def spy(*a):
        r = _lean.lean_call(*a)
        answered.append(r is not None)
        return r

    with mock.patch.object(_loss, "lean_call", spy):
        return fn(*args, **kwargs), answered[0]


def _same(a, b) -> None:
    if isinstance(a, tuple):
        for x, y in zip(a, b, strict=True):
            _same(x, y)
        return
    assert type(a) is type(b)
    np.testing.assert_array_equal(a, b, strict=True)


def _outcome(fn, *args, **kwargs) -> Any:
    """The result, or ``(exception type, message)`` for the documented errors."""
    try:
        return fn(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        return type(exc), str(exc)


def _same_outcome(a, b) -> None:
    if isinstance(b, tuple) and isinstance(b[0], type):
        assert a == b
    else:
        _same(a, b)


@given(lean_cases())
def test_lean_and_general_paths_agree_bit_for_bit(case):
    z, y, eps, kw = case["z"], case["y"], case["eps"], case["kwargs"]
    for fn in (
        smoothce.cross_entropy,
        smoothce.cross_entropy_grad,
        smoothce.cross_entropy_with_grad,
    ):
        # A leaked warning fails the test (filterwarnings=error).
        got = _outcome(_taken, fn, z, y, eps, **kw)
        if not isinstance(got[0], type):
            got, lean = got
            event(f"{'weighted' if 'weight' in kw else 'unweighted'}, lean path: {lean}")
        _same_outcome(got, _outcome(_general, fn, z, y, eps, **kw))
    out1, out2 = np.full_like(z, 7), np.full_like(z, 7)
    got = _outcome(smoothce.cross_entropy_with_grad, z, y, eps, out=out1, **kw)
    expected = _outcome(_general, smoothce.cross_entropy_with_grad, z, y, eps, out=out2, **kw)
    _same_outcome(got, expected)
    if not isinstance(expected[0], type):
        assert got[1] is out1
        assert expected[1] is out2
        _same(out1, out2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("prior", [None, "uniform", "others"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weight", [None, np.float64, np.float32, np.float16])
@pytest.mark.parametrize("ignore_index", [None, 3, -100])
def test_the_common_case_takes_the_lean_path(dtype, prior, reduction, weight, ignore_index):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((32, 10)).astype(dtype)
    y = rng.integers(0, 10, 32)
    y[:3] = -100 if ignore_index == -100 else y[:3]
    kw: dict[str, Any] = {"prior": prior, "reduction": reduction, "ignore_index": ignore_index}
    if weight is not None:
        kw["weight"] = rng.uniform(0, 2, 10).astype(weight)
    for fn in (
        smoothce.cross_entropy,
        smoothce.cross_entropy_grad,
        smoothce.cross_entropy_with_grad,
    ):
        got, lean = _taken(fn, z, y, 0.1, **kw)
        assert lean
        _same(got, _general(fn, z, y, 0.1, **kw))


def test_out_sharing_memory_with_the_weights_reads_the_weights_before_writing():
    # The general path converts the weights to a float64 copy before anything is
    # written to out; the lean path must too, or the gradient overwrites the weights
    # it is still reading.
    z = np.random.default_rng(1).standard_normal((4, 3))
    y = np.array([0, 1, 2, 1])
    buf1 = np.array([[1.0, 2.0, 3.0]] * 4)
    buf2 = buf1.copy()
    (loss1, _), lean = _taken(
        smoothce.cross_entropy_with_grad, z, y, 0.1, weight=buf1[3], out=buf1
    )
    loss2, _ = _general(smoothce.cross_entropy_with_grad, z, y, 0.1, weight=buf2[3], out=buf2)
    assert lean
    _same((loss1, buf1), (loss2, buf2))


@pytest.mark.parametrize(
    ("logits", "labels", "kwargs"),
    [
        (np.zeros((2, 3), np.float16), [0, 1], {}),  # float16: general path
        (np.zeros((2, 3)), [0, 1], {}),  # a list of labels
        (np.zeros((2, 3)), np.array([0, -1]), {}),  # a negative label: error
        (np.zeros((2, 3)), np.array([0, 3]), {}),  # out of range: error
        (np.zeros((3, 2)).T, np.array([0, 1]), {}),  # not C-contiguous
        (np.zeros((2, 3)), np.array([0, 1]), {"weight": [1.0, 2.0, 3.0]}),  # a list
        (np.zeros((2, 3)), np.array([0, 1]), {"weight": np.array([1, 2, 3])}),  # integers
        (np.zeros((2, 3)), np.array([0, 1]), {"weight": np.ones(2)}),  # wrong length
        (np.zeros((2, 3)), np.array([0, 1]), {"weight": np.ones((1, 3))}),  # 2-D
        (np.zeros((2, 3)), np.array([0, 1]), {"weight": np.array([1.0, -1.0, 1.0])}),
        (np.zeros((2, 3)), np.array([0, 1]), {"weight": np.array([1.0, np.nan, 1.0])}),
        (np.zeros((2, 3)), np.array([0, 1]), {"weight": np.array([1.0, np.inf, 1.0])}),
        (np.zeros((2, 3)), np.array([0, 1]), {"weight": np.array([1.0, 1e35, 1.0])}),  # scaled
        (np.zeros((2, 3)), np.array([0, 1]), {"weight": np.array([1e-35, 0.0, 1e-36])}),
        (np.zeros((2, 3)), np.array([0, 1]), {"prior": np.full(3, 1 / 3)}),
        (np.zeros((2, 3)), np.array([0, 1]), {"axis": 0}),
        (np.zeros((2, 3)), np.array([0, 1]), {"workers": -1}),
        (np.zeros((2, 3)), np.array([0.2, 0.8]), {}),  # float labels: shape error
    ],
)
def test_inputs_outside_the_common_case_go_to_the_general_path(logits, labels, kwargs):
    def outcome(fn):
        try:
            return fn()
        except (TypeError, ValueError) as exc:
            return type(exc), str(exc)

    def call():
        return smoothce.cross_entropy_with_grad(logits, labels, 1.0, **kwargs)

    (got, lean) = (None, False)
    try:
        got, lean = _taken(smoothce.cross_entropy_with_grad, logits, labels, 1.0, **kwargs)
    except (TypeError, ValueError) as exc:
        got = (type(exc), str(exc))
    assert not lean
    expected = outcome(lambda: _general(call))
    if isinstance(expected, tuple) and isinstance(expected[0], type):
        assert got == expected
    else:
        _same(got, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_no_value_of_the_logits_sends_a_call_off_the_lean_path(dtype):
    # The float32 lean path used to hand every call with a row outside its fast range
    # (a logit of 1e4, -inf with the "others" prior, a constant offset of +50, a
    # trained network's confident rows) to the general path: 2-6x slower. Values now
    # only choose each row's reference inside the one block kernel.
    rng = np.random.default_rng(4)
    y = rng.integers(0, 10, 64)
    normal = rng.standard_normal((64, 10))
    trained = 3 * normal
    trained[np.arange(64), y] += 10
    cases = {
        "wide": 5 * normal,
        "trained": trained,
        "offset": normal + 50,
        "huge": np.where(normal > 1, 1e4, normal),
        "very negative": normal - 200,
        "masked": np.where(normal < -1, -np.inf, normal),
        "nan": np.where(normal > 2.5, np.nan, normal),
    }
    for name, z in cases.items():
        z = z.astype(dtype)
        for kw in ({}, {"prior": "others"}, {"ignore_index": 3, "weight": np.ones(10)}):
            for fn in (smoothce.cross_entropy, smoothce.cross_entropy_with_grad):
                got, lean = _taken(fn, z, y, 0.1, **kw)
                assert lean, name
                _same(got, _general(fn, z, y, 0.1, **kw))


def test_the_block_kernel_runs_quietly_within_the_callers_error_state():
    # The quiet error state is cached per caller's state (NumPy 2): inside the kernel
    # it must be the caller's with overflow, invalid and divide ignored, and afterwards
    # the caller's again, on the lean path and on the general one.
    from smoothce import _kernel

    z = np.random.default_rng(2).standard_normal((8, 5)).astype(np.float32)
    y = np.arange(8) % 5
    seen = []
    real = _kernel._row_losses

    def spy(*args):
        seen.append(np.geterr())
        return real(*args)

    before = np.geterr()
    with mock.patch.object(_kernel, "_row_losses", spy):
        for caller in (
            {"divide": "raise"},
            {"divide": "raise", "over": "raise", "invalid": "warn"},
        ):
            with np.errstate(**caller):
                state = np.geterr()
                for logits in (z, z, z * 100):  # twice: the cached state; then overflow
                    _, lean = _taken(smoothce.cross_entropy_with_grad, logits, y, 0.1)
                    assert lean
                    _general(smoothce.cross_entropy_with_grad, logits, y, 0.1)
                    assert np.geterr() == state
                quiet = {"over": "ignore", "invalid": "ignore", "divide": "ignore"}
                assert seen[-1] == {**state, **quiet}
    assert len(seen) == 12
    assert np.geterr() == before


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_dtype_with_metadata_gives_the_general_paths_bits(dtype):
    # Equal to float32 but not the same object: the lean path must still take the
    # float32 fast path, as the general path does, or the bits differ.
    meta = np.dtype(dtype, metadata={"unit": "nat"})
    z = np.random.default_rng(3).standard_normal((16, 7)).astype(meta)
    y = np.arange(16) % 7
    assert z.dtype == dtype
    assert z.dtype is not np.dtype(dtype)
    for fn in (smoothce.cross_entropy, smoothce.cross_entropy_with_grad):
        got, lean = _taken(fn, z, y, 0.1)
        assert lean
        _same(got, _general(fn, z, y, 0.1))
