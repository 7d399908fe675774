"""Soft targets: ``q = (1 - epsilon) t + epsilon u``.

The loss itself never builds ``q`` for integer labels (see :mod:`smoothce._engine`);
this module builds it densely for users who want the matrix (:func:`smooth_labels`)
and for the few rows the engine must evaluate term by term (rows with ``-inf`` logits,
where ``0 * log 0`` has to be read as 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ._validation import (
    Prior,
    as_array,
    check_class_indices,
    check_distribution_array,
    check_epsilon,
    check_num_classes,
    check_prior,
    is_probabilistic,
    widen_bfloat16,
)

__all__ = ["dense_targets", "smooth_labels"]


def dense_targets(
    labels: np.ndarray,
    probabilistic: bool,
    prior: Prior,
    epsilon: float,
    K: int,
    dtype: np.dtype[Any],
) -> np.ndarray:
    """Dense ``q`` of shape ``(rows, K)`` for 1-D integer or 2-D probability ``labels``.

    ``prior.values`` must already be sliced to the same rows for ``kind == "sample"``.
    """
    rows = labels.shape[0]
    q = np.empty((rows, K), dtype=dtype)
    # Start from the prior term epsilon * u, then add the label term (1 - epsilon) * t:
    # for one-hot t that is a scatter into one column per row, never a dense one-hot.
    if prior.kind == "uniform":
        q.fill(epsilon / K)
    elif prior.kind == "others":
        q.fill(epsilon / (K - 1))
    else:
        assert prior.values is not None
        np.multiply(prior.values, epsilon, out=q, casting="unsafe")
    if probabilistic:
        q += (1.0 - epsilon) * labels
    else:
        r = np.arange(rows)
        if prior.kind == "others":
            q[r, labels] = 1.0 - epsilon  # the label gets no share of epsilon
        else:
            q[r, labels] += 1.0 - epsilon
    return q


def smooth_labels(
    labels: npt.ArrayLike,
    num_classes: int,
    epsilon: float = 0.0,
    *,
    prior: Any = None,
    dtype: npt.DTypeLike | None = None,
) -> np.ndarray:
    r"""Dense soft-target matrix :math:`q = (1 - \epsilon)\,t + \epsilon\,u`.

    The loss functions never need this matrix for integer labels; it is here for
    users who want to inspect, store or reuse the targets.

    .. math::

        q_k = (1 - \epsilon)\,t_k + \epsilon\,u_k,
        \qquad t = \operatorname{onehot}(y) \text{ or given probabilities.}

    Parameters
    ----------
    labels : array_like of int, shape (...), or of float, shape (..., num_classes)
        Integer class indices in ``[0, num_classes)``, or probability targets with the
        classes on the last axis (non-negative, finite; used as given).
    num_classes : int
        K, the number of classes.
    epsilon : float, default 0.0
        Smoothing strength in [0, 1]; 0 returns the one-hot (or given) targets.
    prior : None, "uniform", "others" or array_like, default None
        The smoothing distribution u: ``None``/``"uniform"`` gives 1/K to every class;
        ``"others"`` gives 1/(K-1) to every class but the label (integer labels only);
        an array of shape (K,) is a class prior; an array broadcastable to the output
        shape ``(..., K)`` is a per-sample prior. Arrays must be non-negative and sum to
        1 over the classes.
    dtype : dtype, default float64
        Floating dtype of the result.

    Returns
    -------
    q : ndarray, shape (..., num_classes)
        C-contiguous, a new array; each row sums to 1 when ``t`` does.

    See Also
    --------
    cross_entropy : the loss, computed without building ``q``.

    References
    ----------
    .. [1] C. Szegedy et al., "Rethinking the Inception Architecture for Computer
       Vision", CVPR 2016 (uniform prior, epsilon/K).
    .. [2] R. Müller, S. Kornblith, G. Hinton, "When does label smoothing help?",
       NeurIPS 2019.

    Examples
    --------
    >>> import smoothce
    >>> smoothce.smooth_labels([0, 2], num_classes=3, epsilon=0.3)
    array([[0.8, 0.1, 0.1],
           [0.1, 0.1, 0.8]])

    fairseq's variant, ``epsilon/(K-1)`` on the other classes, gives the label exactly
    ``1 - epsilon``:

    >>> smoothce.smooth_labels([1], num_classes=3, epsilon=0.2, prior="others")
    array([[0.1, 0.8, 0.1]])
    """
    K = check_num_classes(num_classes)
    eps = check_epsilon(epsilon)
    out_dtype = np.dtype(np.float64 if dtype is None else dtype)
    if out_dtype.kind != "f":
        raise TypeError(f"dtype must be a floating dtype; got dtype={out_dtype}.")
    y = widen_bfloat16(as_array("labels", labels))  # bfloat16 probabilities: exact float32
    probabilistic = is_probabilistic(y)
    if not probabilistic:
        out_shape = (*y.shape, K)
        safe, _ = check_class_indices(y, K, None, can_ignore=False)
        flat: np.ndarray = safe.reshape(-1)
    else:
        if y.ndim == 0 or y.shape[-1] != K:
            raise ValueError(
                f"labels with a floating dtype are probability targets and need "
                f"num_classes={K} entries on their last axis; got shape {y.shape}."
            )
        out_shape = y.shape
        check_distribution_array("labels", y, rule="non-negative and finite (probabilities)")
        flat = y.reshape(-1, K)
    u = check_prior(prior, out_shape, len(out_shape) - 1, probabilistic=probabilistic)
    if u.kind == "sample":
        assert u.values is not None
        u = Prior("sample", u.values.reshape(-1, K))
    # Built in float64 and rounded once: in float16 the sum (1 - eps) t + eps u would be
    # rounded twice (and `eps * u` taken in the prior's own precision).
    q = dense_targets(flat, probabilistic, u, eps, K, np.dtype(np.float64))
    if out_dtype != q.dtype:
        q = q.astype(out_dtype)
    return q.reshape(out_shape)
