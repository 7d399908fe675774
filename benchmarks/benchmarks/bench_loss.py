"""asv benchmarks: smoothce against the naive NumPy code, the exp floor and PyTorch.

Every class is parametrised over dtype and the (N, K) shapes of the performance
issue; ``asv compare`` between the ``Loss`` methods and the ``Baselines`` methods of
one run gives the ratios (x floor, x naive, x PyTorch). Arrays are made in ``setup``
with a fixed seed; output buffers are preallocated and touched so that page faults
are not timed.
"""

import numpy as np

import smoothce
from smoothce._baselines import exp_floor, naive_loss_and_grad

try:
    from smoothce._baselines import naive_loss
except ImportError:  # commits before naive_loss existed: the same code, loss only

    def naive_loss(logits, labels, epsilon):
        n, k = logits.shape
        q = np.full(logits.shape, epsilon / k, dtype=logits.dtype)
        q[np.arange(n), labels] += 1.0 - epsilon
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        return -(q * np.log(p)).sum(axis=1).mean()


try:
    import torch
except ImportError:  # PyTorch is optional: its benchmarks are skipped
    torch = None

SHAPES = [(256, 10), (8192, 1000), (65536, 100), (4096, 32000), (1024, 128000), (1, 10_000_000)]
DTYPES = ["float32", "float64"]


def _arrays(dtype, shape):
    n, k = shape
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(shape).astype(dtype)
    labels = rng.integers(0, k, size=n)
    return logits, labels


class Loss:
    """smoothce: forward, gradient, and both, with one thread and with all cores."""

    params = (DTYPES, SHAPES, [1, -1])
    param_names = ["dtype", "shape", "workers"]
    timeout = 600

    def setup(self, dtype, shape, workers):
        self.logits, self.labels = _arrays(dtype, shape)
        self.out = np.empty_like(self.logits)
        self.out.fill(0.0)

    def time_loss(self, dtype, shape, workers):
        smoothce.cross_entropy(self.logits, self.labels, 0.1, workers=workers)

    def time_grad(self, dtype, shape, workers):
        smoothce.cross_entropy_grad(self.logits, self.labels, 0.1, workers=workers)

    def time_loss_and_grad(self, dtype, shape, workers):
        smoothce.cross_entropy_with_grad(
            self.logits, self.labels, 0.1, workers=workers, out=self.out
        )

    def peakmem_loss(self, dtype, shape, workers):
        smoothce.cross_entropy(self.logits, self.labels, 0.1, workers=workers)

    def peakmem_loss_and_grad(self, dtype, shape, workers):
        smoothce.cross_entropy_with_grad(self.logits, self.labels, 0.1, workers=workers)


class Baselines:
    """The reference points: one exp over the logits, and the naive NumPy code."""

    params = (DTYPES, SHAPES)
    param_names = ["dtype", "shape"]
    timeout = 600

    def setup(self, dtype, shape):
        self.logits, self.labels = _arrays(dtype, shape)
        self.buf = np.empty_like(self.logits)
        self.buf.fill(0.0)

    def time_exp_floor(self, dtype, shape):
        exp_floor(self.logits, self.buf)

    def time_naive_loss_and_grad(self, dtype, shape):
        naive_loss_and_grad(self.logits, self.labels, 0.1)

    def peakmem_exp_floor(self, dtype, shape):
        exp_floor(self.logits, self.buf)

    def peakmem_naive_loss_and_grad(self, dtype, shape):
        naive_loss_and_grad(self.logits, self.labels, 0.1)


class Torch:
    """PyTorch's F.cross_entropy(label_smoothing=0.1) on the CPU, when installed."""

    params = (DTYPES, SHAPES, [1, 2])
    param_names = ["dtype", "shape", "threads"]
    timeout = 600

    def setup(self, dtype, shape, threads):
        if torch is None:
            raise NotImplementedError("PyTorch is not installed")
        logits, labels = _arrays(dtype, shape)
        torch.set_num_threads(threads)
        self.z = torch.from_numpy(logits).requires_grad_(True)
        self.y = torch.from_numpy(labels)

    def time_forward(self, dtype, shape, threads):
        with torch.no_grad():
            torch.nn.functional.cross_entropy(self.z, self.y, label_smoothing=0.1)

    def time_forward_backward(self, dtype, shape, threads):
        self.z.grad = None
        loss = torch.nn.functional.cross_entropy(self.z, self.y, label_smoothing=0.1)
        loss.backward()


SMALL_SHAPES = [(32, 10), (128, 10), (256, 10), (256, 100), (1024, 100)]


class SmallCall:
    """Per-call overhead at training-loop batch sizes, where argument checking and
    Python frames would dominate: smoothce with the default ``workers`` and ``out=``
    preallocated, against the naive NumPy code on the same arrays."""

    params = [SMALL_SHAPES]
    param_names = ["shape"]
    sample_time = 0.02  # each sample times enough calls to last 20 ms

    def setup(self, shape):
        self.logits, self.labels = _arrays("float32", shape)
        self.out = np.empty_like(self.logits)
        self.out.fill(0.0)
        self.weight = np.linspace(0.5, 2.0, shape[1], dtype=np.float32)

    def time_loss(self, shape):
        smoothce.cross_entropy(self.logits, self.labels, 0.1)

    def time_loss_and_grad(self, shape):
        smoothce.cross_entropy_with_grad(self.logits, self.labels, 0.1, out=self.out)

    def time_loss_and_grad_weighted(self, shape):
        smoothce.cross_entropy_with_grad(
            self.logits, self.labels, 0.1, weight=self.weight, out=self.out
        )

    def time_naive_loss(self, shape):
        naive_loss(self.logits, self.labels, 0.1)

    def time_naive_loss_and_grad(self, shape):
        naive_loss_and_grad(self.logits, self.labels, 0.1)


class SmallCallTorch:
    """PyTorch's forward+backward at the small shapes, one thread (set in ``setup``)."""

    params = [SMALL_SHAPES]
    param_names = ["shape"]
    sample_time = 0.02

    def setup(self, shape):
        if torch is None:
            raise NotImplementedError("PyTorch is not installed")
        logits, labels = _arrays("float32", shape)
        torch.set_num_threads(1)
        self.z = torch.from_numpy(logits).requires_grad_(True)
        self.y = torch.from_numpy(labels)

    def time_forward(self, shape):
        with torch.no_grad():
            torch.nn.functional.cross_entropy(self.z, self.y, label_smoothing=0.1)

    def time_forward_backward(self, shape):
        self.z.grad = None
        loss = torch.nn.functional.cross_entropy(self.z, self.y, label_smoothing=0.1)
        loss.backward()
