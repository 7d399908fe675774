"""The linear head at the edges of its inputs: byte orders and dtypes it must compute in
(or refuse) as the loss functions do, and overflowing products that stay quiet.

Contract (docs/semantics.rst): big-endian arrays give the native results, results are
native-endian; float128 has no compute path and is refused; results beyond a dtype's
range are ``inf`` (NaN where the logits are not finite), and no NumPy warning leaks.
The pytest configuration turns every warning into an error, so a leaked
``RuntimeWarning`` fails these tests.
"""

from __future__ import annotations

import numpy as np
import pytest

import smoothce

V, D = 7, 5
FUSED = (smoothce.linear_cross_entropy, smoothce.linear_cross_entropy_with_grad)


def _inputs(dtype=np.float64, N: int = 9, seed: int = 0):
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((N, D)).astype(dtype)
    W = rng.standard_normal((V, D)).astype(dtype)
    b = rng.standard_normal(V).astype(dtype)
    y = rng.integers(0, V, N)
    return h, W, b, y


# -- byte order and precision (issue 17, item 1) -----------------------------------
@pytest.mark.parametrize("code", ["f2", "f4", "f8"])
def test_big_endian_inputs_give_the_native_results_bit_for_bit(code):
    """'>f8' was computed in float32 (relative error 3e-8) because the head tested
    ``dtype == np.float64``; its gradients came back big-endian."""
    h, W, b, y = _inputs(np.dtype("=" + code))
    big = [a.astype(">" + code) for a in (h, W, b)]
    loss, g = smoothce.linear_cross_entropy_with_grad(h, W, y, 0.1, bias=b)
    big_loss, big_g = smoothce.linear_cross_entropy_with_grad(*big[:2], y, 0.1, bias=big[2])
    assert big_loss.dtype == loss.dtype
    assert big_loss == loss
    none = smoothce.linear_cross_entropy(*big[:2], y, 0.1, bias=big[2], reduction="none")
    np.testing.assert_array_equal(
        none, smoothce.linear_cross_entropy(h, W, y, 0.1, bias=b, reduction="none")
    )
    for got, want in zip(big_g, g, strict=True):
        assert got.dtype == want.dtype == np.dtype(code)  # native, the input's precision
        assert got.dtype.isnative
        np.testing.assert_array_equal(got, want)


def test_big_endian_float64_hidden_alone_computes_in_float64():
    h, W, b, y = _inputs(np.float32)
    h64 = h.astype(np.float64)
    loss = smoothce.linear_cross_entropy(h64.astype(">f8"), W, y, 0.1, bias=b)
    assert type(loss) is np.float64
    assert loss == smoothce.linear_cross_entropy(h64, W, y, 0.1, bias=b)


@pytest.mark.skipif(
    np.dtype(np.longdouble).itemsize <= 8, reason="np.longdouble is float64 on this platform"
)
@pytest.mark.parametrize("name", ["hidden", "classifier", "bias"])
def test_longdouble_inputs_are_refused_as_logits_are(name):
    """float128 inputs were silently computed in float32."""
    h, W, b, y = _inputs()
    args = {"hidden": h, "classifier": W, "bias": b}
    args[name] = args[name].astype(np.longdouble)
    with pytest.raises(TypeError) as logits_error:
        smoothce.cross_entropy(np.zeros((2, 3), np.longdouble), [0, 1])
    assert "float128" in str(logits_error.value)  # the loss functions' rule
    message = (
        rf"{name} must be a floating array \(float16, bfloat16, float32 or float64\); "
        rf"got dtype {np.dtype(np.longdouble)}\."
    )
    for f in FUSED:
        with pytest.raises(TypeError, match=message):
            f(labels=y, epsilon=0.1, **args)
