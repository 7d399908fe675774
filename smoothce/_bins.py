r"""Equal-width confidence bins and the expected calibration error over them.

The one arithmetic of calibration, shared by :mod:`smoothce.calibration` and
:mod:`smoothce.metrics` (and so by ``python -m smoothce eval`` and
:func:`smoothce.dask.evaluate`): which bin a confidence falls in
(:func:`bin_index`), the per-bin sums (:class:`BinCounts`) and the ECE formed from
them (:meth:`BinCounts.ece`),

.. math::

    \mathrm{ECE} = \frac1n \sum_b \bigl|\mathrm{correct}_b - \mathrm{confidence}_b\bigr| ,

computed exactly from the float64 sums and rounded once, so that every route to the
same bins gives the same ECE to the bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._exact import UNIT_BITS, ExactSum, exact_sums, exact_units

__all__ = ["MAX_BINS", "BinCounts", "bin_index", "bin_sums", "check_bins"]

#: The most bins calibration and metrics accept. Each bin costs under 100 bytes per
#: call (three sums, kept exactly until the end: about 75 MB at this bound), and an
#: ECE over a million bins already needs many millions of predictions before a bin
#: holds more than noise; beyond it a typo (``n_bins=10**12``) would only surface as
#: a MemoryError.
MAX_BINS = 10**6


def check_bins(n_bins: Any) -> int:
    """``n_bins`` as an int in [1, :data:`MAX_BINS`], or a TypeError/ValueError."""
    if isinstance(n_bins, (bool, np.bool_)) or not isinstance(n_bins, (int, np.integer)):
        raise TypeError(f"n_bins must be an integer; got n_bins={n_bins!r}.")
    if not 1 <= n_bins <= MAX_BINS:
        raise ValueError(f"n_bins must be in [1, {MAX_BINS}]; got n_bins={int(n_bins)}.")
    return int(n_bins)


def bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """The bin of each confidence in [0, 1]: equal-width bins, right-closed except the
    first (1.0 falls in the last bin, 0.0 in the first).

    Parameters
    ----------
    confidence : ndarray of float64, shape (n,)
    n_bins : int

    Returns
    -------
    ndarray of int64, shape (n,)
        Bin indices in ``[0, n_bins)``.
    """
    index: np.ndarray = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    return index


@dataclass
class BinCounts:
    """Per-bin sums over equal-width confidence bins on [0, 1].

    Made by :func:`~smoothce.calibration.bin_counts` for one batch (and by
    :class:`smoothce.metrics.Metrics` as its ``bins``); ``total += batch`` adds another
    batch's sums, and :meth:`ece` turns the total into the calibration error.

    Attributes
    ----------
    count : ndarray of int64, shape (n_bins,)
        Predictions whose top-class confidence falls in each bin.
    confidence : ndarray of float64, shape (n_bins,)
        Sum of those confidences (each bin's sum correctly rounded from the exact one).
    correct : ndarray of float64, shape (n_bins,)
        Number of them whose top class is the label.
    undefined : int
        Counted predictions without a confidence (logits with a NaN or ``+inf``, or all
        ``-inf``): in no bin, and they make :meth:`ece` NaN.
    """

    count: np.ndarray
    confidence: np.ndarray
    correct: np.ndarray
    undefined: int = 0

    @classmethod
    def empty(cls, n_bins: int) -> BinCounts:
        """All-zero sums over ``n_bins`` bins: the start of an accumulation.

        Parameters
        ----------
        n_bins : int
            Number of bins, an integer in [1, ``MAX_BINS``].

        Returns
        -------
        BinCounts
            Zero ``count`` (int64), ``confidence`` and ``correct`` (float64) of shape
            (n_bins,), and ``undefined`` 0.
        """
        n_bins = check_bins(n_bins)
        return cls(np.zeros(n_bins, np.int64), np.zeros(n_bins), np.zeros(n_bins))

    def __iadd__(self, other: BinCounts) -> BinCounts:
        """Add the sums of ``other`` (same number of bins) into these, in place."""
        self.count += other.count
        self.confidence += other.confidence
        self.correct += other.correct
        self.undefined += other.undefined
        return self

    def ece(self) -> float:
        """Expected calibration error of everything accumulated.

        Each bin's gap ``|correct - confidence|`` is formed exactly from the float64
        sums, the gaps are added exactly, and the total over ``n`` is rounded once:
        the same bins give the same ECE, to the bit, whichever function made them.

        Returns
        -------
        float
            ``sum |correct - confidence| / sum count`` over the bins, in [0, 1];
            0.0 when nothing was accumulated; NaN when a prediction had no
            confidence (``undefined > 0``).
        """
        if self.undefined:
            return math.nan
        n = int(self.count.sum())
        if n == 0:
            return 0.0
        correct = np.asarray(self.correct, dtype=np.float64)
        confidence = np.asarray(self.confidence, dtype=np.float64)
        if not (np.isfinite(correct).all() and np.isfinite(confidence).all()):
            # Only sums set by hand can be non-finite; IEEE arithmetic says what follows.
            with np.errstate(invalid="ignore"):
                return float(np.abs(correct - confidence).sum() / n)
        # Bins holding nothing add nothing: only the others are visited (at most n).
        used = np.flatnonzero((self.count != 0) | (correct != 0) | (confidence != 0))
        gap = sum(
            abs(exact_units(float(correct[b])) - exact_units(float(confidence[b]))) for b in used
        )
        return ExactSum(gap).ratio(ExactSum(n << UNIT_BITS))


def bin_sums(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int, undefined: int = 0
) -> BinCounts:
    """The :class:`BinCounts` of predictions with these confidences.

    Parameters
    ----------
    confidence : ndarray of float64, shape (n,)
        Top-class confidences in [0, 1].
    correct : ndarray of bool, shape (n,)
        Whether each top class is the label.
    n_bins : int
    undefined : int, default 0
        Predictions without a confidence, left out of ``confidence``.

    Returns
    -------
    BinCounts
        Binned by :func:`bin_index`; each bin's confidence sum exact, rounded once (the
        rounding of :meth:`smoothce.metrics.Accumulator.bins`).
    """
    b = bin_index(confidence, n_bins)
    sums = exact_sums(confidence, b, n_bins)
    return BinCounts(
        np.bincount(b, minlength=n_bins).astype(np.int64),
        np.array([s.value() for s in sums]),
        np.bincount(b[correct], minlength=n_bins).astype(np.float64),
        undefined,
    )
