"""Memory and time of ``metrics.evaluate_linear`` against ``metrics.evaluate`` on the
materialised logits, and of ``smoothce.dask``'s head on a ``LocalCluster`` with the
classifier chunked along its vocabulary (issue 16's closing note).

The shape is the issue's: N = 16,384 tokens, d = 512 features, V = 32,000 classes,
float32 (2 GiB of logits), with a bias and epsilon = 0.1. Every figure is taken in a
fresh process (``one``), which the driver (``all``) starts for each case:

- ``resident``: the growth of the process's resident high-water mark (``VmHWM`` in
  ``/proc/self/status``, reset just before the call through ``/proc/self/clear_refs``):
  what the machine sees, BLAS's own buffers included. Linux only.
- ``traced``: the peak of the allocations :mod:`tracemalloc` sees (NumPy's arrays).
- ``seconds``: wall times of the two paths in one process, interleaved (one warm-up
  call each, then 5 rounds of one call each), so that a busy machine slows both alike:
  the median and the range.

"materialised" is ``evaluate(hidden @ classifier.T + bias)``: the logits array (the
product, the bias added in place) is part of its memory. Threads: ``OPENBLAS_NUM_THREADS``
(and the engine's ``workers``) set to 1 or 2 in the child's environment.

The Dask figures (``dask``): a ``LocalCluster`` of 2 single-threaded worker processes
(memory limit 1 GiB each), the hidden states in blocks of 2,048 rows and the classifier
in 8 chunks of 4,000 classes (8 MB each), generated on the workers; the wall time of
``evaluate_linear`` and of ``linear_cross_entropy_with_grad`` (loss and the three
gradients, fetched chunk by chunk), each worker's resident high-water mark during the
call (reset before it), and the largest inputs any one of smoothce's tasks started with.

Usage::

    python benchmarks/linear_metrics_memory.py all      # every case, a table
    python benchmarks/linear_metrics_memory.py one fused resident --threads 1
    python benchmarks/linear_metrics_memory.py one both seconds --threads 2
    python benchmarks/linear_metrics_memory.py dask
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np

MiB = 2**20
SHAPE = (16384, 512, 32000)


def _status(key: str) -> int:
    """A ``/proc/self/status`` field in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_hwm() -> int:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the high-water mark starts again from the current RSS
    return _status("VmHWM")


def _inputs(N: int, d: int, V: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    # Drawn in float32: float64 temporaries would raise the high-water mark before
    # the call.
    h = rng.standard_normal((N, d), dtype=np.float32)
    W = rng.standard_normal((V, d), dtype=np.float32)
    W *= 0.05
    b = np.zeros(V, np.float32)
    y = rng.integers(0, V, N)
    return h, W, b, y


def one(what: str, figure: str, threads: int, shape: tuple[int, int, int]) -> dict[str, Any]:
    """One figure of one case (``what``: fused, materialised, or both for the times),
    in this process."""
    from smoothce import metrics

    h, W, b, y = _inputs(*shape)

    def fused() -> Any:
        return metrics.evaluate_linear(h, W, y, 0.1, bias=b, workers=threads)

    def materialised() -> Any:
        z = h @ W.T
        z += b
        return metrics.evaluate(z, y, 0.1, workers=threads)

    call = fused if what == "fused" else materialised
    if figure == "traced":
        import tracemalloc

        tracemalloc.start()
        call()
        value: Any = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    elif figure == "resident":
        before = _reset_hwm()
        call()
        value = _status("VmHWM") - before
    else:
        calls = {"fused": fused, "materialised": materialised}
        times: dict[str, list[float]] = {name: [] for name in calls}
        for f in calls.values():
            f()  # warm-up
        for _ in range(5):
            for name, f in calls.items():
                start = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - start)
        value = {n: [statistics.median(t), min(t), max(t)] for n, t in times.items()}
    return {"what": what, "figure": figure, "threads": threads, "value": value}


class _LargestTaskInput:
    """A worker plugin: the most bytes of inputs any task started with."""

    name = "largest-task-input"

    def setup(self, worker: Any) -> None:
        self.worker, self.largest, self.key = worker, 0, None

    def transition(self, key: Any, start: Any, finish: Any, **kwargs: Any) -> None:
        # Not the tasks that join a result for the client (the hidden states' gradient
        # is as large as the hidden states): smoothce's own tasks.
        if finish == "executing" and not str(key).startswith("finalize"):
            ts = self.worker.state.tasks[key]
            size = sum(d.nbytes or 0 for d in ts.dependencies)
            if size > self.largest:
                self.largest, self.key = size, str(key)


def _worker_reset(dask_worker: Any) -> int:
    return _reset_hwm()


def _worker_hwm(dask_worker: Any) -> int:
    return _status("VmHWM")


def dask_figures(shape: tuple[int, int, int]) -> dict[str, Any]:
    import logging

    import dask.array as da
    import distributed

    import smoothce.dask as sdask

    N, d, V = shape
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, memory_limit="1GiB",
        dashboard_address=None, silence_logs=logging.ERROR,
    )  # fmt: skip
    client = distributed.Client(cluster)
    try:
        from distributed.diagnostics.plugin import WorkerPlugin

        plugin = type("Largest", (_LargestTaskInput, WorkerPlugin), {})()
        client.register_plugin(plugin)
        rng = da.random.default_rng(0)
        h = rng.standard_normal((N, d), chunks=(2048, d), dtype=np.float32)
        W = rng.standard_normal((V, d), chunks=(V // 8, d), dtype=np.float32) * np.float32(0.05)
        b = da.zeros(V, chunks=V // 8, dtype=np.float32)
        y = rng.integers(0, V, N, chunks=2048)
        # The inputs on the workers first, so that the figures are the head's.
        h, W, b, y = client.persist([h, W, b, y])
        distributed.wait(distributed.futures_of([h, W, b, y]))
        out: dict[str, Any] = {
            "classifier MiB": W.nbytes / MiB,
            "hidden MiB": h.nbytes / MiB,
            "logits MiB": N * V * 4 / MiB,
        }
        for name in ("evaluate_linear", "linear_cross_entropy_with_grad"):
            base = client.run(_worker_reset)
            start = time.perf_counter()
            if name == "evaluate_linear":
                client.compute(sdask.evaluate_linear(h, W, y, 0.1, bias=b)).result()
            else:
                loss, g = sdask.linear_cross_entropy_with_grad(h, W, y, 0.1, bias=b)
                dW = [g.classifier.blocks[j] for j in range(g.classifier.numblocks[0])]
                futures = client.compute([loss, g.hidden, g.bias, *dW])
                client.gather(futures)
            seconds = time.perf_counter() - start
            hwm = client.run(_worker_hwm)
            growth = {w: (hwm[w] - base[w]) / MiB for w in hwm}
            out[name] = {
                "seconds": seconds,
                "worker RSS high-water MiB": {w[-5:]: round(hwm[w] / MiB) for w in hwm},
                "worker RSS growth MiB": {w[-5:]: round(v) for w, v in growth.items()},
            }
        largest = client.run(
            lambda dask_worker: (
                dask_worker.plugins[plugin.name].largest,
                dask_worker.plugins[plugin.name].key,
            )
        )
        size, key = max(largest.values())
        out["largest task input"] = {"MiB": size / MiB, "task": key}
        return out
    finally:
        client.close()
        cluster.close()


def _child(args: list[str], threads: int) -> dict[str, Any]:
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    done = subprocess.run(
        [sys.executable, __file__, *args, "--json"], env=env, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["all", "one", "dask"])
    parser.add_argument("what", nargs="?", choices=["fused", "materialised", "both"])
    parser.add_argument("figure", nargs="?", choices=["resident", "traced", "seconds"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shape", nargs=3, type=int, default=list(SHAPE))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    shape = tuple(args.shape)
    if args.mode == "one":
        print(json.dumps(one(args.what, args.figure, args.threads, shape)))
        return
    if args.mode == "dask":
        print(json.dumps(dask_figures(shape), indent=1))
        return
    N, d, V = shape
    print(f"N={N}, d={d}, V={V} float32; logits {N * V * 4 / MiB:.0f} MiB; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")  # fmt: skip
    for threads in (1, 2):
        for what in ("fused", "materialised"):
            mem = {
                figure: _child(["one", what, figure, "--threads", str(threads)], threads)["value"]
                for figure in ("resident", "traced")
            }
            print(
                f"{threads} thread(s)  {what:<13} extra memory: resident "
                f"{mem['resident'] / MiB:8.1f} MiB, traced {mem['traced'] / MiB:8.1f} MiB",
                flush=True,
            )
        times = _child(["one", "both", "seconds", "--threads", str(threads)], threads)["value"]
        for what, (median, lo, hi) in times.items():
            print(
                f"{threads} thread(s)  {what:<13} {median:6.2f} s (range {lo:.2f}-{hi:.2f}, "
                "5 interleaved rounds)",
                flush=True,
            )
    print(json.dumps(dask_figures(shape), indent=1))


if __name__ == "__main__":
    main()
