"""``python -m smoothce eval`` against a naive chunked NumPy loop, on .npy files.

Writes (once) a float16 and a float32 logits file with labels into ``--dir``, then
times, interleaved, ``smoothce._eval.evaluate_files`` (what ``eval`` runs) and
``smoothce._baselines.naive_eval`` on the same memory maps, warm in the page cache.
Prints the median and range of each and the median of the per-round ratios.

Usage::

    python benchmarks/eval_speed.py --dir /tmp/evalbench --rounds 5
    python benchmarks/eval_speed.py --dir /tmp/evalbench --scale 0.1   # 1/10 of the rows

Full sizes (the issue's): 2,000,000 x 1,000 float16 (4 GB) and 50,000 x 32,000
float32 (6.4 GB).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

import numpy as np

from smoothce._baselines import naive_eval
from smoothce._eval import evaluate_files

CASES = [(2_000_000, 1000, "float16"), (50_000, 32_000, "float32")]


def _write(path: str, n: int, k: int, dtype: str) -> None:
    if os.path.exists(path + ".logits.npy"):
        return
    rng = np.random.default_rng(0)
    z = np.lib.format.open_memmap(path + ".tmp.npy", mode="w+", dtype=dtype, shape=(n, k))
    step = max(1, (1 << 24) // k)
    for i in range(0, n, step):
        block = rng.standard_normal((min(step, n - i), k), dtype=np.float32) * 2
        z[i : i + step] = block
    z.flush()
    del z
    np.save(path + ".labels.npy", rng.integers(0, k, n))
    os.replace(path + ".tmp.npy", path + ".logits.npy")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default="/tmp/evalbench")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the rows")
    ap.add_argument("--epsilon", type=float, default=0.1)
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    for n, k, dtype in CASES:
        n = max(1, int(n * args.scale))
        base = os.path.join(args.dir, f"{n}x{k}-{dtype}")
        _write(base, n, k, dtype)
        zf, yf = base + ".logits.npy", base + ".labels.npy"
        z, y = np.load(zf, mmap_mode="r"), np.load(yf, mmap_mode="r")

        ours = functools.partial(evaluate_files, zf, yf, epsilon=args.epsilon, progress=False)
        naive = functools.partial(naive_eval, z, y, args.epsilon)
        times: dict[str, list[float]] = {"smoothce eval": [], "naive loop": []}
        naive()  # warm the page cache
        for _ in range(args.rounds):
            for name, fn in (("smoothce eval", ours), ("naive loop", naive)):
                t0 = time.perf_counter()
                result = fn()
                times[name].append(time.perf_counter() - t0)
        r = ours()
        nv = naive()
        print(f"{n:,} x {k:,} {dtype}, epsilon {args.epsilon}, {args.rounds} rounds")
        for name, ts in times.items():
            print(f"  {name:14s} {statistics.median(ts):7.2f} s  ({min(ts):.2f}-{max(ts):.2f})")
        ratios = [a / b for a, b in zip(times["smoothce eval"], times["naive loop"], strict=True)]
        print(
            f"  ratio eval/naive: median {statistics.median(ratios):.2f} "
            f"({min(ratios):.2f}-{max(ratios):.2f})"
        )
        print(
            f"  loss {r.smoothed_loss:.9f} vs naive {nv['loss']:.9f}; "
            f"nll {r.nll:.9f} vs {nv['nll']:.9f}; ece {r.ece:.6f} vs {nv['ece']:.6f}"
        )
        del result


if __name__ == "__main__":
    main()
