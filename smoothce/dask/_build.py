"""The graph of one call: block tasks, a gate, merge trees and result collections.

:class:`Graph` is what every public function of :mod:`smoothce.dask` builds on: it
holds a :class:`~smoothce.dask._setup.Setup` (the grid and the aligned inputs), writes
the call's tasks with a :class:`~smoothce.dask._graph.Tasks` (the settings and the
layout one key each) and gives the shapes a result takes:

* :meth:`Graph.reduce`: a merge tree over one task per block (a reduced loss, the
  metrics), whose root raises the first error in C order or finishes the value;
* :meth:`Graph.gate`: what the blocks of an array result wait for: the ``"mean"``
  denominators, or the check of every label (so that the first bad label in C order is
  the one reported, and the chunk sizes are known to the errors that follow);
* :meth:`Graph.rows`: an array of the blocks' results with the logits' chunks
  (unknown sizes included), rechunked back where the class axis was.

Tasks are added first and the results made last, so that every result of a call sees
the whole layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed

from .._exact import ExactSum
from ._blocks import Denominators, check_labels, denominators
from ._graph import Gate, Tasks, as_part, first, second
from ._setup import Setup

__all__ = ["Graph"]

#: The names of the blocks a logits task receives, in order.
ROWS = ("logits", "labels", "prior")


def _same(a: tuple[tuple[float, ...], ...], b: tuple[tuple[float, ...], ...]) -> bool:
    """Whether two chunkings are equal (NaN equal to NaN)."""
    return len(a) == len(b) and all(
        len(x) == len(y)
        and all(u == v or (math.isnan(u) and math.isnan(v)) for u, v in zip(x, y, strict=True))
        for x, y in zip(a, b, strict=True)
    )


class Graph:
    """The tasks of one call over the blocks of a :class:`~smoothce.dask._setup.Setup`.

    ``changes`` replace fields of the setup's settings (``want_loss=False`` for a
    gradient alone).
    """

    def __init__(self, setup: Setup, prefix: str, **changes: Any) -> None:
        self.setup = setup
        self.plain_settings = replace(setup.settings, **changes)
        inputs = setup.inputs()
        token = tokenize(prefix, self.plain_settings, setup.layout, *(a.name for a in inputs))
        self.tasks = Tasks(f"smoothce-{prefix}-{token}", inputs)
        self.settings = self.tasks.constant("settings", self.plain_settings)
        self.layout = self.tasks.constant("layout", setup.layout)

    def blocks(
        self, label: str, func: Callable[..., Any], *, part: bool, gate: Any = None
    ) -> dict[tuple[int, ...], Any]:
        """One ``func(settings, gate, logits, labels, prior)`` task per block."""
        return self.tasks.blocks(
            label, func, self.setup.blocks(), ROWS, self.settings, self.layout, gate, part=part
        )

    def reduce(self, func: Callable[..., Any], then: Callable[..., Any], *args: Any) -> Any:
        """The key of ``then(merged parts, *args)`` of ``func``'s part of every block."""
        parts = self.blocks("part", func, part=True)
        root = self.tasks.tree("merge", self.layout, list(parts.values()))
        return self.tasks.then("result", self.layout, root, then, *args)

    def gate(self) -> Any:
        """The key of the :class:`~smoothce.dask._graph.Gate` the blocks of an array
        result wait for, or None when they need none.

        ``"mean"``: the merged :class:`~smoothce.dask._blocks.Denominators` of the
        labels blocks (which validates them: the first bad label raises here). Else,
        for integer labels, a check of every label. Probability targets are checked by
        the blocks themselves, and their mean's denominator (the number of elements)
        is known without them where the chunk sizes are.
        """
        st, s, tasks = self.setup, self.plain_settings, self.tasks
        if s.reduction == "mean":
            if s.probabilistic and not any(math.isnan(c) for c in st.z.shape):
                n = math.prod(st.p.batch_shape)
                return tasks.constant("gate", Gate(Denominators(ExactSum(n << 1126), n)))
            func: Callable[..., Any] = denominators
        elif s.probabilistic:
            return None
        else:
            func = check_labels
        parts = tasks.blocks(
            "labels", func, st.label_blocks(), ("labels",), self.settings, self.layout, part=True
        )
        root = tasks.tree("labels-merge", self.layout, list(parts.values()))
        return tasks.gate("gate", self.layout, root)

    def pairs(self, func: Callable[..., Any]) -> dict[tuple[int, ...], Any]:
        """``(loss part, gradient block)`` per block, after the gate."""
        return self.blocks("pair", func, part=False, gate=self.gate())

    def split(self, pairs: dict[tuple[int, ...], Any]) -> tuple[Any, Any]:
        """``(loss parts, gradient blocks)`` of the pairs, one task each."""
        return self.tasks.map("loss-part", first, pairs), self.tasks.map("grad", second, pairs)

    def loss_of_pairs(
        self, pairs: dict[tuple[int, ...], Any], then: Callable[..., Any], *args: Any
    ) -> Any:
        """The key of the reduced loss of the pairs (for ``"sum"``/``"mean"``)."""
        parts = self.tasks.map("loss-as-part", as_part, pairs)
        root = self.tasks.tree("loss-merge", self.layout, list(parts.values()))
        return self.tasks.then("loss", self.layout, root, then, *args)

    # -- results -------------------------------------------------------------------
    def rows(
        self, prefix: str, pieces: dict[tuple[int, ...], Any], dtype: np.dtype[Any], *,
        classes: bool,
    ) -> da.Array:  # fmt: skip
        """The array of the blocks' results: the logits' chunks (``classes``), or
        those without the class axis, as the input was chunked."""
        grid = self.setup.grid
        if classes:
            chunks, original = grid.chunks, grid.original_chunks
        else:
            pieces = {grid.drop(index): piece for index, piece in pieces.items()}
            chunks, original = grid.drop(grid.chunks), grid.drop(grid.original_chunks)
        result = self.tasks.array(prefix, pieces, chunks, dtype)
        return result if _same(result.chunks, original) else result.rechunk(original)

    def scalar(self, key: Any) -> da.Array:
        return self.tasks.scalar("cross-entropy", key, self.setup.p.scalar_dtype)

    def delayed(self, prefix: str, key: Any) -> Delayed:
        return self.tasks.delayed(prefix, key)
