"""asv benchmarks: ``python -m smoothce eval`` against a naive chunked NumPy loop.

Both read the same memory-mapped ``.npy`` files (written once per parameter set in
``setup_cache`` and warm in the page cache), with ``epsilon=0.1``: smoothce through
``smoothce._eval.evaluate_files`` (what ``eval`` runs: every metric from one engine
pass per chunk) and the loop of ``smoothce._baselines.naive_eval`` (one float32
log-softmax per chunk). The ratio of the two in one run is the comparison;
``benchmarks/eval_speed.py`` runs the same at the full sizes of the issue.
"""

import os
import tempfile

import numpy as np

from smoothce._eval import evaluate_files

try:
    from smoothce._baselines import naive_eval
except ImportError:  # commits before naive_eval existed: no baseline
    naive_eval = None

# 1/20 of the sizes (2,000,000 x 1,000 float16 and 50,000 x 32,000 float32),
# so that a run stays in seconds: 200 MB and 320 MB.
CASES = ["100000x1000-float16", "2500x32000-float32"]


def _paths(case):
    return os.path.join(tempfile.gettempdir(), f"smoothce-asv-eval-{case}")


class Eval:
    params = [CASES]
    param_names = ["data"]
    timeout = 600
    number = 1
    repeat = (3, 10, 60.0)

    def setup_cache(self):
        for case in CASES:
            base = _paths(case)
            if os.path.exists(base + ".labels.npy"):
                continue
            shape, dtype = case.split("-")
            n, k = (int(v) for v in shape.split("x"))
            rng = np.random.default_rng(0)
            z = np.lib.format.open_memmap(base + ".logits.npy", "w+", dtype, (n, k))
            step = max(1, (1 << 22) // k)
            for i in range(0, n, step):
                z[i : i + step] = rng.standard_normal((min(step, n - i), k), np.float32) * 2
            z.flush()
            del z
            np.save(base + ".labels.npy", rng.integers(0, k, n))

    def setup(self, case):
        base = _paths(case)
        self.files = base + ".logits.npy", base + ".labels.npy"
        self.z = np.load(self.files[0], mmap_mode="r")
        self.y = np.load(self.files[1], mmap_mode="r")
        np.asarray(self.z).sum()  # into the page cache

    def time_smoothce_eval(self, case):
        evaluate_files(*self.files, epsilon=0.1, progress=False)

    def time_naive_loop(self, case):
        if naive_eval is None:
            raise NotImplementedError
        naive_eval(self.z, self.y, 0.1)
