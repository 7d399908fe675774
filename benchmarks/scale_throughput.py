"""Throughput of smoothce.metrics.evaluate on one machine and on a Dask cluster.

    python benchmarks/scale_throughput.py [--rows 262144] [--classes 1000] [--repeats 5] \
        [--logits trained]

Writes float32 logits of one of ``smoothce._bench_logits``' distributions (and their
labels) once, as an uncompressed .npy file and as a Zarr
array whose chunks are whole engine blocks, then times, interleaved, ``repeats``
times each:

* ``metrics.evaluate`` of the memory-mapped .npy with 1 and 2 engine threads;
* ``smoothce.dask.evaluate`` on a ``distributed.LocalCluster`` of 1 and 2
  single-threaded worker processes (started once, before timing): of the Zarr
  array, and of the same array held in the workers' memory (``persist``);
* reading the Zarr array alone on those clusters (``max()`` of every chunk), the
  storage part of the Zarr timings.

Prints the median and the range of logits per second for each. Not an asv benchmark
(it needs the ``dask`` extra and a few GB of disk), so it lives outside the suite.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from smoothce._bench_logits import NAMES


def main() -> None:
    import dask.array as da
    import distributed

    import smoothce.dask
    from smoothce import metrics
    from smoothce._bench_logits import draw_logits
    from smoothce._engine import BLOCK_ELEMENTS

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=262144)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temporary one)")
    ap.add_argument("--logits", default="trained", choices=NAMES)
    args = ap.parse_args()
    n, K = args.rows, args.classes
    block = BLOCK_ELEMENTS // K
    rows = block * max(1, (32 << 20) // (4 * K * block))  # ~32 MiB chunks of whole blocks
    scratch = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        rng = np.random.default_rng(0)
        z = np.lib.format.open_memmap(scratch / "z.npy", "w+", np.float32, (n, K))
        y = np.empty(n, dtype=np.int64)
        for lo in range(0, n, rows):
            hi = min(n, lo + rows)
            z[lo:hi], y[lo:hi] = draw_logits(args.logits, (hi - lo, K), "float32", seed=rng)
        z.flush()
        zd = da.from_array(np.load(scratch / "z.npy", mmap_mode="r"), chunks=(rows, K))
        kw = {"compressors": None}
        zd.to_zarr(str(scratch / "z.zarr"), **kw)
        da.from_array(y, chunks=rows).to_zarr(str(scratch / "y.zarr"))
        zm = np.load(scratch / "z.npy", mmap_mode="r")
        zz, yz = da.from_zarr(str(scratch / "z.zarr")), da.from_zarr(str(scratch / "y.zarr"))

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clusters = {
                w: distributed.LocalCluster(
                    n_workers=w,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    silence_logs=logging.ERROR,
                )
                for w in (1, 2)
            }
            clients = {w: distributed.Client(c, set_as_default=False) for w, c in clusters.items()}

        held = {w: (c.persist(zz), c.persist(yz)) for w, c in clients.items()}
        for w, c in clients.items():
            c.compute(held[w][0].max()).result()  # loaded into the workers' memory

        def on_cluster(w: int, z, y):
            return lambda: clients[w].compute(smoothce.dask.evaluate(z, y, 0.1)).result()

        def read(w: int):
            return lambda: clients[w].compute(zz.max()).result()

        candidates = {
            "memmap, 1 thread": lambda: metrics.evaluate(zm, y, 0.1, workers=1),
            "memmap, 2 threads": lambda: metrics.evaluate(zm, y, 0.1, workers=2),
            "Dask memory, 1 worker": on_cluster(1, *held[1]),
            "Dask memory, 2 workers": on_cluster(2, *held[2]),
            "Dask Zarr, 1 worker": on_cluster(1, zz, yz),
            "Dask Zarr, 2 workers": on_cluster(2, zz, yz),
            "Zarr read, 1 worker": read(1),
            "Zarr read, 2 workers": read(2),
        }
        answers = [f() for f in candidates.values()]  # warm up: imports, page cache
        assert all(a == answers[0] for a in answers[:6]), "every path gives the same metrics"
        times: dict[str, list[float]] = {name: [] for name in candidates}
        for _ in range(args.repeats):
            for name, f in candidates.items():
                t0 = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t0)
        print(f"{n} x {K} float32 {args.logits} logits ({n * K * 4 / 2**30:.2f} GiB), "
              f"chunks of {rows} rows, {args.repeats} interleaved runs; "
              "logits per second:")  # fmt: skip
        for name, ts in times.items():
            rates = sorted(n * K / t for t in ts)
            print(f"  {name:<22} median {statistics.median(rates) / 1e6:7.1f} M/s  "
                  f"(range {rates[0] / 1e6:.1f}-{rates[-1] / 1e6:.1f})")  # fmt: skip
        for client in clients.values():
            client.close()
        for cluster in clusters.values():
            cluster.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
