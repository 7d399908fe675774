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

Both functions take logits (``from_logits=True``, the default) or probabilities,
with the classes on any axis. Internally they accumulate per-bin sums
(:class:`BinCounts`, through :func:`bin_counts`), so large inputs can be processed in
chunks and combined.

Logits are read by the loss engine's pass of :func:`smoothce.metrics.evaluate`: each
row's confidence :math:`e^{m_i - \operatorname{lse}(z_i)}` is formed in float64 from the
engine's sums, whatever the logits' dtype (float16 and bfloat16 ones are as exact as
float32 logits holding the same values), and the bins and the ECE are those of
:mod:`smoothce._bins`. So :func:`expected_calibration_error`,
``smoothce.metrics.evaluate(...).ece`` and ``python -m smoothce eval`` give the same
ECE on the same data, to the bit.

A row of logits holding a NaN or a ``+inf``, or only ``-inf``, has no softmax and so no
confidence. Like the loss functions, which give NaN for such a row, the ECE is then NaN
and the reliability curve is NaN in every bin; such rows are counted in
:attr:`BinCounts.undefined`. Rows whose label equals ``ignore_index`` are never looked
at. Probabilities (``from_logits=False``) must lie in [0, 1]: NaN is an error there.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from . import metrics
from ._bins import MAX_BINS as MAX_BINS
from ._bins import BinCounts, bin_sums, check_bins
from ._validation import (
    _check_ignore_index,
    as_array,
    check_class_indices,
    check_logits,
    classes_last,
    compute_dtypes,
)

__all__ = ["BinCounts", "expected_calibration_error", "reliability_curve"]

#: The name :mod:`smoothce.dask` and the ``eval`` modules import (see :mod:`smoothce._bins`).
_check_bins = check_bins


def _check_scores(scores: npt.ArrayLike, axis: Any) -> tuple[np.ndarray, int]:
    """``(scores as an ndarray, non-negative class axis)``, with at least one class."""
    return check_logits(scores, axis, name="scores")


def _check_probabilities(s: np.ndarray) -> None:
    """Raise unless every entry of ``s`` lies in [0, 1] (NaN does not)."""
    # Two reductions without temporaries decide it (NaN fails both comparisons); the
    # search for the first offender runs only once we know there is one.
    if s.size == 0 or (s.min() >= 0 and s.max() <= 1):
        return
    bad = ~((s >= 0) & (s <= 1))
    first = int(np.argmax(bad))
    where = list(int(i) for i in np.unravel_index(first, s.shape))
    value = s.reshape(-1)[first].item()  # a Python scalar: prints 1.5, nan, 2
    raise ValueError(
        f"scores must be probabilities in [0, 1] when from_logits=False; got "
        f"scores{where} = {value!r}. Use from_logits=True for logits."
    )


def bin_counts(
    scores: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    n_bins: int = 15,
    axis: int = -1,
    from_logits: bool = True,
    ignore_index: int | None = None,
) -> BinCounts:
    """Per-bin sums of one batch, to be added up over chunks with ``+=``.

    :func:`reliability_curve` and :func:`expected_calibration_error` are this
    followed by a division; call it directly to add up inputs held in pieces (files,
    shards). Logits are read in chunks of whole rows (as by
    :func:`smoothce.metrics.evaluate`), so a memory map need not fit in memory. ``+=``
    adds float64 sums; :class:`smoothce.metrics.Accumulator`, which
    ``python -m smoothce eval`` and :mod:`smoothce.dask` use, keeps them exact, so its
    ECE does not depend on the pieces to the bit.

    Parameters
    ----------
    scores : array_like, shape (..., K, ...)
        Logits (``from_logits=True``) or probabilities, classes on ``axis``.
    labels : array_like of int
        Class indices, the shape of ``scores`` without the class axis.
    n_bins : int, default 15
        Number of equal-width bins on [0, 1] (right-closed; 0 falls in the first), in
        [1, 10**6] (``MAX_BINS``).
    axis : int, default -1
        The class axis; it must have at least one class.
    from_logits : bool, default True
        Whether ``scores`` are logits (softmax applied) or probabilities in [0, 1]
        (anything else, NaN included, is a ValueError naming the first offender).
    ignore_index : int, optional
        Label value whose elements are left out (counted in no bin); an integer or
        None, checked as in :func:`smoothce.cross_entropy`.

    Returns
    -------
    BinCounts
        ``count``, ``confidence`` and ``correct`` summed per bin, each of shape
        (n_bins,), and the number of counted rows of logits without a confidence
        (``undefined``).

    Raises
    ------
    TypeError, ValueError
        As :func:`reliability_curve`.

    Examples
    --------
    >>> import numpy as np
    >>> from smoothce.calibration import bin_counts
    >>> probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    >>> total = bin_counts(probs[:2], [0, 1], n_bins=2, from_logits=False)
    >>> total += bin_counts(probs[2:], [1, 0], n_bins=2, from_logits=False)
    >>> total.count, total.ece()
    (array([0, 4]), 0.0)
    """
    n_bins = _check_bins(n_bins)
    s, ax = _check_scores(scores, axis)
    if not isinstance(from_logits, (bool, np.bool_)):
        raise TypeError(f"from_logits must be True or False; got {from_logits!r}.")
    from_logits = bool(from_logits)
    ignore = _check_ignore_index(ignore_index)
    K = s.shape[ax]
    batch = s.shape[:ax] + s.shape[ax + 1 :]
    y = as_array("labels", labels)
    # An empty Python list arrives as float64; with the class-index shape it is
    # unambiguous (as in the loss functions).
    if y.dtype.kind == "f" and y.size == 0 and y.shape == batch:
        y = y.astype(np.intp)
    if y.dtype.kind not in "iu":
        raise TypeError(f"labels must be integer class indices; got dtype {y.dtype}.")
    if y.shape != batch:
        raise ValueError(
            f"labels must have the shape of scores without the class axis {ax}, {batch}; "
            f"got shape {y.shape}."
        )
    if from_logits:
        compute_dtypes(s.dtype, "scores")  # float128 has no compute path
        # The metrics' pass: one engine pass per chunk gives every row's confidence
        # (and the top class), binned by the one rule of smoothce._bins.
        acc = metrics.accumulate(s, y, axis=ax, ignore_index=ignore, top_k=1, n_bins=n_bins)
        return acc.bins()
    _check_probabilities(s)
    y, counted = check_class_indices(y, K, ignore)
    s = classes_last(s, ax).reshape(-1, K)
    confidence = s.max(axis=-1).astype(np.float64)
    correct = s.argmax(axis=-1) == y.reshape(-1)
    if counted is not None:
        keep = counted.reshape(-1)
        confidence, correct = confidence[keep], correct[keep]
    return bin_sums(confidence, correct, n_bins)


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
        Number of equal-width bins on [0, 1] (right-closed; 0 falls in the first), in
        [1, 10**6] (``MAX_BINS``: each bin costs under 100 bytes per call, and more bins
        than that would need many millions of predictions to hold more than noise).
    axis : int, default -1
        The class axis; it must have at least one class.
    from_logits : bool, default True
        Whether ``scores`` are logits (softmax applied) or probabilities in [0, 1]
        (anything else, NaN included, is a ValueError naming the first offender).
    ignore_index : int, optional
        Label value whose elements are left out; an integer or None, checked as in
        :func:`smoothce.cross_entropy`.

    Returns
    -------
    confidence : ndarray, shape (n_bins,)
        Mean top-class confidence per bin (NaN for an empty bin; NaN in every bin when
        a counted row of logits has no softmax, see the module docstring).
    accuracy : ndarray, shape (n_bins,)
        Fraction of correct top-class predictions per bin (NaN as for ``confidence``).
    count : ndarray of int64, shape (n_bins,)
        Predictions per bin (those without a confidence are in none).
    edges : ndarray, shape (n_bins + 1,)
        Bin edges, ``linspace(0, 1, n_bins + 1)``.

    Raises
    ------
    TypeError
        For scores that are not real numbers, non-integer labels, ``n_bins``, ``axis``
        or ``ignore_index``, or a ``from_logits`` that is not a bool.
    ValueError
        For a shape mismatch, an empty class axis, labels outside [0, K) (other than
        ``ignore_index``), ``n_bins`` outside [1, 10**6], or probabilities outside
        [0, 1]; the message names the argument, the rule and the value received.

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
    if c.undefined:
        # The rows without a confidence could have fallen in any bin.
        confidence[:] = accuracy[:] = np.nan
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

    where :math:`B_b` holds the predictions whose top-class confidence falls in bin
    :math:`b`, :math:`n` is the number of predictions, and acc and conf are the
    fraction correct and the mean confidence in a bin.

    Parameters
    ----------
    scores : array_like, shape (..., K, ...)
        Logits (``from_logits=True``) or probabilities, classes on ``axis``. Only the
        top class and its probability are used.
    labels : array_like of int
        Class indices, the shape of ``scores`` without the class axis.
    n_bins : int, default 15
        Number of equal-width bins on [0, 1] (right-closed; 0 falls in the first), in
        [1, 10**6] (``MAX_BINS``).
    axis : int, default -1
        The class axis; it must have at least one class.
    from_logits : bool, default True
        Whether ``scores`` are logits (softmax applied) or probabilities in [0, 1]
        (anything else, NaN included, is a ValueError naming the first offender).
    ignore_index : int, optional
        Label value whose elements are left out of the bins and of ``n``; an integer
        or None, checked as in :func:`smoothce.cross_entropy`.

    Returns
    -------
    float
        In [0, 1]; 0.0 for an empty input; NaN when a counted row of logits has a NaN
        or ``+inf``, or only ``-inf`` (as the loss of that row is NaN).

    Raises
    ------
    TypeError, ValueError
        As :func:`reliability_curve`.

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
