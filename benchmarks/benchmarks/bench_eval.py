"""asv benchmarks: ``smoothce.metrics.evaluate`` and ``python -m smoothce eval`` against
a naive chunked NumPy loop, on standard-normal and trained logits.

``Metrics`` times ``smoothce.metrics.evaluate`` on in-memory logits (one thread and
all cores), ``MetricsNaive`` ``smoothce._baselines.naive_eval`` on the same arrays.
``Eval`` reads memory-mapped ``.npy`` files (written once per parameter set in
``setup_cache`` and warm in the page cache), with ``epsilon=0.1``: smoothce through
``smoothce._eval.evaluate_files`` (what ``eval`` runs: every metric from one engine
pass per chunk) and the loop of ``naive_eval`` (one float32 log-softmax per chunk).
The ratio of the two in one run is the comparison; ``benchmarks/eval_speed.py`` runs
the same at the full sizes of the issue. The logits come from
``smoothce._bench_logits``, drawn chunk by chunk from one stream for the files.
"""

import os
import tempfile

import numpy as np

import smoothce.metrics
from smoothce._eval import evaluate_files

try:
    from smoothce._baselines import naive_eval
except ImportError:  # commits before naive_eval existed: no baseline
    naive_eval = None

try:
    from smoothce._bench_logits import draw_logits
except ImportError:  # commits before the distributions existed: nothing to time
    draw_logits = None

# 1/20 of the sizes (2,000,000 x 1,000 float16 and 50,000 x 32,000 float32),
# so that a run stays in seconds: 200 MB and 320 MB.
CASES = ["100000x1000-float16", "2500x32000-float32"]
LOGITS = ["normal", "trained"]
METRICS_SHAPES = [(8192, 1000), (1024, 32000)]


def _draws():
    if draw_logits is None:
        raise NotImplementedError("smoothce._bench_logits does not exist at this commit")
    return draw_logits


def _paths(case, logits):
    return os.path.join(tempfile.gettempdir(), f"smoothce-asv-eval-{case}-{logits}")


class Metrics:
    """``smoothce.metrics.evaluate`` on logits in memory, one thread and all cores."""

    params = (METRICS_SHAPES, [1, -1], LOGITS)
    param_names = ["shape", "workers", "logits"]
    timeout = 600

    def setup(self, shape, workers, logits):
        self.z, self.y = _draws()(logits, shape, np.float32)

    def time_evaluate(self, shape, workers, logits):
        smoothce.metrics.evaluate(self.z, self.y, 0.1, workers=workers)


class MetricsNaive:
    """The naive chunked loop on the same arrays as ``Metrics`` (one thread)."""

    params = (METRICS_SHAPES, LOGITS)
    param_names = ["shape", "logits"]
    timeout = 600

    def setup(self, shape, logits):
        if naive_eval is None:
            raise NotImplementedError("smoothce._baselines.naive_eval does not exist")
        self.z, self.y = _draws()(logits, shape, np.float32)

    def time_naive_loop(self, shape, logits):
        naive_eval(self.z, self.y, 0.1)


class Eval:
    params = [CASES, LOGITS]
    param_names = ["data", "logits"]
    timeout = 600
    number = 1
    repeat = (3, 10, 60.0)

    def setup_cache(self):
        draw = _draws()
        for case in CASES:
            for logits in LOGITS:
                base = _paths(case, logits)
                if os.path.exists(base + ".labels.npy"):
                    continue
                shape, dtype = case.split("-")
                n, k = (int(v) for v in shape.split("x"))
                rng = np.random.default_rng(0)
                z = np.lib.format.open_memmap(base + ".logits.npy", "w+", dtype, (n, k))
                y = np.empty(n, dtype=np.int64)
                step = max(1, (1 << 22) // k)
                for i in range(0, n, step):
                    rows = min(step, n - i)
                    z[i : i + rows], y[i : i + rows] = draw(logits, (rows, k), dtype, seed=rng)
                z.flush()
                del z
                np.save(base + ".labels.npy", y)

    def setup(self, case, logits):
        base = _paths(case, logits)
        self.files = base + ".logits.npy", base + ".labels.npy"
        self.z = np.load(self.files[0], mmap_mode="r")
        self.y = np.load(self.files[1], mmap_mode="r")
        np.asarray(self.z).max()  # into the page cache (a sum would overflow float16)

    def time_smoothce_eval(self, case, logits):
        evaluate_files(*self.files, epsilon=0.1, progress=False)

    def time_naive_loop(self, case, logits):
        if naive_eval is None:
            raise NotImplementedError
        naive_eval(self.z, self.y, 0.1)
