"""``python -m smoothce eval HIDDEN LABELS --classifier W`` on Dask.

The inputs are opened as :mod:`smoothce._eval_dask` opens logits (a ``.npy`` file, a
Zarr array, or a directory of ``shard_*.npy`` files; shapes and dtypes checked before
anything runs, the data read by the tasks themselves), and
:func:`smoothce.dask.evaluate_linear` computes the report on the threaded scheduler,
a local cluster (``--dask-workers``) or a remote one (``--scheduler``):

* the hidden states and labels in blocks of rows of about ``chunk_elements`` logits
  (whole storage chunks of a Zarr array, never across two shards);
* a classifier in a ``.npy`` file is read whole by one task, and reaches each worker
  once; a Zarr classifier stays in its storage chunks along the vocabulary, and shards
  of classifier rows in their shards: then every task forms one window of the logits
  with one chunk of the classifier, so no worker needs all of it;
* the bias is read like the classifier.

When the metrics come back undefined, a second pass finds why, with the messages of
the memmap path (:mod:`smoothce._eval_linear`).
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from ._eval import EvalError, Report
from ._eval_dask import _as_dask, _bounds, _client, _need, _open, _run, _Source, is_zarr
from ._eval_linear import (
    _Files,
    _position,
    bad_bias,
    bad_hidden,
    bad_logits,
    bad_weight,
    bias_error,
    class_prior,
    first_undefined,
    hidden_error,
    logits_error,
    weight_error,
)

__all__ = ["evaluate_hidden_dask"]


def _vocabulary_bounds(src: _Source) -> list[int]:
    """Chunks of classes of a classifier or bias: its storage chunks (Zarr), its shards,
    or one piece (a ``.npy`` file)."""
    V = src.shape[0]
    if src.storage_chunks is not None:
        return [*range(0, V, src.storage_chunks[0]), V]
    if src.pieces:
        return [int(x) for x in np.cumsum([0] + [n for _, n in src.pieces])]
    return [0, V]


def evaluate_hidden_dask(
    hidden_path: str,
    labels_path: str,
    *,
    classifier: str,
    bias: str | None,
    softcap: float | None,
    epsilon: float,
    ignore_index: int | None,
    prior: str | None,
    bins: int,
    progress: bool | None,
    chunk_elements: int,
    scheduler: str | None,
    dask_workers: int | None,
) -> Any:
    """The :class:`~smoothce._eval.Report` of a head on Dask (see the module docstring)."""
    paths = [p for p in (hidden_path, labels_path, classifier, bias) if p is not None]
    zarr_input = any(is_zarr(p) for p in paths)
    why = "reading a Zarr array" if zarr_input else "--scheduler or --dask-workers"
    if not zarr_input and scheduler is None and dask_workers is None:
        why = "reading a directory of .npy shards"
    _need(("dask", "dask.array", *(("zarr",) if zarr_input else ())), why)
    if scheduler is not None or dask_workers is not None:
        _need(("distributed",), why)
    import smoothce.dask as sdask

    first = lambda ndim: 0  # noqa: E731 - shards join along the first axis
    h = _open(hidden_path, "hidden", first)
    y = _open(labels_path, "labels", first)
    W = _open(classifier, "classifier", first)
    b = None if bias is None else _open(bias, "bias", first)
    files = _Files(
        (hidden_path, h.shape, h.dtype),
        (labels_path, y.shape, y.dtype),
        (classifier, W.shape, W.dtype),
        None if b is None or bias is None else (bias, b.shape, b.dtype),
    )
    files.check()
    N, V, d = files.rows, files.classes, h.shape[-1]
    itemsize = files.compute_itemsize
    dtype = np.dtype(np.float64 if itemsize == 8 else np.float32)
    u = class_prior(prior, V)
    expand = len(h.shape) == 1  # one row; smoothce.dask needs a batch axis
    if expand:
        hd, yd = _as_dask(h, 0, [0, d], True), _as_dask(y, 0, [0, 1], True)
    else:
        # Blocks of about chunk_elements logits: _bounds cuts the hidden states'
        # first axis as it cuts logits, so it is given that many hidden values.
        bounds, _ = _bounds(h, len(h.shape) - 1, 0, max(1, chunk_elements * d // V))
        hd, yd = _as_dask(h, 0, bounds, False), _as_dask(y, 0, bounds, False)
    Wd = _as_dask(W, 0, _vocabulary_bounds(W), False)
    bd = None if b is None else _as_dask(b, 0, _vocabulary_bounds(b), False)
    if progress is None:
        progress = N * V * itemsize > (256 << 20) and sys.stderr.isatty()
    try:
        graph = sdask.evaluate_linear(
            hd, Wd, yd, epsilon, bias=bd, softcap=softcap, prior=u, ignore_index=ignore_index,
            top_k=1, n_bins=bins, workers=1, workspace=chunk_elements * itemsize,
        )  # fmt: skip
    except (TypeError, ValueError) as exc:
        raise EvalError(str(exc)) from None
    with _client(scheduler, dask_workers) as client:
        m = _run(client, graph, progress, hidden_path)
        if math.isnan(m.accuracy):  # NaN exactly when a counted row has no softmax
            raise _why_undefined(
                client, hd, yd, Wd, bd, (hidden_path, classifier, bias), ignore_index,
                softcap, dtype, () if expand else tuple(y.shape), progress,
            )  # fmt: skip
    return Report.of(
        m, hidden_path, labels_path, N, V, epsilon, bins,
        classifier=classifier, bias=bias, softcap=softcap,
    )  # fmt: skip


def _why_undefined(
    client: Any, hd: Any, yd: Any, Wd: Any, bd: Any, paths: tuple[str, str, str | None],
    ignore_index: int | None, softcap: float | None, dtype: np.dtype[Any],
    shape: tuple[int, ...], progress: bool,
) -> EvalError:  # fmt: skip
    """The error of the memmap path, found by a second pass over the blocks: the first
    counted row with a non-finite hidden state, a non-finite weight, a NaN or ``+inf``
    bias, or the first counted row whose logits overflow."""
    import dask

    h_path, w_path, b_path = paths
    hb = list(hd.to_delayed().ravel())
    yb = list(yd.to_delayed().ravel())
    Wb = list(Wd.to_delayed().ravel())
    bb = [None] * len(Wb) if bd is None else list(bd.rechunk((Wd.chunks[0],)).to_delayed())
    k0s = [0, *np.cumsum(Wd.chunks[0]).tolist()[:-1]]
    delayed = dask.delayed
    # Rows before each block (flattened, C order: blocks run along the first axis).
    sizes = _run(client, [delayed(np.size, pure=True)(y) for y in yb], False, h_path)
    starts = np.cumsum([0, *sizes[:-1]]).tolist()
    pairs = list(zip(hb, yb, strict=True))
    found = _run(
        client, [delayed(bad_hidden, pure=True)(h, y, ignore_index) for h, y in pairs], progress,
        h_path,
    )  # fmt: skip
    for start, hit in zip(starts, found, strict=True):
        if hit is not None:
            return hidden_error(h_path, _position(start + hit[0], shape), hit[1], hit[2])
    weights = _run(
        client,
        [delayed(bad_weight, pure=True)(w, k) for w, k in zip(Wb, k0s, strict=True)],
        False,
        h_path,
    )
    for hit in weights:
        if hit is not None:
            return weight_error(w_path, *hit)
    if bd is not None:
        assert b_path is not None
        biases = _run(
            client,
            [delayed(bad_bias, pure=True)(c, k) for c, k in zip(bb, k0s, strict=True)],
            False,
            h_path,
        )
        for hit in biases:
            if hit is not None:
                return bias_error(b_path, *hit)
    graphs = [
        delayed(first_undefined, pure=True)(
            [
                delayed(bad_logits, pure=True)(h, w, c, k, softcap, dtype)
                for w, c, k in zip(Wb, bb, k0s, strict=True)
            ],
            y,
            ignore_index,
        )
        for h, y in zip(hb, yb, strict=True)
    ]
    for start, hit in zip(starts, _run(client, graphs, progress, h_path), strict=True):
        if hit is not None:
            return logits_error(
                h_path, _position(start + hit[0], shape), hit[1], hit[2], dtype, bd is not None
            )
    return EvalError(  # pragma: no cover - the metrics said there is one
        f"hidden file {h_path!r} gave undefined metrics, but no row without a softmax was "
        "found on the second pass."
    )
