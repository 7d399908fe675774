"""smoothce on four distributions of logits through every path, every ratio in one run.

Times whichever ``smoothce`` is importable, so the same script measures this checkout
and an older one (``PYTHONPATH=/path/to/old/checkout``); the logits always come from
this checkout's ``smoothce/_bench_logits.py`` (normal, wide, trained, offset), loaded by
path. One thread everywhere (BLAS, smoothce's ``workers``, PyTorch). Candidates are
interleaved round by round; each sample times enough calls to last ``--sample-ms``;
a ratio is the median of the per-round ratios of two candidates measured in the same
rounds, with their quartiles (q1-q3) beside it.

    python benchmarks/distribution_table.py [--rounds 9] [--sample-ms 40] \
        [--parts small,large,other]

Tables:

* training-loop shapes: ``cross_entropy_with_grad(z, y, 0.1, out=buf)`` against naive
  NumPy (``smoothce._baselines.naive_loss_and_grad``) and PyTorch's
  ``F.cross_entropy(label_smoothing=0.1)`` forward and backward;
* large shapes: forward and forward+gradient as multiples of NumPy's exp over the
  same logits (``np.exp(z, out=buf)``), and each distribution against normal logits;
* ``linear_cross_entropy_with_grad`` and ``metrics.evaluate``: each distribution
  against normal logits.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
NAMES = ("normal", "wide", "trained", "offset")
SMALL = [(32, 10), (128, 10), (256, 10), (256, 100), (1024, 100), (4096, 100), (1024, 1000)]
LARGE = [(8192, 1000), (65536, 100), (4096, 32000)]


def _logits_module() -> Any:
    """This checkout's distributions, whatever smoothce is imported (it needs only
    NumPy and smoothce._validation.is_bfloat16, which every 0.2 has)."""
    path = HERE.parent / "smoothce" / "_bench_logits.py"
    spec = importlib.util.spec_from_file_location("smoothce._bench_logits", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _calls(fn: Callable[[], Any], sample_s: float) -> int:
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    return max(1, int(sample_s / once))


def measure(
    cands: dict[str, Callable[[], Any]], rounds: int, sample_s: float
) -> dict[str, list[float]]:
    """Seconds per call of each candidate, one sample per round, interleaved."""
    n = {k: _calls(f, sample_s) for k, f in cands.items()}
    times: dict[str, list[float]] = {k: [] for k in cands}
    for _ in range(rounds):
        for k, f in cands.items():
            t0 = time.perf_counter()
            for _ in range(n[k]):
                f()
            times[k].append((time.perf_counter() - t0) / n[k])
    return times


def ratio(times: dict[str, list[float]], a: str, b: str) -> str:
    """The median and quartiles of the per-round ratios of ``a``'s time to ``b``'s."""
    per_round = np.array(times[a]) / np.array(times[b])
    q1, med, q3 = np.percentile(per_round, [25, 50, 75])
    return f"{med:.2f}x ({q1:.2f}-{q3:.2f})"


def small(lg: Any, smoothce: Any, args: argparse.Namespace) -> None:
    from smoothce._baselines import naive_loss_and_grad

    torch = F = None
    try:
        import torch
        import torch.nn.functional as F  # noqa: N812 - PyTorch's own spelling

        torch.set_num_threads(1)
    except ImportError:
        print("(PyTorch is not installed: no PyTorch column)")
    print("\n| shape | vs | " + " | ".join(NAMES) + " |")
    print("|---|---|" + "---|" * len(NAMES))
    for N, K in SMALL:
        cands: dict[str, Callable[[], Any]] = {}
        for name in NAMES:
            z, y = lg.draw_logits(name, (N, K), seed=0)
            buf = np.empty_like(z)
            cands[f"sm {name}"] = lambda z=z, y=y, buf=buf: smoothce.cross_entropy_with_grad(
                z, y, 0.1, out=buf
            )
            cands[f"naive {name}"] = lambda z=z, y=y: naive_loss_and_grad(z, y, 0.1)
            if torch is not None:
                zt = torch.from_numpy(z.copy()).requires_grad_()
                yt = torch.from_numpy(y)

                def fwd_bwd(zt: Any = zt, yt: Any = yt) -> None:
                    zt.grad = None
                    F.cross_entropy(zt, yt, label_smoothing=0.1).backward()

                cands[f"torch {name}"] = fwd_bwd
        t = measure(cands, args.rounds, args.sample_ms / 1e3)
        us = " ".join(f"{n} {np.median(t[f'sm {n}']) * 1e6:.0f}us" for n in NAMES)
        print(
            f"| {(N, K)} | naive NumPy | "
            + " | ".join(ratio(t, f"sm {n}", f"naive {n}") for n in NAMES)
            + " |"
        )
        if torch is not None:
            print(
                f"| {(N, K)} | PyTorch fwd+bwd | "
                + " | ".join(ratio(t, f"sm {n}", f"torch {n}") for n in NAMES)
                + " |"
            )
        print(f"|  | smoothce's time | {us} |" + " |" * (len(NAMES) - 1))


def large(lg: Any, smoothce: Any, args: argparse.Namespace) -> None:
    print("\n| shape | measure | " + " | ".join(NAMES) + " |")
    print("|---|---|" + "---|" * len(NAMES))
    for N, K in LARGE:
        cands: dict[str, Callable[[], Any]] = {}
        buf = np.empty((N, K), dtype=np.float32)
        data = {name: lg.draw_logits(name, (N, K), seed=0) for name in NAMES}
        for name, (z, y) in data.items():
            cands[f"exp {name}"] = lambda z=z, buf=buf: np.exp(z, out=buf)
            cands[f"fwd {name}"] = lambda z=z, y=y: smoothce.cross_entropy(z, y, 0.1, workers=1)
            cands[f"grad {name}"] = lambda z=z, y=y, buf=buf: smoothce.cross_entropy_with_grad(
                z, y, 0.1, out=buf, workers=1
            )
        t = measure(cands, args.rounds, args.sample_ms / 1e3)
        for what, label in (("fwd", "forward"), ("grad", "fwd+grad")):
            print(
                f"| {(N, K)} | {label}, x NumPy's exp | "
                + " | ".join(ratio(t, f"{what} {n}", f"exp {n}") for n in NAMES)
                + " |"
            )
            print(
                f"| {(N, K)} | {label}, x normal logits | "
                + " | ".join(ratio(t, f"{what} {n}", f"{what} normal") for n in NAMES)
                + " |"
            )
        del data, cands


def other(lg: Any, smoothce: Any, args: argparse.Namespace) -> None:
    from smoothce import metrics

    print("\n| function | measure | " + " | ".join(NAMES) + " |")
    print("|---|---|" + "---|" * len(NAMES))
    N, d, V = 2048, 256, 16000
    cands: dict[str, Callable[[], Any]] = {}
    for name in NAMES:
        h, W, b, y = lg.draw_linear_head(name, N, d, V, seed=0)
        cands[name] = lambda h=h, W=W, b=b, y=y: smoothce.linear_cross_entropy_with_grad(
            h, W, y, 0.1, bias=b, workers=1
        )
    t = measure(cands, args.rounds, args.sample_ms / 1e3)
    ms = " ".join(f"{n} {np.median(t[n]) * 1e3:.0f}ms" for n in NAMES)
    print(
        f"| linear_cross_entropy_with_grad ({N}, {d}, {V}) | x normal logits | "
        + " | ".join(ratio(t, n, "normal") for n in NAMES)
        + f" |  ({ms})"
    )
    cands = {}
    for name in NAMES:
        z, y = lg.draw_logits(name, (8192, 1000), seed=0)
        cands[name] = lambda z=z, y=y: metrics.evaluate(z, y, 0.1, workers=1)
    t = measure(cands, args.rounds, args.sample_ms / 1e3)
    ms = " ".join(f"{n} {np.median(t[n]) * 1e3:.1f}ms" for n in NAMES)
    print(
        "| metrics.evaluate (8192, 1000) | x normal logits | "
        + " | ".join(ratio(t, n, "normal") for n in NAMES)
        + f" |  ({ms})"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--sample-ms", type=float, default=40.0)
    parser.add_argument("--parts", default="small,large,other")
    args = parser.parse_args(argv)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover - in the bench extra
        print("(threadpoolctl is not installed: BLAS may use several threads)")
    lg = _logits_module()
    import smoothce

    loadavg = pathlib.Path("/proc/loadavg")
    load = " ".join(loadavg.read_text().split()[:3]) if loadavg.exists() else "?"
    print(
        f"smoothce from {pathlib.Path(smoothce.__file__).parent}, NumPy {np.__version__}, "
        f"load average {load}, {args.rounds} rounds of >= {args.sample_ms:g} ms samples"
    )
    parts = {"small": small, "large": large, "other": other}
    for part in args.parts.split(","):
        parts[part](lg, smoothce, args)


if __name__ == "__main__":
    main()
