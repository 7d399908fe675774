"""asv benchmarks: smoothce against the naive NumPy code, NumPy's exp and PyTorch.

Every class is parametrised over dtype, the (N, K) shapes of the performance issues
and the distribution of the logits (``smoothce._bench_logits``: standard normals and
a trained classifier's; ``python -m smoothce bench --logits`` and
``benchmarks/small_calls.py`` time the wide and offset ones too, which would double a
run here); ``asv compare`` between the ``Loss`` methods and the
``Baselines`` methods of one run gives the ratios (x NumPy's exp, x naive,
x PyTorch), and between two values of ``logits`` what a distribution costs. Arrays
are drawn in ``setup`` with a fixed seed; output buffers are preallocated and touched
so that page faults are not timed.
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
    from smoothce._bench_logits import draw_logits
except ImportError:  # commits before the distributions existed: nothing to time
    draw_logits = None

try:
    import torch
except ImportError:  # PyTorch is optional: its benchmarks are skipped
    torch = None

SHAPES = [(256, 10), (8192, 1000), (65536, 100), (4096, 32000), (1024, 128000), (1, 10_000_000)]
DTYPES = ["float32", "float64"]
#: The distributions: standard normals and a trained classifier's.
LOGITS = ["normal", "trained"]


def _arrays(dtype, shape, logits):
    if draw_logits is None:
        raise NotImplementedError("smoothce._bench_logits does not exist at this commit")
    return draw_logits(logits, shape, dtype)


class Loss:
    """smoothce: forward, gradient, and both, with one thread and with all cores."""

    params = (DTYPES, SHAPES, [1, -1], LOGITS)
    param_names = ["dtype", "shape", "workers", "logits"]
    timeout = 600

    def setup(self, dtype, shape, workers, logits):
        self.logits, self.labels = _arrays(dtype, shape, logits)
        self.out = np.empty_like(self.logits)
        self.out.fill(0.0)

    def time_loss(self, dtype, shape, workers, logits):
        smoothce.cross_entropy(self.logits, self.labels, 0.1, workers=workers)

    def time_grad(self, dtype, shape, workers, logits):
        smoothce.cross_entropy_grad(self.logits, self.labels, 0.1, workers=workers)

    def time_loss_and_grad(self, dtype, shape, workers, logits):
        smoothce.cross_entropy_with_grad(
            self.logits, self.labels, 0.1, workers=workers, out=self.out
        )

    def peakmem_loss(self, dtype, shape, workers, logits):
        smoothce.cross_entropy(self.logits, self.labels, 0.1, workers=workers)

    def peakmem_loss_and_grad(self, dtype, shape, workers, logits):
        smoothce.cross_entropy_with_grad(self.logits, self.labels, 0.1, workers=workers)


class Baselines:
    """The reference points: NumPy's exp over the logits (``time_exp_floor``, named
    before it was called what it is), and the naive NumPy code."""

    params = (DTYPES, SHAPES, LOGITS)
    param_names = ["dtype", "shape", "logits"]
    timeout = 600

    def setup(self, dtype, shape, logits):
        self.logits, self.labels = _arrays(dtype, shape, logits)
        self.buf = np.empty_like(self.logits)
        self.buf.fill(0.0)

    def time_exp_floor(self, dtype, shape, logits):
        exp_floor(self.logits, self.buf)

    def time_naive_loss_and_grad(self, dtype, shape, logits):
        naive_loss_and_grad(self.logits, self.labels, 0.1)

    def peakmem_exp_floor(self, dtype, shape, logits):
        exp_floor(self.logits, self.buf)

    def peakmem_naive_loss_and_grad(self, dtype, shape, logits):
        naive_loss_and_grad(self.logits, self.labels, 0.1)


class Torch:
    """PyTorch's F.cross_entropy(label_smoothing=0.1) on the CPU, when installed."""

    params = (DTYPES, SHAPES, [1, 2], LOGITS)
    param_names = ["dtype", "shape", "threads", "logits"]
    timeout = 600

    def setup(self, dtype, shape, threads, logits):
        if torch is None:
            raise NotImplementedError("PyTorch is not installed")
        z, labels = _arrays(dtype, shape, logits)
        torch.set_num_threads(threads)
        self.z = torch.from_numpy(z).requires_grad_(True)
        self.y = torch.from_numpy(labels)

    def time_forward(self, dtype, shape, threads, logits):
        with torch.no_grad():
            torch.nn.functional.cross_entropy(self.z, self.y, label_smoothing=0.1)

    def time_forward_backward(self, dtype, shape, threads, logits):
        self.z.grad = None
        loss = torch.nn.functional.cross_entropy(self.z, self.y, label_smoothing=0.1)
        loss.backward()


#: The training-loop shapes of issue 15's targets.
SMALL_SHAPES = [(32, 10), (128, 10), (256, 10), (256, 100), (1024, 100), (4096, 100), (1024, 1000)]


class SmallCall:
    """Training-loop batch sizes, where argument checking and Python frames would
    dominate on standard normals and a second pass over the rows may on other logits:
    smoothce with the default ``workers`` and ``out=`` preallocated, against the naive
    NumPy code on the same arrays."""

    params = (SMALL_SHAPES, LOGITS)
    param_names = ["shape", "logits"]
    sample_time = 0.02  # each sample times enough calls to last 20 ms

    def setup(self, shape, logits):
        self.logits, self.labels = _arrays("float32", shape, logits)
        self.out = np.empty_like(self.logits)
        self.out.fill(0.0)
        self.weight = np.linspace(0.5, 2.0, shape[1], dtype=np.float32)

    def time_loss(self, shape, logits):
        smoothce.cross_entropy(self.logits, self.labels, 0.1)

    def time_loss_and_grad(self, shape, logits):
        smoothce.cross_entropy_with_grad(self.logits, self.labels, 0.1, out=self.out)

    def time_loss_and_grad_weighted(self, shape, logits):
        smoothce.cross_entropy_with_grad(
            self.logits, self.labels, 0.1, weight=self.weight, out=self.out
        )

    def time_naive_loss(self, shape, logits):
        naive_loss(self.logits, self.labels, 0.1)

    def time_naive_loss_and_grad(self, shape, logits):
        naive_loss_and_grad(self.logits, self.labels, 0.1)


class SmallCallTorch:
    """PyTorch's forward+backward at the small shapes, one thread (set in ``setup``)."""

    params = (SMALL_SHAPES, LOGITS)
    param_names = ["shape", "logits"]
    sample_time = 0.02

    def setup(self, shape, logits):
        if torch is None:
            raise NotImplementedError("PyTorch is not installed")
        z, labels = _arrays("float32", shape, logits)
        torch.set_num_threads(1)
        self.z = torch.from_numpy(z).requires_grad_(True)
        self.y = torch.from_numpy(labels)

    def time_forward(self, shape, logits):
        with torch.no_grad():
            torch.nn.functional.cross_entropy(self.z, self.y, label_smoothing=0.1)

    def time_forward_backward(self, shape, logits):
        self.z.grad = None
        loss = torch.nn.functional.cross_entropy(self.z, self.y, label_smoothing=0.1)
        loss.backward()
