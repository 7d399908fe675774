"""Extra memory of ``linear_cross_entropy_with_grad`` beyond its inputs and outputs.

Two figures, each in a fresh process (run the script once per figure):

- ``traced``: the peak of NumPy's allocations seen by :mod:`tracemalloc`, less the
  gradients returned (one array the size of each input). What smoothce allocates.
- ``resident``: the growth of the process's resident high-water mark (``VmHWM`` in
  ``/proc/self/status``, reset just before the call through ``/proc/self/clear_refs``),
  less the gradients. What the machine sees, including the buffers OpenBLAS allocates
  for its threads' products. Linux only.

Usage::

    python benchmarks/linear_head_memory.py traced
    python benchmarks/linear_head_memory.py resident
    OPENBLAS_NUM_THREADS=1 python benchmarks/linear_head_memory.py resident

The shape is the changelog's: N = 8192 rows, d = 256 features, V = 32,000 classes,
float32, with a bias and epsilon = 0.1 (``--shape N d V`` for another).
"""

from __future__ import annotations

import argparse

import numpy as np

import smoothce

MiB = 2**20


def _status(key: str) -> int:
    """A ``/proc/self/status`` field in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("figure", choices=["traced", "resident"])
    parser.add_argument("--shape", nargs=3, type=int, default=[8192, 256, 32000])
    args = parser.parse_args()
    N, d, V = args.shape
    rng = np.random.default_rng(0)
    # Drawn in float32: float64 temporaries would raise the high-water mark before
    # the call, and the traced figure would not see them anyway.
    h = rng.standard_normal((N, d), dtype=np.float32)
    W = rng.standard_normal((V, d), dtype=np.float32)
    W *= 0.05
    b = np.zeros(V, np.float32)
    y = rng.integers(0, V, N)
    outputs = h.nbytes + W.nbytes + b.nbytes  # the three gradients
    if args.figure == "traced":
        import tracemalloc

        tracemalloc.start()
        smoothce.linear_cross_entropy_with_grad(h, W, y, 0.1, bias=b)
        _, peak = tracemalloc.get_traced_memory()
        extra = peak - outputs
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # the high-water mark starts again from the current RSS
        before = _status("VmHWM")
        smoothce.linear_cross_entropy_with_grad(h, W, y, 0.1, bias=b)
        extra = _status("VmHWM") - before - outputs
    logits = N * V * 4
    print(
        f"{args.figure}: {extra / MiB:.1f} MiB beyond inputs and gradients, "
        f"{100 * extra / logits:.1f}% of the logits ({logits / MiB:.0f} MiB); "
        f"N={N}, d={d}, V={V} float32"
    )


if __name__ == "__main__":
    main()
