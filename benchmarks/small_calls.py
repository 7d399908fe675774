"""Small calls: smoothce's lean path against naive NumPy and PyTorch at training-loop shapes.

For each shape and each distribution of logits (float32, epsilon 0.1; ``--logits``,
default all four of :mod:`smoothce._bench_logits`: normal, wide, trained, offset)
five candidates are timed on the same arrays: smoothce forward+gradient (``out=``
preallocated) and loss only, the naive NumPy code
(:func:`smoothce._baselines.naive_loss_and_grad` and its loss part
:func:`~smoothce._baselines.naive_loss`), and PyTorch's forward+backward with one
thread (``torch.set_num_threads(1)`` once, outside the timed region; skipped when
PyTorch is absent). smoothce runs with its default ``workers``.

The timing is ``python -m smoothce bench``'s (:func:`smoothce._bench.time_calls`):
each sample times enough calls to last at least ``--sample-ms`` (20 ms), the
candidates of every distribution of a shape are interleaved round by round, so a busy
spell of a shared machine hits all of them, and each gets ``--rounds`` (15) samples.
The table gives each candidate's median time per call and the min-max over the
rounds, and the ratios smoothce / naive and smoothce / torch as the median of the
per-round ratios (with their min-max).

Run from the repository root (``PYTHONPATH=.`` times this checkout, not an installed
copy; the header prints which one ran)::

    PYTHONPATH=. python benchmarks/small_calls.py [--rounds 15] [--sample-ms 20] \\
        [--shape N K ...] [--logits normal,trained ...] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from typing import Any

import numpy as np

import smoothce
from smoothce._baselines import naive_loss, naive_loss_and_grad
from smoothce._bench import time_calls
from smoothce._bench_logits import NAMES, distribution, draw_logits

try:
    import torch
except ImportError:  # optional
    torch = None

SHAPES = [(32, 10), (128, 10), (256, 10), (256, 100), (1024, 100), (4096, 100)]
EPSILON = 0.1


def _candidates(n: int, k: int, logits: str) -> dict[str, Callable[[], Any]]:
    z, y = draw_logits(logits, (n, k), np.float32)
    out = np.zeros_like(z)  # preallocated and touched: no page faults timed
    cands: dict[str, Callable[[], Any]] = {
        "smoothce fwd+grad": lambda: smoothce.cross_entropy_with_grad(z, y, EPSILON, out=out),
        "naive fwd+grad": lambda: naive_loss_and_grad(z, y, EPSILON),
        "smoothce loss": lambda: smoothce.cross_entropy(z, y, EPSILON),
        "naive loss": lambda: naive_loss(z, y, EPSILON),
    }
    if torch is not None:
        zt = torch.from_numpy(z.copy()).requires_grad_(True)
        yt = torch.from_numpy(y)
        f = torch.nn.functional.cross_entropy

        def torch_fwd_bwd() -> None:
            zt.grad = None
            f(zt, yt, label_smoothing=EPSILON).backward()

        cands["torch fwd+bwd"] = torch_fwd_bwd
    return cands


def measure(
    n: int, k: int, logits: list[str], rounds: int, seconds: float
) -> dict[str, dict[str, list[float]]]:
    """Seconds per call of every candidate on each distribution, one sample per round,
    all interleaved."""
    calls = {
        f"{name}/{cand}": fn for name in logits for cand, fn in _candidates(n, k, name).items()
    }
    times = time_calls(calls, rounds=rounds, min_sample_seconds=seconds)
    out: dict[str, dict[str, list[float]]] = {name: {} for name in logits}
    for key, samples in times.items():
        name, cand = key.split("/", 1)
        out[name][cand] = samples
    return out


RATIOS = [
    ("fwd+grad / naive", "smoothce fwd+grad", "naive fwd+grad"),
    ("loss / naive loss", "smoothce loss", "naive loss"),
    ("fwd+grad / torch", "smoothce fwd+grad", "torch fwd+bwd"),
]


def summarise(times: dict[str, list[float]]) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for name, ts in times.items():
        us = [t * 1e6 for t in ts]
        res[name] = {"median_us": statistics.median(us), "min_us": min(us), "max_us": max(us)}
    for label, a, b in RATIOS:
        if a in times and b in times:
            r = [x / y for x, y in zip(times[a], times[b], strict=True)]
            res[label] = {"median": statistics.median(r), "min": min(r), "max": max(r)}
    return res


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    for name in names:
        distribution(name)
    return names


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--sample-ms", type=float, default=20.0)
    ap.add_argument("--shape", type=int, nargs=2, action="append", metavar=("N", "K"))
    ap.add_argument(
        "--logits", type=_names, action="extend", metavar="NAME[,NAME...]",
        help=f"distributions ({', '.join(NAMES)}; default: all)",
    )  # fmt: skip
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    if torch is not None:
        torch.set_num_threads(1)  # once, outside every timed region
    shapes = [tuple(s) for s in args.shape] if args.shape else SHAPES
    logits = list(dict.fromkeys(args.logits or NAMES))
    print(
        f"float32, epsilon {EPSILON}, smoothce from {smoothce.__file__} (out= preallocated, "
        f"default workers), torch {'absent' if torch is None else torch.__version__}"
        f"{'' if torch is None else ' 1 thread'}; "
        f"{args.rounds} interleaved rounds, each sample >= {args.sample_ms:g} ms of calls.\n"
        "Logits: "
        + "; ".join(f"{name} = {distribution(name).formula}" for name in logits)
        + ".\nTimes: median us per call [min-max over rounds]. Ratios: median of the "
        "per-round ratios [min-max]; below 1 means smoothce is faster."
    )
    names = ["smoothce fwd+grad", "naive fwd+grad", "smoothce loss", "naive loss", "torch fwd+bwd"]
    results: dict[str, dict[str, Any]] = {}
    header = (
        "| shape | logits | " + " | ".join(names) + " | " + " | ".join(r[0] for r in RATIOS) + " |"
    )
    print(header)
    print("|" + "---|" * (2 + len(names) + len(RATIOS)))
    for n, k in shapes:
        for name, times in measure(n, k, logits, args.rounds, args.sample_ms / 1e3).items():
            res = summarise(times)
            results.setdefault(f"{n}x{k}", {})[name] = res
            cells = [
                f"{res[c]['median_us']:.1f} [{res[c]['min_us']:.1f}-{res[c]['max_us']:.1f}]"
                if c in res
                else "-"
                for c in names
            ]
            cells += [
                f"{res[r[0]]['median']:.2f} [{res[r[0]]['min']:.2f}-{res[r[0]]['max']:.2f}]"
                if r[0] in res
                else "-"
                for r in RATIOS
            ]
            print(f"| ({n}, {k}) | {name} | " + " | ".join(cells) + " |", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
