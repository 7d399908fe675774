"""Where a block's error lies in the whole array, and which of several comes first.

A block validates its own data and gets the in-memory messages ("labels must be class
indices in [0, 40); got labels[13] = 40."), with positions within the block. A
:class:`BlockError` keeps such a message with the block's index in the grid of the
logits; the :class:`Layout` of the call shifts its position to the whole array once the
block's offsets are known: when the graph is built where the chunk sizes are known, and
otherwise from the sizes the blocks report as they are computed (:data:`Sizes`, carried
through the merge trees of :mod:`smoothce.dask._graph`).

Errors also have an order. With several bad values the in-memory function names the
first in C order, labels before the prior (the order in which
:func:`~smoothce._validation.prepare` checks them), and so do the Dask functions,
whichever block a worker reached first. Two positions compare in C order without any
offset: along each axis, the block's index first, then the position within the block.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["BlockError", "Layout", "Sizes"]

#: Sizes of chunks whose size was unknown when the graph was built, as the blocks
#: report them: ``(axis of the logits, chunk index) -> size``.
Sizes = dict[tuple[int, int], int]

_POSITION = re.compile(r"(labels|prior|batch position )\[([0-9, ]+)\]")
# prepare() checks the labels' values before the prior's; an error without a position
# (blocks that do not line up) comes before both.
_RANK = {None: 0, "labels": 1, "prior": 2, "batch position ": 2}


@dataclass(frozen=True)
class BlockError:
    """A validation error found in one block.

    Attributes
    ----------
    block : tuple of int
        The block's index in the grid of the logits (0 along the class axis).
    message : str
        The in-memory message, with the position within the block.
    name : str or None
        What the position indexes: ``"labels"``, ``"prior"`` or ``"batch position "``
        (the prior's row sums); None when the message has no position.
    local : tuple of int
        The position within the block, in the coordinates of ``name``.
    """

    block: tuple[int, ...]
    message: str
    name: str | None = None
    local: tuple[int, ...] = ()

    @classmethod
    def of(cls, block: tuple[int, ...], message: str) -> BlockError:
        found = _POSITION.search(message)
        if found is None:
            return cls(block, message)
        local = tuple(int(i) for i in found.group(2).split(","))
        return cls(block, message, found.group(1), local)

    def raise_(self) -> None:
        raise ValueError(self.message)


@dataclass(frozen=True)
class Layout:
    """The chunk structure of one call, as the tasks need it to place their errors.

    One object per call, in the graph once (every task reads the same key).

    Attributes
    ----------
    chunks : tuple of tuple of float
        The chunks of the logits' grid (NaN where unknown), the class axis one chunk.
    axes : dict
        For each argument whose positions a message may name (``"logits"``,
        ``"labels"``, ``"prior"``, ``"batch position "``), the axis of the logits each
        of its own axes runs along (None where it is broadcast: a size of 1).
    """

    chunks: tuple[tuple[float, ...], ...]
    axes: dict[str, tuple[int | None, ...]]
    unknown_axes: frozenset[int] = field(init=False)

    def __post_init__(self) -> None:
        # Once per call: every block asks, and a scan of the chunks per block would
        # cost time in the square of their number.
        unknown = frozenset(a for a, c in enumerate(self.chunks) if any(map(math.isnan, c)))
        object.__setattr__(self, "unknown_axes", unknown)

    def unknown(self, axis: int) -> bool:
        return axis in self.unknown_axes

    # -- order -------------------------------------------------------------------
    def order(self, error: BlockError) -> tuple[Any, ...]:
        """A key that sorts errors as the in-memory function would meet them."""
        along = self._along(error)
        key: list[int] = [_RANK.get(error.name, 0)]
        for axis, index in enumerate(error.block):
            key += [index, along.get(axis, 0)]
        return tuple(key)

    def earliest(self, errors: Sequence[BlockError]) -> BlockError | None:
        return min(errors, key=self.order) if errors else None

    def _along(self, error: BlockError) -> dict[int, int]:
        """The error's position within its block, per axis of the logits."""
        if error.name is None:
            return {}
        axes = self.axes.get(error.name, ())
        if len(axes) != len(error.local):
            return {}
        return {a: i for i, a in zip(error.local, axes, strict=True) if a is not None}

    # -- offsets -----------------------------------------------------------------
    def offsets(self, block: tuple[int, ...], sizes: Sizes) -> tuple[int | None, ...]:
        """Where ``block`` starts along each axis (None where a size before it is
        unknown and was not reported)."""
        out: list[int | None] = []
        for axis, index in enumerate(block):
            start: int | None = 0
            for j, c in enumerate(self.chunks[axis][:index]):
                size = sizes.get((axis, j)) if math.isnan(c) else int(c)
                if size is None:
                    start = None
                    break
                assert start is not None
                start += size
            out.append(start)
        return tuple(out)

    def sizes(self, block: tuple[int, ...], name: str, array: Any) -> Sizes:
        """The sizes of ``block`` along the unknown axes, read from ``array`` (the
        block of argument ``name``)."""
        shape = np.shape(array)
        return {
            (a, block[a]): int(shape[i])
            for i, a in enumerate(self.axes[name])
            if a is not None and self.unknown(a)
        }

    def message(self, error: BlockError, sizes: Sizes) -> str:
        """The error's message with its position in the whole array."""
        if error.name is None:
            return error.message
        axes = self.axes.get(error.name, ())
        if len(axes) != len(error.local):
            return error.message
        offsets = self.offsets(error.block, sizes)
        shifted = []
        for i, a in zip(error.local, axes, strict=True):
            start = 0 if a is None else offsets[a]
            if start is None:
                return (
                    f"{error.message} (The position is within block {error.block} of the "
                    "logits: the sizes of the chunks before it are unknown. "
                    "compute_chunk_sizes() on the Dask arrays gives positions in the "
                    "whole array.)"
                )
            shifted.append(i + start)
        found = _POSITION.search(error.message)
        assert found is not None
        head, tail = error.message[: found.start()], error.message[found.end() :]
        return f"{head}{error.name}{shifted}{tail}"

    # -- blocks that line up -----------------------------------------------------
    def check_lining(self, block: tuple[int, ...], blocks: dict[str, Any]) -> None:
        """Raise unless the blocks of every argument hold the logits' rows.

        Only needed along axes whose chunk sizes are unknown: everywhere else the
        chunks were matched when the graph was built. Two arrays of unknown chunk sizes
        (say ``logits[keep]`` and ``labels[keep]``) are paired block by block, as Dask
        pairs them in element-wise operations; this is where a pairing that does not
        hold (``logits[keep]`` with ``labels[other]``) is found.
        """
        z = blocks["logits"]
        for name, array in blocks.items():
            if name == "logits" or array is None:
                continue
            shape = np.shape(array)
            for i, a in enumerate(self.axes[name]):
                if a is None or not self.unknown(a) or shape[i] == z.shape[a]:
                    continue
                raise ValueError(
                    f"{name} must line up with logits block for block along axis {a} of "
                    f"logits, whose chunk sizes are unknown; got {shape[i]} against "
                    f"{z.shape[a]} in block {block}. Index both with the same mask, or "
                    "call compute_chunk_sizes() on both."
                )
