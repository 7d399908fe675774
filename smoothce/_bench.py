"""Timing smoothce against the naive NumPy code, the exp floor and PyTorch.

Used by ``python -m smoothce bench``. Candidates are timed in interleaved rounds (one
call of each per round, rounds repeated), so slow drifts of a shared machine hit all
of them alike; the median over rounds is reported, and every ratio is formed from
medians of the same run. Extra memory is the peak of NumPy's allocations while a call
runs (NumPy reports them to :mod:`tracemalloc`), beyond the gradient it must return.
"""

from __future__ import annotations

import importlib
import time
import tracemalloc
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

from ._baselines import exp_floor, naive_loss_and_grad
from ._loss import cross_entropy, cross_entropy_with_grad
from ._parallel import available_cores

__all__ = ["Measurement", "measure_shape"]

DEFAULT_SHAPES = [(256, 10), (8192, 1000), (65536, 100), (4096, 32000)]


@dataclass
class Measurement:
    """Median seconds per candidate for one shape, and extra memory in bytes."""

    shape: tuple[int, int]
    dtype: str
    epsilon: float
    logits_bytes: int
    times: dict[str, float] = field(default_factory=dict)
    extra_memory: dict[str, int] = field(default_factory=dict)

    def ratio(self, a: str, b: str) -> float | None:
        if a in self.times and b in self.times and self.times[b] > 0:
            return self.times[a] / self.times[b]
        return None


def _torch_candidates(
    logits: np.ndarray, labels: np.ndarray, epsilon: float, threads: Iterable[int]
) -> dict[str, Callable[[], Any]]:
    try:
        torch: Any = importlib.import_module("torch")  # optional; typed loosely
    except ImportError:
        return {}
    z = torch.from_numpy(logits.copy()).requires_grad_(True)
    y = torch.from_numpy(labels)
    fn = torch.nn.functional.cross_entropy
    out: dict[str, Callable[[], Any]] = {}
    for t in threads:

        def forward(t: int = t) -> Any:
            torch.set_num_threads(t)
            with torch.no_grad():
                return fn(z, y, label_smoothing=epsilon)

        def forward_backward(t: int = t) -> Any:
            torch.set_num_threads(t)
            z.grad = None
            loss = fn(z, y, label_smoothing=epsilon)
            loss.backward()
            return loss

        out[f"torch forward t{t}"] = forward
        out[f"torch fwd+bwd t{t}"] = forward_backward
    return out


def _extra_memory(fn: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return int(peak)


def measure_shape(
    shape: tuple[int, int],
    *,
    dtype: str = "float32",
    epsilon: float = 0.1,
    workers: Iterable[int] | None = None,
    rounds: int = 7,
    budget_seconds: float = 20.0,
    progress: TextIO | None = None,
) -> Measurement:
    """Time every candidate on the same arrays of ``shape``."""
    n, k = shape
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(shape).astype(dtype)
    labels = rng.integers(0, k, size=n)
    grad = np.empty_like(logits)
    buf = np.empty_like(logits)
    grad.fill(0.0)  # touch the pages so that page faults are not timed
    buf.fill(0.0)
    threads = sorted(set(workers)) if workers is not None else sorted({1, available_cores()})
    cands: dict[str, Callable[[], Any]] = {"exp floor": lambda: exp_floor(logits, buf)}

    def smoothce_calls(w: int) -> tuple[Callable[[], Any], Callable[[], Any]]:
        def forward() -> Any:
            return cross_entropy(logits, labels, epsilon, workers=w)

        def forward_grad() -> Any:
            return cross_entropy_with_grad(logits, labels, epsilon, workers=w, out=grad)

        return forward, forward_grad

    for w in threads:
        cands[f"smoothce forward w{w}"], cands[f"smoothce fwd+grad w{w}"] = smoothce_calls(w)
    cands["naive fwd+grad"] = lambda: naive_loss_and_grad(logits, labels, epsilon)
    cands.update(_torch_candidates(logits, labels, epsilon, threads))

    m = Measurement(shape, np.dtype(dtype).name, epsilon, logits.nbytes)
    samples: dict[str, list[float]] = {name: [] for name in cands}
    for name, fn in cands.items():  # warm-up, and a first estimate of the cost
        t0 = time.perf_counter()
        fn()
        samples[name].append(time.perf_counter() - t0)
    per_round = sum(s[0] for s in samples.values())
    rounds = max(3, min(rounds, int(budget_seconds / max(per_round, 1e-9))))
    for r in range(rounds):
        if progress is not None:
            print(f"\r  {n} x {k} {m.dtype}: round {r + 1}/{rounds}", end="", file=progress)
            progress.flush()
        for name, fn in cands.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    if progress is not None:
        print(file=progress)
    m.times = {name: float(np.median(s[1:])) for name, s in samples.items()}
    m.extra_memory["smoothce forward"] = _extra_memory(
        lambda: cross_entropy(logits, labels, epsilon, workers=threads[-1])
    )
    m.extra_memory["smoothce fwd+grad"] = (
        _extra_memory(
            lambda: cross_entropy_with_grad(logits, labels, epsilon, workers=threads[-1])
        )
        - logits.nbytes
    )  # the gradient it returns is not extra
    m.extra_memory["naive fwd+grad"] = (
        _extra_memory(lambda: naive_loss_and_grad(logits, labels, epsilon)) - logits.nbytes
    )
    return m


def format_table(results: list[Measurement], out: TextIO) -> None:
    """Print medians and the ratios the performance targets are stated in."""
    for m in results:
        n, k = m.shape
        floor = m.times["exp floor"]
        print(
            f"\n({n}, {k}) {m.dtype}, epsilon={m.epsilon}: exp floor {floor * 1e3:.3f} ms",
            file=out,
        )
        print(f"  {'candidate':24s} {'median ms':>10s} {'x floor':>8s}", file=out)
        for name, t in m.times.items():
            print(f"  {name:24s} {t * 1e3:10.3f} {t / floor:8.2f}", file=out)
        ws = sorted(
            int(name.rsplit("w", 1)[1])
            for name in m.times
            if name.startswith("smoothce forward w")
        )
        lines = []
        for w in ws:
            fg = f"smoothce fwd+grad w{w}"
            r = m.ratio("naive fwd+grad", fg)
            if r is not None:
                lines.append(f"fwd+grad w{w} is {r:.1f}x faster than naive")
            r = m.ratio(f"torch fwd+bwd t{w}", fg)
            if r is not None:
                lines.append(
                    f"fwd+grad w{w} is {r:.1f}x faster than torch fwd+bwd with {w} thread(s)"
                )
            r = m.ratio(f"torch forward t{w}", f"smoothce forward w{w}")
            if r is not None:
                lines.append(f"forward w{w} is {r:.2f}x torch forward's speed with {w} thread(s)")
        if len(ws) > 1:
            for kind in ("forward", "fwd+grad"):
                r = m.ratio(f"smoothce {kind} w{ws[0]}", f"smoothce {kind} w{ws[-1]}")
                if r is not None:
                    lines.append(
                        f"{kind}: workers={ws[-1]} is {r:.2f}x faster than workers={ws[0]}"
                    )
        for name, b in m.extra_memory.items():
            share = 100 * b / m.logits_bytes
            lines.append(
                f"extra peak memory, {name}: {b / 2**20:.2f} MiB = {share:.1f}% of the logits"
            )
        for line in lines:
            print(f"  - {line}", file=out)
