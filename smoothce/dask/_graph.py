"""Graph assembly: one task per block, merge trees, and the collections of the results.

Every Dask function of smoothce is built from the same pieces, written by a
:class:`Tasks` into one graph layer of its own:

* one task per block (:meth:`Tasks.blocks`), calling a block function of
  :mod:`smoothce.dask._blocks` through :class:`BlockTask`, which places the block's
  validation errors in the whole array;
* fixed merge trees (:meth:`Tasks.tree`) over the blocks' :class:`Part`\\ s (exact
  partial sums, :class:`~smoothce.metrics.Accumulator`\\ s, label checks), whose root
  either raises the first error in C order or hands on the merged value;
* the results (:meth:`Tasks.array`, :meth:`Tasks.scalar`, :meth:`Tasks.delayed`): a
  Dask array whose blocks are tasks' results, for any chunks, unknown sizes (NaN)
  included, a 0-d array, or a Delayed.

The tasks are written as a plain graph (``{key: (function, *argument keys)}``) on top
of the input arrays' graphs, not as ``dask.delayed`` calls: each such call culls the
graphs of its Delayed arguments, which costs time in proportion to the whole graph, so
building a call of ``n`` blocks took time in ``n**2`` (44 s for 2,000 blocks). Nor as
``map_blocks``: when the loss and the gradient come from one pass
(:func:`smoothce.dask.cross_entropy_with_grad`), Dask's graph optimisation would fuse a
blockwise layer into each of its two consumers and run every block twice. A task's
arguments are keys (or None) only; constants live in the callables or in one key each
(the call's settings and layout, which a distributed scheduler then sends to each
worker once, not once per task).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from ._positions import BlockError, Layout, Sizes

__all__ = ["BlockTask", "Gate", "Part", "Tasks", "as_part", "first", "second"]

#: Parts merged per task of a tree: the tree's depth is log8 of the number of blocks.
SPLIT_EVERY = 8

Key = Any  # a task's key: a string, or a tuple starting with one


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


def _open(layout: Layout, part: Part) -> Gate:
    """A tree's root as a :class:`Gate`, or its first error raised."""
    if part.error is not None:
        raise ValueError(layout.message(part.error, part.sizes))
    return Gate(part.value, part.sizes)


class Then:
    """``then(merged value, *args)`` of a tree's root (or its first error raised)."""

    def __init__(self, then: Callable[..., Any], *args: Any) -> None:
        self.then, self.args = then, args

    def __call__(self, layout: Layout, part: Part) -> Any:
        return self.then(_open(layout, part).value, *self.args)


def second(pair: tuple[Any, Any]) -> Any:
    """The gradient block of a ``(loss part, gradient)`` pair."""
    return pair[1]


def first(pair: tuple[Any, Any]) -> Any:
    """The loss part of a ``(loss part, gradient)`` pair."""
    return pair[0]


def as_part(pair: tuple[Any, Any]) -> Part:
    """The loss part of a ``(loss part, gradient)`` pair, as a tree's :class:`Part`."""
    return Part(pair[0])


class Tasks:
    """The tasks of one call, in one graph layer over its input arrays.

    ``name`` is unique to the call (a token of its inputs and settings); every key
    starts with it. Tasks are added first; the results (:meth:`array`,
    :meth:`scalar`, :meth:`delayed`) are made last, over the finished layer.
    """

    def __init__(self, name: str, inputs: Sequence[da.Array]) -> None:
        self.name = name
        self.inputs = [a for a in inputs if a is not None]
        self.layer: dict[Key, Any] = {}
        self._core: Delayed | None = None

    def key(self, *parts: Any) -> Key:
        return (
            (f"{self.name}-{parts[0]}", *parts[1:])
            if len(parts) > 1
            else f"{self.name}-{parts[0]}"
        )

    def add(self, key: Key, task: Any) -> Key:
        if self._core is not None:
            raise RuntimeError("tasks must be added before the results are made")
        self.layer[key] = task
        return key

    def constant(self, label: str, value: Any) -> Key:
        """``value`` as one key (sent to each worker once, whatever reads it)."""
        return self.add(self.key(label), value)

    def blocks(
        self,
        label: str,
        func: Callable[..., Any],
        blocks: dict[tuple[int, ...], tuple[Key, ...]],
        names: tuple[str, ...],
        settings: Key,
        layout: Key,
        gate: Key | None = None,
        *,
        part: bool,
    ) -> dict[tuple[int, ...], Key]:
        """One :class:`BlockTask` per block: ``blocks`` maps a block's index in the grid
        to the keys of its arguments (the arrays named by ``names``, or None)."""
        return {
            index: self.add(
                self.key(label, *index),
                (BlockTask(func, index, names, part), settings, layout, gate, *args),
            )
            for index, args in blocks.items()
        }

    def map(self, label: str, func: Callable[..., Any], keys: dict[Any, Key]) -> dict[Any, Key]:
        """``func(result)`` of each task in ``keys``, one task each."""
        return {i: self.add(self.key(label, *i), (func, k)) for i, k in keys.items()}

    def tree(self, label: str, layout: Key, parts: Sequence[Key]) -> Key:
        """Merge :class:`Part`\\ s in a fixed tree (:data:`SPLIT_EVERY` at a time, in
        the order given), down to one key."""
        level, depth = list(parts), 0
        while len(level) > 1:
            level = [
                self.add(
                    self.key(label, depth, j),
                    (_merge, layout, level[i : i + SPLIT_EVERY]),
                )
                for j, i in enumerate(range(0, len(level), SPLIT_EVERY))
            ]
            depth += 1
        return level[0]

    def gate(self, label: str, layout: Key, root: Key) -> Key:
        """A :class:`Gate` from a tree's root (whose first error it raises)."""
        return self.add(self.key(label), (_open, layout, root))

    def then(
        self, label: str, layout: Key, root: Key, then: Callable[..., Any], *args: Any
    ) -> Key:
        """``then(merged value, *args)`` of a tree's root."""
        return self.add(self.key(label), (Then(then, *args), layout, root))

    # -- results ---------------------------------------------------------------------
    def _finished(self) -> Delayed:
        """The layer as a collection the results depend on (made once)."""
        if self._core is None:
            graph = HighLevelGraph.from_collections(self.name, self.layer, self.inputs)
            self._core = Delayed(next(iter(self.layer)), graph, layer=self.name)
        return self._core

    def array(
        self,
        prefix: str,
        pieces: dict[tuple[int, ...], Key],
        chunks: tuple[tuple[float, ...], ...],
        dtype: np.dtype[Any],
    ) -> da.Array:
        """A Dask array whose block ``index`` is the result of ``pieces[index]``.

        Its own layer of aliases (``da.block`` refuses blocks of unknown size, NaN):
        the chunks are whatever ``chunks`` says, unknown sizes included.
        """
        name = f"{prefix}-{self.name}"
        layer = {(name, *index): key for index, key in pieces.items()}
        graph = HighLevelGraph.from_collections(name, layer, [self._finished()])
        meta = np.empty((0,) * len(chunks), dtype=dtype)
        return da.Array(graph, name, chunks=chunks, dtype=dtype, meta=meta)

    def scalar(self, prefix: str, key: Key, dtype: np.dtype[Any]) -> da.Array:
        """A 0-d Dask array of the NumPy scalar that ``key`` gives."""
        return self.array(prefix, {(): key}, (), dtype)

    def delayed(self, prefix: str, key: Key) -> Delayed:
        """A Delayed of the value that ``key`` gives."""
        name = f"{prefix}-{self.name}"
        graph = HighLevelGraph.from_collections(name, {name: key}, [self._finished()])
        return Delayed(name, graph, layer=name)
