"""smoothce: exact, fast softmax cross-entropy with soft targets for NumPy.

The loss of logits ``z`` against smoothed targets ``q = (1 - epsilon) t + epsilon u``,
its gradient ``softmax(z) - q`` and both together, with PyTorch's semantics for class
weights, ``ignore_index``, reductions, probability targets and extra dimensions; and
the same loss of a linear head computed block by block without building the logits.
"""

from importlib import metadata as _metadata

from . import calibration, metrics
from ._linear import LinearGrads, linear_cross_entropy, linear_cross_entropy_with_grad
from ._loss import (
    cross_entropy,
    cross_entropy_grad,
    cross_entropy_with_grad,
    soft_target_cross_entropy,
)
from ._stable import log_softmax
from ._targets import smooth_labels

try:  # the single version source is pyproject.toml, read from the installed metadata
    __version__ = _metadata.version("smoothce")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from an uninstalled tree
    __version__ = "0+unknown"

__all__ = [
    "LinearGrads",
    "__version__",
    "calibration",
    "cross_entropy",
    "cross_entropy_grad",
    "cross_entropy_with_grad",
    "linear_cross_entropy",
    "linear_cross_entropy_with_grad",
    "log_softmax",
    "metrics",
    "smooth_labels",
    "soft_target_cross_entropy",
]
