"""The engine's block size against the time of a call, on one thread.

Times ``cross_entropy`` (forward) and ``cross_entropy_with_grad(out=buf)`` at three
shapes for block sizes 2**16 to 2**19, interleaved, as multiples of NumPy's exp over
the same logits (measured in the same rounds). Standard-normal float32 logits: the
engine's work does not depend on their values (see tests/test_engine.py).

    python benchmarks/block_size.py
"""

from __future__ import annotations

import time

import numpy as np

import smoothce
from smoothce import _engine

SHAPES = [(8192, 1000), (65536, 100), (4096, 32000)]
SIZES = (16, 17, 18, 19)


def main() -> None:
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover - threadpoolctl is in the bench extra
        pass
    rng = np.random.default_rng(0)
    default = _engine.BLOCK_ELEMENTS
    for N, K in SHAPES:
        z = rng.standard_normal((N, K), dtype=np.float32)
        y = rng.integers(0, K, N)
        buf = np.empty_like(z)
        times: dict[str, list[float]] = {}
        try:
            for _ in range(7):
                t0 = time.perf_counter()
                np.exp(z, out=buf)
                times.setdefault("floor", []).append(time.perf_counter() - t0)
                for b in SIZES:
                    _engine.BLOCK_ELEMENTS = 1 << b
                    t0 = time.perf_counter()
                    smoothce.cross_entropy(z, y, 0.1, workers=1)
                    times.setdefault(f"fwd 2**{b}", []).append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    smoothce.cross_entropy_with_grad(z, y, 0.1, workers=1, out=buf)
                    times.setdefault(f"grad 2**{b}", []).append(time.perf_counter() - t0)
        finally:
            _engine.BLOCK_ELEMENTS = default
        floor = float(np.median(times.pop("floor")))
        cells = "  ".join(f"{k} {np.median(v) / floor:.2f}" for k, v in times.items())
        print(f"{(N, K)} x NumPy's exp ({floor * 1e3:.1f} ms): {cells}")


if __name__ == "__main__":
    main()
