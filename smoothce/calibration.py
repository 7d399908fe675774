r"""Calibration of predicted class probabilities: reliability curves and ECE.

A classifier is *calibrated* when, among the predictions made with confidence
:math:`c`, a fraction :math:`c` is correct. With equal-width bins :math:`B_b` of the
top-class confidence :math:`\hat p_i = \max_k p_{ik}`,

.. math::

    \mathrm{ECE} = \sum_b \frac{|B_b|}{n}\,
    \bigl|\operatorname{acc}(B_b) - \operatorname{conf}(B_b)\bigr| ,

the weighted mean gap between accuracy and confidence (Naeini et al. 2015; Guo et al.
2017). Label smoothing typically lowers the confidence of over-confident networks
(Müller et al. 2019), which this measures.

Both functions take logits (``from_logits=True``, the default; softmax is applied
stably) or probabilities, with the classes on any axis. Internally they accumulate
per-bin sums (:class:`BinCounts`), so large inputs can be processed in chunks and
combined: ``python -m smoothce eval`` does that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ._stable import log_softmax
from ._validation import check_axis, check_class_indices, classes_last

__all__ = ["BinCounts", "expected_calibration_error", "reliability_curve"]


@dataclass
class BinCounts:
    """Per-bin sums over equal-width confidence bins on [0, 1].

    Attributes
    ----------
    count : ndarray of int64, shape (n_bins,)
        Predictions whose top-class confidence falls in each bin.
    confidence : ndarray of float64, shape (n_bins,)
        Sum of those confidences.
    correct : ndarray of float64, shape (n_bins,)
        Number of them whose top class is the label.
    """

    count: np.ndarray
    confidence: np.ndarray
    correct: np.ndarray

    @classmethod
    def empty(cls, n_bins: int) -> BinCounts:
        return cls(np.zeros(n_bins, np.int64), np.zeros(n_bins), np.zeros(n_bins))

    def __iadd__(self, other: BinCounts) -> BinCounts:
        self.count += other.count
        self.confidence += other.confidence
        self.correct += other.correct
        return self

    def ece(self) -> float:
        """Expected calibration error of everything accumulated (0.0 when empty)."""
        n = int(self.count.sum())
        if n == 0:
            return 0.0
        return float(np.abs(self.correct - self.confidence).sum() / n)


def _check_bins(n_bins: Any) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)):
        raise TypeError(f"n_bins must be an integer; got n_bins={n_bins!r}.")
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1; got n_bins={int(n_bins)}.")
    return int(n_bins)


def bin_counts(
    scores: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    n_bins: int = 15,
    axis: int = -1,
    from_logits: bool = True,
    ignore_index: int | None = None,
) -> BinCounts:
    """Accumulate :class:`BinCounts` for one batch (see :func:`reliability_curve`)."""
    n_bins = _check_bins(n_bins)
    s = np.asarray(scores)
    if s.dtype.kind not in "fiu":
        raise TypeError(f"scores must be a real array; got dtype {s.dtype}.")
    if s.ndim == 0:
        raise ValueError("scores must have a class axis; got a scalar.")
    ax = check_axis(axis, s.ndim)
    K = s.shape[ax]
    batch = s.shape[:ax] + s.shape[ax + 1 :]
    s = classes_last(s, ax).reshape(-1, K)
    y = np.asarray(labels)
    if y.dtype.kind not in "iu":
        raise TypeError(f"labels must be integer class indices; got dtype {y.dtype}.")
    if y.shape != batch:
        raise ValueError(
            f"labels must have the shape of scores without the class axis, {batch}; "
            f"got shape {y.shape}."
        )
    y, counted = check_class_indices(y, K, ignore_index)
    y = y.reshape(-1)
    if from_logits:
        # max softmax probability = exp(max log-softmax), computed without overflow.
        confidence = np.exp(log_softmax(s, axis=-1).max(axis=-1)).astype(np.float64)
    else:
        if s.size and (s.min() < 0 or s.max() > 1 or not np.isfinite(s).all()):
            raise ValueError("probabilities must lie in [0, 1]; use from_logits=True for logits.")
        confidence = s.max(axis=-1).astype(np.float64) if K else np.zeros(len(s))
    correct = (s.argmax(axis=-1) == y).astype(np.float64)
    if counted is not None:
        keep = counted.reshape(-1)
        confidence, correct = confidence[keep], correct[keep]
    # Equal-width bins, right-closed except the first: confidence 1.0 is in the last
    # bin and confidence 0.0 in the first.
    b = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    return BinCounts(
        np.bincount(b, minlength=n_bins).astype(np.int64),
        np.bincount(b, weights=confidence, minlength=n_bins),
        np.bincount(b, weights=correct, minlength=n_bins),
    )


def reliability_curve(
    scores: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    n_bins: int = 15,
    axis: int = -1,
    from_logits: bool = True,
    ignore_index: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Accuracy against confidence in equal-width bins: the reliability diagram's data.

    Parameters
    ----------
    scores : array_like, shape (..., K, ...)
        Logits (``from_logits=True``) or probabilities, classes on ``axis``.
    labels : array_like of int
        Class indices, the shape of ``scores`` without the class axis.
    n_bins : int, default 15
        Number of equal-width bins on [0, 1] (right-closed; 0 falls in the first).
    axis : int, default -1
        The class axis.
    from_logits : bool, default True
        Whether ``scores`` are logits (softmax applied) or probabilities in [0, 1].
    ignore_index : int, optional
        Label value whose elements are left out.

    Returns
    -------
    confidence : ndarray, shape (n_bins,)
        Mean top-class confidence per bin (NaN for an empty bin).
    accuracy : ndarray, shape (n_bins,)
        Fraction of correct top-class predictions per bin (NaN for an empty bin).
    count : ndarray of int64, shape (n_bins,)
        Predictions per bin.
    edges : ndarray, shape (n_bins + 1,)
        Bin edges, ``linspace(0, 1, n_bins + 1)``.

    Examples
    --------
    >>> import numpy as np
    >>> from smoothce.calibration import reliability_curve
    >>> probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    >>> conf, acc, count, edges = reliability_curve(
    ...     probs, [0, 1, 1, 0], n_bins=2, from_logits=False)
    >>> conf, acc, count
    (array([ nan, 0.75]), array([ nan, 0.75]), array([0, 4]))
    """
    c = bin_counts(
        scores, labels, n_bins=n_bins, axis=axis, from_logits=from_logits,
        ignore_index=ignore_index,
    )  # fmt: skip
    with np.errstate(invalid="ignore", divide="ignore"):  # empty bins are NaN, by design
        confidence = c.confidence / c.count
        accuracy = c.correct / c.count
    return confidence, accuracy, c.count, np.linspace(0.0, 1.0, len(c.count) + 1)


def expected_calibration_error(
    scores: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    n_bins: int = 15,
    axis: int = -1,
    from_logits: bool = True,
    ignore_index: int | None = None,
) -> float:
    r"""Expected calibration error with equal-width confidence bins.

    .. math::

        \mathrm{ECE} = \sum_b \frac{|B_b|}{n}\,
        \bigl|\operatorname{acc}(B_b) - \operatorname{conf}(B_b)\bigr|

    Parameters are those of :func:`reliability_curve`.

    Returns
    -------
    float
        In [0, 1]; 0.0 for an empty input.

    Warnings
    --------
    ``scores`` are read as **logits** unless ``from_logits=False``. Probabilities
    passed as logits are accepted silently (any real numbers are valid logits) and
    give a wrong ECE: softmax flattens them again. :func:`smoothce.metrics.evaluate`
    takes logits only.

    References
    ----------
    .. [1] M. P. Naeini, G. Cooper, M. Hauskrecht, "Obtaining Well Calibrated
       Probabilities Using Bayesian Binning", AAAI 2015.
    .. [2] C. Guo, G. Pleiss, Y. Sun, K. Q. Weinberger, "On Calibration of Modern
       Neural Networks", ICML 2017.

    Examples
    --------
    Always 90% sure and right 90% of the time: perfectly calibrated.

    >>> import numpy as np
    >>> from smoothce.calibration import expected_calibration_error
    >>> probs = np.tile([0.9, 0.1], (10, 1))
    >>> labels = np.array([0] * 9 + [1])
    >>> round(expected_calibration_error(probs, labels, from_logits=False), 12)
    0.0

    The same probabilities read as logits (the default) are a different model, with
    confidence ``softmax([0.9, 0.1])[0] = 0.69``:

    >>> round(expected_calibration_error(probs, labels), 4)
    0.21
    """
    return bin_counts(
        scores, labels, n_bins=n_bins, axis=axis, from_logits=from_logits,
        ignore_index=ignore_index,
    ).ece()  # fmt: skip
