r"""The public loss functions: loss, gradient, and both in one pass.

All three share one signature and one validation step (:func:`smoothce._validation.prepare`)
and are evaluated by :func:`smoothce._engine.evaluate`.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import numpy.typing as npt

from ._engine import evaluate
from ._lean import lean_call
from ._validation import Problem, check_num_classes, prepare

__all__ = [
    "cross_entropy",
    "cross_entropy_grad",
    "cross_entropy_with_grad",
    "soft_target_cross_entropy",
]

_SHARED_PARAMETERS = r"""
    Parameters
    ----------
    logits : array_like, shape (..., K, ...)
        Unnormalised log-probabilities, float16/float32/float64, bfloat16
        (``ml_dtypes.bfloat16``, computed in float32 like float16) or integer (promoted
        to float64); the K classes lie on ``axis``. Any memory layout; never modified
        (except through an explicit ``out``).
    labels : array_like
        Either integer class indices with the shape of ``logits`` without the class
        axis, in ``[0, K)`` (or equal to ``ignore_index``); or floating probability
        targets (bfloat16 included) with the shape of ``logits``, non-negative and
        finite. Probability
        rows are used as given: a row that does not sum to one acts as a target with
        that total mass (the loss is linear in the target), as in PyTorch.
    epsilon : float, default 0.0
        Smoothing strength in [0, 1]: ``q = (1 - epsilon) t + epsilon u``.
        0 is plain cross-entropy; 1 puts all target mass on the prior.
    axis : int, default -1
        The class axis of ``logits`` (and of probability ``labels``).
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"none"`` returns one loss per element (the shape of ``logits`` without the
        class axis); ``"sum"`` adds them; ``"mean"`` divides the sum by the total
        ``weight[label]`` of the counted elements for integer labels (their count
        without ``weight``) and by the number of elements for probability targets,
        exactly as :func:`torch.nn.functional.cross_entropy`. A mean over no counted
        element (or zero total weight) is 0.0 with a zero gradient, where PyTorch
        returns NaN.
    prior : None, "uniform", "others" or array_like, default None
        The smoothing distribution u. ``None``/``"uniform"``: 1/K on every class
        (PyTorch's ``label_smoothing``). ``"others"``: 1/(K-1) on every class except
        the label (fairseq; the label gets exactly ``1 - epsilon``; integer labels,
        K >= 2). An array of shape (K,): a class prior. An array broadcastable to the
        shape of ``logits``: a per-sample prior. Arrays (of any real dtype, bfloat16
        included) must be non-negative and sum to 1 along the class axis.
    weight : array_like, shape (K,), optional
        Non-negative class weights ``w`` (any real dtype, bfloat16 included); the
        element loss is :math:`-\sum_k w_k q_k \log p_k`.
    ignore_index : int, optional
        Integer label value whose elements contribute nothing: zero loss, zero
        gradient, and no share of the mean's denominator. No label is ignored by
        default (PyTorch's default is -100).
    num_classes : int, optional
        If given, must equal K (a check, not a conversion).
    workers : int, optional
        Threads to use, as in :mod:`scipy.fft`: a positive count, or a negative one
        counted back from the available cores (-1 = all). The default, None, uses one
        thread below 2**20 logits and every core above. Results are bitwise
        identical for every value: the blocks and the order in which their partial
        sums are combined do not depend on it.
    z_loss : float, default 0.0
        Coefficient of PaLM's auxiliary z-loss (Liger-Kernel's ``lse_square_scale``):
        ``z_loss * logsumexp(z)**2`` is added to the loss of every counted element,
        with gradient ``2 * z_loss * logsumexp(z) * softmax(z)``. As in Liger-Kernel it
        is not multiplied by class weights, ignored elements get none, and
        ``"mean"`` divides its sum by the number of counted elements (the number of
        elements for probability targets), even when ``weight`` makes the
        cross-entropy's denominator the total weight.
    softcap : float, optional
        Logit soft-capping (Gemma 2): the logits are replaced by
        ``softcap * tanh(z / softcap)`` before everything else, z-loss included, and
        the gradient is taken with respect to the original logits (chain rule,
        ``1 / cosh(z / softcap)**2``). Positive; None (the default) leaves the
        logits as they are. As in Liger-Kernel, a ``-inf`` logit becomes the finite
        ``-softcap``: masking classes with ``-inf`` does not survive the cap."""


def _shared_doc(func: Any) -> Any:
    """Insert the parameters shared by the three loss functions into ``func``'s docstring."""
    func.__doc__ = func.__doc__.replace("{parameters}", _SHARED_PARAMETERS.strip("\n"))
    return func


def _compute(
    logits: Any,
    labels: Any,
    epsilon: Any,
    axis: Any,
    reduction: Any,
    prior: Any,
    weight: Any,
    ignore_index: Any,
    num_classes: Any,
    workers: Any,
    z_loss: Any,
    softcap: Any,
    out: Any,
    *,
    want_loss: bool,
    want_grad: bool,
) -> tuple[Any, np.ndarray | None]:
    """The one route of the three loss functions: ``(loss, grad)`` (None where not
    wanted). The lean path answers the common small call (it implements neither the
    z-loss nor soft-capping); everything else is validated once and run by the engine."""
    if softcap is None and type(z_loss) in (float, int) and z_loss == 0:
        lean = lean_call(
            logits, labels, epsilon, axis, reduction, prior, weight, ignore_index,
            num_classes, workers, out, want_loss, want_grad,
        )  # fmt: skip
        if lean is not None:
            return lean
    p = prepare(
        logits,
        labels,
        epsilon,
        axis=axis,
        reduction=reduction,
        prior=prior,
        weight=weight,
        ignore_index=ignore_index,
        num_classes=num_classes,
        z_loss=z_loss,
        softcap=softcap,
    )
    grad = None
    if want_grad:
        if out is None:
            grad = np.empty(p.logits_shape, dtype=p.grad_dtype)
        else:
            grad = _validate_out(out, p, logits, labels)
    return evaluate(p, want_loss=want_loss, grad=grad, workers=workers)


def _validate_out(out: Any, p: Problem, logits: Any, labels: Any) -> np.ndarray:
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a NumPy array or None; got {type(out).__name__}.")
    # Subclasses change indexing and arithmetic (np.matrix stays 2-D, np.ma carries a
    # mask the engine would not update), so only plain arrays and memory maps (plain
    # arrays backed by a file) are written to; checked before anything is written.
    if type(out) not in (np.ndarray, np.memmap):
        raise TypeError(
            "out must be a plain numpy.ndarray (or numpy.memmap); got an instance of "
            f"{type(out).__module__}.{type(out).__qualname__}."
        )
    if out.shape != p.logits_shape or out.dtype != p.grad_dtype:
        raise ValueError(
            f"out must have the shape and dtype of the gradient, {p.logits_shape} "
            f"{p.grad_dtype}; got {out.shape} {out.dtype}."
        )
    if not out.flags.writeable:
        raise ValueError("out must be writable; got a read-only array.")
    if isinstance(logits, np.ndarray) and np.may_share_memory(out, logits):
        same = (
            out.__array_interface__["data"][0] == logits.__array_interface__["data"][0]
            and out.strides == logits.strides
        )
        if not same:
            raise ValueError(
                "out may be logits itself (in-place) but must not partly overlap it; "
                "got an array sharing memory with logits at a different offset or layout."
            )
    for a in (labels, p.labels, p.prior.values):
        if isinstance(a, np.ndarray) and np.may_share_memory(out, a):
            raise ValueError("out must not share memory with labels or prior.")
    return out


@_shared_doc
def cross_entropy(
    logits: npt.ArrayLike,
    labels: npt.ArrayLike,
    epsilon: float = 0.0,
    *,
    axis: int = -1,
    reduction: str = "mean",
    prior: Any = None,
    weight: npt.ArrayLike | None = None,
    ignore_index: int | None = None,
    num_classes: int | None = None,
    workers: int | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> Any:
    r"""Softmax cross-entropy with smoothed (soft) targets.

    For each element, with :math:`p = \operatorname{softmax}(z)` over the class axis,
    :math:`t` the one-hot label (or the given probabilities) and :math:`u` the prior,

    .. math::

        q = (1 - \epsilon)\, t + \epsilon\, u, \qquad
        \ell = -\sum_{k=1}^{K} w_k\, q_k \log p_k ,

    with :math:`0 \log 0 = 0`: a class masked by a ``-inf`` logit costs nothing where
    its target mass is zero, and ``+inf`` where it is not. It is computed in shifted
    coordinates without forming ``log(softmax(z))`` or, for integer labels, ``q``.

    {parameters}

    Returns
    -------
    loss : numpy floating scalar or ndarray
        ``"mean"``/``"sum"``: a NumPy scalar, float32 for float16/float32 logits and
        float64 otherwise. ``"none"``: an array of the shape of ``logits`` without
        the class axis, in the dtype of ``logits`` (float64 for integer logits).
        Elements with a NaN or ``+inf`` logit (or all logits ``-inf``) are NaN.

    See Also
    --------
    cross_entropy_grad : the gradient with respect to ``logits``.
    cross_entropy_with_grad : both in one pass.
    smooth_labels : the dense target matrix ``q``.

    References
    ----------
    .. [1] C. Szegedy, V. Vanhoucke, S. Ioffe, J. Shlens, Z. Wojna, "Rethinking the
       Inception Architecture for Computer Vision", CVPR 2016.
    .. [2] R. Müller, S. Kornblith, G. Hinton, "When does label smoothing help?",
       NeurIPS 2019.

    Examples
    --------
    Two samples, K = 3, epsilon = 0.1 (the first worked example of the docs):

    >>> import numpy as np, smoothce
    >>> logits = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    >>> loss = smoothce.cross_entropy(logits, [0, 2], epsilon=0.1)
    >>> round(float(loss), 6), loss.dtype
    (0.927312, dtype('float64'))
    >>> smoothce.cross_entropy(logits, [0, 2], epsilon=0.1, reduction="none")
    array([0.33651269, 1.51811138])

    Classes on axis 1, as in PyTorch's (N, C, d1) layout, with an ignored element:

    >>> z = np.zeros((1, 4, 2))
    >>> smoothce.cross_entropy(z, [[1, -100]], axis=1, ignore_index=-100, reduction="none")
    array([[1.3862..., 0.        ]])
    """
    loss, _ = _compute(
        logits, labels, epsilon, axis, reduction, prior, weight, ignore_index,
        num_classes, workers, z_loss, softcap, None, want_loss=True, want_grad=False,
    )  # fmt: skip
    return loss


@_shared_doc
def cross_entropy_grad(
    logits: npt.ArrayLike,
    labels: npt.ArrayLike,
    epsilon: float = 0.0,
    *,
    axis: int = -1,
    reduction: str = "mean",
    prior: Any = None,
    weight: npt.ArrayLike | None = None,
    ignore_index: int | None = None,
    num_classes: int | None = None,
    workers: int | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> np.ndarray:
    r"""Gradient of :func:`cross_entropy` with respect to ``logits``.

    For one element, with :math:`W = \sum_k w_k q_k`,

    .. math::

        \frac{\partial \ell}{\partial z_j} = W\, p_j - w_j q_j ,

    which is :math:`\operatorname{softmax}(z) - q` without weights. ``"mean"`` divides
    by the mean's denominator; ``"none"`` gives each element's own gradient (the
    gradient of the sum); ignored elements get zero rows.

    {parameters}

    Returns
    -------
    grad : ndarray
        Shape of ``logits``, C-contiguous, dtype of ``logits`` (float16 is computed
        in float32 and rounded once; integer logits give float64).

    See Also
    --------
    cross_entropy_with_grad : loss and gradient in one pass, optionally in place.

    Examples
    --------
    >>> import numpy as np, smoothce
    >>> g = smoothce.cross_entropy_grad([[0.0, 0.0]], [0], epsilon=0.2)
    >>> g
    array([[-0.4,  0.4]])
    >>> g.sum(axis=-1)  # rows of an unweighted gradient sum to zero
    array([0.])
    """
    _, grad = _compute(
        logits, labels, epsilon, axis, reduction, prior, weight, ignore_index,
        num_classes, workers, z_loss, softcap, None, want_loss=False, want_grad=True,
    )  # fmt: skip
    assert grad is not None
    return grad


@_shared_doc
def cross_entropy_with_grad(
    logits: npt.ArrayLike,
    labels: npt.ArrayLike,
    epsilon: float = 0.0,
    *,
    axis: int = -1,
    reduction: str = "mean",
    prior: Any = None,
    weight: npt.ArrayLike | None = None,
    ignore_index: int | None = None,
    num_classes: int | None = None,
    workers: int | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    out: np.ndarray | None = None,
) -> tuple[Any, np.ndarray]:
    r"""Loss and gradient together, sharing one shift and one exponential per element.

    Equal to ``(cross_entropy(...), cross_entropy_grad(...))`` but about half the
    work: the shifted logits are exponentiated once and turned into the gradient in
    place, inside ``out`` when it is given.

    {parameters}
    out : ndarray, optional
        Array to receive the gradient: the shape of ``logits`` and the gradient's
        dtype, writable. It may be ``logits`` itself for an explicit in-place update
        (each block is read before it is overwritten); it must not otherwise overlap
        ``logits``, ``labels`` or ``prior``.

    Returns
    -------
    loss : numpy floating scalar or ndarray
        As returned by :func:`cross_entropy`.
    grad : ndarray
        As returned by :func:`cross_entropy_grad`; ``out`` itself when given.

    Examples
    --------
    A training step of softmax regression, written without any dense target:

    >>> import numpy as np, smoothce
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.normal(size=(8, 5)), rng.integers(0, 3, size=8)
    >>> W = np.zeros((5, 3))
    >>> loss, dlogits = smoothce.cross_entropy_with_grad(X @ W, y, epsilon=0.1)
    >>> float(loss) == float(np.log(3))  # uniform predictions
    True
    >>> W -= 0.5 * X.T @ dlogits

    In place: the logits buffer becomes the gradient.

    >>> z = np.array([[1.0, 2.0, 3.0]])
    >>> _, g = smoothce.cross_entropy_with_grad(z, [2], out=z)
    >>> g is z
    True
    """
    loss, grad = _compute(
        logits, labels, epsilon, axis, reduction, prior, weight, ignore_index,
        num_classes, workers, z_loss, softcap, out, want_loss=True, want_grad=True,
    )  # fmt: skip
    assert grad is not None
    return loss, grad


def soft_target_cross_entropy(
    logits: npt.ArrayLike,
    y_true: npt.ArrayLike,
    num_classes: int,
    epsilon: float,
    round_decimals: int = 6,
) -> float:
    r"""Mean label-smoothed cross-entropy as a Python float rounded to 6 decimals.

    This is the classic signature ``(logits, y_true, num_classes, epsilon,
    round_decimals)`` in which worked examples of label smoothing are often stated.
    It exists so that a value quoted that way can be reproduced and compared exactly
    (``==``) rather than within a tolerance: the rounding to ``round_decimals``
    decimals is the point. Everything else should call :func:`cross_entropy`, which
    does not round, keeps the NumPy dtype, and offers the other priors, class
    weights, ``ignore_index``, the reductions and ``axis``.

    The target puts :math:`1 - \epsilon + \epsilon/K` on the true class and
    :math:`\epsilon/K` on the others (PyTorch's convention); the result is the batch
    mean of :math:`-\sum_i q_i \log p_i`, rounded to ``round_decimals`` decimals. It
    is ``round(float(cross_entropy(logits, y_true, epsilon,
    num_classes=num_classes)), round_decimals)``.

    Parameters
    ----------
    logits : array_like, shape (batch, num_classes)
        Logits, classes on the last axis.
    y_true : array_like of int, shape (batch,)
        True class indices in ``[0, num_classes)``.
    num_classes : int
        K; must equal ``logits.shape[-1]``.
    epsilon : float
        Smoothing in [0, 1].
    round_decimals : int, default 6
        Decimals kept by Python's :func:`round`.

    Returns
    -------
    float
        The rounded mean loss.

    See Also
    --------
    cross_entropy : the unrounded loss, with every option.

    Examples
    --------
    The three worked examples printed by ``python -m smoothce``:

    >>> from smoothce import soft_target_cross_entropy
    >>> soft_target_cross_entropy([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]], [0, 2], 3, 0.1)
    0.927312
    >>> soft_target_cross_entropy([[1.0, -1.0], [0.5, 0.5]], [0, 1], 2, 0.05)
    0.435038
    >>> soft_target_cross_entropy([[3.0, 1.0, 0.0, -1.0]], [0], 4, 0.0)
    0.185182
    """
    if isinstance(round_decimals, (bool, np.bool_)) or not isinstance(
        round_decimals, numbers.Integral
    ):
        raise TypeError(
            f"round_decimals must be an integer; got round_decimals={round_decimals!r}."
        )
    check_num_classes(num_classes)
    loss = cross_entropy(logits, y_true, epsilon, num_classes=num_classes)
    return round(float(loss), int(round_decimals))
