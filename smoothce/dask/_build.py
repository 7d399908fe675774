"""The graph of one call: block tasks, a gate, merge trees and result arrays.

:class:`Graph` is what every public function of :mod:`smoothce.dask` builds on: it
holds a :class:`~smoothce.dask._setup.Setup` (the grid and the aligned inputs) and
places the call's settings and layout in the graph once; its methods give the three
shapes a result takes:

* :meth:`Graph.reduce`: a merge tree over one task per block (a reduced loss, the
  metrics), whose root raises the first error in C order or finishes the value;
* :meth:`Graph.gate`: what the blocks of an array result wait for: the ``"mean"``
  denominators, or the check of every label (so that the first bad label in C order is
  the one reported, and the chunk sizes are known to the errors that follow);
* :meth:`Graph.rows`: an array of the blocks' results with the logits' chunks
  (unknown sizes included), rechunked back where the class axis was.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import dask
import dask.array as da
import numpy as np

from .._exact import ExactSum
from ._blocks import Denominators, check_labels, denominators
from ._graph import Gate, Part, array, block_tasks, constant, finish, gate, scalar, tree
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


def first(pair: tuple[Any, Any]) -> Any:
    return pair[0]


def second(pair: tuple[Any, Any]) -> Any:
    return pair[1]


class Graph:
    """Tasks over the blocks of one :class:`~smoothce.dask._setup.Setup`.

    ``changes`` replace fields of the setup's settings (``want_loss=False`` for a
    gradient alone).
    """

    def __init__(self, setup: Setup, **changes: Any) -> None:
        self.setup = setup
        self.plain_settings = replace(setup.settings, **changes)
        self.settings = constant(self.plain_settings)
        self.layout = constant(setup.layout)

    def tasks(
        self, func: Callable[..., Any], *, part: bool, gate: Any = None
    ) -> dict[tuple[int, ...], Any]:
        """One Delayed ``func(settings, gate, logits, labels, prior)`` per block."""
        return block_tasks(
            func, self.setup.blocks(), ROWS, self.settings, self.layout, gate, part=part
        )

    def reduce(self, func: Callable[..., Any], then: Callable[..., Any], *args: Any) -> Any:
        """Delayed ``then(merged parts, *args)`` of ``func``'s part of every block."""
        parts = self.tasks(func, part=True)
        return finish(self.layout, tree(self.layout, list(parts.values())), then, *args)

    def gate(self) -> Any:
        """The Delayed :class:`~smoothce.dask._graph.Gate` the blocks of an array
        result wait for, or None when they need none.

        ``"mean"``: the merged :class:`~smoothce.dask._blocks.Denominators` of the
        labels blocks (which validates them: the first bad label raises here). Else,
        for integer labels, a check of every label. Probability targets are checked by
        the blocks themselves, and their mean's denominator (the number of elements)
        is known without them where the chunk sizes are.
        """
        st, s = self.setup, self.plain_settings
        if s.reduction == "mean":
            n = math.prod(st.p.batch_shape)
            if s.probabilistic and not any(math.isnan(c) for c in st.z.shape):
                return constant(Gate(Denominators(ExactSum(n << 1126), n)))
            func: Callable[..., Any] = denominators
        elif s.probabilistic:
            return None
        else:
            func = check_labels
        parts = block_tasks(
            func, st.label_blocks(), ("labels",), self.settings, self.layout, part=True
        )
        return gate(self.layout, tree(self.layout, list(parts.values())))

    def rows(
        self, pieces: dict[tuple[int, ...], Any], dtype: np.dtype[Any], prefix: str, *,
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
        result = array(pieces, chunks, dtype, prefix)
        return result if _same(result.chunks, original) else result.rechunk(original)

    def pairs(self, func: Callable[..., Any]) -> dict[tuple[int, ...], Any]:
        """Delayed ``(loss part, gradient block)`` per block, after the gate."""
        return self.tasks(func, part=False, gate=self.gate())

    def loss_of_pairs(
        self, pairs: dict[tuple[int, ...], Any], then: Callable[..., Any], *args: Any
    ) -> da.Array:
        st = self.setup
        firsts = {i: dask.delayed(first, pure=True)(p) for i, p in pairs.items()}
        if self.plain_settings.reduction == "none":
            return self.rows(firsts, st.p.grad_dtype, "cross-entropy", classes=False)
        parts = [dask.delayed(_as_part, pure=True)(piece) for piece in firsts.values()]
        total = finish(self.layout, tree(self.layout, parts), then, *args)
        return scalar(total, st.p.scalar_dtype)

    def grad_of_pairs(self, pairs: dict[tuple[int, ...], Any]) -> da.Array:
        seconds = {i: dask.delayed(second, pure=True)(p) for i, p in pairs.items()}
        return self.rows(seconds, self.setup.p.grad_dtype, "cross-entropy-grad", classes=True)


def _as_part(value: Any) -> Part:
    return Part(value)
