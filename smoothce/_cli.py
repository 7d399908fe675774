"""The command line: ``python -m smoothce``.

With no command it runs the main job: the seed document's worked examples computed
by the library, and one timing of smoothce against the naive softmax-then-log code.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import __version__
from ._baselines import naive_loss_and_grad
from ._loss import cross_entropy_with_grad, soft_target_cross_entropy

#: The three worked examples of the seed document: (logits, labels, K, epsilon, mean).
SEED_EXAMPLES: list[tuple[list[list[float]], list[int], int, float, float]] = [
    ([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]], [0, 2], 3, 0.1, 0.927312),
    ([[1.0, -1.0], [0.5, 0.5]], [0, 1], 2, 0.05, 0.435038),
    ([[3.0, 1.0, 0.0, -1.0]], [0], 4, 0.0, 0.185182),
]


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``fn()`` in seconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def run_examples(out: Any) -> bool:
    """Print the seed's worked examples; return whether all came out exactly."""
    print("Worked examples of the seed document (mean loss, 6 decimals):", file=out)
    all_ok = True
    for i, (logits, labels, k, eps, expected) in enumerate(SEED_EXAMPLES, 1):
        got = soft_target_cross_entropy(logits, labels, k, eps)
        ok = got == expected
        all_ok &= ok
        mark = "ok" if ok else "MISMATCH"
        print(
            f"  {i}. K={k}, epsilon={eps:<4}  loss = {got:.6f}   expected {expected:.6f}   {mark}",
            file=out,
        )
    return all_ok


def run_timing(shape: tuple[int, int], epsilon: float, repeats: int, out: Any) -> None:
    n, k = shape
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(shape, dtype=np.float32)
    labels = rng.integers(0, k, size=n)
    grad = np.empty_like(logits)
    print(
        f"\nForward + gradient, float32 logits of shape ({n}, {k}), epsilon={epsilon}, "
        f"median of {repeats}:",
        file=out,
    )
    ours = median_time(lambda: cross_entropy_with_grad(logits, labels, epsilon, out=grad), repeats)
    naive = median_time(lambda: naive_loss_and_grad(logits, labels, epsilon), repeats)
    print(f"  smoothce                {ours * 1e3:9.2f} ms", file=out)
    print(
        f"  naive softmax-then-log  {naive * 1e3:9.2f} ms   ({naive / ours:.1f}x smoothce's time)",
        file=out,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m smoothce",
        description=(
            "Softmax cross-entropy with label smoothing. Without arguments: compute the "
            "seed document's worked examples and time smoothce against naive NumPy."
        ),
    )
    parser.add_argument("--version", action="version", version=f"smoothce {__version__}")
    parser.add_argument(
        "--shape", nargs=2, type=int, metavar=("N", "K"), default=(4096, 1000),
        help="logits shape for the timing (default: 4096 1000)",
    )  # fmt: skip
    parser.add_argument(
        "--epsilon", type=float, default=0.1, help="smoothing for the timing (default: 0.1)"
    )
    parser.add_argument(
        "--repeats", type=int, default=7, help="timed repetitions, median reported (default: 7)"
    )
    parser.add_argument("--no-timing", action="store_true", help="only the worked examples")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    n, k = args.shape
    if n < 1 or k < 1:
        print(f"error: --shape needs positive N and K; got {n} {k}", file=sys.stderr)
        return 2
    if args.repeats < 1:
        print(f"error: --repeats must be at least 1; got {args.repeats}", file=sys.stderr)
        return 2
    print(f"smoothce {__version__}: softmax cross-entropy with soft targets\n")
    ok = run_examples(sys.stdout)
    if not args.no_timing:
        run_timing((n, k), args.epsilon, args.repeats, sys.stdout)
    return 0 if ok else 1
