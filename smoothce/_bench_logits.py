"""The logits every benchmark times: four distributions, seeded, drawn in one place.

A softmax does not care where its logits sit, but a loss's speed may: a fast path that
skips the max shift while the logits are small loses its bet on the logits of a
trained network. So every timing in smoothce (``python -m smoothce bench``, the asv
suite in ``benchmarks/benchmarks/``, ``benchmarks/small_calls.py``, the scripts
that record the performance page's data) draws its logits here, by name:

========  ============================  ===================================================
name      logits                        stands for
========  ============================  ===================================================
normal    N(0, 1)                       an untrained network (what the benchmarks timed
                                        before there was a choice)
wide      5 N(0, 1)                     a language model, whose logits span tens of units
trained   3 N(0, 1), + 10 on the label  a classifier trained to convergence: the label's
                                        logit stands well above the rest
offset    N(0, 1) + 50                  any model whose logits carry a constant offset
                                        (drifting biases; the softmax is unchanged)
========  ============================  ===================================================

Labels are uniform over the K classes. Draws are seeded (the same ``seed`` gives the
same arrays, on every platform NumPy's PCG64 runs on) and made in float64 for float64
logits and in float32 otherwise (NumPy draws no float16 normals), then rounded to the
dtype asked for: float16, ``ml_dtypes.bfloat16`` (passed as a dtype; this module does
not import ml_dtypes), float32 or float64. ``"normal"`` with ``seed=0`` gives the same
arrays the benchmarks drew before the other distributions existed.

Only NumPy is imported: the asv suite and the documentation import this module too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from ._validation import is_bfloat16

__all__ = [
    "DISTRIBUTIONS",
    "NAMES",
    "LogitDistribution",
    "distribution",
    "draw_linear_head",
    "draw_logits",
    "logit_stats",
]


@dataclass(frozen=True)
class LogitDistribution:
    """Logits ``scale * N(0, 1) + offset``, with ``label_margin`` added to the label's.

    ``formula`` writes it out; ``stands_for`` says which network gives such logits.
    """

    name: str
    scale: float
    offset: float
    label_margin: float
    formula: str
    stands_for: str


#: The four distributions, by name, in the order the benchmarks report them.
DISTRIBUTIONS: dict[str, LogitDistribution] = {
    d.name: d
    for d in (
        LogitDistribution(
            "normal", 1.0, 0.0, 0.0, "N(0, 1)",
            "an untrained network (what the benchmarks timed before there was a choice)",
        ),
        LogitDistribution(
            "wide", 5.0, 0.0, 0.0, "5 N(0, 1)",
            "a language model, whose logits span tens of units",
        ),
        LogitDistribution(
            "trained", 3.0, 0.0, 10.0, "3 N(0, 1), +10 on the label's logit",
            "a classifier trained to convergence: the label's logit well above the rest",
        ),
        LogitDistribution(
            "offset", 1.0, 50.0, 0.0, "N(0, 1) + 50",
            "any model whose logits carry a constant offset (drifting biases; the "
            "softmax is unchanged)",
        ),
    )
}  # fmt: skip
#: Their names, in the same order.
NAMES: tuple[str, ...] = tuple(DISTRIBUTIONS)


def distribution(name: str) -> LogitDistribution:
    """The distribution called ``name``.

    >>> distribution("trained").formula
    "3 N(0, 1), +10 on the label's logit"
    >>> distribution("uniform")
    Traceback (most recent call last):
    ...
    ValueError: logits must be one of 'normal', 'wide', 'trained', 'offset'; got 'uniform'.
    """
    try:
        return DISTRIBUTIONS[name]
    except (KeyError, TypeError):
        choices = ", ".join(repr(n) for n in NAMES)
        raise ValueError(f"logits must be one of {choices}; got {name!r}.") from None


def _dtypes(dtype: DTypeLike) -> tuple[np.dtype[Any], type[np.floating[Any]]]:
    """The dtype asked for, and the one to draw in."""
    out = np.dtype(dtype)
    if out.kind != "f" and not is_bfloat16(out):
        raise ValueError(
            "dtype must be a floating dtype (float16, bfloat16, float32 or float64); "
            f"got dtype={out.name}."
        )
    return out, np.float64 if out == np.float64 else np.float32


def _check_size(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {name}={value!r}.")
    return int(value)


def draw_logits(
    name: str,
    shape: tuple[int, int],
    dtype: DTypeLike = "float32",
    *,
    seed: int | np.random.Generator = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits of the distribution ``name`` and their labels.

    Parameters
    ----------
    name : {"normal", "wide", "trained", "offset"}
        The distribution (:data:`DISTRIBUTIONS`).
    shape : (int, int)
        ``(N, K)``: N rows of K classes.
    dtype : dtype, default "float32"
        Of the logits: float16, bfloat16, float32 or float64.
    seed : int or numpy.random.Generator, default 0
        Seeds :func:`numpy.random.default_rng`; a Generator is used as it is (to draw
        a large array in chunks from one stream).

    Returns
    -------
    logits : ndarray of shape (N, K), C-contiguous, of ``dtype``
    labels : ndarray of shape (N,), int64, uniform over ``range(K)``

    Examples
    --------
    >>> z, y = draw_logits("trained", (1000, 10))
    >>> z.dtype, y.shape
    (dtype('float32'), (1000,))
    >>> float(np.mean(z.argmax(axis=1) == y))  # share of rows whose label's logit is the max
    0.943
    """
    d = distribution(name)
    if not (isinstance(shape, tuple) and len(shape) == 2):
        raise ValueError(f"shape must be a pair (N, K); got shape={shape!r}.")
    n, k = (_check_size(s, v) for s, v in zip(("N", "K"), shape, strict=True))
    out, work = _dtypes(dtype)
    rng = np.random.default_rng(seed)
    # Logits first, then labels: the order the benchmarks always drew them in.
    z = rng.standard_normal((n, k), dtype=work)
    labels = rng.integers(0, k, size=n)
    if d.scale != 1.0:
        z *= d.scale
    if d.offset != 0.0:
        z += d.offset
    if d.label_margin != 0.0:
        z[np.arange(n), labels] += d.label_margin
    return z.astype(out, copy=False), labels


def draw_linear_head(
    name: str,
    n: int,
    d: int,
    v: int,
    dtype: DTypeLike = "float32",
    *,
    seed: int | np.random.Generator = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A linear head whose logits ``hidden @ classifier.T + bias`` follow ``name``.

    ``hidden`` is N(0, 1); the classifier is N(0, 1) / sqrt(d) times the distribution's
    scale, so that each logit has that spread; the bias is the offset. For a label
    margin, each row of ``hidden`` moves along its label's classifier row ``w`` by
    ``margin * w / |w|**2``, which adds exactly the margin to the label's logit and,
    the classifier's rows being nearly orthogonal, noise of about ``margin / sqrt(d)``
    to the others (0.6 at d = 256).

    Parameters
    ----------
    name : {"normal", "wide", "trained", "offset"}
        The distribution of the logits.
    n, d, v : int
        Rows, features and classes.
    dtype : dtype, default "float32"
        Of all three arrays.
    seed : int or numpy.random.Generator, default 0
        As for :func:`draw_logits`.

    Returns
    -------
    hidden : ndarray of shape (n, d)
    classifier : ndarray of shape (v, d)
    bias : ndarray of shape (v,)
    labels : ndarray of shape (n,), int64
    """
    dist = distribution(name)
    n, d, v = (_check_size(s, x) for s, x in zip(("n", "d", "v"), (n, d, v), strict=True))
    out, work = _dtypes(dtype)
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((n, d), dtype=work)
    classifier = rng.standard_normal((v, d), dtype=work)
    classifier *= dist.scale / np.sqrt(d)
    labels = rng.integers(0, v, size=n)
    bias = np.full(v, dist.offset, dtype=work)
    if dist.label_margin != 0.0:
        w = classifier[labels]
        hidden += (dist.label_margin / np.einsum("ij,ij->i", w, w))[:, None] * w
    return hidden.astype(out, copy=False), classifier.astype(out), bias.astype(out), labels


def logit_stats(logits: np.ndarray, labels: np.ndarray, max_rows: int = 4096) -> dict[str, float]:
    """What the logits look like, from their first ``max_rows`` rows.

    Returns
    -------
    dict
        ``mean`` and ``std`` of all logits, ``max`` the largest, ``label_is_max`` the
        share of rows whose label's logit is their maximum, and ``margin`` the median
        of the label's logit minus the row's largest other logit (float64 arithmetic).

    Examples
    --------
    >>> z, y = draw_logits("offset", (2000, 100))
    >>> round(logit_stats(z, y)["mean"])
    50
    """
    z = np.asarray(logits[:max_rows]).astype(np.float64)
    y = np.asarray(labels[:max_rows])
    rows = np.arange(len(y))
    label = z[rows, y].copy()
    z[rows, y] = -np.inf
    others = z.max(axis=1) if z.shape[1] > 1 else np.full(len(y), -np.inf)
    z[rows, y] = label
    return {
        "mean": float(z.mean()),
        "std": float(z.std()),
        "max": float(z.max()),
        "label_is_max": float(np.mean(label >= others)),
        "margin": float(np.median(label - others)),
    }
