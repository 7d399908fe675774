"""Wall time of ``python -m smoothce eval`` on one file: memmap, Zarr, Dask cluster.

Writes float16 logits of one of ``smoothce._bench_logits``' distributions (``--logits``,
trained by default; ``--rows`` x ``--classes``, 500 MB by default) and int64
labels to ``--dir`` as .npy files and as Zarr arrays (chunks of the memmap path's
2**22 // K rows, so every path gives the same report bit for bit), runs each command
once to warm the page cache and check that the reports agree, then ``--repeats``
interleaved rounds, and prints each command's median wall time with its range. The
files are deleted at the end unless ``--keep``. Needs the dask extra.

    python benchmarks/eval_cli_wall.py --rows 250000 --classes 1000 --repeats 3 \
        [--logits trained]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from smoothce._bench_logits import NAMES


def write(d: Path, rows: int, classes: int, logits: str) -> None:
    import zarr

    from smoothce._bench_logits import draw_logits

    rng = np.random.default_rng(0)
    z = np.lib.format.open_memmap(
        d / "logits.npy", mode="w+", dtype=np.float16, shape=(rows, classes)
    )
    y = np.empty(rows, dtype=np.int64)
    step = max(1, (1 << 24) // classes)
    for i in range(0, rows, step):
        m = min(step, rows - i)
        z[i : i + m], y[i : i + m] = draw_logits(logits, (m, classes), "float16", seed=rng)
    z.flush()
    np.save(d / "labels.npy", y)
    chunk = max(1, (1 << 22) // classes)  # the memmap path's chunk of rows
    a = zarr.create_array(
        store=str(d / "logits.zarr"), shape=z.shape, chunks=(chunk, classes), dtype=z.dtype
    )
    for i in range(0, rows, chunk * 8):
        a[i : i + chunk * 8] = z[i : i + chunk * 8]
    b = zarr.create_array(
        store=str(d / "labels.zarr"), shape=y.shape, chunks=(chunk,), dtype=y.dtype
    )
    b[:] = y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=250_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/smoothce-eval-cli-wall"))
    parser.add_argument("--keep", action="store_true", help="keep the files")
    parser.add_argument("--logits", default="trained", choices=NAMES)
    args = parser.parse_args()
    d = args.dir
    d.mkdir(parents=True, exist_ok=True)
    eval_ = [sys.executable, "-m", "smoothce", "eval"]
    npy = [str(d / "logits.npy"), str(d / "labels.npy")]
    zarr_ = [str(d / "logits.zarr"), str(d / "labels.zarr")]
    commands = {
        "memmap (.npy)": [*eval_, *npy],
        "Zarr, threaded scheduler": [*eval_, *zarr_],
        "Zarr, --dask-workers 2": [*eval_, *zarr_, "--dask-workers", "2"],
        ".npy, --dask-workers 2": [*eval_, *npy, "--dask-workers", "2"],
    }
    try:
        drawn = f"{args.rows} {args.classes} {args.logits}"
        if not (d / "labels.zarr").exists() or (d / "drawn.txt").read_text() != drawn:
            write(d, args.rows, args.classes, args.logits)
            (d / "drawn.txt").write_text(drawn)
        reports = {}
        for name, cmd in commands.items():  # warm-up, and the same report everywhere
            out = subprocess.run([*cmd, "--json"], capture_output=True, text=True, check=True)
            reports[name] = {
                k: v for k, v in json.loads(out.stdout).items() if k not in ("logits", "labels")
            }
        same = all(r == next(iter(reports.values())) for r in reports.values())
        print(f"reports identical: {same}", file=sys.stderr)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeats):
            for name, cmd in commands.items():
                start = time.perf_counter()
                subprocess.run(cmd, capture_output=True, check=True)
                times[name].append(time.perf_counter() - start)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(
            f"{args.rows} x {args.classes} float16 {args.logits} logits "
            f"({args.rows * args.classes * 2 / 1e6:.0f} MB), "
            f"{args.repeats} interleaved runs, load average {load:.1f} at the end"
        )
        for name, ts in times.items():
            print(f"  {name:<26} {np.median(ts):6.2f} s  ({min(ts):.2f}-{max(ts):.2f})")
    finally:
        if not args.keep:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
