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


# -- overflowing products and casts are quiet (issue 17, item 5; issue 16, item 8) --
def _unfused(h, W, y, eps, **kw):
    """Logits, then cross_entropy_with_grad, then the products: the computation the
    head replaces, whose values (inf and NaN included) the head must give."""
    with np.errstate(over="ignore", invalid="ignore"):  # the unfused products may warn
        logits = h @ W.T
    loss, G = smoothce.cross_entropy_with_grad(logits, y, eps, reduction="none", **kw)
    with np.errstate(over="ignore", invalid="ignore"):
        return loss, G @ W, G.T @ h


def _check_against_unfused(h, W, y, eps, rtol, **kw):
    # One block, and blocks of two rows (d_classifier accumulated across blocks).
    for workspace in (smoothce._linear.DEFAULT_WORKSPACE, 2 * V * h.itemsize):
        for f in FUSED:
            f(h, W, y, eps, workspace=workspace, **kw)  # no warning (an error here)
    loss, g = smoothce.linear_cross_entropy_with_grad(
        h, W, y, eps, reduction="none", workspace=2 * V * h.itemsize, **kw
    )
    want_loss, want_h, want_W = _unfused(h, W, y, eps, **kw)
    # Non-finite exactly where the unfused values are; finite ones within rounding.
    for got, want in ((loss, want_loss), (g.hidden, want_h), (g.classifier, want_W)):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
        ok = np.isfinite(want)
        np.testing.assert_allclose(got[ok], want[ok], rtol=rtol, atol=0)
    return loss, g


def test_float32_logits_that_overflow_are_inf_quietly():
    """'overflow encountered in matmul' leaked from the logits' product."""
    h, W, _, y = _inputs(np.float32)
    h[:3] *= np.float32(1e20)  # these rows' logits overflow float32: NaN losses
    loss, _ = _check_against_unfused(h, W * np.float32(1e20), y, 0.1, rtol=1e-5)
    assert np.isnan(loss[:3]).all()


def test_float64_logits_that_overflow_are_inf_quietly():
    h, W, _, y = _inputs(np.float64)
    h[:2] *= 1e200
    loss, _ = _check_against_unfused(h, W * 1e200, y, 0.1, rtol=1e-12)
    assert np.isnan(loss[:2]).all()


def test_an_infinite_classifier_entry_without_smoothing_is_quiet():
    """'invalid value encountered in matmul': inf * 0 in the gradient's products."""
    h, W, _, y = _inputs(np.float64)
    y[y == 1] = 0
    W[1, 0] = np.inf  # class 1's logit is +inf or -inf by the sign of hidden[:, 0]
    loss, _ = _check_against_unfused(h, W, y, 0.0, rtol=1e-12)
    assert np.isfinite(loss[h[:, 0] < 0]).all()  # -inf logit, no target mass: costs 0
    assert np.isnan(loss[h[:, 0] > 0]).all()


def test_float16_gradients_beyond_float16_are_inf_quietly():
    """'overflow encountered in cast' leaked when float16 gradients overflowed."""
    h, W, b, y = _inputs(np.float16)
    h, W = h * np.float16(100), W * np.float16(100)
    weight = np.full(V, 1e5)
    kw = {"bias": b, "weight": weight, "reduction": "sum", "workspace": 2 * V * 4}
    for f in FUSED:
        f(h, W, y, 0.1, **kw)
    loss, g = smoothce.linear_cross_entropy_with_grad(h, W, y, 0.1, **kw)
    # The same values in float32, rounded once to float16: inf beyond 65504.
    wide = [a.astype(np.float32) for a in (h, W, b)]
    want_loss, want = smoothce.linear_cross_entropy_with_grad(
        *wide[:2], y, 0.1, **{**kw, "bias": wide[2]}
    )
    assert loss == want_loss
    with np.errstate(over="ignore"):
        rounded = [a.astype(np.float16) for a in want]
    for got, exp in zip(g, rounded, strict=True):
        assert got.dtype == np.float16
        np.testing.assert_array_equal(got, exp)
    assert np.isinf(g.hidden).any()
    assert np.isinf(g.classifier).any()
    assert np.isinf(g.bias).any()
