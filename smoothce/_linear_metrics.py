r"""The metrics of a linear head from its hidden states: :func:`evaluate_linear`.

A language model's logits ``hidden @ classifier.T + bias`` are too large to store
(10 million tokens at a 128,000-word vocabulary are 2.5 TB in float16) while its final
hidden states are not. :func:`evaluate_linear` forms the logits one block of rows at a
time in a bounded workspace (one BLAS product per block,
:meth:`smoothce._linear._Head.block_logits`) and hands each block to the metrics'
single engine pass (:func:`smoothce.metrics._accumulate_problem`), whose exact
:class:`~smoothce.metrics.Accumulator`\ s merge without rounding: the same code, and
so the same values, as :func:`smoothce.metrics.evaluate` on the materialised logits
but for the rounding of the products themselves.

The arguments are validated once, by the fused head's own validation
(:class:`smoothce._linear._Head`); ``softcap`` is applied by the engine as it loads
each block, as in the loss functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from ._bins import check_bins
from ._linear import DEFAULT_WORKSPACE, _Head
from .metrics import CHUNK_ELEMENTS, Accumulator, Metrics, _accumulate_problem, _check_top_k

__all__ = ["accumulate_head", "evaluate_linear", "metrics_head"]


def metrics_head(
    hidden: Any,
    classifier: Any,
    labels: Any,
    epsilon: Any,
    *,
    bias: Any,
    softcap: Any,
    prior: Any,
    weight: Any,
    ignore_index: Any,
    workspace: Any,
) -> _Head:
    """The validated head of a metrics call: the loss functions' validation with
    ``reduction="none"``, no z-loss and no ``num_classes``."""
    return _Head(
        hidden, classifier, labels, epsilon, bias, "none", prior, weight, ignore_index,
        None, 0.0, softcap, workspace,
    )  # fmt: skip


def accumulate_head(
    head: _Head,
    top_k: int,
    n_bins: int,
    workers: Any = None,
    progress: Callable[[int, int], object] | None = None,
) -> Accumulator:
    """The :class:`~smoothce.metrics.Accumulator` of every row of ``head``.

    Blocks of :meth:`~smoothce._linear._Head.block_rows` rows: their logits in one
    workspace, then one engine pass each. ``progress(done, total)`` (rows) is called
    about every :data:`~smoothce.metrics.CHUNK_ELEMENTS` logits and at the end.
    """
    N, V = head.N, head.V
    # One engine thread unless asked: BLAS threads the products, nearly all the work,
    # and engine threads started between them fight its threads for the cores (as in
    # the fused head's loss, smoothce._linear._Head.run).
    engine_workers = 1 if workers is None else workers
    rows = head.block_rows()
    ws = np.empty((rows, V), dtype=head.dtype)
    total: Accumulator | None = None
    reported = 0
    for r0 in range(0, max(N, 1), rows):
        r1 = min(N, r0 + rows)
        z = head.block_logits(r0, r1, ws)
        acc = _accumulate_problem(head.block(r0, r1, z), top_k, n_bins, engine_workers)
        total = acc if total is None else total.merge(acc)
        if progress is not None and (r1 == N or (r1 - reported) * V >= CHUNK_ELEMENTS):
            progress(r1, N)
            reported = r1
    assert total is not None
    return total


def evaluate_linear(
    hidden: npt.ArrayLike,
    classifier: npt.ArrayLike,
    labels: npt.ArrayLike,
    epsilon: float = 0.0,
    *,
    bias: npt.ArrayLike | None = None,
    softcap: float | None = None,
    prior: Any = None,
    weight: npt.ArrayLike | None = None,
    ignore_index: int | None = None,
    top_k: int = 5,
    n_bins: int = 15,
    workers: int | None = None,
    workspace: int = DEFAULT_WORKSPACE,
    progress: Callable[[int, int], object] | None = None,
) -> Metrics:
    r"""Every metric of a linear head's logits, from its hidden states, without
    storing the logits.

    The :class:`~smoothce.metrics.Metrics` of :func:`smoothce.metrics.evaluate` on the
    logits ``hidden @ classifier.T + bias`` (soft-capped first when ``softcap`` is
    given): the smoothed loss, NLL, perplexity, top-1 and top-``k`` accuracy and the
    calibration of the head. The logits are formed one block of rows at a time in a
    workspace of ``workspace`` bytes (one matrix product per block) and read once, by
    the one engine pass that gives every metric; the extra memory is that workspace
    plus a few float64 values per row, never (rows x vocabulary). Memory maps of
    hidden states are read block by block.

    Parameters
    ----------
    hidden : array_like, shape (..., d)
        Hidden states, floating (float16, bfloat16, float32 or float64); a memory map
        is streamed.
    classifier : array_like, shape (V, d)
        The output layer's weight, one row per class.
    labels : array_like of int, shape (...)
        Class indices in ``[0, V)`` (or ``ignore_index``), the shape of ``hidden``
        without its last axis.
    epsilon : float, default 0.0
        Smoothing of the reported ``loss``, as in :func:`smoothce.metrics.evaluate`.
    bias : array_like, shape (V,), optional
        The output layer's bias.
    softcap : float, optional
        Logit soft-capping, ``softcap * tanh(z / softcap)``, as in the loss functions.
    prior, weight, ignore_index, top_k, n_bins
        As in :func:`smoothce.metrics.evaluate` (``prior`` without per-sample priors,
        which would be an (N, V) array).
    workers : int, optional
        Threads of the loss engine; one by default, since BLAS threads the products,
        nearly all the work, itself.
    workspace : int, default 32 MiB
        Bytes of the logits workspace: blocks of ``workspace // (V * itemsize)`` rows
        (at least one).
    progress : callable, optional
        Called as ``progress(done, total)`` (rows) every few blocks, e.g. to draw a
        progress bar.

    Returns
    -------
    Metrics

    Notes
    -----
    Everything is computed in float32, or float64 when any of ``hidden``,
    ``classifier`` and ``bias`` is float64. The values are those of
    :func:`smoothce.metrics.evaluate` on the materialised logits but for the rounding
    of the matrix products (which BLAS may round differently for different numbers
    of rows): within 1e-12 relative in float64 and 1e-5 in float32; ``counted`` and
    ``elements`` are equal, and the accuracy counts too except where two logits tie
    within that rounding. :func:`smoothce.dask.evaluate_linear` does the same on a
    cluster, with the classifier whole on every worker or split along its vocabulary.

    Examples
    --------
    >>> import numpy as np
    >>> from smoothce import metrics
    >>> rng = np.random.default_rng(0)
    >>> h, W = rng.normal(size=(200, 16)), rng.normal(size=(50, 16))
    >>> y = rng.integers(0, 50, 200)
    >>> m = metrics.evaluate_linear(h, W, y, 0.1, workspace=4096)  # blocks of 10 rows
    >>> ref = metrics.evaluate(h @ W.T, y, 0.1)
    >>> bool(np.isclose(m.nll, ref.nll, rtol=1e-12)), m.accuracy == ref.accuracy
    (True, True)
    """
    head = metrics_head(
        hidden, classifier, labels, epsilon, bias=bias, softcap=softcap, prior=prior,
        weight=weight, ignore_index=ignore_index, workspace=workspace,
    )  # fmt: skip
    k, bins = _check_top_k(top_k), check_bins(n_bins)
    return accumulate_head(head, k, bins, workers, progress).result()
