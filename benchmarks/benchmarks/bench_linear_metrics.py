"""asv benchmarks of ``smoothce.metrics.evaluate_linear`` (issue 16): a language
model's head evaluated from its hidden states against the materialised path
(``metrics.evaluate(hidden @ classifier.T + bias)``), time and peak memory.

The issue's reference shape is N=16,384 tokens, d=512, V=32,000 in float32 (2 GiB of
logits); ``benchmarks/linear_metrics_memory.py`` measures it with one thread and two,
and on a Dask cluster. Here a quarter of its rows, and a small shape for a quick run.
"""

import numpy as np

from smoothce import metrics

try:
    from smoothce.metrics import evaluate_linear
except ImportError:  # commits before evaluate_linear existed: nothing to time
    evaluate_linear = None

SHAPES = [(1024, 256, 32000), (4096, 512, 32000)]


class EvaluateLinear:
    """Every metric of ``hidden @ classifier.T + bias``, fused and materialised."""

    params = (SHAPES,)
    param_names = ["shape"]
    timeout = 1200
    number = 1
    repeat = 5

    def setup(self, shape):
        if evaluate_linear is None:
            raise NotImplementedError("smoothce.metrics.evaluate_linear does not exist here")
        n, d, v = shape
        rng = np.random.default_rng(0)
        self.h = rng.standard_normal((n, d)).astype(np.float32)
        self.W = (rng.standard_normal((v, d)) * 0.05).astype(np.float32)
        self.b = np.zeros(v, dtype=np.float32)
        self.y = rng.integers(0, v, size=n)

    def _materialised(self):
        z = self.h @ self.W.T
        z += self.b
        return metrics.evaluate(z, self.y, 0.1)

    def time_evaluate_linear(self, shape):
        evaluate_linear(self.h, self.W, self.y, 0.1, bias=self.b)

    def time_materialised(self, shape):
        self._materialised()

    def peakmem_evaluate_linear(self, shape):
        evaluate_linear(self.h, self.W, self.y, 0.1, bias=self.b)

    def peakmem_materialised(self, shape):
        self._materialised()
