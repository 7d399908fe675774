"""Graph assembly: one task per block, merge trees, and arrays of the blocks' results.

Every Dask function of smoothce is built from the same three pieces:

* :func:`block_tasks`: one task per block of the grid (:class:`~smoothce.dask._setup.Grid`),
  calling a block function of :mod:`smoothce.dask._blocks` through :class:`BlockTask`,
  which places its validation errors in the whole array;
* :func:`tree`: a fixed merge tree over the blocks' :class:`Part`\\ s (exact partial
  sums, :class:`~smoothce.metrics.Accumulator`\\ s, label checks), whose root either
  raises the first error in C order or hands on the merged value;
* :func:`array`: a Dask array whose blocks are tasks' results, for any chunks, unknown
  sizes (NaN) included.

Delayed tasks rather than ``map_blocks``: when the loss and the gradient come from one
pass (:func:`smoothce.dask.cross_entropy_with_grad`), Dask's graph optimisation would
fuse a blockwise layer into each of its two consumers and run every block twice. The
call's settings and layout are one key each in the graph, so that a distributed
scheduler sends them to each worker once, not once per task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from ._positions import BlockError, Layout, Sizes

__all__ = [
    "BlockTask",
    "Gate",
    "Part",
    "array",
    "block_tasks",
    "constant",
    "finish",
    "gate",
    "scalar",
    "tree",
]

#: Parts merged per task of a tree: the tree's depth is log8 of the number of blocks.
SPLIT_EVERY = 8


@dataclass(frozen=True)
class Part:
    """What a block contributes to a merge tree: a value that adds (``+``) exactly, or
    the block's first error, and the block's sizes along unknown axes (for the error's
    position in the whole array)."""

    value: Any = None
    error: BlockError | None = None
    sizes: Sizes = field(default_factory=dict)


@dataclass(frozen=True)
class Gate:
    """What the blocks of an array result wait for: the merged value of a tree over the
    labels (the ``"mean"`` denominators, or None for a mere check), and the chunk sizes
    it learnt (so that later errors name positions in the whole array)."""

    value: Any = None
    sizes: Sizes = field(default_factory=dict)


class BlockTask:
    """``func(settings, gate, *blocks)`` on one block, its errors located.

    With ``part=True`` the result is a :class:`Part` (a block's error travels through
    the tree, where the first in C order wins); otherwise the value itself, and an error
    is raised at once with its position in the whole array. ``names`` say which
    argument each block is (``"logits"``, ``"labels"``, ``"prior"``). A class rather
    than a closure: tasks are pickled to the workers by reference.
    """

    def __init__(
        self,
        func: Callable[..., Any],
        block: tuple[int, ...],
        names: tuple[str, ...],
        part: bool,
    ) -> None:
        self.func, self.block, self.names, self.part = func, block, names, part

    def __dask_tokenize__(self) -> Any:
        return (type(self).__name__, self.func.__module__, self.func.__qualname__,
                self.block, self.names, self.part)  # fmt: skip

    def __call__(self, settings: Any, layout: Layout, gate: Gate | None, *blocks: Any) -> Any:
        named = dict(zip(self.names, blocks, strict=True))
        try:
            if "logits" in named:
                layout.check_lining(self.block, named)
            value = self.func(settings, gate, *blocks)
        except ValueError as exc:
            error = BlockError.of(self.block, str(exc))
            if self.part:
                return Part(None, error, layout.sizes(self.block, self.names[0], blocks[0]))
            raise ValueError(layout.message(error, {} if gate is None else gate.sizes)) from None
        if self.part:
            return Part(value, None, layout.sizes(self.block, self.names[0], blocks[0]))
        return value


def constant(value: Any) -> Any:
    """``value`` as one key of the graph (sent to each worker once)."""
    return dask.delayed(value, pure=True, traverse=False)


def block_tasks(
    func: Callable[..., Any],
    blocks: dict[tuple[int, ...], tuple[Any, ...]],
    names: tuple[str, ...],
    settings: Any,
    layout: Any,
    gate: Any = None,
    *,
    part: bool,
) -> dict[tuple[int, ...], Any]:
    """One Delayed :class:`BlockTask` per block: ``blocks`` maps a block's index in the
    grid to its arguments (Delayed blocks of the arrays named by ``names``)."""
    return {
        index: dask.delayed(BlockTask(func, index, names, part), pure=True)(
            settings, layout, gate, *args
        )
        for index, args in blocks.items()
    }


def _merge(layout: Layout, parts: Sequence[Part]) -> Part:
    """Merge parts: the earliest error wins; values add (exactly, in this order)."""
    sizes: Sizes = {}
    for p in parts:
        sizes.update(p.sizes)
    error = layout.earliest([p.error for p in parts if p.error is not None])
    if error is not None:
        return Part(None, error, sizes)
    values = [p.value for p in parts if p.value is not None]
    total = values[0] if values else None
    for v in values[1:]:
        total = total + v
    return Part(total, None, sizes)


def tree(layout: Any, parts: Sequence[Any]) -> Any:
    """Merge Delayed :class:`Part`\\ s in a fixed tree (:data:`SPLIT_EVERY` at a time,
    in the order given), down to one Delayed :class:`Part`."""
    level = list(parts)
    while len(level) > 1:
        level = [
            dask.delayed(_merge, pure=True)(layout, level[i : i + SPLIT_EVERY])
            for i in range(0, len(level), SPLIT_EVERY)
        ]
    return level[0]


def _open(layout: Layout, part: Part) -> Gate:
    if part.error is not None:
        raise ValueError(layout.message(part.error, part.sizes))
    return Gate(part.value, part.sizes)


def gate(layout: Any, part: Any) -> Any:
    """A Delayed :class:`Gate` from a tree's root: raises the tree's first error."""
    return dask.delayed(_open, pure=True)(layout, part)


def _finish(layout: Layout, part: Part, then: Callable[..., Any], *args: Any) -> Any:
    return then(_open(layout, part).value, *args)


def finish(layout: Any, part: Any, then: Callable[..., Any], *args: Any) -> Any:
    """Delayed ``then(merged value, *args)``, or the tree's first error raised."""
    return dask.delayed(_finish, pure=True)(layout, part, then, *args)


def scalar(value: Any, dtype: np.dtype[Any]) -> da.Array:
    """A 0-d Dask array of a Delayed NumPy scalar."""
    return da.from_delayed(value, shape=(), dtype=dtype)


def array(
    pieces: dict[tuple[int, ...], Any],
    chunks: tuple[tuple[float, ...], ...],
    dtype: np.dtype[Any],
    prefix: str,
) -> da.Array:
    """One Dask array whose block ``index`` is the Delayed ``pieces[index]``.

    Built as a graph layer of aliases rather than by ``da.block``, which refuses blocks
    of unknown size (NaN): here the chunks are whatever ``chunks`` says, unknown sizes
    included.
    """
    keys = {index: piece.key for index, piece in pieces.items()}
    name = f"{prefix}-{tokenize(sorted(keys.items()))}"
    layer = {(name, *index): key for index, key in keys.items()}
    graph = HighLevelGraph.from_collections(name, layer, dependencies=list(pieces.values()))
    meta = np.empty((0,) * len(chunks), dtype=dtype)
    return da.Array(graph, name, chunks=chunks, dtype=dtype, meta=meta)
