"""Argument checking: turn what the caller passed into a normalised :class:`Problem`.

Every public function goes through :func:`prepare`. It never copies the logits and
never writes to anything it was given; the engine then works on views with the class
axis moved last. Error messages follow one pattern: the argument, the rule, and the
value received ("epsilon must be in [0, 1]; got epsilon=1.5.").

All checks are vectorised reductions over the inputs (``min``/``max``/``any``) so they
cost a pass over the labels at most, never a Python loop over elements; the expensive
search for *where* an input is wrong runs only once we already know it is wrong.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = ["Prior", "Problem", "as_array", "is_bfloat16", "plain", "prepare"]

Reduction = Literal["none", "mean", "sum"]
_REDUCTIONS = ("none", "mean", "sum")
_PRIOR_NAMES = ("uniform", "others")


@dataclass(frozen=True)
class Prior:
    """The smoothing distribution ``u`` in ``q = (1 - epsilon) t + epsilon u``.

    ``kind`` is ``"uniform"`` (1/K), ``"others"`` (1/(K-1) off the label), ``"class"``
    (``values`` of shape (K,)) or ``"sample"`` (``values`` broadcast to the logits' shape,
    class axis last).
    """

    kind: Literal["uniform", "others", "class", "sample"]
    values: np.ndarray | None = None


@dataclass(frozen=True)
class Problem:
    """Validated, normalised arguments of one loss call.

    Attributes
    ----------
    z : ndarray, shape (*batch, K)
        The logits, a view with the class axis moved last (never a copy).
    labels : ndarray
        Integer class indices of shape ``batch`` (dtype intp, ignored entries replaced
        by 0) or probability targets of shape ``(*batch, K)`` (a view, class axis last).
    counted : ndarray of bool, shape ``batch``, or None
        False where ``labels == ignore_index``; None when nothing is ignored.
    weight, weight_scale : ndarray of float64, shape (K,), or None; float
        The class weights are ``weight * weight_scale`` (see :func:`check_weight`).
    z_loss : float
        Coefficient of the auxiliary ``z_loss * logsumexp(z)**2`` per counted element.
    softcap : float or None
        Logits are replaced by ``softcap * tanh(z / softcap)`` before everything.
    """

    z: np.ndarray
    logits_shape: tuple[int, ...]
    axis: int
    num_classes: int
    compute_dtype: np.dtype[Any]
    grad_dtype: np.dtype[Any]
    epsilon: float
    labels: np.ndarray
    probabilistic: bool
    counted: np.ndarray | None
    prior: Prior
    weight: np.ndarray | None
    reduction: Reduction
    weight_scale: float = 1.0
    z_loss: float = 0.0
    softcap: float | None = None

    @property
    def batch_shape(self) -> tuple[int, ...]:
        shape: tuple[int, ...] = self.z.shape[:-1]
        return shape

    @property
    def scalar_dtype(self) -> np.dtype[Any]:
        """dtype of a reduced ("mean"/"sum") loss: float32 or float64."""
        return self.compute_dtype


def plain(value: Any) -> str:
    """``repr`` of a value as a user typed it: ``nan`` and ``1.5``, not ``np.float64(nan)``."""
    if isinstance(value, np.generic):
        value = value.item()
    return repr(value)


def as_array(name: str, values: Any) -> np.ndarray:
    """``np.asarray(values)``, with errors that name the argument.

    Masked arrays are refused: their mask would be silently dropped and the data under
    it used. A ragged nested sequence gets a message naming ``name`` instead of NumPy's
    "setting an array element with a sequence".
    """
    if isinstance(values, np.ma.MaskedArray):
        raise TypeError(
            f"{name} must not be a masked array (np.ma): smoothce does not honour masks, and "
            f"the data under the mask would be used. Fill it ({name}.filled(...)), or leave "
            "elements out with ignore_index or a zero weight."
        )
    try:
        return np.asarray(values)
    except ValueError as exc:
        if "inhomogeneous" in str(exc) or "sequence" in str(exc):
            raise ValueError(
                f"{name} must be a rectangular array; got a ragged nested sequence whose "
                "rows have different lengths."
            ) from None
        raise


def check_logits(logits: npt.ArrayLike, axis: Any, name: str = "logits") -> tuple[np.ndarray, int]:
    """Return ``(logits as an ndarray, non-negative axis)`` or raise.

    ``name`` is the argument's name in messages (``"scores"`` for calibration, whose
    scores may also be probabilities).
    """
    arr = as_array(name, logits)
    kind = arr.dtype.kind
    if is_bfloat16(arr.dtype):
        kind = "f"
    if kind == "c":
        raise TypeError(
            f"{name} must be a real floating or integer array (complex values have no "
            f"softmax); got dtype {arr.dtype}."
        )
    if kind not in "fiu":
        raise TypeError(f"{name} must be a real floating or integer array; got dtype {arr.dtype}.")
    if arr.ndim == 0:
        raise ValueError(
            f"{name} must have at least one dimension (the class axis); got a scalar."
        )
    axis = check_axis(axis, arr.ndim)
    if arr.shape[axis] == 0:
        raise ValueError(
            f"{name} must have at least one class along axis {axis}; got shape {arr.shape}."
        )
    return arr, axis


def classes_last(a: np.ndarray, axis: int) -> np.ndarray:
    """``a`` with ``axis`` moved last: a view (``a`` itself when it already is last).

    ``np.moveaxis`` costs microseconds of Python; small calls feel it, so the common
    case of classes already last skips it.
    """
    if axis == a.ndim - 1:
        return a
    return np.moveaxis(a, axis, -1)


def check_axis(axis: Any, ndim: int) -> int:
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be an integer; got axis={plain(axis)}.")
    axis = int(axis)
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"axis must be in [-{ndim}, {ndim - 1}] for logits with {ndim} dimension(s); "
            f"got axis={axis}."
        )
    return int(axis % ndim)


def is_bfloat16(dtype: np.dtype[Any]) -> bool:
    """Whether ``dtype`` is ``ml_dtypes.bfloat16`` (what JAX and PyTorch hand to NumPy),
    recognised by name so that ml_dtypes is not a dependency."""
    return dtype.kind == "V" and dtype.name == "bfloat16" and dtype.itemsize == 2


def compute_dtypes(
    dtype: np.dtype[Any], name: str = "logits", *, integers: bool = True
) -> tuple[np.dtype[Any], np.dtype[Any]]:
    """``(compute dtype, output dtype)`` for an input of ``dtype``: the one rule of which
    dtypes smoothce computes in, for the logits and for the linear head's inputs.

    float16 and bfloat16 are computed in float32 (their 11- and 8-bit significands
    would make the sums meaningless) and written back in their own dtype; integers are
    promoted to float64. Both are native-endian: big-endian input (``>f4``, as read
    from some files) is read where it lies and gives the same results as native input.
    NumPy has no arithmetic of its own for bfloat16 (ml_dtypes supplies slow loops), so
    the engine converts each block of bfloat16 logits to float32 before any operation.
    Anything else, ``np.longdouble`` (float128) included, is refused: no path computes in
    it, and computing it in float64 or float32 would silently drop its precision.

    Parameters
    ----------
    dtype : numpy.dtype
        The input's dtype.
    name : str, default "logits"
        The argument's name in the error message.
    integers : bool, default True
        Whether integer inputs are accepted (promoted to float64).

    Returns
    -------
    compute, output : numpy.dtype
        float32 or float64; the input's dtype in native byte order (float64 for
        integers).
    """
    if integers and dtype.kind in "iu":
        return np.dtype(np.float64), np.dtype(np.float64)
    if is_bfloat16(dtype):
        return np.dtype(np.float32), dtype
    native = dtype.newbyteorder("=")
    if native == np.float16:
        return np.dtype(np.float32), native
    if native in (np.float32, np.float64):
        return native, native
    if integers:
        allowed = "float16, bfloat16, float32, float64 or integer"
    else:
        allowed = "a floating array (float16, bfloat16, float32 or float64)"
    raise TypeError(f"{name} must be {allowed}; got dtype {dtype}.")


def check_epsilon(epsilon: Any) -> float:
    if isinstance(epsilon, (bool, np.bool_)) or not isinstance(epsilon, numbers.Real):
        raise TypeError(f"epsilon must be a real number in [0, 1]; got epsilon={plain(epsilon)}.")
    value = float(epsilon)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"epsilon must be in [0, 1]; got epsilon={value!r}.")
    return value


def check_z_loss(z_loss: Any) -> float:
    if isinstance(z_loss, (bool, np.bool_)) or not isinstance(z_loss, numbers.Real):
        raise TypeError(f"z_loss must be a non-negative real number; got z_loss={plain(z_loss)}.")
    value = float(z_loss)
    if not (value >= 0.0 and math.isfinite(value)):  # also rejects NaN
        raise ValueError(f"z_loss must be non-negative and finite; got z_loss={value!r}.")
    return value


def check_softcap(softcap: Any) -> float | None:
    if softcap is None:
        return None
    if isinstance(softcap, (bool, np.bool_)) or not isinstance(softcap, numbers.Real):
        raise TypeError(
            f"softcap must be None or a positive real number; got softcap={plain(softcap)}."
        )
    value = float(softcap)
    if not (value > 0.0 and math.isfinite(value)):  # also rejects NaN
        raise ValueError(f"softcap must be positive and finite; got softcap={value!r}.")
    return value


def check_reduction(reduction: Any) -> Reduction:
    # The str test comes first: `array in tuple` compares elementwise and raises.
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise ValueError(
            f"reduction must be one of {_REDUCTIONS}; got reduction={plain(reduction)}."
        )
    return reduction  # type: ignore[return-value]


def check_num_classes(num_classes: Any, K: int | None = None) -> int:
    if isinstance(num_classes, (bool, np.bool_)) or not isinstance(num_classes, numbers.Integral):
        raise TypeError(f"num_classes must be an integer; got num_classes={plain(num_classes)}.")
    n = int(num_classes)
    if n < 1:
        raise ValueError(f"num_classes must be at least 1; got num_classes={n}.")
    if K is not None and n != K:
        raise ValueError(
            f"num_classes must equal the size of the class axis of logits ({K}); "
            f"got num_classes={n}."
        )
    return n


def _position(flat_index: int, shape: tuple[int, ...]) -> str:
    if not shape:
        return "[]"
    return str(list(int(i) for i in np.unravel_index(flat_index, shape)))


def _check_ignore_index(ignore_index: Any) -> int | None:
    if ignore_index is None:
        return None
    if isinstance(ignore_index, (bool, np.bool_)) or not isinstance(
        ignore_index, numbers.Integral
    ):
        raise TypeError(
            f"ignore_index must be an integer or None; got ignore_index={plain(ignore_index)}."
        )
    return int(ignore_index)


def is_probabilistic(labels: np.ndarray) -> bool:
    """Whether ``labels`` are probability targets (floating) rather than class indices
    (integer); any other dtype is a TypeError."""
    kind = labels.dtype.kind
    if kind in "iu":
        return False
    if kind == "f":
        return True
    raise TypeError(
        "labels must be integer class indices or floating probabilities; "
        f"got dtype {labels.dtype}."
    )


_UNSIGNED = {n: np.dtype(f"u{n}") for n in (1, 2, 4, 8)}


def labels_in_range(labels: np.ndarray, K: int) -> bool:
    """Whether every integer label lies in ``[0, K)``, in one reduction.

    Signed labels are viewed as unsigned, where a negative one is huge, so one ``max``
    decides; the lean path and :func:`check_class_indices` both ask this.
    """
    if labels.size == 0:
        return True
    dt = labels.dtype
    if dt.kind == "i" and dt.isnative:
        labels = labels.view(_UNSIGNED[dt.itemsize])
    elif dt.kind == "i":
        return bool(labels.min() >= 0 and labels.max() < K)
    if labels.ndim == 1:
        # argmax and one element cost a third of a reduction's setup, which is most
        # of the time for the label vectors of small calls.
        return bool(labels[labels.argmax()] < K)
    return bool(np.maximum.reduce(labels, axis=None) < K)


#: PyTorch's default ``ignore_index``; smoothce's is None.
TORCH_IGNORE_INDEX = -100


def check_class_indices(
    labels: np.ndarray, K: int, ignore_index: int | None, *, can_ignore: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate integer labels; return ``(safe intp labels, counted mask or None)``.

    Ignored entries are replaced by 0 in the returned (new) array so the engine can
    index with it; the mask says they contribute nothing. ``can_ignore``: whether the
    caller takes an ``ignore_index`` (then a label of -100 without one gets a hint).
    """
    counted = None
    if ignore_index is not None:
        ignored = labels == ignore_index
        if ignored.any():
            counted = ~ignored
    # Without ignored entries two reductions settle it; the mask (and the position of
    # the first offender) is built only when something is out of range.
    if counted is None and labels_in_range(labels, K):
        return labels.astype(np.intp, copy=False), None
    bad = (labels < 0) | (labels >= K)
    if counted is not None:
        bad &= counted
    if bad.any():
        first = int(np.argmax(bad))
        value = labels.reshape(-1)[first]
        allowed = f"[0, {K})" + (
            "" if ignore_index is None else f" or ignore_index={ignore_index}"
        )
        where = _position(first, labels.shape)
        hint = ""
        if can_ignore and ignore_index is None and value == TORCH_IGNORE_INDEX:
            # Padding marked as PyTorch marks it, where smoothce ignores nothing.
            hint = (
                f" {TORCH_IGNORE_INDEX} is PyTorch's default ignore_index; smoothce ignores "
                f"no label by default: pass ignore_index={TORCH_IGNORE_INDEX} to leave "
                "these elements out."
            )
        raise ValueError(
            f"labels must be class indices in {allowed}; got labels{where} = {int(value)}.{hint}"
        )
    if counted is None:
        # astype copies only when the dtype differs; intp labels are indexed as they are.
        return labels.astype(np.intp, copy=False), None
    return np.where(counted, labels, 0).astype(np.intp, copy=False), counted


def check_distribution_array(
    name: str, values: np.ndarray, *, rule: str = "non-negative and finite"
) -> None:
    """Raise unless every entry of ``values`` is finite and >= 0 (NaN is rejected)."""
    if values.size == 0:
        return
    # min/max are two reductions without temporaries; NaN makes the comparison False.
    lo, hi = values.min(), values.max()
    if lo >= 0 and np.isfinite(hi):
        return
    with np.errstate(invalid="ignore"):
        bad = ~(np.isfinite(values) & (values >= 0))
    first = int(np.argmax(bad))
    raise ValueError(
        f"{name} must be {rule}; got {name}{_position(first, values.shape)} = "
        f"{plain(values.reshape(-1)[first])}."
    )


def as_real_array(name: str, values: npt.ArrayLike) -> np.ndarray:
    """``values`` as a real array (floating or integer); bfloat16 as float32 (a copy).

    bfloat16 class weights and priors are accepted, as Liger-Kernel accepts bfloat16
    class weights: float32 holds every bfloat16 value exactly, and NumPy has no
    arithmetic of its own for bfloat16.
    """
    arr = as_array(name, values)
    if is_bfloat16(arr.dtype):
        return arr.astype(np.float32)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real floating or integer array; got dtype {arr.dtype}.")
    return arr


def widen_bfloat16(a: np.ndarray, dtype: npt.DTypeLike = np.float32) -> np.ndarray:
    """``a`` itself, or its bfloat16 values converted exactly to ``dtype`` (float32 or
    float64): probability targets may be bfloat16, like the logits, and are promoted
    once as float16 ones are."""
    return a.astype(dtype) if is_bfloat16(a.dtype) else a


#: Largest class weights used as given (``scale = 1`` in :func:`check_weight`).
UNSCALED_WEIGHTS = (2.0**-100, 2.0**100)


def check_weight(weight: npt.ArrayLike | None, K: int) -> tuple[np.ndarray | None, float]:
    """Validate class weights; return ``(float64 weights / scale, scale)``.

    The loss is linear in the weights, so the engine works with weights whose largest
    entry lies in [1, 2) and multiplies the result by ``scale``, a power of two
    (exact). This keeps subnormal weights (1e-310) from overflowing ``1 / denominator``
    and huge ones from overflowing the products. Weights of ordinary size (largest in
    [2**-100, 2**100]) are used as given, with ``scale = 1``.
    """
    if weight is None:
        return None, 1.0
    w = as_real_array("weight", weight)
    if w.shape != (K,):
        raise ValueError(
            f"weight must have shape ({K},), one entry per class; got shape {w.shape}."
        )
    check_distribution_array("weight", w)
    w = w.astype(np.float64)
    top = float(w.max())
    lo, hi = UNSCALED_WEIGHTS
    if top == 0.0 or lo <= top <= hi:
        return w, 1.0
    # top = f * 2**e with f in [0.5, 1): dividing by 2**(e - 1) puts the largest
    # weight in [1, 2), and 2**(e - 1) is representable even for top near 1.8e308.
    exponent = math.frexp(top)[1] - 1
    return np.ldexp(w, -exponent), math.ldexp(1.0, exponent)


def promoted(a: np.ndarray, compute_dtype: np.dtype[Any]) -> np.ndarray:
    """``a`` in at least ``compute_dtype``'s precision, native byte order (a copy only
    when that changes something)."""
    return a.astype(np.result_type(a.dtype, compute_dtype), copy=False)


def prior_sum_tolerance(dtype: np.dtype[Any], K: int) -> float:
    """How far from 1 the float64 sum of ``K`` prior values of ``dtype`` may honestly be.

    A prior is a distribution rounded to ``dtype``: normalising it (``u / u.sum()``)
    rounds its sum, pairwise, with a relative error of at most ``ceil(log2 K)`` units
    in the last place, and rounding each of the ``K`` values adds at most half a unit
    of their total (1) plus, for values in the subnormal range, half the smallest
    subnormal each. The sum itself is taken in float64 (``K`` float64 units at most).
    Twice that bound leaves room for the normalisation's own division. Integers are
    exact: only the float64 sum's rounding is allowed.

    For K = 1000 this is 1.1e-2 in float16, 1.3e-6 in float32, 2.2e-13 in float64 and
    8.6e-2 in bfloat16. A prior summing to 1.1 is rejected in every dtype for every K up
    to 2**20 (bfloat16: up to 2048); float16's bound reaches 0.083 there, because
    float16 cannot hold a distribution over that many classes any closer.
    """
    f64 = np.finfo(np.float64)
    exact_sum = K * float(f64.eps)
    if is_bfloat16(dtype):
        # float32's exponent range with 7 fraction bits (constants, so that the rule
        # needs no ml_dtypes): eps 2**-7, smallest subnormal 2**-133.
        eps, subnormal = 2.0**-7, 2.0**-133
    elif dtype.kind == "f":
        info = np.finfo(dtype)
        eps, subnormal = float(info.eps), float(info.smallest_subnormal)
    else:
        return exact_sum
    unit = eps / 2  # unit roundoff
    levels = max(1, math.ceil(math.log2(K))) if K > 1 else 1
    return 2.0 * ((levels + 1) * unit + K * subnormal / 2) + exact_sum


def check_prior(
    prior: Any,
    out_shape: tuple[int, ...],
    class_axis: int,
    *,
    probabilistic: bool,
    compute_dtype: np.dtype[Any] | None = None,
) -> Prior:
    """Validate ``prior`` for targets of ``out_shape`` whose classes lie on ``class_axis``.

    A per-sample prior narrower than ``compute_dtype`` (float16, or float32 for float64
    logits) is promoted once, before it is broadcast: the gradient multiplies it by
    Python floats, which NumPy would otherwise do in the prior's own precision.
    """
    K = out_shape[class_axis]
    if prior is None or (isinstance(prior, str) and prior == "uniform"):
        return Prior("uniform")
    if isinstance(prior, str):
        if prior != "others":
            raise ValueError(
                f"prior must be None, one of {_PRIOR_NAMES}, or an array; "
                f"got prior={plain(prior)}."
            )
        if probabilistic:
            raise ValueError(
                "prior='others' spreads epsilon over the classes other than the label, so it "
                "needs integer class labels; got probability targets."
            )
        if K < 2:
            raise ValueError(f"prior='others' needs at least 2 classes; got {K} class.")
        return Prior("others")
    given = as_array("prior", prior)
    u = as_real_array("prior", given)  # bfloat16 read as float32, exactly
    if u.shape == (K,):
        kind: Literal["class", "sample"] = "class"
        sums = np.array([u.sum(dtype=np.float64)])
        values = u.astype(np.float64)
    else:
        try:
            values = np.broadcast_to(u, out_shape)
        except ValueError:
            raise ValueError(
                f"prior must have shape ({K},) or be broadcastable to {out_shape}; "
                f"got shape {u.shape}."
            ) from None
        kind = "sample"
        sums = values.sum(axis=class_axis, dtype=np.float64)
        if compute_dtype is not None:
            values = np.broadcast_to(promoted(u, compute_dtype), out_shape)
        values = classes_last(values, class_axis % len(out_shape))
    check_distribution_array("prior", u)
    tol = prior_sum_tolerance(given.dtype, K)  # the rounding of the dtype it came in
    off = np.abs(sums - 1.0) > tol
    if off.any():
        first = int(np.argmax(off))
        where = "" if kind == "class" else f" at batch position {_position(first, sums.shape)}"
        raise ValueError(
            f"prior must sum to 1 along the class axis (within {tol:.1e}, the rounding of "
            f"{K} {given.dtype} values); got a sum of {float(sums.reshape(-1)[first])!r}{where}."
        )
    return Prior(kind, values)


def prepare(
    logits: npt.ArrayLike,
    labels: npt.ArrayLike,
    epsilon: Any,
    *,
    axis: Any,
    reduction: Any,
    prior: Any,
    weight: npt.ArrayLike | None,
    ignore_index: Any,
    num_classes: Any,
    z_loss: Any = 0.0,
    softcap: Any = None,
) -> Problem:
    """Validate every argument of a loss call and return the normalised :class:`Problem`."""
    z_in, ax = check_logits(logits, axis)
    K = z_in.shape[ax]
    compute_dtype, grad_dtype = compute_dtypes(z_in.dtype)
    eps = check_epsilon(epsilon)
    red = check_reduction(reduction)
    if num_classes is not None:
        check_num_classes(num_classes, K)
    ignore = _check_ignore_index(ignore_index)
    zl = check_z_loss(z_loss)
    cap = check_softcap(softcap)

    batch_shape = z_in.shape[:ax] + z_in.shape[ax + 1 :]
    # bfloat16 probability targets are promoted once, exactly, as float16 ones are.
    y = widen_bfloat16(as_array("labels", labels), compute_dtype)
    # An empty Python list arrives as float64; with the class-index shape it is
    # unambiguous, so treat it as (zero) class indices.
    if y.dtype.kind == "f" and y.size == 0 and y.shape == batch_shape:
        y = y.astype(np.intp)
    probabilistic = is_probabilistic(y)
    if not probabilistic:
        if y.shape != batch_shape:
            raise ValueError(
                f"labels (integer class indices) must have the shape of logits without the "
                f"class axis {ax}, {batch_shape}; got shape {y.shape}."
            )
        y, counted = check_class_indices(y, K, ignore)
    else:
        if y.shape != z_in.shape:
            raise ValueError(
                f"labels with a floating dtype are probability targets and must have the "
                f"shape of logits {z_in.shape}; got shape {y.shape}. Pass class indices "
                f"with an integer dtype."
            )
        if ignore is not None:
            raise ValueError(
                "ignore_index applies to integer class labels only; got probability targets "
                f"with ignore_index={ignore}."
            )
        check_distribution_array("labels", y, rule="non-negative and finite (probabilities)")
        # Promoted once here (float16 targets, or float32 ones for float64 logits): the
        # gradient scales them by Python floats, which NumPy does in their own dtype.
        y = classes_last(promoted(y, compute_dtype), ax)
        counted = None
    w, w_scale = check_weight(weight, K)
    return Problem(
        z=classes_last(z_in, ax),
        logits_shape=z_in.shape,
        axis=ax,
        num_classes=K,
        compute_dtype=compute_dtype,
        grad_dtype=grad_dtype,
        epsilon=eps,
        labels=y,
        probabilistic=probabilistic,
        counted=counted,
        prior=check_prior(
            prior, z_in.shape, ax, probabilistic=probabilistic, compute_dtype=compute_dtype
        ),
        weight=w,
        reduction=red,
        weight_scale=w_scale,
        z_loss=zl,
        softcap=cap,
    )
