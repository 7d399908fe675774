"""Exact sums of float64 values: partial sums that merge without rounding.

A chunked or distributed reduction adds one partial sum per chunk. If the partials
are rounded floats, the result depends (in its last bits) on where the chunks were
cut; :func:`math.fsum` over the chunk partials rounds each partial first. Here a
partial is kept *exactly*: every finite float64 is an integer multiple of
``2**-1126`` (the value ``m * 2**e`` of :func:`numpy.frexp` with a 53-bit integer
``m`` and ``e >= -1073``), so a sum of float64 values is an integer in those units,
held by a Python ``int``. Merging adds integers (exact, associative, commutative)
and the single rounding happens at the end, by Python's correctly rounded ``int /
int``. The sum is therefore the same, bit for bit, for any chunking, any order and
any number of workers.

Non-finite values are counted apart: any NaN, or ``+inf`` together with ``-inf``,
makes the sum NaN; otherwise an infinity wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["ExactSum", "exact_sums", "exact_units"]

#: The unit: every finite float64 is an integer multiple of ``2**-UNIT_BITS``.
UNIT_BITS = 1126
#: Exponents of :func:`numpy.frexp` for finite float64 lie in [-1073, 1024].
_E_MIN, _E_SPAN = -1073, 1024 + 1073 + 1
#: The 53-bit integer significand is split in two halves whose group sums, taken by
#: ``bincount`` in float64, stay exact integers below 2**53 for this many values.
_SPLIT = 27
_MAX_GROUP = 1 << 25
#: Up to this many (group, exponent) keys are counted densely by bincount.
_DENSE_KEYS = 1 << 16


@dataclass(frozen=True)
class ExactSum:
    """The exact sum of float64 values.

    Attributes
    ----------
    units : int
        Sum of the finite values, in units of ``2**-1126``.
    nan, pos_inf, neg_inf : int
        How many NaN, ``+inf`` and ``-inf`` values were added.
    """

    units: int = field(default=0, repr=False)
    nan: int = 0
    pos_inf: int = 0
    neg_inf: int = 0

    def __add__(self, other: ExactSum) -> ExactSum:
        return ExactSum(
            self.units + other.units,
            self.nan + other.nan,
            self.pos_inf + other.pos_inf,
            self.neg_inf + other.neg_inf,
        )

    @property
    def finite(self) -> bool:
        return not (self.nan or self.pos_inf or self.neg_inf)

    def _special(self) -> float | None:
        if self.nan or (self.pos_inf and self.neg_inf):
            return float("nan")
        if self.pos_inf:
            return float("inf")
        if self.neg_inf:
            return float("-inf")
        return None

    def value(self) -> float:
        """The sum, correctly rounded to float64 (once)."""
        special = self._special()
        if special is not None:
            return special
        return _divide(self.units, 1 << UNIT_BITS)

    def ratio(self, other: ExactSum) -> float:
        """``self / other``, correctly rounded from the exact sums (NaN-aware)."""
        special = self._special()
        den = other._special()
        if special is not None or den is not None:
            a = self.value() if special is None else special
            b = other.value() if den is None else den
            with np.errstate(invalid="ignore", divide="ignore"):
                return float(np.float64(a) / np.float64(b))
        return _divide(self.units, other.units)


_ZERO = ExactSum()


def _divide(a: int, b: int) -> float:
    """``a / b`` for integers, correctly rounded; +-inf past float64's range."""
    if b == 0:
        return float("nan") if a == 0 else float("inf") if a > 0 else float("-inf")
    try:
        return a / b  # CPython divides integers with correct rounding
    except OverflowError:
        return float("inf") if (a > 0) == (b > 0) else float("-inf")


def exact_units(x: float) -> int:
    """A finite float64 as an integer number of units ``2**-1126``, exactly.

    ``x = p / q`` with ``q`` a power of two at most ``2**1074``, so ``q`` divides the
    unit's ``2**1126``.
    """
    p, q = x.as_integer_ratio()
    return p * ((1 << UNIT_BITS) // q)


def exact_sums(
    values: np.ndarray, groups: np.ndarray | None = None, n_groups: int = 1
) -> list[ExactSum]:
    """Exact sums of ``values`` (any shape, converted to float64) per group.

    Parameters
    ----------
    values : ndarray
        The values; each is first converted to float64 (exactly, for float16/32).
    groups : ndarray of int, the shape of ``values``, optional
        Group of each value in ``[0, n_groups)``; all in group 0 when omitted.
    n_groups : int, default 1

    Returns
    -------
    list of ExactSum, one per group
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    g = np.zeros(v.shape, np.intp) if groups is None else np.asarray(groups).reshape(-1)
    nan = pos = neg = None
    finite = np.isfinite(v)
    if not finite.all():
        nan, pos, neg = (
            np.bincount(g[mask], minlength=n_groups)
            for mask in (np.isnan(v), v == np.inf, v == -np.inf)
        )
        v, g = v[finite], g[finite]
    units: dict[int, int] = {}
    for start in range(0, len(v), _MAX_GROUP):
        vs, gs = v[start : start + _MAX_GROUP], g[start : start + _MAX_GROUP]
        mant, expo = np.frexp(vs)
        # v = M * 2**(e - 53) exactly, M an integer with |M| < 2**53.
        M = np.ldexp(mant, 53).astype(np.int64)
        hi, lo = M >> _SPLIT, M & ((1 << _SPLIT) - 1)  # M = hi * 2**27 + lo
        # One bin per (group, exponent); float64 bincount sums of these integers are
        # exact (|hi| < 2**26 and lo < 2**27, at most 2**25 of them).
        key = gs * _E_SPAN + (expo - _E_MIN)
        n_keys = n_groups * _E_SPAN
        names = None
        if n_keys > max(4 * len(key), _DENSE_KEYS):
            # Many groups (a million bins): number only the keys that occur, at most
            # len(vs), where n_keys bins would take gigabytes.
            names, key = np.unique(key, return_inverse=True)
            n_keys = len(names)
        hi_sum = np.bincount(key, weights=hi, minlength=n_keys)
        lo_sum = np.bincount(key, weights=lo, minlength=n_keys)
        for idx in np.flatnonzero((hi_sum != 0) | (lo_sum != 0)).tolist():
            grp, j = divmod(idx if names is None else int(names[idx]), _E_SPAN)
            m_total = (int(hi_sum[idx]) << _SPLIT) + int(lo_sum[idx])
            # e = j + E_MIN, so M * 2**(e - 53) is M << (e - 53 + 1126) = M << j units.
            units[grp] = units.get(grp, 0) + (m_total << j)
    out = [_ZERO] * n_groups  # frozen: one shared zero serves every empty group
    for grp, u in units.items():
        out[grp] = ExactSum(u)
    if nan is not None and pos is not None and neg is not None:
        for grp in np.flatnonzero(nan + pos + neg).tolist():
            out[grp] += ExactSum(0, int(nan[grp]), int(pos[grp]), int(neg[grp]))
    return out
