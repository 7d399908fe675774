r"""Evaluation metrics of saved logits: NLL, perplexity, accuracy, calibration.

Every function takes **logits** (never probabilities) and integer class labels, with
the conventions of the loss functions: the classes on ``axis``, ``ignore_index`` for
elements left out, ``weight`` for class weights where it means something (the loss
and the NLL), and the same validation messages.

:func:`evaluate` returns every metric at once. It works through an
:class:`Accumulator`: :func:`accumulate` turns one chunk of logits into per-chunk
sums, accumulators :meth:`~Accumulator.merge` exactly, and
:meth:`~Accumulator.result` forms the metrics. The same three steps serve arrays in
memory, memory maps (:func:`evaluate` cuts them into chunks) and Dask
(:func:`smoothce.dask.evaluate` maps :func:`accumulate` over the blocks).
:func:`evaluate_linear` gives the metrics of a linear head (a language model's) from
its hidden states, forming the logits one block of rows at a time
(:mod:`smoothce._linear_metrics`).

One pass per chunk
------------------
Each chunk is read by the loss engine (:func:`smoothce.cross_entropy`'s) once. The
engine computes every row's (smoothed, weighted) loss from its sum of exponentials
:math:`S_i` relative to the row's reference :math:`c_i`, and hands each block, while
it is in cache, to the metrics: they take the log-sum-exp
:math:`\operatorname{lse}(z_i) = \log S_i + c_i` from the engine's own sums, and the
top class, the row maximum :math:`m_i` and the label logit from one more read of the
block. Everything else follows in float64
without another exponential, in the engine's coordinates (so that the logits' offset
is never rounded into the result): the NLL :math:`\ell_i = \operatorname{lse}(z_i) -
z_{i,y_i} = \log S_i - \log e_{i,y_i}`, with the label's own exponential
:math:`e_{i,y_i} = e^{z_{i,y_i} - c_i}` as the loss takes it, and the
confidence :math:`\max_k p_{ik} = e^{m_i - \operatorname{lse}(z_i)} = e^{(m_i -
c_i) - \log S_i}`, whatever ``epsilon`` and ``weight`` are.

Exact merging
-------------
The sums are kept exactly (integers in units of :math:`2^{-1126}`, see
:mod:`smoothce._exact`) and rounded once, in :meth:`~Accumulator.result`. Merging is
therefore exact, and every element's values come from its own row alone (the engine
sums each row on its own): the metrics depend neither on the chunking nor on the
order of the chunks nor on the number of workers, to the bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from . import _engine
from ._bins import BinCounts, bin_index, check_bins
from ._engine import run, with_batch_axis
from ._exact import ExactSum, exact_sums
from ._kernel import Plan, finish_losses, load, scratch
from ._scaling import Scaling, loss_unit
from ._stable import row_blocks
from ._terms import Terms, label_weights
from ._validation import Prior, Problem, classes_last, prepare

__all__ = [
    "Accumulator",
    "Metrics",
    "accumulate",
    "accuracy",
    "evaluate",
    "evaluate_linear",
    "nll",
    "perplexity",
]

#: Logits per chunk of :func:`evaluate` (rounded to whole engine blocks): 2**22
#: float32 values are 16 MiB, and the per-element temporaries are a few float64
#: values per row on top.
CHUNK_ELEMENTS = 1 << 22


# -- validation --------------------------------------------------------------------
def _check_top_k(top_k: Any) -> int:
    if isinstance(top_k, (bool, np.bool_)) or not isinstance(top_k, (int, np.integer)):
        raise TypeError(f"top_k must be an integer; got top_k={top_k!r}.")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1; got top_k={int(top_k)}.")
    return int(top_k)


def _prepare(
    logits: npt.ArrayLike,
    labels: npt.ArrayLike,
    epsilon: Any = 0.0,
    *,
    axis: Any = -1,
    prior: Any = None,
    weight: npt.ArrayLike | None = None,
    ignore_index: Any = None,
) -> Problem:
    """Validate as the loss functions do; metrics take integer class labels only."""
    p = prepare(
        logits,
        labels,
        epsilon,
        axis=axis,
        reduction="none",
        prior=prior,
        weight=weight,
        ignore_index=ignore_index,
        num_classes=None,
    )
    if p.probabilistic:
        _reject_probabilities(np.asarray(labels).dtype)
    if not p.batch_shape:  # one sample: a batch of one row
        p = with_batch_axis(p)
    return p


def _reject_probabilities(dtype: np.dtype[Any]) -> None:
    raise TypeError(
        "labels must be integer class indices for metrics (accuracy and calibration "
        f"need a class); got dtype {dtype}. For probability targets use "
        "smoothce.cross_entropy."
    )


# -- the engine, per element, in float64 -------------------------------------------
def engine_rows(p: Problem, unit: float, workers: Any, **observers: Any) -> np.ndarray:
    """Each element's loss in float64 (batch shape), ``unit`` times the engine's.

    For a weighted mean of integer labels, :func:`~smoothce._scaling.loss_unit` is 1:
    the rows stay in the engine's weight units, those of :func:`_exact_denominator`, so
    the ratio is right for any weights. ``observers`` go to :func:`smoothce._engine.run`.
    """
    rows = np.zeros(p.batch_shape, dtype=np.float64)
    run(p, Scaling(unit=unit), want_loss=True, loss_rows=rows, workers=workers, **observers)
    return rows


def _exact_denominator(p: Problem) -> ExactSum:
    """``p``'s share of the ``"mean"`` denominator, summed exactly, so that chunks'
    shares add without rounding: :func:`smoothce._engine.mean_denominator`'s rule
    (elements for probability targets, counted elements, or their ``weight[label]``)."""
    if p.probabilistic:
        return ExactSum(math.prod(p.batch_shape) << 1126)
    if p.weight is None:
        n = p.labels.size if p.counted is None else int(np.count_nonzero(p.counted))
        return ExactSum(n << 1126)
    (den,) = exact_sums(label_weights(p.labels, p.counted, p.weight))
    return den


def _block_rows(p: Problem) -> int:
    """Rows per engine block (whole rows; one row for streamed rows)."""
    return max(1, _engine.BLOCK_ELEMENTS // p.num_classes)


def _scan(p: Problem, top_k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One read of the logits: per element (flat), ``(top1, topk, row max, label logit)``.

    ``top1``/``topk`` say whether the label is the top class / among the ``top_k``
    top classes. Ties go to the lower class index, as :func:`numpy.argmax`: the label
    ranks after every class with a larger logit and every lower-indexed class with an
    equal one. Row max and label logit are float64 (exact for every logit dtype).
    """
    K = p.num_classes
    n = math.prod(p.batch_shape)
    top1 = np.empty(n, dtype=bool)
    topk = top1 if top_k == 1 else np.empty(n, dtype=bool)
    m = np.empty(n)
    zy = np.empty(n)
    start = 0
    cols = np.arange(K) if 1 < top_k < K else None
    # The logits as the engine sees them (argmax and comparisons are vectorised for
    # float32/64 only): float16 and integer blocks converted once, exactly, to the
    # compute dtype, and soft-capped logits (a linear head's) capped.
    load_plan = Plan(Terms.of(p), False, False, 1.0, p.compute_dtype, p.z.dtype, softcap=p.softcap)
    per_block = _block_rows(p)
    zbuf, xbuf = scratch(load_plan, min(per_block, n), K)
    for key in row_blocks(p.batch_shape, per_block):
        zb = load(load_plan, p.z[key].reshape(-1, K), zbuf, xbuf)
        y = p.labels[key].reshape(-1)
        stop = start + len(y)
        rows = np.arange(len(y))
        pred = zb.argmax(axis=1)
        m[start:stop] = zb[rows, pred]
        label_logit = zb[rows, y]
        zy[start:stop] = label_logit
        top1[start:stop] = pred == y
        if cols is not None:
            topk[start:stop] = _in_top_k(zb, label_logit, y, top_k, cols)
        elif top_k >= K:
            topk[start:stop] = True
        start = stop
    return top1, topk, m, zy


def _count_rows(mask: np.ndarray) -> np.ndarray:
    """True entries per row of a 2-D boolean array (an int8 view sums fastest)."""
    counts: np.ndarray = np.add.reduce(mask.view(np.int8), axis=1, dtype=np.int32)
    return counts


def _in_top_k(
    zb: np.ndarray, zy: np.ndarray, y: np.ndarray, k: int, cols: np.ndarray
) -> np.ndarray:
    """Whether each row's label ranks among its ``k`` largest logits (ties: lower index).

    The rank is ``above + tied_before`` (classes with a larger logit, and lower-indexed
    classes with the same one). One comparison settles most rows: with ``ge`` classes
    at least as large as the label's (itself included), ``ge - 1 < k`` is inside for
    certain. Only the other rows count ``above``, and only rows with ties straddling
    ``k`` count ``tied_before``.
    """
    ge = _count_rows(zb >= zy[:, None])
    inside = ge - 1 < k
    rest = np.flatnonzero(~inside)
    if rest.size:
        above = _count_rows(zb[rest] > zy[rest, None])
        straddle = (above < k) & (above < ge[rest] - 1)
        if straddle.any():
            rows = rest[straddle]
            before = (zb[rows] == zy[rows, None]) & (cols < y[rows, None])
            inside[rows] = above[straddle] + _count_rows(before) < k
    return inside


# -- the accumulator ---------------------------------------------------------------
@dataclass(frozen=True)
class Metrics:
    """Every metric of one evaluation (the value of :func:`evaluate`).

    Attributes
    ----------
    loss : float
        Mean smoothed cross-entropy (``epsilon``, ``prior``, ``weight``), with the mean
        of :func:`smoothce.cross_entropy`.
    nll : float
        Mean negative log-likelihood of the labels (cross-entropy with
        ``epsilon = 0``; weighted by ``weight[label]`` when ``weight`` is given).
    perplexity : float
        ``exp(nll)`` (``inf`` past float64's range).
    accuracy : float
        Fraction of counted elements whose top class is the label.
    top_k_accuracy : float
        Fraction whose label is among the ``top_k`` top classes (ties go to the lower
        class index, unlike scikit-learn's ``top_k_accuracy_score``: see
        :func:`accuracy`).
    ece : float
        Expected calibration error over ``n_bins`` equal-width confidence bins:
        ``bins.ece()``, the float
        :func:`smoothce.calibration.expected_calibration_error` gives on the same
        logits.
    counted, elements : int
        Elements counted (not ignored) and elements in total.
    epsilon : float
    top_k, n_bins : int
    bins : BinCounts
        The calibration bins, for a reliability diagram (each bin's confidence sum
        rounded once from the exact one).

    Over no counted element every mean is 0.0 (and the perplexity 1.0), as for the
    losses. An element whose softmax is undefined (a NaN or ``+inf`` logit, or every
    logit ``-inf``) makes every metric NaN.
    """

    loss: float
    nll: float
    perplexity: float
    accuracy: float
    top_k_accuracy: float
    ece: float
    counted: int
    elements: int
    epsilon: float
    top_k: int
    n_bins: int
    bins: BinCounts = field(repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """The metrics as a dict of plain numbers (without the bins)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "bins"}


@dataclass(frozen=True)
class Accumulator:
    """Exact per-chunk sums from which :class:`Metrics` are formed.

    Made by :func:`accumulate` for one chunk; two accumulators of the same settings
    (``num_classes``, ``epsilon``, ``top_k``, ``n_bins``, weighted or not) combine with
    :meth:`merge` (or ``+``) exactly, in any order; :meth:`result` gives the metrics.
    It holds a few hundred bytes whatever the chunk size: on a cluster only
    accumulators travel.
    """

    num_classes: int
    epsilon: float
    top_k: int
    n_bins: int
    weighted: bool
    elements: int = 0
    counted: int = 0
    undefined: int = 0
    correct: int = 0
    correct_k: int = 0
    loss_sum: ExactSum = field(default_factory=ExactSum)
    nll_sum: ExactSum = field(default_factory=ExactSum)
    denominator: ExactSum = field(default_factory=ExactSum)
    bin_count: tuple[int, ...] = ()
    bin_correct: tuple[int, ...] = ()
    bin_confidence: tuple[ExactSum, ...] = ()

    def _settings(self) -> tuple[Any, ...]:
        return (self.num_classes, self.epsilon, self.top_k, self.n_bins, self.weighted)

    def merge(self, other: Accumulator) -> Accumulator:
        """The accumulator of both chunks (neither is modified)."""
        if not isinstance(other, Accumulator):
            raise TypeError(f"can only merge an Accumulator; got {type(other).__name__}.")
        if self._settings() != other._settings():
            raise ValueError(
                "accumulators must come from the same settings (num_classes, epsilon, "
                f"top_k, n_bins, weighted) to merge; got {self._settings()} and "
                f"{other._settings()}."
            )

        def add(a: tuple[Any, ...], b: tuple[Any, ...]) -> tuple[Any, ...]:
            return tuple(x + y for x, y in zip(a, b, strict=True)) if a and b else a or b

        return replace(
            self,
            elements=self.elements + other.elements,
            counted=self.counted + other.counted,
            undefined=self.undefined + other.undefined,
            correct=self.correct + other.correct,
            correct_k=self.correct_k + other.correct_k,
            loss_sum=self.loss_sum + other.loss_sum,
            nll_sum=self.nll_sum + other.nll_sum,
            denominator=self.denominator + other.denominator,
            bin_count=add(self.bin_count, other.bin_count),
            bin_correct=add(self.bin_correct, other.bin_correct),
            bin_confidence=add(self.bin_confidence, other.bin_confidence),
        )

    __add__ = merge

    def bins(self) -> BinCounts:
        """The calibration bins as :class:`~smoothce.calibration.BinCounts`: each bin's
        confidence sum rounded once, and the rows without a confidence as
        ``undefined``; their :meth:`~smoothce.calibration.BinCounts.ece` is the ECE."""
        if not self.bin_count:
            empty = BinCounts.empty(self.n_bins)
            empty.undefined = self.undefined
            return empty
        return BinCounts(
            np.array(self.bin_count, dtype=np.int64),
            np.array([s.value() for s in self.bin_confidence]),
            np.array(self.bin_correct, dtype=np.float64),
            self.undefined,
        )

    def _mean(self, total: ExactSum) -> float:
        """``total`` over the mean's denominator; 0.0 over nothing, as the losses."""
        if not total.finite:
            return total.value()
        if self.weighted:
            return total.ratio(self.denominator) if self.denominator.units else 0.0
        return _ratio_units(total, self.counted) if self.counted else 0.0

    def result(self) -> Metrics:
        """Form the metrics from the sums (each rounded once)."""
        nan = float("nan")
        loss = self._mean(self.loss_sum)
        nll_value = self._mean(self.nll_sum)
        undefined = self.undefined > 0
        if undefined:
            loss = nll_value = nan
        with np.errstate(over="ignore"):
            ppl = float(np.exp(np.float64(nll_value)))
        n = self.counted
        acc = nan if undefined else (self.correct / n if n else 0.0)
        acc_k = nan if undefined else (self.correct_k / n if n else 0.0)
        bins = self.bins()
        return Metrics(
            loss=loss,
            nll=nll_value,
            perplexity=ppl,
            accuracy=acc,
            top_k_accuracy=acc_k,
            ece=bins.ece(),  # the one ECE arithmetic, smoothce.calibration's (NaN if undefined)
            counted=n,
            elements=self.elements,
            epsilon=self.epsilon,
            top_k=self.top_k,
            n_bins=self.n_bins,
            bins=bins,
        )


def _ratio_units(total: ExactSum, count: int) -> float:
    """``total / count`` correctly rounded (``count`` an integer)."""
    return total.units / (count << 1126)


@dataclass
class _Pass:
    """Per element (flat, C order) values of one engine pass; see :func:`_one_pass`."""

    loss: np.ndarray  # the (smoothed, weighted) loss, float64, units of the mean
    log_s: np.ndarray  # log S of the row in the engine's coordinates, float64
    ref: np.ndarray  # the row's reference (lse = log S + ref), float64, exact
    zy: np.ndarray  # label logit, float64 (exact)
    label_log: np.ndarray  # log e_y of the label in the engine's coordinates, float64
    m: np.ndarray | None = None  # row maximum, float64 (exact)
    top1: np.ndarray | None = None  # bool: the label is the argmax
    topk: np.ndarray | None = None  # bool: the label ranks among the top_k


def _one_pass(p: Problem, top_k: int, workers: Any, scan: bool = True) -> _Pass:
    """One engine pass over ``p``, and what rides on it (see :class:`_Pass`).

    The engine hands each block to ``observe`` after its exponentials, while the block
    is in cache and, for float16 and integer logits, already converted to the compute
    dtype: the log-sum-exp comes from the engine's own row sums (``lse = log S +
    ref``, kept as the two parts: see :func:`_nll_rows`) and the label's ``log e_y``
    from its own exponential (the loss's label term), the label logit is gathered,
    and with ``scan`` the argmax, the row maximum and the top-k test read the
    converted block once more. Rows longer than a block are streamed: the engine
    gives their ``(max, S)`` and :func:`_scan` reads them for the rest.
    """
    unit = loss_unit(p, "mean")
    shape = p.batch_shape
    log_s = np.empty(shape)
    ref_a = np.zeros(shape)
    if p.num_classes > _engine.BLOCK_ELEMENTS:

        def observe_streamed(m_row: np.ndarray, S_row: np.ndarray) -> None:
            np.log(S_row, out=log_s.reshape(-1))
            ref_a.reshape(-1)[...] = m_row

        rows = engine_rows(p, unit, workers, observe_streamed=observe_streamed)
        m = top1 = topk = None
        if scan:
            top1, topk, m, zy = _scan(p, top_k)
        else:
            zy = (
                np.take_along_axis(classes_last(p.z, p.axis), p.labels[..., np.newaxis], axis=-1)
                .reshape(-1)
                .astype(np.float64)
            )
        ref = ref_a.reshape(-1)
        with np.errstate(invalid="ignore"):  # undefined rows: inf - inf
            label_log = zy - ref  # float64: exact for float32 logits
        return _Pass(rows.reshape(-1), log_s.reshape(-1), ref, zy, label_log, m, top1, topk)
    zy_a = np.empty(shape)
    label_a = np.empty(shape)
    m_a = np.empty(shape) if scan else None
    top1_a = np.empty(shape, dtype=bool) if scan else None
    topk_a = top1_a if top_k == 1 or not scan else np.empty(shape, dtype=bool)
    K = p.num_classes
    cols = np.arange(K) if 1 < top_k < K else None

    def observe(key: Any, z2: np.ndarray, S: np.ndarray, ref: Any, logs: Any) -> None:
        y = p.labels[key].reshape(-1)  # safe labels: ignored elements read class 0
        rows = np.arange(len(y))
        label_logit = z2[rows, y]
        out = log_s[key]
        out[...] = np.log(S).reshape(out.shape)  # NaN/inf rows: undefined, quietly
        if ref is not None:
            ref_a[key] = ref.reshape(out.shape)
        zy_a[key] = label_logit.reshape(out.shape)
        if ref is not None and not np.isfinite(logs.min()):
            # The label's shifted logit z_y - c overflowed in float32 (logits beyond
            # 3.4e38 apart) where both are finite: formed in float64, as streamed rows
            # form it, so the NLL is the finite float64 value the loss already is.
            over = (logs == -np.inf) & np.isfinite(label_logit) & np.isfinite(ref)
            if over.any():
                logs = logs.copy()  # the engine's array, left as it is
                logs[over] = label_logit[over].astype(np.float64) - ref[over]
        label_a[key] = logs.reshape(out.shape)
        if m_a is None or top1_a is None or topk_a is None:
            return
        pred = z2.argmax(axis=1)  # ties: the lower index, as numpy
        m_a[key] = z2[rows, pred].reshape(out.shape)
        top1_a[key] = (pred == y).reshape(out.shape)
        if cols is not None:
            topk_a[key] = _in_top_k(z2, label_logit, y, top_k, cols).reshape(out.shape)
        elif top_k >= K and topk_a is not top1_a:
            topk_a[key] = True

    rows = engine_rows(p, unit, workers, observe=observe)

    def flat(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a.reshape(-1)

    return _Pass(
        rows.reshape(-1), log_s.reshape(-1), ref_a.reshape(-1), zy_a.reshape(-1),
        label_a.reshape(-1), flat(m_a), flat(top1_a), flat(topk_a),
    )  # fmt: skip


def _keep(p: Problem) -> np.ndarray:
    """The counted elements, flat (all of them without ``ignore_index``)."""
    n = math.prod(p.batch_shape)
    return np.ones(n, dtype=bool) if p.counted is None else p.counted.reshape(-1)


def _nll_rows(p: Problem, r: _Pass, keep: np.ndarray) -> np.ndarray:
    """The NLL per element (weighted by ``w_y`` with class weights), float64, 0
    where not ``keep``.

    ``-log p_y = log S - log e_y`` in float64 from the pass's values, in the
    engine's coordinates: the loss's own label term (:mod:`smoothce._terms`), so a
    row whose softmax is one-hot has an NLL of exactly 0, and a label logit of -inf
    gives +inf. Never as ``lse - z_y``: ``lse = log S + ref`` would round at the scale
    of the logits (ulp(1e10) = 2e-6) what is then subtracted away. Clamped at 0
    against the rounding of log S, as the engine's losses
    (:func:`~smoothce._kernel.finish_losses`). It is formed so for every epsilon, so
    that the NLL of :func:`evaluate` and :func:`nll` agree to the bit. The weighted
    NLL is ``w_y`` times it, in the engine's weight units (those of the denominator),
    with the engine's two edges: a label of weight 0 adds 0 even where its NLL is
    infinite (a label logit of -inf), and an NLL beyond float64's range (logits
    spanning [-1e308, 1e308]) is weighted at a quarter scale, so a small ``w_y``
    brings it back in range. Both overflow quietly to inf where the value is inf.
    """
    # inf - inf in undefined rows: NaN; finite logits more than 1.8e308 apart: inf
    with np.errstate(invalid="ignore", over="ignore"):
        nll_rows = finish_losses(r.log_s - r.label_log, None if p.counted is None else keep)
    if p.weight is None:
        return nll_rows
    w_y = p.weight[p.labels.reshape(-1)]
    with np.errstate(invalid="ignore", over="ignore"):
        weighted: np.ndarray = w_y * nll_rows
        infinite = nll_rows == np.inf
        if infinite.any():
            weighted[infinite & (w_y == 0.0)] = 0.0
            # Overflowed, not infinite: every part finite. Redo at a quarter scale.
            over = infinite & (w_y != 0.0) & np.isfinite(r.zy) & np.isfinite(r.ref)
            over &= np.isfinite(r.log_s)
            if over.any():
                quarter = r.log_s[over] / 4 - (r.zy[over] / 4 - r.ref[over] / 4)
                weighted[over] = (w_y[over] * quarter) * 4
    weighted[~keep] = 0.0
    return weighted


def _accumulate_problem(p: Problem, top_k: int, n_bins: int, workers: Any = None) -> Accumulator:
    """The accumulator of one validated chunk (integer labels, a batch axis).

    One engine pass gives the (smoothed, weighted) loss and the log-sum-exp of every
    row; the NLL is ``lse - z_y`` and the confidence ``exp(max - lse)``, formed in
    float64 from the same values, relative to each row's reference (:func:`_nll_rows`), so
    nothing is exponentiated twice.
    """
    return _accumulator_of(p, _one_pass(p, top_k, workers), top_k, n_bins)


def _accumulator_of(p: Problem, r: _Pass, top_k: int, n_bins: int) -> Accumulator:
    """The accumulator of ``p``'s rows from their values ``r`` (with the scan's).

    ``r`` comes from one engine pass (:func:`_one_pass`) or, for a linear head whose
    vocabulary is split over workers, from its windows merged
    (:mod:`smoothce._vocab`); ``p.z`` is not read.
    """
    assert r.m is not None
    assert r.top1 is not None
    assert r.topk is not None
    m, top1, topk = r.m, r.top1, r.topk
    n = len(m)
    keep = _keep(p)
    # softmax undefined: a NaN or +inf logit, or every logit -inf (no finite maximum).
    undefined = keep & ~np.isfinite(m)
    ok = keep & ~undefined
    weighted_nll = _nll_rows(p, r, keep)
    # At epsilon 0 the loss is the NLL, the same bits; else the engine's smoothed loss.
    loss_rows = weighted_nll if p.epsilon == 0.0 else r.loss
    # Confidence max_k p_k = exp(m - lse) = exp((m - ref) - log S), in the shifted
    # coordinates as the NLL: no new pass. Bins are equal-width, right-closed except
    # the first (as smoothce.calibration).
    conf = np.exp(np.minimum((m[ok] - r.ref[ok]) - r.log_s[ok], 0.0))
    b = bin_index(conf, n_bins)
    right = top1[ok]
    bin_conf = exact_sums(conf, b, n_bins)
    # Unweighted, the mean divides by `counted`; the accumulator keeps no sum then.
    den = ExactSum() if p.weight is None else _exact_denominator(p)
    (loss_sum,) = exact_sums(loss_rows)
    (nll_sum,) = exact_sums(weighted_nll)
    return Accumulator(
        num_classes=p.num_classes,
        epsilon=p.epsilon,
        top_k=top_k,
        n_bins=n_bins,
        weighted=p.weight is not None,
        elements=n,
        counted=int(np.count_nonzero(keep)),
        undefined=int(np.count_nonzero(undefined)),
        correct=int(np.count_nonzero(top1 & ok)),
        correct_k=int(np.count_nonzero(topk & ok)),
        loss_sum=loss_sum,
        nll_sum=nll_sum,
        denominator=den,
        bin_count=tuple(int(c) for c in np.bincount(b, minlength=n_bins)),
        bin_correct=tuple(int(c) for c in np.bincount(b[right], minlength=n_bins)),
        bin_confidence=tuple(bin_conf),
    )


def _accumulate_chunks(
    p: Problem,
    top_k: int,
    n_bins: int,
    workers: Any,
    progress: Callable[[int, int], object] | None = None,
) -> Accumulator:
    """The accumulator of ``p``, merged over its :func:`_chunks` (``progress(done,
    total)`` after each)."""
    total: Accumulator | None = None
    n = math.prod(p.batch_shape)
    for chunk in _chunks(p):
        acc = _accumulate_problem(chunk, top_k, n_bins, workers)
        total = acc if total is None else total.merge(acc)
        if progress is not None:
            progress(total.elements, n)
    assert total is not None
    return total


def _chunks(p: Problem) -> list[Problem]:
    """``p`` cut along its batch into chunks of whole engine blocks."""
    K = p.num_classes
    block = _block_rows(p)
    inner = math.prod(p.batch_shape[1:])
    if inner == 0 or math.prod(p.batch_shape) * K <= CHUNK_ELEMENTS:
        return [p]
    if inner <= block:
        # The engine steps the first batch axis by block // inner indices; a chunk is a
        # whole number of those steps, so its blocks are the engine's blocks.
        step = max(1, block // inner)
        per_chunk = step * max(1, CHUNK_ELEMENTS // (step * inner * K))
        keys: list[Any] = [
            slice(i, min(i + per_chunk, p.batch_shape[0]))
            for i in range(0, p.batch_shape[0], per_chunk)
        ]
    else:
        keys = list(range(p.batch_shape[0]))  # the engine blocks each index apart
    out = []
    for k in keys:
        u = p.prior
        if u.kind == "sample":
            assert u.values is not None
            u = Prior("sample", u.values[k] if isinstance(k, slice) else u.values[k : k + 1])
        k2 = k if isinstance(k, slice) else slice(k, k + 1)
        out.append(
            replace(
                p,
                z=p.z[k2],
                labels=p.labels[k2],
                counted=None if p.counted is None else p.counted[k2],
                prior=u,
            )
        )
    return out


# -- public functions --------------------------------------------------------------
_COMMON = """
    logits : array_like, shape (..., K, ...)
        Logits (unnormalised log-probabilities; not probabilities), float16/32/64 or
        integer, classes on ``axis``. NumPy arrays and memory maps are read in
        chunks and never copied whole.
    labels : array_like of int
        Class indices in ``[0, K)`` (or ``ignore_index``), the shape of ``logits``
        without the class axis.
    axis : int, default -1
        The class axis.
    ignore_index : int, optional
        Label value whose elements are left out of every metric."""


def _doc(func: Any) -> Any:
    func.__doc__ = func.__doc__.replace("{common}", _COMMON.strip("\n"))
    return func


def accumulate(
    logits: npt.ArrayLike,
    labels: npt.ArrayLike,
    epsilon: float = 0.0,
    *,
    axis: int = -1,
    prior: Any = None,
    weight: npt.ArrayLike | None = None,
    ignore_index: int | None = None,
    top_k: int = 5,
    n_bins: int = 15,
    workers: int | None = None,
) -> Accumulator:
    """The :class:`Accumulator` of one chunk, for :meth:`Accumulator.merge`.

    Parameters are those of :func:`evaluate`. The chunk is validated at once and, like
    :func:`evaluate`'s input, read in pieces of at most :data:`CHUNK_ELEMENTS` logits
    (which changes no bit: the sums are exact), so it may be a memory map.

    Examples
    --------
    >>> import numpy as np
    >>> from smoothce import metrics
    >>> rng = np.random.default_rng(0)
    >>> z, y = rng.normal(size=(100, 10)), rng.integers(0, 10, 100)
    >>> acc = metrics.accumulate(z[:60], y[:60]) + metrics.accumulate(z[60:], y[60:])
    >>> acc.result() == metrics.evaluate(z, y)
    True
    """
    p = _prepare(
        logits, labels, epsilon, axis=axis, prior=prior, weight=weight, ignore_index=ignore_index
    )
    return _accumulate_chunks(p, _check_top_k(top_k), check_bins(n_bins), workers)


@_doc
def evaluate(
    logits: npt.ArrayLike,
    labels: npt.ArrayLike,
    epsilon: float = 0.0,
    *,
    axis: int = -1,
    prior: Any = None,
    weight: npt.ArrayLike | None = None,
    ignore_index: int | None = None,
    top_k: int = 5,
    n_bins: int = 15,
    workers: int | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> Metrics:
    r"""Every metric of a model's outputs, from one pass over each chunk.

    The smoothed loss, NLL, perplexity, top-1 and top-``k`` accuracy and the
    expected calibration error (see :mod:`smoothce.metrics` for how one pass gives
    them all). Inputs of more than :data:`CHUNK_ELEMENTS` logits, such as memory
    maps, are processed in chunks along the first batch axis, after validating the
    labels once.

    Parameters
    ----------
    {common}
    epsilon : float, default 0.0
        Smoothing of the reported ``loss`` (as in :func:`smoothce.cross_entropy`).
    prior : None, "uniform", "others" or array_like, default None
        Smoothing distribution of the ``loss``, as in :func:`smoothce.cross_entropy`.
    weight : array_like, shape (K,), optional
        Class weights of the ``loss`` and the ``nll`` (means weighted by
        ``weight[label]``, as PyTorch's). Accuracy and calibration count elements.
    top_k : int, default 5
        ``k`` of ``top_k_accuracy`` (ties go to the lower class index, as in
        :func:`accuracy`; scikit-learn's ``top_k_accuracy_score`` favours the higher).
    n_bins : int, default 15
        Equal-width confidence bins of the ECE (as in
        :func:`smoothce.calibration.expected_calibration_error`).
    workers : int, optional
        Threads of the loss engine, as in :func:`smoothce.cross_entropy`.
    progress : callable, optional
        Called as ``progress(done, total)`` (elements) after each chunk, e.g. to
        draw a progress bar.

    Returns
    -------
    Metrics

    Examples
    --------
    >>> import numpy as np
    >>> from smoothce import metrics
    >>> z = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    >>> m = metrics.evaluate(z, [0, 2], epsilon=0.1, top_k=2)
    >>> round(m.loss, 6), round(m.nll, 6), m.accuracy, m.top_k_accuracy
    (0.927312, 0.860645, 0.5, 0.5)

    The second label (class 2) ranks third: after class 1 (larger logit) and class 0
    (same logit, lower index).
    """
    p = _prepare(
        logits, labels, epsilon, axis=axis, prior=prior, weight=weight, ignore_index=ignore_index
    )
    k, bins = _check_top_k(top_k), check_bins(n_bins)
    return _accumulate_chunks(p, k, bins, workers, progress).result()


@_doc
def nll(
    logits: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    axis: int = -1,
    weight: npt.ArrayLike | None = None,
    ignore_index: int | None = None,
    workers: int | None = None,
) -> float:
    r"""Mean negative log-likelihood of the labels: :math:`-\frac1n\sum_i \log p_{i,y_i}`.

    :func:`smoothce.cross_entropy` with ``epsilon=0`` and ``reduction="mean"``, but
    summed exactly in float64 and returned as a float64 whatever the logits' dtype.

    Parameters
    ----------
    {common}
    weight : array_like, shape (K,), optional
        Class weights: the mean weighted by ``weight[label]``, as PyTorch's.
    workers : int, optional
        Threads of the loss engine.

    Returns
    -------
    float
        0.0 when no element is counted.

    Examples
    --------
    >>> import numpy as np
    >>> from smoothce import metrics
    >>> metrics.nll(np.zeros((2, 4)), [1, 3])  # log(4)
    1.3862943611198906
    """
    p = _prepare(logits, labels, axis=axis, weight=weight, ignore_index=ignore_index)
    total, den = ExactSum(), ExactSum()
    for chunk in _chunks(p):
        r = _one_pass(chunk, 1, workers, scan=False)
        (part,) = exact_sums(_nll_rows(chunk, r, _keep(chunk)))
        total += part
        den += _exact_denominator(chunk)
    if not total.finite:
        return total.value()
    return total.ratio(den) if den.units else 0.0


@_doc
def perplexity(
    logits: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    axis: int = -1,
    weight: npt.ArrayLike | None = None,
    ignore_index: int | None = None,
    workers: int | None = None,
) -> float:
    """Perplexity ``exp(nll)`` of the labels (``inf`` past float64's range).

    Parameters
    ----------
    {common}
    weight : array_like, shape (K,), optional
        Class weights of the NLL.
    workers : int, optional
        Threads of the loss engine.

    Returns
    -------
    float
        1.0 when no element is counted.

    Examples
    --------
    Uniform predictions over 4 classes: as uncertain as a fair 4-sided die.

    >>> import numpy as np
    >>> from smoothce import metrics
    >>> round(metrics.perplexity(np.zeros((3, 4)), [0, 1, 2]), 12)
    4.0
    """
    value = nll(
        logits, labels, axis=axis, weight=weight, ignore_index=ignore_index, workers=workers
    )
    with np.errstate(over="ignore"):
        return float(np.exp(np.float64(value)))


@_doc
def accuracy(
    logits: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    top_k: int = 1,
    axis: int = -1,
    ignore_index: int | None = None,
) -> float:
    """Fraction of elements whose label is among the ``top_k`` largest logits.

    Ties are broken by class index, as :func:`numpy.argmax` does: the label ranks
    after every class with a larger logit and after every lower-indexed class with
    the same logit. This is the opposite of scikit-learn's
    :func:`~sklearn.metrics.top_k_accuracy_score`, which documents that among equal
    scores the labels with the highest indices are chosen first: on tied logits the
    two can disagree (``[[1.0, 1.0, 0.0]]`` with label 0 and ``top_k=1``: 1.0 here,
    0.0 there). ``top_k >= K`` counts every element as correct.

    Parameters
    ----------
    {common}
    top_k : int, default 1
        How many top classes may hold the label.

    Returns
    -------
    float
        In [0, 1]; 0.0 when no element is counted; NaN when a counted element's
        softmax is undefined (a NaN or ``+inf`` logit, or all logits ``-inf``).

    Examples
    --------
    >>> import numpy as np
    >>> from smoothce import metrics
    >>> z = np.array([[0.1, 0.5, 0.4], [1.0, 1.0, 0.0]])
    >>> metrics.accuracy(z, [2, 1]), metrics.accuracy(z, [2, 1], top_k=2)
    (0.0, 1.0)
    """
    p = _prepare(logits, labels, axis=axis, ignore_index=ignore_index)
    k = _check_top_k(top_k)
    correct = counted = undefined = 0
    for chunk in _chunks(p):
        _, topk, m, _ = _scan(chunk, k)
        keep = np.ones(len(m), bool) if chunk.counted is None else chunk.counted.reshape(-1)
        counted += int(np.count_nonzero(keep))
        undefined += int(np.count_nonzero(keep & ~np.isfinite(m)))
        correct += int(np.count_nonzero(topk & keep))
    if undefined:
        return float("nan")
    return correct / counted if counted else 0.0


# A linear head's metrics from its hidden states live beside the head's own code; they
# are this module's public function, built on the accumulator above.
from ._linear_metrics import evaluate_linear  # noqa: E402
