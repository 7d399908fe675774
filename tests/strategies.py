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
