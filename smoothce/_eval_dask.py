"""``python -m smoothce eval`` on Dask: Zarr arrays, shards, a local or remote cluster.

:func:`evaluate_dask` gives the :class:`~smoothce._eval.Report` of
:func:`~smoothce._eval.evaluate_files` through :func:`smoothce.dask.evaluate`:

* a Zarr array (a directory holding ``.zarray`` or ``zarr.json``) is read with
  :func:`dask.array.from_zarr`, whole rows per block (the class axis in one chunk) and
  whole storage chunks per block;
* a ``.npy`` file is cut into blocks of rows exactly as the memmap path cuts its
  chunks, and every block is read by the task itself (``np.load(mmap_mode="r")`` on
  the worker): no data passes through the scheduler, and the metrics are those of the
  memmap path bit for bit;
* a directory of ``shard_*.npy`` files is one array, the shards joined in name order
  along the first batch axis; blocks are cut within each shard;
* a per-sample prior (``--prior``: .npy, Zarr or shards) is read like the logits, in
  the logits' blocks, never embedded in the graph; a class prior (K,) is read once;
* the computation runs on Dask's threaded scheduler, on a ``distributed`` cluster at
  ``scheduler`` (an address), or on a local cluster of ``dask_workers`` processes
  started here and closed on the way out, whatever happens.

The errors are those of the memmap path, as :class:`~smoothce._eval.EvalError`\\ s:
the files are checked before anything runs, bad labels are named at their position in
the whole array, and when the metrics come back undefined (a counted row without a
softmax) a second pass over the blocks finds the first such row.

Nothing here imports Dask until it is used: ``import smoothce._eval_dask`` is free,
and :func:`is_zarr` and :func:`is_shards` tell the command line whether it is needed.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import math
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._eval import (
    EvalError,
    Report,
    _bad_row_error,
    _first_bad_row,
    _layout,
    _load,
    _one_line,
    _prior_axis,
    named_prior,
)
from ._validation import check_axis
from .calibration import _check_bins

__all__ = ["evaluate_dask", "is_shards", "is_zarr"]

#: How to install the dask extra, from PyPI or from a checkout of the repository.
INSTALL = 'pip install "smoothce[dask]", or pip install -e ".[dask]" in a checkout'

#: Metadata files that make a directory a Zarr node (v2 array, v2 group, v3 either).
_ZARR_FILES = (".zarray", ".zgroup", "zarr.json")


def is_zarr(path: str) -> bool:
    """Whether ``path`` is a Zarr directory (an array or a group, format 2 or 3)."""
    p = Path(path)
    return p.is_dir() and any((p / name).is_file() for name in _ZARR_FILES)


def is_shards(path: str) -> bool:
    """Whether ``path`` is a directory of ``shard_*.npy`` files (and not Zarr)."""
    p = Path(path)
    return p.is_dir() and not is_zarr(path) and any(p.glob("shard_*.npy"))


def _need(modules: tuple[str, ...], why: str) -> None:
    """Import ``modules`` or raise the one-line message saying how to install them."""
    for name in modules:
        try:
            __import__(name)
        except ImportError as exc:
            missing = exc.name or name
            raise EvalError(
                f"{why} needs Dask, distributed and Zarr; {missing!r} is not installed: {INSTALL}"
            ) from None


# -- the inputs: shapes and dtypes now, data in the tasks -----------------------------
@dataclass
class _Source:
    """One input array: where it is, its shape and dtype, and how to read it."""

    path: str  # as given, for messages and the report
    what: str  # "logits" or "labels"
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    zarr: Any = None  # the opened zarr.Array, or None for a .npy file
    storage_chunks: tuple[int, ...] | None = None
    # A directory of shards: (absolute path, length along the concatenation axis).
    pieces: tuple[tuple[str, int], ...] = ()

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _open(path: str, what: str, along: Callable[[int], int]) -> _Source:
    """Check ``path`` (a .npy file, a directory of .npy shards concatenated along the
    axis ``along(ndim)``, or a Zarr array) without reading its data."""
    if is_shards(path):
        return _open_shards(path, what, along)
    if not is_zarr(path):
        a = _load(path, what)  # every check of the memmap path; maps, reads nothing
        return _Source(path, what, tuple(a.shape), a.dtype)
    import zarr

    name = f"{what} Zarr array {path!r}"
    try:
        # An absolute path: the store travels to workers whose directory may differ.
        arr = zarr.open_array(store=os.path.abspath(path), mode="r")
    except Exception as exc:  # zarr raises its own errors, not a documented few
        if "group" in str(exc) or (Path(path) / ".zgroup").is_file():
            raise EvalError(
                f"{name} is a Zarr group, not an array; give the path of the array in it."
            ) from None
        raise EvalError(f"{name} cannot be read: {_one_line(exc)}") from None
    try:
        dtype = np.dtype(arr.dtype)
    except TypeError:
        dtype = np.dtype(object)
    if dtype.kind not in "biuf":
        raise EvalError(f"{name} holds {arr.dtype} values; give a numeric array.")
    return _Source(path, what, tuple(arr.shape), dtype, arr, tuple(arr.chunks))


def _open_shards(path: str, what: str, along: Callable[[int], int]) -> _Source:
    """The ``shard_*.npy`` files of the directory ``path``, in name order, as one
    array: each checked as a .npy file, all of one dtype and one shape but along the
    concatenation axis."""
    files = sorted(Path(path).glob("shard_*.npy"))
    arrays = [_load(str(f), what) for f in files]
    first = arrays[0]
    a = along(first.ndim)
    if not 0 <= a < first.ndim:
        raise EvalError(
            f"{what} shards in {path!r} must have a batch axis to be concatenated along; "
            f"{files[0].name} has shape {first.shape}."
        )
    rest = first.shape[:a] + first.shape[a + 1 :]
    for f, arr in zip(files[1:], arrays[1:], strict=True):
        if arr.dtype != first.dtype:
            raise EvalError(
                f"{what} shards in {path!r} must share one dtype; {f.name} is {arr.dtype}, "
                f"{files[0].name} {first.dtype}."
            )
        if arr.ndim != first.ndim or arr.shape[:a] + arr.shape[a + 1 :] != rest:
            raise EvalError(
                f"{what} shards in {path!r} must have one shape but along axis {a}; "
                f"{f.name} has shape {arr.shape}, {files[0].name} {first.shape}."
            )
    total = sum(arr.shape[a] for arr in arrays)
    pieces = tuple(
        (os.path.abspath(f), arr.shape[a]) for f, arr in zip(files, arrays, strict=True)
    )
    shape = (*first.shape[:a], total, *first.shape[a + 1 :])
    return _Source(path, what, shape, first.dtype, pieces=pieces)


def _read_pieces(parts: list[tuple[str, int, int]], axis: int) -> np.ndarray:
    """Rows ``start:stop`` along ``axis`` of each ``(path, start, stop)``, joined (a
    task)."""
    blocks = [_read_npy(path, axis, start, stop) for path, start, stop in parts]
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=axis)


def _read_npy(path: str, axis: int, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` along ``axis`` of the .npy file at ``path`` (a task)."""
    a = np.load(path, mmap_mode="r", allow_pickle=False)
    if a.ndim == 0:
        return np.asarray(a)
    return np.array(a[(slice(None),) * axis + (slice(start, stop),)])


def _as_dask(src: _Source, axis: int, bounds: list[int], expand: bool) -> Any:
    """The Dask array of ``src`` in blocks ``bounds[i]:bounds[i + 1]`` along ``axis``
    (whole on every other axis); ``expand`` adds a leading axis of length 1 (1-D
    logits, 0-d labels: one row)."""
    import dask
    import dask.array as da

    if src.zarr is not None:
        chunks = tuple(
            tuple(np.diff(bounds).tolist()) if i == axis else (n,) for i, n in enumerate(src.shape)
        )
        # Whole storage chunks per block: the Zarr array is the graph's only data, and
        # it travels as its store's address, not its values.
        arr = da.from_zarr(src.zarr, chunks=chunks)
    elif not src.shape:
        arr = da.from_delayed(
            dask.delayed(_read_npy, pure=True)(os.path.abspath(src.path), 0, 0, 0),
            shape=(),
            dtype=src.dtype,
        )
    else:
        # Absolute paths: a worker's working directory may differ.
        pieces = src.pieces or ((os.path.abspath(src.path), src.shape[axis]),)
        offsets = np.cumsum([0] + [n for _, n in pieces]).tolist()
        read = dask.delayed(_read_pieces, pure=True)
        blocks = []
        for start, stop in itertools.pairwise(bounds):
            parts = [
                (f, max(start, lo) - lo, min(stop, lo + n) - lo)
                for (f, n), lo in zip(pieces, offsets, strict=False)
                if lo < stop and lo + n > start
            ]
            shape = (*src.shape[:axis], stop - start, *src.shape[axis + 1 :])
            blocks.append(da.from_delayed(read(parts, axis), shape=shape, dtype=src.dtype))
        arr = blocks[0] if len(blocks) == 1 else da.concatenate(blocks, axis=axis)
    return arr[None] if expand else arr


def _bounds(z: _Source, ax: int, c: int, chunk_elements: int) -> tuple[list[int], str | None]:
    """Block boundaries along the batch axis ``c``, and a note when the Zarr logits
    are stored in chunks across the class axis."""
    n_along = z.shape[c]
    per_index = max(1, math.prod(z.shape) // max(n_along, 1))
    step = max(1, chunk_elements // per_index)  # the memmap path's chunk
    note = None
    if z.storage_chunks is not None:
        stored = z.storage_chunks[c]
        if step % stored:
            # Never split a storage chunk (each piece would read and decompress it
            # whole): a block is a whole number of them, about `step` rows if smaller.
            # The blocks need not be the memmap path's chunks: a row's values depend
            # on that row alone and the sums merge exactly, so the report is the
            # memmap path's bit for bit whatever the blocks.
            step = stored * max(1, step // stored)
        pieces = math.ceil(z.shape[ax] / z.storage_chunks[ax])
        if pieces > 1:
            note = (
                f"note: logits Zarr array {z.path!r} is stored in {pieces} chunks along "
                f"the class axis {ax}; each Dask block reads whole rows, {pieces} "
                "storage chunks apiece. Store whole rows per chunk to read less."
            )
    if z.pieces:  # shards: the blocks of each shard, none across two
        starts = np.cumsum([0] + [n for _, n in z.pieces]).tolist()
        bounds = {
            b
            for lo, (_, n) in zip(starts, z.pieces, strict=False)
            for b in range(lo, lo + n, step)
        }
        return sorted(bounds | {n_along}), note
    return [*range(0, n_along, step), n_along], note


def _dask_prior(
    value: str | None, logits_shape: tuple[int, ...], ax: int, c: int | None, bounds: list[int]
) -> Any:
    """The prior for :func:`smoothce.dask.evaluate`: a name as it is, or the array at
    ``value`` (.npy, Zarr or shards) as a Dask array read by the tasks, in the blocks
    ``bounds`` along the logits' chunked axis ``c`` when it runs along it (one block
    otherwise): never embedded in the graph. A class prior (K,) is read once when the
    graph is built."""
    if value is None or named_prior(value):
        return value
    lead = len(logits_shape)

    def along(ndim: int) -> int:  # the prior's axis along c, for shards
        return -1 if c is None else c - (lead - ndim)

    src = _open(value, "prior", along)
    pa = _prior_axis(value, src.shape, logits_shape, ax, c)
    if pa is None:  # one block; smoothce.dask broadcasts it to the logits' blocks
        whole = src.shape[0] if src.shape else 0
        return _as_dask(src, 0, [0, whole], False)
    return _as_dask(src, pa, bounds, False)


# -- running the graph -----------------------------------------------------------------
@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """distributed may warn about its environment (ports, resource limits) while it
    starts and stops: not about the evaluation, and not to be printed with it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold SIGINT (Ctrl-C) back while the block starts a local cluster, then act on it.

    The cluster's worker processes must not get the Ctrl-C that a terminal sends to
    every process of its group (each would die with a traceback); this process gets
    it and closes them. So SIGINT is blocked in this thread meanwhile: the threads
    started meanwhile (distributed's event loop, which spawns the workers) inherit the
    mask, and the workers inherit it through ``fork`` and ``exec`` for their whole
    life. A SIGINT sent meanwhile is not lost: it stays pending until the mask is
    lifted, or another thread of this process takes it and the handler installed here
    records it (raising inside distributed's start would leave a half-started cluster
    behind). Once the block is done, and its cluster exists to be closed, a recorded
    SIGINT raises :class:`KeyboardInterrupt`.

    In the main thread only (Python runs signal handlers there), and not when SIGINT
    is ignored already (a background job): then the workers inherit that. Where there
    is no ``pthread_sigmask`` (Windows) the handler alone records the signal.
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is signal.SIG_IGN:
        yield
        return
    caught: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    masking = hasattr(signal, "pthread_sigmask")
    if masking:
        # multiprocessing starts its resource tracker with the first worker and then
        # unblocks SIGINT in the starting thread (distributed's event loop), whatever
        # it was before: the workers it spawns next would get Ctrl-C. Started now,
        # before the mask, it leaves the mask alone.
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if masking else None
    try:
        yield
    finally:
        if mask is not None:
            # A pending SIGINT is delivered here, to the recording handler.
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        # None: a handler not installed from Python; Python's own is the fallback.
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)
    if caught:
        raise KeyboardInterrupt


def _start(make: Callable[[], Any], failure: str) -> Any:
    """``make()`` (a ``distributed.LocalCluster`` or ``Client``), or the one-line
    :class:`EvalError` ``failure: why``; a KeyboardInterrupt stays one.

    A Client whose connection fails is left half-built in a reference cycle, still
    "connecting": its finaliser closes it through its event loop, and at the
    interpreter's exit, when that loop has stopped, waits 60 s for it and prints a
    TimeoutError. Collected now, while the loop runs, it closes at once. The traceback
    holds it too, so the collection comes after the ``except`` clauses, and what is
    raised carries no traceback into distributed.
    """
    error: BaseException
    try:
        return make()
    except KeyboardInterrupt:
        error = KeyboardInterrupt()
    except Exception as exc:  # OSError, TimeoutError (an OSError), ValueError, TypeError
        error = EvalError(f"{failure}: {_one_line(exc) or type(exc).__name__}")
    gc.collect()
    raise error


@contextlib.contextmanager
def _client(scheduler: str | None, dask_workers: int | None) -> Iterator[Any]:
    """A ``distributed.Client`` (to ``scheduler``, or to a local cluster of
    ``dask_workers`` processes that is closed on the way out, also on an error or
    KeyboardInterrupt), or None for the threaded scheduler."""
    if scheduler is None and dask_workers is None:
        yield None
        return
    import distributed

    cluster = client = None
    try:
        with _quiet():
            if scheduler is None:
                with _sigint_deferred():
                    cluster = _start(
                        lambda: distributed.LocalCluster(
                            n_workers=dask_workers,
                            threads_per_worker=1,
                            processes=True,
                            dashboard_address=None,
                            silence_logs=logging.CRITICAL,  # task errors are reported here
                        ),
                        f"cannot start a local Dask cluster of {dask_workers} workers",
                    )
            where = "local cluster" if scheduler is None else f"scheduler at {scheduler!r}"
            client = _start(
                lambda: distributed.Client(
                    cluster if scheduler is None else scheduler, set_as_default=False
                ),
                f"cannot connect to the Dask {where}",
            )
        yield client
    finally:
        with _quiet():
            if client is not None:
                client.close()
            if cluster is not None:
                cluster.close()


def _compute(client: Any, graphs: Any, progress: bool) -> Any:
    """Compute ``graphs`` (a Delayed, or a list of them) on ``client`` or, without
    one, on the threaded scheduler; Dask's own progress bar on standard error."""
    import dask

    if client is None:
        bar: Any = contextlib.nullcontext()
        if progress:
            from dask.diagnostics import ProgressBar

            bar = ProgressBar(out=sys.stderr)
        with bar:
            return dask.compute(graphs, scheduler="threads")[0]
    import distributed

    future = client.compute(graphs)
    if progress:
        # distributed's console bar writes to standard output, which holds the report.
        with contextlib.redirect_stdout(sys.stderr):
            distributed.progress(future, scheduler=client.scheduler.address)
    if isinstance(future, list):
        return client.gather(future)
    return future.result()


def _run(client: Any, graphs: Any, progress: bool, logits_path: str) -> Any:
    """:func:`_compute`, its failures as one-line :class:`EvalError`\\ s."""
    try:
        return _compute(client, graphs, progress)
    except (TypeError, ValueError) as exc:  # validation, raised in a task
        message = str(exc)
        raise EvalError(_one_line(exc) if "\n" in message else message) from None
    except MemoryError as exc:
        raise EvalError(
            f"not enough memory to evaluate {logits_path!r}: {_one_line(exc)}"
        ) from None
    except ImportError as exc:
        raise EvalError(
            f"a Dask worker cannot import {exc.name or 'smoothce'!r}: install smoothce "
            f"with its dask extra on every worker ({INSTALL})."
        ) from None
    except OSError as exc:
        raise EvalError(
            f"reading the data failed on a Dask worker: {_one_line(exc)} (every worker "
            "must see the files at the same path)."
        ) from None
    except Exception as exc:
        # distributed's own failures (a worker killed, e.g. out of memory; a lost
        # scheduler) carry long messages; their first line says what happened.
        first = (str(exc).strip().splitlines() or [""])[0]
        raise EvalError(f"the Dask computation failed: {type(exc).__name__}: {first}") from None


def _find_bad_row(
    client: Any,
    zd: Any,
    yd: Any,
    ax: int,
    c: int,
    ignore_index: int | None,
    progress: bool,
    logits_path: str,
) -> tuple[list[int], int | None, float]:
    """The first counted row without a softmax, in the array's coordinates: a second
    pass over the blocks (only when the metrics came back undefined)."""
    import dask

    zb, yb = zd.to_delayed().ravel(), yd.to_delayed().ravel()
    starts = np.cumsum((0, *zd.chunks[c][:-1]))
    find = dask.delayed(_first_bad_row, pure=True)
    found = _run(
        client,
        [find(z, y, ax, ignore_index) for z, y in zip(zb, yb, strict=True)],
        progress,
        logits_path,
    )
    c_lab = c if c < ax else c - 1
    for start, hit in zip(starts, found, strict=True):
        if hit is not None:  # blocks run along c, every other axis whole: C order
            pos, k, value = hit
            row = list(pos)
            row[c_lab] += int(start)
            return row, k, value
    raise EvalError(  # pragma: no cover - the metrics said there is one
        f"logits file {logits_path!r} gave undefined metrics, but no row without a "
        "softmax was found on the second pass."
    )


def evaluate_dask(
    logits_path: str,
    labels_path: str,
    *,
    epsilon: float = 0.0,
    axis: int = -1,
    ignore_index: int | None = None,
    prior: str | None = None,
    bins: int = 15,
    progress: bool | None = None,
    chunk_elements: int,
    scheduler: str | None = None,
    dask_workers: int | None = None,
) -> Report:
    """The :class:`~smoothce._eval.Report` of the two arrays, computed on Dask.

    Parameters
    ----------
    logits_path, labels_path : str
        A ``.npy`` file or a Zarr array directory each. The logits have the shape
        ``(..., K, ...)`` with classes on ``axis``; the labels the shape of the
        logits without the class axis.
    epsilon, axis, ignore_index, bins, progress
        As in :func:`~smoothce._eval.evaluate_files`; the progress bar is Dask's.
    prior : str, optional
        None, ``"uniform"``, ``"others"``, or the path of an array as the logits'
        (.npy, Zarr, shards): a class prior (K,), or per-sample priors of the logits'
        shape (or one that broadcasts to it), read in the logits' blocks.
    chunk_elements : int
        Logits per block: the memmap path's chunks, so a ``.npy`` file gives its
        report bit for bit. Zarr input is read in whole storage chunks: those
        chunks when the storage chunks tile them, else as many storage chunks as
        make about this many logits.
    scheduler : str, optional
        Address of a running ``distributed`` scheduler (``tcp://host:8786``).
    dask_workers : int, optional
        Start a local cluster of this many single-threaded worker processes.
        Without either, Dask's threaded scheduler in this process.

    Returns
    -------
    Report
    """
    named = prior is None or named_prior(prior)
    paths = (logits_path, labels_path, *(() if named else (str(prior),)))
    zarr_input = any(is_zarr(path) for path in paths)
    why = "reading a Zarr array" if zarr_input else "--scheduler or --dask-workers"
    if not zarr_input and any(is_shards(path) for path in paths):
        why = "reading a directory of .npy shards"
    _need(
        ("dask", "dask.array", *(("zarr",) if zarr_input else ())),
        why,
    )
    if scheduler is not None or dask_workers is not None:
        _need(("distributed",), why)
    import smoothce.dask as sdask

    def first_batch_axis(ndim: int) -> int:  # the logits' axis of chunks (and shards)
        try:
            return 0 if check_axis(axis, ndim) != 0 else 1
        except (TypeError, ValueError):
            return 0  # _layout says what is wrong with axis

    z = _open(logits_path, "logits", first_batch_axis)
    y = _open(labels_path, "labels", lambda ndim: 0)  # the labels' first batch axis
    ax, batch = _layout(logits_path, labels_path, z.shape, y.shape, y.dtype, axis)
    K = z.shape[ax]
    try:
        bins = _check_bins(bins)
    except (TypeError, ValueError) as exc:
        raise EvalError(str(exc)) from None
    expand = len(z.shape) == 1  # one row, and smoothce.dask needs a batch axis:
    if expand:  # evaluate logits (1, K) and labels (1,)
        zd, yd = _as_dask(z, 0, [0, K], True), _as_dask(y, 0, [0, 1], True)
        u = _dask_prior(prior, z.shape, ax, None, [])
        ax, c = 1, 0
    else:
        c = 0 if ax != 0 else 1
        c_lab = c if c < ax else c - 1
        bounds, note = _bounds(z, ax, c, chunk_elements)
        if note is not None:
            print(note, file=sys.stderr)
        zd, yd = _as_dask(z, c, bounds, False), _as_dask(y, c_lab, bounds, False)
        u = _dask_prior(prior, z.shape, ax, c, bounds)
    if progress is None:
        progress = z.nbytes > (256 << 20) and sys.stderr.isatty()
    try:
        graph = sdask.evaluate(
            zd, yd, epsilon, axis=ax, prior=u, ignore_index=ignore_index, top_k=1,
            n_bins=bins, workers=1,
        )  # fmt: skip
    except (TypeError, ValueError) as exc:
        raise EvalError(str(exc)) from None
    with _client(scheduler, dask_workers) as client:
        m = _run(client, graph, progress, logits_path)
        if math.isnan(m.accuracy):  # NaN exactly when a counted row has no softmax
            row, k, value = _find_bad_row(
                client, zd, yd, ax, c, ignore_index, progress, logits_path
            )
            raise _bad_row_error(logits_path, [] if expand else row, k, value, ax - expand)
    return Report.of(m, logits_path, labels_path, math.prod(batch), K, epsilon, bins)
