"""A forked child can use threads after its parent did (issue 7, item 9).

fork() copies only the calling thread: the parent's pool threads do not exist in the
child, and a pool copied from the parent would wait for them forever. The test forks
a real child process (os.fork, as multiprocessing's "fork" start method and
DataLoader-style workers do) and gives it a deadline.
"""

from __future__ import annotations

import os
import signal
import time
import warnings

import numpy as np
import pytest

import smoothce

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

DEADLINE = 60.0  # seconds; the call itself takes milliseconds


def _forked(child_work) -> int:
    """Run ``child_work`` in a forked child; return its exit status (-1: timed out)."""
    with warnings.catch_warnings():
        # Python 3.12+ warns that forking a multi-threaded process may deadlock:
        # exactly the situation under test.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            code = 0 if child_work() else 3
        finally:
            os._exit(code)
    start = time.monotonic()
    while time.monotonic() - start < DEADLINE:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return -1


def test_threaded_call_in_a_forked_child_after_the_parent_used_the_pool():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((4096, 100)).astype(np.float32)
    y = rng.integers(0, 100, 4096)
    expected = smoothce.cross_entropy(z, y, 0.1, workers=2)  # starts the pool

    def child() -> bool:
        got = smoothce.cross_entropy(z, y, 0.1, workers=2)
        _, grad = smoothce.cross_entropy_with_grad(z, y, 0.1, workers=2)
        return bool(got == expected) and bool(np.isfinite(grad).all())

    assert _forked(child) == 0
    # The parent's own pool still works.
    assert smoothce.cross_entropy(z, y, 0.1, workers=2) == expected
