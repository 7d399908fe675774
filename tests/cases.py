"""Option combinations shared by the reference, gradient and PyTorch tests."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

TARGETS = ("int", "prob")
PRIORS = (None, "others", "class", "sample")
REDUCTIONS = ("mean", "sum", "none")


def combinations(epsilons: tuple[float, ...] = (0.0, 0.3, 1.0)) -> list[tuple[Any, ...]]:
    """Every meaningful (target, prior, weighted, ignore, reduction, epsilon, layout)."""
    out = []
    for combo in itertools.product(
        TARGETS, PRIORS, (False, True), (False, True), REDUCTIONS, epsilons, ("2d", "nd")
    ):
        target, prior, _, ignore, *_ = combo
        if target == "prob" and (prior == "others" or ignore):
            continue  # "others" and ignore_index are defined for class indices only
        out.append(combo)
    return out


def make_case(
    combo: tuple[Any, ...], seed: int = 0, *, N: int = 5, K: int = 4
) -> tuple[np.ndarray, np.ndarray, float, dict[str, Any]]:
    """(logits, labels, epsilon, keyword arguments) for one combination."""
    target, prior, weighted, ignore, reduction, eps, layout = combo
    rng = np.random.default_rng(seed)
    if layout == "2d":
        shape, axis = (N, K), -1
        batch = (N,)
    else:  # PyTorch's (N, C, d1) layout, classes on axis 1
        shape, axis = (2, K, 3), 1
        batch = (2, 3)
    logits = rng.normal(size=shape) * 2.0
    if target == "int":
        labels = rng.integers(0, K, size=batch)
        if ignore:
            labels.flat[[0, 2]] = -100
    else:
        labels = rng.random(shape)
        labels /= labels.sum(axis=axis, keepdims=True)
    pr: Any = prior
    if prior == "class":
        pr = rng.random(K) + 0.05
        pr /= pr.sum()
    elif prior == "sample":
        pr = rng.random(shape) + 0.05
        pr /= pr.sum(axis=axis, keepdims=True)
    kwargs = {
        "axis": axis,
        "reduction": reduction,
        "prior": pr,
        "weight": rng.random(K) + 0.1 if weighted else None,
        "ignore_index": -100 if ignore else None,
    }
    return logits, labels, eps, kwargs


def case_id(combo: tuple[Any, ...]) -> str:
    target, prior, weighted, ignore, reduction, eps, layout = combo
    parts = [target, f"prior={prior}", "w" if weighted else "", "ign" if ignore else ""]
    return "-".join(p for p in [*parts, reduction, f"eps={eps}", layout] if p)
