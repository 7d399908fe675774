r"""The losses and metrics on Dask arrays: data beyond one machine's memory.

``pip install "smoothce[dask]"`` (Dask's arrays, ``distributed`` and Zarr). The
functions take Dask arrays chunked along the batch axes, map smoothce's engine over
the blocks, and return lazy Dask results: ``.compute()`` gives the value, on any
scheduler (threads, processes, a ``distributed.Client``).

* ``reduction="none"`` and the gradients keep the chunks of the logits.
* ``"sum"`` and ``"mean"`` are global reductions. Each block contributes its exact
  partial sums (:mod:`smoothce._exact`); the partials are merged without rounding
  and divided by the global mean denominator once. The result does not depend on
  the chunking, the number of workers or the order in which blocks finish, and
  agrees with the in-memory function to float64 rounding.
* :func:`evaluate` maps :func:`smoothce.metrics.accumulate` over the blocks and
  merges the :class:`~smoothce.metrics.Accumulator`\ s: only those (a few hundred
  bytes per block) travel between machines.

The class axis must lie in one chunk: a block is a set of whole rows. Logits chunked
along it are rechunked (with a :class:`dask.array.PerformanceWarning` above
:data:`RECHUNK_WARN_BYTES`); store such data with whole rows per chunk instead.

Chunk sizes may be unknown (NaN) along any batch axis, as after boolean indexing
(``logits[labels != pad]``) or ``dask.dataframe``'s ``to_dask_array()``: the results
are the same, and arrays keep those unknown chunks. Labels and per-sample priors of
unknown chunk sizes are paired with the logits block by block when they have as many
chunks (index them with the same mask), and each block checks that its rows agree;
where no pairing is known (known sizes against unknown ones, or another number of
chunks) the error, raised when the graph is built, names ``compute_chunk_sizes()``.

Validation: everything that needs no data (dtypes, shapes, ``axis``, ``epsilon``,
``reduction``, NumPy ``weight`` and ``prior``, ``z_loss``, ``softcap``) is checked
when the graph is built, with the messages of the in-memory functions. Values
(labels, Dask priors and probability targets) are checked per block when computed,
with the same messages and positions in the whole array; with several bad labels the
first in C order is reported, as in memory (reductions carry errors through the merge
tree; array results first check the labels alone). The one exception: an array result
of probability targets with unknown chunk sizes learns no size before its blocks run,
so its errors give the position within the block and name the block.
"""

# The package, by responsibility: _setup (the grid of row blocks, inputs lined up with
# it, validation on stand-ins), _blocks (what a task does with a block, given the
# call's frozen Settings), _build and _graph (block tasks, merge trees, result arrays),
# _positions (where an error lies in the whole array, and which comes first); _linear,
# a linear head from its hidden states on the same pieces.

from __future__ import annotations

from typing import Any

import numpy.typing as npt

try:
    import dask.array as da
    from dask.delayed import Delayed
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "smoothce.dask needs Dask: pip install 'smoothce[dask]' (dask[array], distributed, zarr)."
    ) from exc

from .. import metrics as _metrics
from .._bins import check_bins
from .._scaling import loss_unit
from ._blocks import accumulate_block, finish_loss, grad_pair, loss_sums, none_block
from ._build import Graph
from ._linear import evaluate_linear, linear_cross_entropy, linear_cross_entropy_with_grad
from ._setup import Setup

__all__ = [
    "cross_entropy",
    "cross_entropy_grad",
    "cross_entropy_with_grad",
    "evaluate",
    "evaluate_linear",
    "linear_cross_entropy",
    "linear_cross_entropy_with_grad",
]

#: Rechunking the class axis into one chunk moves every block; above this many bytes
#: of logits it warns (:class:`dask.array.PerformanceWarning`).
RECHUNK_WARN_BYTES = 256 << 20

_DASK_PARAMETERS = """
    logits : dask.array.Array or array_like, shape (..., K, ...)
        Logits chunked along the batch axes; the class axis ``axis`` should be one
        chunk (else it is rechunked). Chunk sizes may be unknown (NaN) along the
        batch axes.
    labels : dask.array.Array or array_like
        Class indices (the shape of ``logits`` without the class axis) or probability
        targets (the shape of ``logits``); rechunked to the blocks of ``logits``, or
        paired with them block by block where their chunk sizes are unknown.
    epsilon, axis, reduction, weight, ignore_index, num_classes, z_loss, softcap
        As in :func:`smoothce.cross_entropy`.
    prior : None, "uniform", "others" or array_like
        As in :func:`smoothce.cross_entropy`; a per-sample prior may be a Dask array.
    workers : int, default 1
        Threads of the engine *within* a block (Dask runs blocks in parallel)."""


def _doc(func: Any) -> Any:
    func.__doc__ = func.__doc__.replace("{parameters}", _DASK_PARAMETERS.strip("\n"))
    return func


def _finish_args(st: Setup) -> tuple[Any, ...]:
    """The arguments of :func:`~smoothce.dask._blocks.finish_loss` after the merge."""
    p = st.p
    return p.reduction, p.scalar_dtype, loss_unit(p, p.reduction), p.z_loss


@_doc
def cross_entropy(
    logits: Any,
    labels: Any,
    epsilon: float = 0.0,
    *,
    axis: int = -1,
    reduction: str = "mean",
    prior: Any = None,
    weight: npt.ArrayLike | None = None,
    ignore_index: int | None = None,
    num_classes: int | None = None,
    workers: int | None = 1,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> da.Array:
    """:func:`smoothce.cross_entropy` of Dask arrays, lazily.

    Parameters
    ----------
    {parameters}

    Returns
    -------
    dask.array.Array
        ``"mean"``/``"sum"``: a 0-d array (float32 for float16/float32 logits,
        float64 otherwise) whose ``.compute()`` agrees with the in-memory loss; the
        partial sums are combined exactly. ``"none"``: the element losses, chunked as
        ``logits`` without the class axis.

    Examples
    --------
    .. code-block:: python

        import dask.array as da, smoothce.dask
        z = da.from_zarr("logits.zarr")          # (tokens, vocabulary), rows chunked
        y = da.from_zarr("labels.zarr")
        loss = smoothce.dask.cross_entropy(z, y, 0.1, ignore_index=-100)
        loss.compute()                           # on the current Dask scheduler
    """
    st = Setup(
        logits, labels, epsilon, axis=axis, reduction=reduction, prior=prior,
        weight=weight, ignore_index=ignore_index, num_classes=num_classes,
        z_loss=z_loss, softcap=softcap, workers=workers,
    )  # fmt: skip
    graph = Graph(st, "cross-entropy")
    if st.p.reduction != "none":
        return graph.scalar(graph.reduce(loss_sums, finish_loss, *_finish_args(st)))
    pieces = graph.blocks("loss", none_block, part=False, gate=graph.gate())
    return graph.rows("cross-entropy", pieces, st.p.grad_dtype, classes=False)


@_doc
def cross_entropy_grad(
    logits: Any,
    labels: Any,
    epsilon: float = 0.0,
    *,
    axis: int = -1,
    reduction: str = "mean",
    prior: Any = None,
    weight: npt.ArrayLike | None = None,
    ignore_index: int | None = None,
    num_classes: int | None = None,
    workers: int | None = 1,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> da.Array:
    """:func:`smoothce.cross_entropy_grad` of Dask arrays, lazily.

    Parameters
    ----------
    {parameters}

    Returns
    -------
    dask.array.Array
        The gradient, chunked as ``logits``. For ``"mean"`` it is divided by the
        global denominator, computed first from the labels alone.
    """
    st = Setup(
        logits, labels, epsilon, axis=axis, reduction=reduction, prior=prior,
        weight=weight, ignore_index=ignore_index, num_classes=num_classes,
        z_loss=z_loss, softcap=softcap, workers=workers,
    )  # fmt: skip
    graph = Graph(st, "cross-entropy-grad", want_loss=False)
    _, grads = graph.split(graph.pairs(grad_pair))
    return graph.rows("cross-entropy-grad", grads, st.p.grad_dtype, classes=True)


@_doc
def cross_entropy_with_grad(
    logits: Any,
    labels: Any,
    epsilon: float = 0.0,
    *,
    axis: int = -1,
    reduction: str = "mean",
    prior: Any = None,
    weight: npt.ArrayLike | None = None,
    ignore_index: int | None = None,
    num_classes: int | None = None,
    workers: int | None = 1,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> tuple[da.Array, da.Array]:
    """:func:`smoothce.cross_entropy_with_grad` of Dask arrays, lazily.

    Both results come from one engine pass per block when computed together,
    ``dask.compute(loss, grad)``; with ``z_loss`` the pass keeps the z-loss rows apart
    from the cross-entropy rows, since the two have different denominators.

    Parameters
    ----------
    {parameters}

    Returns
    -------
    loss : dask.array.Array
        As :func:`cross_entropy`.
    grad : dask.array.Array
        As :func:`cross_entropy_grad`.
    """
    st = Setup(
        logits, labels, epsilon, axis=axis, reduction=reduction, prior=prior,
        weight=weight, ignore_index=ignore_index, num_classes=num_classes,
        z_loss=z_loss, softcap=softcap, workers=workers,
    )  # fmt: skip
    graph = Graph(st, "cross-entropy-with-grad")
    pairs = graph.pairs(grad_pair)
    losses, grads = graph.split(pairs)
    total = None
    if st.p.reduction != "none":
        total = graph.loss_of_pairs(pairs, finish_loss, *_finish_args(st))
    # Every task is in place: now the results.
    grad = graph.rows("cross-entropy-grad", grads, st.p.grad_dtype, classes=True)
    if total is not None:
        return graph.scalar(total), grad
    return graph.rows("cross-entropy", losses, st.p.grad_dtype, classes=False), grad


def evaluate(
    logits: Any,
    labels: Any,
    epsilon: float = 0.0,
    *,
    axis: int = -1,
    prior: Any = None,
    weight: npt.ArrayLike | None = None,
    ignore_index: int | None = None,
    top_k: int = 5,
    n_bins: int = 15,
    workers: int | None = 1,
) -> Delayed:
    """:func:`smoothce.metrics.evaluate` of Dask arrays, lazily.

    Each block becomes a :class:`~smoothce.metrics.Accumulator`
    (:func:`smoothce.metrics.accumulate`), the accumulators are merged exactly in a
    tree, and the last step forms the metrics.

    Parameters
    ----------
    logits : dask.array.Array or array_like, shape (..., K, ...)
        Logits chunked along the batch axes (the class axis in one chunk).
    labels : dask.array.Array or array_like of int
        Class indices, the shape of ``logits`` without the class axis.
    epsilon, axis, prior, weight, ignore_index, top_k, n_bins
        As in :func:`smoothce.metrics.evaluate`.
    workers : int, default 1
        Threads of the engine within a block.

    Returns
    -------
    dask.delayed.Delayed
        ``.compute()`` gives the :class:`~smoothce.metrics.Metrics`.

    Examples
    --------
    .. code-block:: python

        from distributed import Client
        import dask.array as da, smoothce.dask

        client = Client("scheduler-address:8786")
        z, y = da.from_zarr("logits.zarr"), da.from_zarr("labels.zarr")
        metrics = smoothce.dask.evaluate(z, y, ignore_index=-100).compute()
        metrics.nll, metrics.accuracy, metrics.ece
    """
    st = Setup(
        logits, labels, epsilon, axis=axis, reduction="mean", prior=prior,
        weight=weight, ignore_index=ignore_index, num_classes=None, workers=workers,
        top_k=_metrics._check_top_k(top_k), n_bins=check_bins(n_bins), metrics=True,
    )  # fmt: skip
    graph = Graph(st, "evaluate")
    return graph.delayed("evaluate", graph.reduce(accumulate_block, _result))


def _result(acc: _metrics.Accumulator) -> _metrics.Metrics:
    return acc.result()
