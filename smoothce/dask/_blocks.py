"""What one task does with one block: the in-memory engine on NumPy blocks.

Each function takes the call's :class:`Settings` (one frozen object, one key in the
graph), the :class:`~smoothce.dask._graph.Gate` its task waited for (or None) and the
NumPy blocks of the logits, labels and per-sample prior; it validates the block with
:func:`~smoothce._validation.prepare` (the in-memory messages) and returns what the
graph merges or assembles. Functions at module level: they are pickled to the workers
by reference.

Reduced losses are summed from the rows exactly (:class:`~smoothce._exact.ExactSum`),
in the engine's weight units, and scaled once after the merge, as in memory: a row's
loss depends on that row alone, so every chunking gives the same bits.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .. import metrics as _metrics
from .._engine import run
from .._exact import ExactSum, exact_sums
from .._loss import cross_entropy as _np_cross_entropy
from .._loss import cross_entropy_grad as _np_cross_entropy_grad
from .._loss import cross_entropy_with_grad as _np_cross_entropy_with_grad
from .._scaling import Scaling, element_count
from .._validation import Problem, check_class_indices, prepare
from ._graph import Gate

__all__ = [
    "Denominators",
    "LossSums",
    "Settings",
    "accumulate_block",
    "check_labels",
    "denominators",
    "finish_loss",
    "grad_pair",
    "loss_sums",
    "none_block",
]


@dataclass(frozen=True, eq=False)
class Settings:
    """Everything a block needs besides its data: the validated arguments of the call.

    ``prior`` is what every block shares (None, a name, or a class prior of shape
    (K,)); a per-sample prior comes with each block instead.
    """

    epsilon: float
    axis: int
    K: int
    probabilistic: bool
    reduction: str
    want_loss: bool = True
    prior: Any = None
    weight: Any = None
    ignore_index: int | None = None
    num_classes: int | None = None
    z_loss: float = 0.0
    softcap: float | None = None
    workers: int | None = 1
    top_k: int = 5
    n_bins: int = 15

    def problem(self, z: np.ndarray, y: np.ndarray, u: Any) -> Problem:
        """The block's :class:`~smoothce._validation.Problem` (element losses)."""
        return prepare(
            z, y, self.epsilon, axis=self.axis, reduction="none",
            prior=self.prior if u is None else u, weight=self.weight,
            ignore_index=self.ignore_index, num_classes=self.num_classes,
            z_loss=self.z_loss, softcap=self.softcap,
        )  # fmt: skip

    def options(self, u: Any) -> dict[str, Any]:
        """Keyword arguments of the in-memory loss functions for one block."""
        return dict(
            axis=self.axis, prior=self.prior if u is None else u, weight=self.weight,
            ignore_index=self.ignore_index, num_classes=self.num_classes,
            workers=self.workers, z_loss=self.z_loss, softcap=self.softcap,
        )  # fmt: skip


# -- the "mean" denominators ---------------------------------------------------------
@dataclass(frozen=True)
class Denominators:
    """A block's share of ``"mean"``'s denominators, exactly: the cross-entropy's
    (:func:`smoothce.metrics._exact_denominator`: counted elements, their
    ``weight[label]``, or every element for probability targets) and the z-loss's
    (counted elements, unweighted)."""

    loss: ExactSum
    count: int

    def __add__(self, other: Denominators) -> Denominators:
        return Denominators(self.loss + other.loss, self.count + other.count)

    def floats(self) -> tuple[float, float]:
        return self.loss.value(), float(self.count)


def _label_problem(s: Settings, y: np.ndarray) -> Problem:
    """The labels' problem, without logits (zero-stride stand-ins of the right shape)."""
    shape = (*y.shape, s.K) if not s.probabilistic else y.shape
    z = np.broadcast_to(np.zeros((), np.float64), shape)
    return prepare(
        z, y, 0.0, axis=-1, reduction="none", prior=None, weight=s.weight,
        ignore_index=s.ignore_index, num_classes=None,
    )  # fmt: skip


def denominators(s: Settings, gate: Gate | None, y: np.ndarray) -> Denominators:
    """The mean's denominators of one labels block (which it validates)."""
    if s.probabilistic:
        # The targets (the logits' shape, classes on s.axis) are checked with their
        # logits; the mean is over the elements, weights or not.
        n = y.size // max(1, y.shape[s.axis])
        return Denominators(ExactSum(n << 1126), n)
    return _denominators(_label_problem(s, np.asarray(y)))


def check_labels(s: Settings, gate: Gate | None, y: np.ndarray) -> None:
    """Raise the in-memory error for the first bad label of the block."""
    ignore = None if s.ignore_index is None else int(s.ignore_index)
    check_class_indices(np.asarray(y), s.K, ignore)


# -- reduced losses --------------------------------------------------------------------
@dataclass(frozen=True)
class LossSums:
    """A block's exact sums for a reduced loss: the cross-entropy rows in the engine's
    weight units, the z-loss rows, and the mean's denominators."""

    loss: ExactSum
    z: ExactSum
    den: Denominators

    def __add__(self, other: LossSums) -> LossSums:
        return LossSums(self.loss + other.loss, self.z + other.z, self.den + other.den)


def _loss_rows(
    p: Problem, s: Settings, scaling: Scaling, grad: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """One engine pass (writing the gradient into ``grad`` when given): each element's
    cross-entropy in engine units (float64, batch shape) and, with a z-loss, its
    ``z_loss lse**2`` apart, for the two have different denominators."""
    rows = np.zeros(p.batch_shape, dtype=np.float64)
    z_rows = None if s.z_loss == 0.0 else np.zeros(p.batch_shape, dtype=np.float64)
    run(
        p, replace(scaling, unit=1.0), want_loss=True, grad=grad, loss_rows=rows,
        z_rows=z_rows, workers=s.workers,
    )  # fmt: skip
    return rows, z_rows


def _sums(p: Problem, rows: np.ndarray, z_rows: np.ndarray | None) -> LossSums:
    (total,) = exact_sums(rows.reshape(-1))
    z_total = ExactSum() if z_rows is None else exact_sums(z_rows.reshape(-1))[0]
    return LossSums(total, z_total, _denominators(p))


def _denominators(p: Problem) -> Denominators:
    return Denominators(_metrics._exact_denominator(p), int(element_count(p)))


def loss_sums(s: Settings, gate: Gate | None, z: np.ndarray, y: np.ndarray, u: Any) -> LossSums:
    """The exact sums of one block for ``"sum"``/``"mean"``."""
    p = s.problem(z, y, u)
    rows, z_rows = _loss_rows(p, s, Scaling.of(p, "sum"))
    return _sums(p, rows, z_rows)


def finish_loss(
    sums: LossSums, reduction: str, dtype: np.dtype[Any], unit: float, z_loss: float
) -> Any:
    """The reduced loss from the merged sums, as :meth:`~smoothce._scaling.Scaling.reduce`
    forms it in memory: the cross-entropy sum over its denominator (exactly, one
    rounding), times ``unit`` (:func:`~smoothce._scaling.loss_unit`) once, plus the
    z-loss sum over its own (counted elements). A mean over nothing is 0.0."""
    ce, zs = sums.loss, sums.z
    if reduction == "sum" or not ce.finite:
        value = ce.value()
    else:
        value = ce.ratio(sums.den.loss) if sums.den.loss.units > 0 else 0.0
    value *= unit  # a Python float: overflow gives inf, underflow 0, silently
    if z_loss != 0.0:
        count = sums.den.count
        if reduction == "sum" or not zs.finite:
            value += zs.value()
        elif count > 0:
            value += zs.ratio(ExactSum(count << 1126))
    with np.errstate(over="ignore"):  # beyond float32's range: inf, quietly
        return dtype.type(value)


# -- array results -------------------------------------------------------------------
def none_block(s: Settings, gate: Gate | None, z: np.ndarray, y: np.ndarray, u: Any) -> Any:
    """The element losses of one block (``reduction="none"``)."""
    return _np_cross_entropy(z, y, s.epsilon, reduction="none", **s.options(u))


def grad_pair(
    s: Settings, gate: Gate | None, z: np.ndarray, y: np.ndarray, u: Any
) -> tuple[Any, np.ndarray]:
    """``(loss part, gradient)`` of one block, from one engine pass.

    ``"none"``: the element losses and the gradient of the in-memory function.
    ``"sum"``/``"mean"``: :class:`LossSums` (None without ``want_loss``) and the
    gradient, scaled by the *global* denominators, which the gate brings (computed from
    the labels before any block). Without ``s.want_loss`` the loss part is None.
    """
    if s.reduction == "none":
        if not s.want_loss:
            return None, _np_cross_entropy_grad(z, y, s.epsilon, reduction="none", **s.options(u))
        loss, grad = _np_cross_entropy_with_grad(z, y, s.epsilon, reduction="none", **s.options(u))
        return loss, grad
    p = s.problem(z, y, u)
    grad = np.empty(p.logits_shape, dtype=p.grad_dtype)
    g_moved = np.moveaxis(grad, p.axis, -1)
    dens = None
    if s.reduction == "mean":
        assert gate is not None
        dens = gate.value.floats()
    # The gradient in true units (the engine's weight units for a weighted mean of
    # integer labels, whose denominator is in those units too) with the global
    # denominators; the loss rows in engine units (unit 1), scaled once after the merge.
    scaling = Scaling.of(p, s.reduction, dens)
    if not s.want_loss:
        run(p, scaling, want_loss=False, grad=g_moved, workers=s.workers)
        return None, grad
    rows, z_rows = _loss_rows(p, s, scaling, g_moved)
    return _sums(p, rows, z_rows), grad


def accumulate_block(
    s: Settings, gate: Gate | None, z: np.ndarray, y: np.ndarray, u: Any
) -> _metrics.Accumulator:
    """The metrics' :class:`~smoothce.metrics.Accumulator` of one block."""
    return _metrics.accumulate(
        z, y, s.epsilon, axis=s.axis, prior=s.prior if u is None else u, weight=s.weight,
        ignore_index=s.ignore_index, top_k=s.top_k, n_bins=s.n_bins, workers=s.workers,
    )  # fmt: skip
