"""A real ``distributed.LocalCluster`` for the Dask tests, started and stopped by them.

Two worker processes of one thread each, no dashboard, quiet logs; every computation
waits at most :data:`TIMEOUT` seconds. ``distributed`` is imported when a cluster
starts: pytest imports this module for its doctests whether the extra is installed
or not.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any

TIMEOUT = 120  # seconds for any one computation on the cluster


@contextlib.contextmanager
def local_cluster(memory_limit: str = "1GiB") -> Iterator[Any]:
    """A client of a fresh two-process LocalCluster, closed on the way out."""
    import distributed

    with warnings.catch_warnings():
        # distributed may warn about its own environment (ports, resource limits);
        # that is not what these tests check.
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(
            n_workers=2,
            processes=True,
            threads_per_worker=1,
            memory_limit=memory_limit,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        client = distributed.Client(cluster, set_as_default=False, timeout=TIMEOUT)
    try:
        yield client
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            client.close()
            cluster.close()


def on(client: Any, *collections: Any) -> Any:
    """Compute on the cluster, waiting at most TIMEOUT seconds."""
    futures = client.compute(list(collections))
    results = [f.result(timeout=TIMEOUT) for f in futures]
    return results[0] if len(results) == 1 else results
