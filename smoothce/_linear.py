r"""The fused linear head: cross-entropy of ``hidden @ classifier.T + bias`` without
ever holding the (tokens x vocabulary) logit matrix.

Rows are processed in blocks whose logits fit a bounded workspace. For each block
the logits are computed into the workspace (one BLAS product), the loss engine
(:func:`smoothce._engine.evaluate`) turns them into the block's loss sums and, in
place, into the logit gradient ``G``, which is consumed at once by BLAS:
``d_hidden[block] = G @ classifier``, ``d_classifier += G.T @ hidden[block]`` (into a
bounded scratch, then added in place) and ``d_bias += G.sum(0)``. The engine's
numerics are reused as they are; only the mean's denominators are global (computed
from the labels and weights before the blocks), and the blocks' float64 loss sums are
added exactly (:func:`math.fsum`) before the one reduction, as the engine does across
its own threads.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import replace
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from ._compat import Quiet
from ._engine import evaluate
from ._scaling import Scaling, exact_sum
from ._validation import Problem, as_array, compute_dtypes, plain, prepare

__all__ = [
    "DEFAULT_WORKSPACE",
    "LinearGrads",
    "check_features",
    "linear_cross_entropy",
    "linear_cross_entropy_with_grad",
]

#: Default bytes of the logits workspace: 32 MiB, 262 rows of a 32,000-word vocabulary
#: in float32. Each block's products are large enough for BLAS to run at full speed,
#: and the extra memory (this workspace plus scratches of the same bound for the
#: gradients) stays a small fraction of the logits of any real batch.
DEFAULT_WORKSPACE = 32 * 2**20

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)


class LinearGrads(NamedTuple):
    """Gradients of the fused linear head, each in its input's dtype and shape.

    The byte order is native whatever the input's (big-endian ``'>f8'`` hidden states
    give a native float64 gradient).

    Parameters
    ----------
    hidden : ndarray, shape (..., d)
        ``d loss / d hidden``.
    classifier : ndarray, shape (V, d)
        ``d loss / d classifier``.
    bias : ndarray, shape (V,), or None
        ``d loss / d bias``; None without a bias.

    Examples
    --------
    >>> import numpy as np, smoothce
    >>> _, g = smoothce.linear_cross_entropy_with_grad(np.ones((2, 3)), np.ones((4, 3)), [0, 1])
    >>> g.bias is None, g.classifier.shape
    (True, (4, 3))
    """

    hidden: np.ndarray
    classifier: np.ndarray
    bias: np.ndarray | None


def _floating(name: str, a: np.ndarray) -> tuple[np.dtype[Any], np.dtype[Any]]:
    """``(compute dtype, gradient dtype)`` of a floating input: the loss functions' rule
    (:func:`~smoothce._validation.compute_dtypes`), without integers. Big-endian float64
    is computed in float64 and its gradient is native; float128 is refused."""
    return compute_dtypes(a.dtype, name, integers=False)


def _check_workspace(workspace: Any) -> int:
    if isinstance(workspace, (bool, np.bool_)) or not isinstance(workspace, numbers.Integral):
        raise TypeError(
            f"workspace must be a positive integer (bytes); got workspace={plain(workspace)}."
        )
    if int(workspace) < 1:
        raise ValueError(f"workspace must be a positive number of bytes; got {int(workspace)}.")
    return int(workspace)


def aligned(a: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """``a`` in ``dtype``, copied if its memory is not aligned for it.

    NumPy hands aligned arrays only to BLAS; an unaligned operand (a Dask worker
    unpickles arrays at any byte offset) goes through NumPy's own loops, many times
    slower and rounded differently, so the same call would give other bits there.
    """
    out = a.astype(dtype, copy=False)
    return out if out.flags.aligned else out.copy()


def logits_into(
    hidden: np.ndarray, classifier: np.ndarray, bias: np.ndarray | None, out: np.ndarray
) -> np.ndarray:
    """``hidden @ classifier.T + bias`` in the first ``len(hidden)`` rows of ``out``
    (of the compute dtype; ``classifier`` and ``bias`` already in it): one BLAS
    product, ``hidden`` (rows, d) converted to the compute dtype first if need be.

    A logit beyond the compute dtype's range is ``inf`` (its row's loss NaN, as for
    such logits in :func:`cross_entropy`) and ``inf * 0`` NaN: the unfused
    computation's values, which the semantics page documents, without warnings.
    """
    z = out[: hidden.shape[0]]
    hb = aligned(hidden, out.dtype)
    with Quiet():
        np.matmul(hb, classifier.T, out=z)
        if bias is not None:
            z += bias
    return z


def check_features(hidden_shape: tuple[Any, ...], classifier_shape: tuple[Any, ...]) -> None:
    """Raise unless ``hidden``'s last axis is the (V, d) classifier's ``d``; the shapes
    are the caller's (smoothce.dask validates stand-ins without rows, so it passes the
    Dask arrays' own shapes for the message)."""
    d = classifier_shape[1]
    if hidden_shape[-1] != d:
        raise ValueError(
            f"hidden's last axis must match classifier's features ({d}), as for "
            f"hidden @ classifier.T; got hidden of shape {hidden_shape} and classifier of "
            f"shape {classifier_shape}."
        )


class _Head:
    """Validated arguments of one linear-head call."""

    def __init__(
        self,
        hidden: Any,
        classifier: Any,
        labels: Any,
        epsilon: Any,
        bias: Any,
        reduction: Any,
        prior: Any,
        weight: Any,
        ignore_index: Any,
        num_classes: Any,
        z_loss: Any,
        softcap: Any,
        workspace: Any,
    ) -> None:
        h = as_array("hidden", hidden)
        W = as_array("classifier", classifier)
        h_dtypes = _floating("hidden", h)
        W_dtypes = _floating("classifier", W)
        if h.ndim < 1:
            raise ValueError(
                "hidden must have at least one dimension (the features); got a scalar."
            )
        if W.ndim != 2:
            raise ValueError(
                f"classifier must have shape (V, d), one row per class; got shape {W.shape}."
            )
        V, d = W.shape
        check_features(h.shape, W.shape)
        if V == 0:
            raise ValueError("classifier must have at least one row (class); got shape (0, d).")
        b, b_dtypes = None, None
        if bias is not None:
            b = as_array("bias", bias)
            b_dtypes = _floating("bias", b)
            if b.shape != (V,):
                raise ValueError(f"bias must have shape ({V},); got shape {b.shape}.")
        y = as_array("labels", labels)
        if y.dtype.kind not in "iu":
            raise TypeError(
                "labels must be integer class indices for the linear head; got dtype "
                f"{y.dtype}. Probability targets would be an (N, V) array, the matrix this "
                "function exists to avoid."
            )
        if y.shape != h.shape[:-1]:
            raise ValueError(
                f"labels must have the shape of hidden without its last axis, "
                f"{h.shape[:-1]}; got shape {y.shape}."
            )
        if prior is not None and not isinstance(prior, str):
            u = as_array("prior", prior)
            if u.shape != (V,):
                raise ValueError(
                    f"prior must be None, 'uniform', 'others' or a class prior of shape "
                    f"({V},) for the linear head; got shape {u.shape}. A per-sample prior "
                    "would be an (N, V) array, the matrix this function exists to avoid."
                )
        self.workspace = _check_workspace(workspace)
        wide = any(t is not None and t[0] == _F64 for t in (h_dtypes, W_dtypes, b_dtypes))
        self.dtype = _F64 if wide else _F32
        # Each gradient in its input's dtype, native-endian (as the loss functions').
        self.grad_dtypes = (h_dtypes[1], W_dtypes[1], None if b_dtypes is None else b_dtypes[1])
        self.hidden, self.classifier, self.bias = h, W, b
        self.N, self.V, self.d = math.prod(y.shape), V, d
        self.h2 = h.reshape(self.N, d)
        # The loss engine validates the rest: a zero-strided stand-in for the logits
        # (no memory) gives it their shape and dtype.
        stand_in = np.broadcast_to(np.zeros((), dtype=self.dtype), (self.N, V))
        self.p = prepare(
            stand_in,
            y.reshape(self.N),
            epsilon,
            axis=-1,
            reduction=reduction,
            prior=prior,
            weight=weight,
            ignore_index=ignore_index,
            num_classes=num_classes,
            z_loss=z_loss,
            softcap=softcap,
        )
        self.labels_shape = y.shape

    def block_rows(self) -> int:
        """Rows per block: as many as fit ``workspace`` with their logits (at least one)."""
        return int(max(1, min(self.N, self.workspace // (self.V * self.dtype.itemsize))))

    def block_logits(self, r0: int, r1: int, out: np.ndarray) -> np.ndarray:
        """The logits of rows ``[r0, r1)`` in ``out`` (:func:`logits_into`)."""
        return logits_into(self.h2[r0:r1], self._classifier_c, self._bias_c, out)

    @functools.cached_property
    def _classifier_c(self) -> np.ndarray:
        """The classifier in the compute dtype (converted once per call, if at all)."""
        return aligned(self.classifier, self.dtype)

    @functools.cached_property
    def _bias_c(self) -> np.ndarray | None:
        return None if self.bias is None else aligned(self.bias, self.dtype)

    def run(
        self,
        want_grad: bool,
        workers: Any,
        scaling: Scaling | None = None,
        sums: bool = False,
    ) -> tuple[Any, LinearGrads | None]:
        """The loss and (``want_grad``) the gradients, one block of rows at a time.

        ``scaling`` is the whole batch's (by default that of these rows): a caller
        holding one part of a larger batch (:mod:`smoothce.dask`) passes the batch's
        mean denominators. ``sums`` returns a reduced loss as the float64 pair
        ``(cross-entropy sum in engine units, z-loss sum)`` for the caller to reduce.
        """
        p, N, V, d, dt = self.p, self.N, self.V, self.d, self.dtype
        # The whole batch's scaling (mean denominators), shared by every block.
        scaling = Scaling.of(p) if scaling is None else scaling
        # One thread for the engine unless asked: BLAS threads the three products,
        # which are nearly all the work (2 d flops per logit each, against a few
        # passes), and its threads keep spinning for a while after each product, so
        # engine threads started between them fought them for the cores (the fused
        # head ran 2.3x slower than the unfused one on 2 cores, 1.1x with BLAS on one).
        engine_workers = 1 if workers is None else workers
        rows = self.block_rows()
        ws = np.empty((rows, V), dtype=dt)
        Wc = self._classifier_c
        bc = self._bias_c
        loss_rows = np.empty(N, dtype=dt) if p.reduction == "none" else None
        ce_parts: list[float] = []
        z_parts: list[float] = []
        dh = dW = db = tmp = dh_t = None
        dh_rows = rows
        if want_grad:
            dh = np.empty((N, d), dtype=self.grad_dtypes[0])
            # d_hidden[block] is computed transposed, classifier.T @ G.T, into a
            # (d, rows) scratch: OpenBLAS runs (rows x V) @ (V x d) with few rows and a
            # long V about 6x slower than the same product transposed (measured at
            # rows=262, V=32000, d=512 float32: 1.17 s against 0.17 s). The scratch
            # is bounded like the workspace (sub-blocks of rows when d is large).
            dh_rows = max(1, min(rows, self.workspace // (d * dt.itemsize))) if d else rows
            dh_t = np.empty(d * dh_rows, dtype=dt)
            dW = np.zeros((V, d), dtype=dt)
            db = None if bc is None else np.zeros(V, dtype=dt)
            # d_classifier += G.T @ h, in slabs of classes so that the product's scratch
            # stays within the workspace bound.
            slab = max(1, min(V, self.workspace // (d * dt.itemsize))) if d else V
            tmp = np.empty((slab, d), dtype=dt)
        for r0 in range(0, N, rows):
            r1 = min(N, r0 + rows)
            hb = aligned(self.h2[r0:r1], dt)
            z = self.block_logits(r0, r1, ws)
            blk = self.block(r0, r1, z)
            loss, _ = evaluate(
                blk, grad=z if want_grad else None, workers=engine_workers, scaling=scaling,
                sums=True,
            )  # fmt: skip
            if loss_rows is not None:
                loss_rows[r0:r1] = loss
            else:
                ce_parts.append(loss[0])
                z_parts.append(loss[1])
            if want_grad:
                assert dh is not None
                assert dW is not None
                assert tmp is not None
                assert dh_t is not None
                for s0 in range(0, r1 - r0, dh_rows):
                    s1 = min(r1 - r0, s0 + dh_rows)
                    block_t = dh_t[: d * (s1 - s0)].reshape(d, s1 - s0)
                    with Quiet():
                        np.matmul(Wc.T, z[s0:s1].T, out=block_t)
                        dh[r0 + s0 : r0 + s1] = block_t.T  # cast to hidden's dtype
                with Quiet():
                    self._accumulate(dW, z, hb, tmp, first=r0 == 0)
                    if db is not None:
                        db += z.sum(axis=0)
        if loss_rows is not None:
            total: Any = loss_rows.reshape(self.labels_shape)
        elif sums:
            total = (exact_sum(ce_parts), exact_sum(z_parts))
        else:
            total = scaling.reduce(exact_sum(ce_parts), exact_sum(z_parts), p.scalar_dtype)
        if not want_grad:
            return total, None
        assert dh is not None
        assert dW is not None
        _, W_out, b_out = self.grad_dtypes
        with Quiet():
            grads = LinearGrads(
                dh.reshape(self.hidden.shape),
                dW.astype(W_out, copy=False),
                None if db is None or b_out is None else db.astype(b_out, copy=False),
            )
        return total, grads

    def block(self, r0: int, r1: int, z: np.ndarray) -> Problem:
        """The engine's problem for rows ``[r0, r1)`` whose logits are ``z``."""
        p = self.p
        return replace(
            p,
            z=z,
            logits_shape=z.shape,
            labels=p.labels[r0:r1],
            counted=None if p.counted is None else p.counted[r0:r1],
        )

    @staticmethod
    def _accumulate(
        dW: np.ndarray, G: np.ndarray, hb: np.ndarray, tmp: np.ndarray, first: bool
    ) -> None:
        """``dW += G.T @ hb`` without a fresh (V, d) temporary."""
        if first:
            np.matmul(G.T, hb, out=dW)
            return
        V, slab = dW.shape[0], tmp.shape[0]
        for v0 in range(0, V, slab):
            v1 = min(V, v0 + slab)
            part = tmp[: v1 - v0]
            np.matmul(G[:, v0:v1].T, hb, out=part)
            dW[v0:v1] += part


_LINEAR_PARAMETERS = r"""
    Parameters
    ----------
    hidden : array_like, shape (..., d)
        Hidden states, floating (float16, bfloat16, float32 or float64).
    classifier : array_like, shape (V, d)
        The output layer's weight, one row per class (the layout of a linear layer's
        weight, as in Liger-Kernel and Cut Cross-Entropy): logits are
        ``hidden @ classifier.T + bias``.
    labels : array_like of int, shape (...)
        Class indices in ``[0, V)`` (or ``ignore_index``), the shape of ``hidden``
        without its last axis. Probability targets are refused: they would be an
        (N, V) array, the matrix this function exists to avoid.
    epsilon : float, default 0.0
        Label smoothing, as in :func:`cross_entropy`.
    bias : array_like, shape (V,), optional
        The output layer's bias.
    reduction : {"mean", "sum", "none"}, default "mean"
        As in :func:`cross_entropy`; the mean's denominator is that of the whole batch.
    prior : None, "uniform", "others" or array_like of shape (V,), default None
        As in :func:`cross_entropy`, without per-sample priors (an (N, V) array).
    weight : array_like, shape (V,), optional
        Class weights, as in :func:`cross_entropy`.
    ignore_index : int, optional
        Label value whose rows contribute nothing (zero loss and gradients).
    num_classes : int, optional
        If given, must equal V.
    workers : int, optional
        Threads of the loss engine between the products, as in :func:`cross_entropy`.
        The default, None, is one: BLAS threads the products itself (they are nearly
        all the work), and the engine's threads would compete with BLAS's, which keep
        spinning after each product. On a machine busy with other jobs, BLAS's
        threads slow this head's products (one per block of rows) more than an
        unfused head's three long ones: there, hold BLAS to one thread
        (``threadpoolctl.threadpool_limits(1)``, or ``OPENBLAS_NUM_THREADS=1``), or
        give a larger ``workspace`` (fewer, longer products).
    z_loss : float, default 0.0
        PaLM's z-loss coefficient, as in :func:`cross_entropy`.
    softcap : float, optional
        Logit soft-capping, as in :func:`cross_entropy`.
    workspace : int, default 32 MiB
        Bytes of the logits workspace: blocks of ``workspace // (V * itemsize)`` rows
        (at least one). The extra memory is at most about three times this (the
        workspace, and scratches of the same bound for the gradients of the
        classifier and of the hidden states) plus the engine's own 512 KiB per
        thread, whatever the number of rows.

    Notes
    -----
    Everything is computed in float32, or float64 when any of ``hidden``,
    ``classifier`` and ``bias`` is float64 (of either byte order; gradients come back
    native-endian). ``np.longdouble`` (float128) is refused, as for the logits of
    :func:`cross_entropy`: no path computes in it. The result equals the unfused computation
    (the logits, then :func:`cross_entropy_with_grad`, then the products) within
    rounding; reduced losses add the blocks' float64 sums exactly before the one
    reduction, with the mean's denominators of the whole batch.

    The products run in BLAS's threads. With OpenBLAS (NumPy's wheels), forking while
    another thread is inside them deadlocks the parent in ``os.fork()``: start worker
    processes with the "spawn" or "forkserver" start method (see the semantics page)."""


def _linear_doc(func: Any) -> Any:
    func.__doc__ = func.__doc__.replace("{parameters}", _LINEAR_PARAMETERS.strip("\n"))
    return func


@_linear_doc
def linear_cross_entropy(
    hidden: npt.ArrayLike,
    classifier: npt.ArrayLike,
    labels: npt.ArrayLike,
    epsilon: float = 0.0,
    *,
    bias: npt.ArrayLike | None = None,
    reduction: str = "mean",
    prior: Any = None,
    weight: npt.ArrayLike | None = None,
    ignore_index: int | None = None,
    num_classes: int | None = None,
    workers: int | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    workspace: int = DEFAULT_WORKSPACE,
) -> Any:
    r"""Cross-entropy of a linear head, ``cross_entropy(hidden @ classifier.T + bias,
    labels, ...)``, without building the logits.

    {parameters}

    Returns
    -------
    loss : numpy floating scalar or ndarray
        ``"mean"``/``"sum"``: a float32 (float64) scalar; ``"none"``: one loss per
        row, the shape of ``labels``, in the compute dtype.

    See Also
    --------
    linear_cross_entropy_with_grad : the loss and the gradients of all three inputs.

    Examples
    --------
    >>> import numpy as np, smoothce
    >>> rng = np.random.default_rng(0)
    >>> h, W = rng.normal(size=(6, 4)), rng.normal(size=(10, 4))
    >>> y = rng.integers(0, 10, size=6)
    >>> fused = smoothce.linear_cross_entropy(h, W, y, 0.1)
    >>> bool(np.isclose(fused, smoothce.cross_entropy(h @ W.T, y, 0.1), rtol=1e-14))
    True
    """
    head = _Head(
        hidden, classifier, labels, epsilon, bias, reduction, prior, weight,
        ignore_index, num_classes, z_loss, softcap, workspace,
    )  # fmt: skip
    loss, _ = head.run(False, workers)
    return loss


@_linear_doc
def linear_cross_entropy_with_grad(
    hidden: npt.ArrayLike,
    classifier: npt.ArrayLike,
    labels: npt.ArrayLike,
    epsilon: float = 0.0,
    *,
    bias: npt.ArrayLike | None = None,
    reduction: str = "mean",
    prior: Any = None,
    weight: npt.ArrayLike | None = None,
    ignore_index: int | None = None,
    num_classes: int | None = None,
    workers: int | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    workspace: int = DEFAULT_WORKSPACE,
) -> tuple[Any, LinearGrads]:
    r"""Loss and gradients of a linear head in one pass over blocks of rows.

    Each block's logits are computed once, turned into the loss and the logit
    gradient in place, and consumed by the products ``G @ classifier`` and
    ``G.T @ hidden``: no logit is ever recomputed, and no (N, V) array exists.

    {parameters}

    Returns
    -------
    loss : numpy floating scalar or ndarray
        As returned by :func:`linear_cross_entropy`.
    grads : LinearGrads
        ``(hidden, classifier, bias)`` gradients, each in its input's dtype and shape
        (``bias`` is None without a bias). ``"none"`` gives the gradient of the sum.

    Examples
    --------
    One step of softmax regression with a bias:

    >>> import numpy as np, smoothce
    >>> rng = np.random.default_rng(0)
    >>> h, W, b = rng.normal(size=(8, 5)), np.zeros((3, 5)), np.zeros(3)
    >>> y = rng.integers(0, 3, size=8)
    >>> loss, grads = smoothce.linear_cross_entropy_with_grad(h, W, y, 0.1, bias=b)
    >>> float(loss) == float(np.log(3))
    True
    >>> grads.classifier.shape, grads.bias.shape, grads.hidden.shape
    ((3, 5), (3,), (8, 5))
    >>> W -= 0.5 * grads.classifier
    """
    head = _Head(
        hidden, classifier, labels, epsilon, bias, reduction, prior, weight,
        ignore_index, num_classes, z_loss, softcap, workspace,
    )  # fmt: skip
    loss, grads = head.run(True, workers)
    assert grads is not None
    return loss, grads
