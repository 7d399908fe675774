"""asv benchmarks of the language-model head (issue 9): the fused linear
cross-entropy against the unfused path and the three matrix products alone, and the
cost of the z-loss and soft-capping options.

The issue's reference shape is N=4096 tokens, d=512 features, V=32000 classes in
float32 (its claims: fused <= 1.1x unfused and <= 1.5x the products; extra peak
memory a fraction of the N x V logits); a smaller shape keeps a quick run short.

Both classes run on standard-normal logits and on a trained classifier's
(``smoothce._bench_logits``): for the head, the classifier is scaled so that its
logits have the distribution's spread (``draw_linear_head``).
"""

import numpy as np

import smoothce

try:
    from smoothce._bench_logits import draw_linear_head, draw_logits
except ImportError:  # commits before the distributions existed: nothing to time
    draw_linear_head = draw_logits = None

HEAD_SHAPES = [(1024, 256, 32000), (4096, 512, 32000)]
LOGITS = ["normal", "trained"]


def _head(shape, logits):
    if draw_linear_head is None:
        raise NotImplementedError("smoothce._bench_logits does not exist at this commit")
    return draw_linear_head(logits, *shape, np.float32)


class LinearHead:
    """Loss and all three gradients of ``hidden @ classifier.T + bias``."""

    params = (HEAD_SHAPES, LOGITS)
    param_names = ["shape", "logits"]
    timeout = 1200
    number = 1
    repeat = 5

    def setup(self, shape, logits):
        self.h, self.W, self.b, self.y = _head(shape, logits)
        n, _, v = shape
        # The products' operand for the "matmuls" floor: a gradient-sized matrix.
        self.G = np.full((n, v), 1e-6, dtype=np.float32)

    def _unfused(self):
        z = self.h @ self.W.T
        z += self.b
        _, G = smoothce.cross_entropy_with_grad(z, self.y, 0.1, out=z)
        return G @ self.W, G.T @ self.h, G.sum(axis=0)

    def time_fused(self, shape, logits):
        smoothce.linear_cross_entropy_with_grad(self.h, self.W, self.y, 0.1, bias=self.b)

    def time_unfused(self, shape, logits):
        self._unfused()

    def time_three_matmuls(self, shape, logits):
        self.h @ self.W.T
        self.G @ self.W
        self.G.T @ self.h

    def time_fused_loss_only(self, shape, logits):
        smoothce.linear_cross_entropy(self.h, self.W, self.y, 0.1, bias=self.b)

    def peakmem_fused(self, shape, logits):
        smoothce.linear_cross_entropy_with_grad(self.h, self.W, self.y, 0.1, bias=self.b)

    def peakmem_unfused(self, shape, logits):
        self._unfused()


class LMOptions:
    """``cross_entropy_with_grad`` with z-loss and soft-capping against the plain call."""

    params = ([(8192, 1000), (1024, 32000)], ["plain", "z_loss", "softcap", "both"], LOGITS)
    param_names = ["shape", "options", "logits"]
    timeout = 600

    def setup(self, shape, options, logits):
        if draw_logits is None:
            raise NotImplementedError("smoothce._bench_logits does not exist at this commit")
        self.z, self.y = draw_logits(logits, shape, np.float32)
        self.out = np.zeros_like(self.z)
        self.kw = {
            "plain": {},
            "z_loss": {"z_loss": 1e-4},
            "softcap": {"softcap": 30.0},
            "both": {"z_loss": 1e-4, "softcap": 30.0},
        }[options]

    def time_loss_and_grad(self, shape, options, logits):
        smoothce.cross_entropy_with_grad(self.z, self.y, 0.1, out=self.out, **self.kw)

    def time_loss(self, shape, options, logits):
        smoothce.cross_entropy(self.z, self.y, 0.1, **self.kw)
