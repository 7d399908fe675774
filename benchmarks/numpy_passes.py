"""Each pass a NumPy-only block kernel makes, alone, as a multiple of NumPy's exp.

The engine's speed at large shapes is a sum of whole-block NumPy passes; this script
times each one over the same blocks of 2**18 float32 logits the engine uses, one
thread, as a multiple of one ``np.exp(z, out=buf)`` over the whole array: the
block's min and max (the reference's proof), exp, a row sum (the engine needs two:
``S`` and the prior's sum of logits), scaling rows by ``1 / S`` (a broadcast multiply),
subtracting the prior's share (a scalar), and a copy. Their sum is what any
NumPy-only kernel pays before its per-row work.

    python benchmarks/numpy_passes.py

Needs threadpoolctl (the bench extra) to hold BLAS and OpenMP pools at one thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_limits

from smoothce._compat import c_einsum
from smoothce._engine import BLOCK_ELEMENTS

SHAPES = [(8192, 1000), (65536, 100), (4096, 32000)]


def _median_seconds(f: Callable[[], object], calls: int = 10, rounds: int = 7) -> float:
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            f()
        samples.append((time.perf_counter() - t0) / calls)
    return float(np.median(samples))


def passes_of(shape: tuple[int, int], rng: np.random.Generator) -> tuple[float, dict[str, float]]:
    """NumPy's exp over the whole array (seconds), and each pass over the engine's
    blocks as a multiple of it."""
    z = rng.standard_normal(shape, dtype=np.float32)
    buf = np.empty_like(z)
    K = shape[1]
    rows = max(1, BLOCK_ELEMENTS // K)
    ws = np.empty((rows, K), np.float32)
    column = np.full((rows, 1), 0.5, np.float32)
    passes: dict[str, Callable[[np.ndarray, np.ndarray], object]] = {
        "exp": lambda b, w: np.exp(b, out=w),
        "min and max": lambda b, w: (b.min(), b.max()),
        "row sum": lambda b, w: c_einsum("ij->i", b),
        "rows times 1/S": lambda b, w: np.multiply(b, column[: len(b)], out=w),
        "minus a scalar": lambda b, w: np.subtract(b, np.float32(1e-3), out=w),
        "copy": lambda b, w: np.copyto(w, b),
    }

    def blocked(op: Callable[[np.ndarray, np.ndarray], object]) -> Callable[[], None]:
        def run() -> None:
            for r0 in range(0, shape[0], rows):
                b = z[r0 : r0 + rows]
                op(b, ws[: len(b)])

        return run

    floor = _median_seconds(lambda: np.exp(z, out=buf))
    return floor, {name: _median_seconds(blocked(op)) / floor for name, op in passes.items()}


def main() -> None:
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        floor, ratios = passes_of(shape, rng)
        cells = "; ".join(f"{name} {ratio:.2f}" for name, ratio in ratios.items())
        print(f"{shape}: NumPy's exp {floor * 1e3:.2f} ms; x that: {cells}")


if __name__ == "__main__":
    with threadpool_limits(limits=1):
        main()
