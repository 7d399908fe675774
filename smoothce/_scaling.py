r"""How one call's row losses become its loss, and what multiplies its gradient.

Everything a reduction decides is computed here once per call and carried by a frozen
:class:`Scaling`, which every path uses as it is: the engine's blocks, the lean path for
small calls, the fused linear head (whose blocks share the whole batch's scaling),
:mod:`smoothce.metrics` and :mod:`smoothce.dask`.

Units
-----
The engine sees the class weights divided by ``p.weight_scale``, a power of two that
brings them into a range where no weighted loss overflows or underflows
(:func:`~smoothce._validation.check_weight`); every loss it forms is the true one divided
by that scale. A weighted mean of integer labels divides by the same weights, so there
the scale cancels and the losses stay in engine units; everything else is multiplied
back by it (:attr:`Scaling.unit`).

PyTorch's ``reduction="mean"``: the cross-entropy sum is divided by the total
``weight[label]`` of the counted elements (their number without weights; the number of
elements for probability targets), the z-loss sum by the number of counted elements,
unweighted (Liger-Kernel's ``n_non_ignore``). A mean over nothing is 0 with a zero
gradient, where PyTorch gives NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._terms import label_denominator
from ._validation import Problem

__all__ = ["Scaling", "element_count", "exact_sum", "loss_unit", "mean_denominator"]


def mean_denominator(p: Problem) -> float:
    """PyTorch's cross-entropy denominator for ``reduction="mean"``, in engine units."""
    n = math.prod(p.batch_shape)
    if p.probabilistic:
        return float(n)
    return label_denominator(n, p.labels, p.counted, p.weight)


def loss_unit(p: Problem, reduction: str) -> float:
    """Factor from the engine's weight units to those ``reduction`` works in: 1.0 for
    a weighted mean of integer labels (the weights' scale cancels), else
    ``p.weight_scale``."""
    if reduction == "mean" and p.weight is not None and not p.probabilistic:
        return 1.0
    return p.weight_scale


def element_count(p: Problem) -> float:
    """Counted elements: the denominator of the z-loss's mean."""
    n = math.prod(p.batch_shape)
    return float(n if p.counted is None else np.count_nonzero(p.counted))


def exact_sum(parts: Any) -> float:
    """The exactly rounded sum of float64 ``parts`` (:func:`math.fsum`), with IEEE
    semantics at the edges: ``inf`` for an infinite sum, ``nan`` for NaN or inf - inf.

    ``math.fsum`` raises OverflowError when finite parts overflow the total (the parts
    here are losses, never negative, so that total is ``+inf``) and ValueError for
    ``inf + -inf``.
    """
    try:
        return math.fsum(parts)
    except OverflowError:
        return math.inf
    except ValueError:
        return math.nan


@dataclass(frozen=True)
class Scaling:
    """A call's scaling, built once (:meth:`of`) and used by every block.

    Attributes
    ----------
    unit : float
        Factor from the engine's weight units to those of the stored row losses and of
        the reduced loss (``p.weight_scale``, or 1.0 for a weighted mean of integer
        labels, where it cancels).
    den, z_den : float
        ``"mean"``'s cross-entropy and z-loss denominators (1.0 for other reductions).
    grad : float
        ``c``, the gradient's factor: ``unit / den`` (0.0 for a mean over nothing).
    z_loss, z_grad : float
        The z-loss coefficient, and its gradient's reduction factor ``1 / z_den``.
    """

    unit: float = 1.0
    den: float = 1.0
    z_den: float = 1.0
    grad: float = 1.0
    z_loss: float = 0.0
    z_grad: float = 1.0

    @classmethod
    def of(
        cls,
        p: Problem,
        reduction: str | None = None,
        denominators: tuple[float, float] | None = None,
    ) -> Scaling:
        """The scaling of ``p`` under ``reduction`` (default ``p.reduction``).

        ``denominators`` are ``(cross-entropy, z-loss)`` mean denominators computed
        over a larger batch of which ``p`` is one block (the fused linear head, Dask's
        chunks); by default those of ``p`` itself.
        """
        reduction = p.reduction if reduction is None else reduction
        unit = loss_unit(p, reduction)
        den = z_den = 1.0
        if reduction == "mean":
            if denominators is None:
                den = mean_denominator(p)
                z_den = element_count(p) if p.z_loss != 0.0 else 1.0
            else:
                den, z_den = denominators
        return cls(
            unit=unit,
            den=den,
            z_den=z_den,
            grad=unit / den if den > 0.0 else 0.0,
            z_loss=p.z_loss,
            z_grad=1.0 / z_den if z_den > 0.0 else 0.0,
        )

    def reduce(self, ce_sum: float, z_sum: float, dtype: np.dtype[Any]) -> Any:
        """The reduced loss from the exact sums of the engine's row losses.

        ``ce_sum`` is in engine units, ``z_sum`` the sum of the z-loss terms (true
        units); returns a NumPy scalar of ``dtype``. For ``"sum"`` the denominators are
        1.0 and the divisions exact.
        """
        total = ce_sum / self.den if self.den > 0.0 else 0.0
        total *= self.unit  # a Python float: overflow gives inf, underflow 0, silently
        if self.z_loss != 0.0:
            total += z_sum / self.z_den if self.z_den > 0.0 else 0.0
        with np.errstate(over="ignore"):  # a sum beyond float32's range is inf, quietly
            return dtype.type(total)
