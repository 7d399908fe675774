"""Threads over blocks: the ``workers`` argument and the pool that serves it.

NumPy releases the GIL inside its ufuncs and reductions, so threads that each own a
contiguous range of blocks run in parallel. Each block is computed the same way
whichever thread runs it and partial results are combined in block order, so every
``workers`` value gives bitwise identical results.
"""

from __future__ import annotations

import functools
import numbers
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

__all__ = ["AUTO_MIN_ELEMENTS", "available_cores", "resolve_workers", "run_ranges"]

#: Below this many logits the default (``workers=None``) stays on one thread: at the
#: exp floor 2**20 float32 elements take about 0.5 ms on one core here, and waking a
#: pooled thread costs tens of microseconds, so smaller calls gain too little.
AUTO_MIN_ELEMENTS = 1 << 20

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _forget_pool_after_fork() -> None:
    """Give a forked child a fresh (not yet started) pool and an unheld lock.

    ``fork()`` copies only the calling thread: the parent's pool threads do not exist
    in the child, yet the copied executor would queue work for them and wait forever
    (and the lock may have been copied while held). The parent's pool is untouched.
    """
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # pragma: no branch - absent on Windows only
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


@functools.lru_cache(maxsize=1)
def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it).

    Read once: the system call costs more than a small loss call's arithmetic.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS and Windows
        return max(1, os.cpu_count() or 1)


def resolve_workers(workers: Any, n_elements: int, n_blocks: int) -> int:
    """Number of threads for a call, following the convention of :mod:`scipy.fft`.

    ``None`` (the default) uses one thread below :data:`AUTO_MIN_ELEMENTS` logits and
    every available core above. A positive int is a thread count; a negative int
    counts back from the number of cores (-1 is all of them). Never more threads than
    blocks.
    """
    cores = available_cores()
    if workers is None:
        n = 1 if n_elements < AUTO_MIN_ELEMENTS else cores
    else:
        if isinstance(workers, bool) or not isinstance(workers, numbers.Integral):
            raise TypeError(f"workers must be an integer or None; got workers={workers!r}.")
        w = int(workers)
        if w == 0 or w < -cores:
            raise ValueError(
                f"workers must be a positive thread count or a negative count from the "
                f"{cores} available cores (-1 = all, down to -{cores}); got workers={w}."
            )
        n = w if w > 0 else cores + 1 + w
    return max(1, min(n, n_blocks))


def _get_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=max(2, available_cores()), thread_name_prefix="smoothce"
            )
        return _pool


def run_ranges(n_items: int, n_workers: int, work: Callable[[int, int], None]) -> None:
    """Call ``work(lo, hi)`` on ``n_workers`` contiguous ranges covering ``range(n_items)``.

    The calling thread takes the first range itself; the others go to the pool. An
    exception in any range is re-raised here after all ranges have finished.
    """
    if n_workers <= 1 or n_items <= 1:
        work(0, n_items)
        return
    bounds = [n_items * i // n_workers for i in range(n_workers + 1)]
    pool = _get_pool()
    futures: Sequence[Future[None]] = [
        pool.submit(work, bounds[i], bounds[i + 1]) for i in range(1, n_workers)
    ]
    error: BaseException | None = None
    try:
        work(bounds[0], bounds[1])
    except BaseException as exc:  # finish the others before raising
        error = exc
    for f in futures:
        failure = f.exception()
        if failure is not None and error is None:
            error = failure
    if error is not None:
        raise error
