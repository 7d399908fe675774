"""Where a small call's time goes: the whole call, the block kernel, and its steps.

    python benchmarks/kernel_parts.py [N K]      # default: 128 10

Times ``cross_entropy_with_grad(z, y, 0.1, out=buf)`` on standard-normal float32
logits of shape (N, K) (one block: the lean path), the kernel's ``run_block`` on the
same block, and each step of it alone, in microseconds (the minimum of 7 repeats of
2,000 calls, one thread). At training-loop shapes each step is one or two NumPy calls,
and their fixed cost (about a microsecond each) is most of the time: this is the
breakdown behind the small shapes' ratios to naive NumPy. Uses smoothce's internals,
so it follows them when they change.
"""

from __future__ import annotations

import sys
import timeit

import numpy as np
from threadpoolctl import threadpool_limits

import smoothce
from smoothce import _kernel, _terms


def main(N: int, K: int) -> None:
    rng = np.random.default_rng(0)
    z = rng.standard_normal((N, K), dtype=np.float32)
    y = rng.integers(0, K, N)
    ws = np.empty_like(z)
    terms = _terms.common_terms(K, 0.1, False)
    plan = _kernel.Plan(terms, True, True, 1 / N, z.dtype, z.dtype)
    blk = _terms.Block.whole_rows(y, None, K)
    S = _kernel.row_sums(np.exp(z))
    T, _ = terms.dot_rest(z, blk, want_x_y=False)
    e = np.exp(z)
    logs = terms.label_logs(e, blk, None, True)
    T2 = terms.add_label_term(T, logs, blk)
    steps = {
        "the whole call": lambda: smoothce.cross_entropy_with_grad(z, y, 0.1, out=ws),
        "run_block": lambda: _kernel.run_block(plan, z, ws, blk),
        "  reference (min, max)": lambda: _kernel.reference(z),
        "  prior's sum of logits": lambda: terms.dot_rest(z, blk, want_x_y=False),
        "  exp": lambda: np.exp(z, out=ws),
        "  row sums S": lambda: _kernel.row_sums(e),
        "  label logs": lambda: terms.label_logs(e, blk, None, True),
        "  label term": lambda: terms.add_label_term(T, logs, blk),
        "  losses": lambda: _kernel._row_losses(S, T2, 1.0, None),
        "  gradient (scale, targets)": lambda: _kernel._finish_grad(
            plan, ws, 1.0, S, terms, blk, None
        ),
    }
    print(f"({N}, {K}) float32, epsilon 0.1, one thread; microseconds per call")
    for name, f in steps.items():
        best = min(timeit.repeat(f, number=2000, repeat=7)) / 2000
        print(f"  {name:<28} {best * 1e6:6.1f}")


if __name__ == "__main__":
    n, k = (int(a) for a in sys.argv[1:3]) if len(sys.argv) >= 3 else (128, 10)
    with threadpool_limits(limits=1):
        main(n, k)
