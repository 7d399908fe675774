"""Named hypothesis strategies for logits, labels and options."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

#: Finite logits over a wide range; the loss must stay exact across it.
finite_floats = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=64)
epsilons = st.floats(0.0, 1.0, allow_nan=False)
class_counts = st.integers(1, 9)
batch_sizes = st.integers(0, 6)


@st.composite
def problems(draw: Any, *, min_classes: int = 1, dtype: Any = np.float64) -> dict[str, Any]:
    """A 2-D batch of logits with integer labels and an epsilon."""
    K = draw(st.integers(min_classes, 9))
    N = draw(batch_sizes)
    logits = draw(arrays(dtype, (N, K), elements=finite_floats))
    labels = draw(arrays(np.int64, (N,), elements=st.integers(0, K - 1)))
    return {"logits": logits, "labels": labels, "epsilon": draw(epsilons), "K": K}


@st.composite
def nd_problems(draw: Any) -> dict[str, Any]:
    """Logits of 1 to 4 dimensions with the class axis anywhere."""
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim)))
    axis = draw(st.integers(-ndim, ndim - 1))
    K = shape[axis]
    logits = draw(arrays(np.float64, shape, elements=finite_floats))
    batch = shape[: axis % ndim] + shape[axis % ndim + 1 :]
    labels = draw(arrays(np.int64, batch, elements=st.integers(0, K - 1)))
    return {"logits": logits, "labels": labels, "axis": axis, "epsilon": draw(epsilons)}


FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def _distribution(draw: Any, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Non-negative values summing to 1 along the last axis, rounded to ``dtype``."""
    raw = draw(arrays(np.float64, shape, elements=st.floats(0.0, 1.0)))
    raw[..., 0] += 1e-3  # never an all-zero row
    return (raw / raw.sum(axis=-1, keepdims=True)).astype(dtype)


@st.composite
def full_problems(draw: Any, *, dtype: Any = np.float64) -> dict[str, Any]:
    """Every option of the loss functions at once: the oracle's input.

    Logits of 1-3 dimensions (class axis anywhere) and of ``dtype``; integer labels
    (possibly ignored) or probability targets of any float dtype; every prior kind,
    including class and per-sample priors of any float dtype; class weights, zeros
    included; every reduction; one or two threads; and, with ``streamed``, blocks
    so small that every row is cut into chunks (the caller patches the engine).
    Returns keyword arguments for the loss functions plus ``logits`` and ``labels``.
    """
    ndim = draw(st.integers(1, 3))
    K = draw(st.integers(1, 9))
    shape = [draw(st.integers(1, 4)) for _ in range(ndim)]
    axis = draw(st.integers(-ndim, ndim - 1))
    shape[axis] = K
    shape_t = tuple(shape)
    ax = axis % ndim
    batch = shape_t[:ax] + shape_t[ax + 1 :]
    # float16 holds integers exactly only up to 2048 and overflows at 65504: stay
    # well inside so that every value drawn is the value computed on.
    bound = 60.0 if dtype == np.float16 else 1e4
    logits = draw(arrays(np.float64, shape_t, elements=st.floats(-bound, bound))).astype(dtype)
    probabilistic = draw(st.booleans())
    kwargs: dict[str, Any] = {"axis": axis, "epsilon": draw(epsilons)}
    if probabilistic:
        t_dtype = draw(st.sampled_from(FLOAT_DTYPES))
        moved = _distribution(draw, (*batch, K), t_dtype)
        labels = np.moveaxis(moved, -1, ax)
    else:
        labels = draw(arrays(np.int64, batch, elements=st.integers(0, K - 1)))
        if draw(st.booleans()):
            ignore = draw(st.integers(-1, K - 1))
            kwargs["ignore_index"] = ignore
            drop = draw(arrays(np.bool_, batch))
            labels = np.where(drop, ignore, labels)
    kinds = ["none", "uniform", "class", "sample"]
    if not probabilistic and K >= 2:
        kinds.append("others")
    kind = draw(st.sampled_from(kinds))
    if kind == "uniform" or kind == "others":
        kwargs["prior"] = kind
    elif kind == "class":
        kwargs["prior"] = _distribution(draw, (K,), draw(st.sampled_from(FLOAT_DTYPES)))
    elif kind == "sample":
        u = _distribution(draw, (*batch, K), draw(st.sampled_from(FLOAT_DTYPES)))
        kwargs["prior"] = np.moveaxis(u, -1, ax)
    if draw(st.booleans()):
        kwargs["weight"] = draw(
            arrays(np.float64, (K,), elements=st.sampled_from([0.0, 0.25, 1.0, 3.0, 10.0]))
        )
    kwargs["reduction"] = draw(st.sampled_from(["none", "mean", "sum"]))
    kwargs["workers"] = draw(st.sampled_from([1, 2]))
    return {
        "logits": logits,
        "labels": labels,
        "streamed": draw(st.booleans()),
        **kwargs,
    }
