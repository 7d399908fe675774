"""Setup: the chunk structure of a call, checked and lined up before anything runs.

:class:`Grid` is the block grid of a Dask array whose blocks must be whole rows along
one axis (the logits' classes; a linear head's hidden width): it puts that axis in one
chunk and lines up every other input with the grid (:meth:`Grid.align`), block for
block. :class:`Setup` is one loss or metrics call: the arguments validated with the
in-memory messages on stand-ins (no data is read), the grid, the inputs aligned, and
the :class:`~smoothce.dask._blocks.Settings` and
:class:`~smoothce.dask._positions.Layout` that its tasks share.

Unknown chunk sizes
-------------------
A Dask array made by boolean indexing (``logits[labels != pad]``) or by
``dask.dataframe``'s ``to_dask_array()`` has chunks of unknown size (NaN) along its
rows. Nothing here needs those sizes: a block is computed whatever its size, exact sums
merge whatever their count, and the results are arrays of the same unknown chunks.
Inputs are paired as Dask pairs them in element-wise operations:

* two arrays of unknown chunks along an axis (``logits[keep]``, ``labels[keep]``)
  are paired block by block when they have as many chunks; each block checks that
  its rows agree when it runs;
* an axis of one chunk pairs with anything (the other input is put in one chunk);
* otherwise (unknown sizes against known ones, or a different number of unknown
  chunks) nothing says which rows go together: the error says so and names
  ``compute_chunk_sizes()``, as Dask's own does.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, TypeVar

import dask.array as da
import numpy as np
from dask.array.core import PerformanceWarning

from .. import metrics as _metrics
from .._validation import check_logits, prepare
from ._blocks import Settings
from ._positions import Layout

__all__ = ["Grid", "Setup"]

T = TypeVar("T")

_SIZES_HINT = (
    "compute_chunk_sizes() on the Dask array (or to_dask_array(lengths=True) for a Dask "
    "DataFrame) makes them known"
)


def _unknown(chunks: tuple[float, ...]) -> bool:
    return any(math.isnan(c) for c in chunks)


def _describe(chunks: tuple[float, ...]) -> str:
    """Chunks as a short tuple for messages (long ones abbreviated)."""
    shown = ", ".join("nan" if math.isnan(c) else str(int(c)) for c in chunks[:6])
    more = (
        f", ... ({len(chunks)} chunks)" if len(chunks) > 6 else ("," if len(chunks) == 1 else "")
    )
    return f"({shown}{more})"


def _rechunk_warn_bytes() -> int:
    # The public setting, read at call time so that changing it takes effect.
    from smoothce import dask as package

    value: int = package.RECHUNK_WARN_BYTES
    return value


class Grid:
    """The block grid of ``primary``, whose blocks are whole along axis ``whole``.

    Parameters
    ----------
    primary : dask.array.Array
        The array whose chunks the results keep (the logits; a linear head's hidden
        states); its chunk sizes may be unknown (NaN) along any axis but ``whole``.
    whole : int
        The axis each block must hold whole (non-negative); rechunked to one chunk
        when it is cut, with a :class:`~dask.array.PerformanceWarning` above
        :data:`smoothce.dask.RECHUNK_WARN_BYTES` (an array of unknown size cannot be
        measured against it and is rechunked quietly).
    name : str
        The argument's name in messages.
    whole_name : str
        What the whole axis is, in messages.
    """

    def __init__(
        self, primary: da.Array, whole: int, name: str, whole_name: str = "class axis"
    ) -> None:
        self.name, self.whole, self.whole_name = name, whole, whole_name
        self.original_chunks = primary.chunks
        if _unknown(primary.chunks[whole]):
            raise ValueError(
                f"{name} must have a known size along axis {whole}, the {whole_name}, "
                f"which every block holds whole; got chunks {_describe(primary.chunks[whole])} "
                f"there. {_SIZES_HINT}."
            )
        if primary.numblocks[whole] > 1:
            primary = self._rechunk(primary)
        self.array = primary
        self.chunks: tuple[tuple[float, ...], ...] = primary.chunks
        self.ndim = primary.ndim

    def _rechunk(self, a: da.Array) -> da.Array:
        """Put the whole axis in one chunk, letting Dask size the other chunks (known
        sizes) or keeping them (unknown ones, which cannot be resized)."""
        unknown = any(_unknown(c) for c in a.chunks)
        if not unknown and a.nbytes > _rechunk_warn_bytes():
            warnings.warn(
                f"{self.name} are chunked along the {self.whole_name} {self.whole} "
                f"({a.numblocks[self.whole]} chunks); smoothce.dask needs whole rows per "
                f"block and rechunks them, which moves all {a.nbytes / 2**20:.0f} MiB of "
                f"{self.name} between workers. Store the {self.name} with the "
                f"{self.whole_name} in one chunk to avoid this.",
                PerformanceWarning,
                stacklevel=5,
            )
        if unknown:
            return a.rechunk({self.whole: -1})
        return a.rechunk({i: (-1 if i == self.whole else "auto") for i in range(a.ndim)})

    @property
    def numblocks(self) -> tuple[int, ...]:
        return tuple(len(c) for c in self.chunks)

    def indices(self) -> list[tuple[int, ...]]:
        """Every block's index, in C order."""
        return list(np.ndindex(*self.numblocks))

    def drop(self, values: tuple[T, ...]) -> tuple[T, ...]:
        """``values`` (one per axis: an index, chunks) without the whole axis."""
        return values[: self.whole] + values[self.whole + 1 :]

    def align(
        self, a: da.Array, name: str, axes: tuple[int, ...], *, broadcast: bool = False
    ) -> da.Array:
        """``a`` chunked to line up with the grid, block for block.

        ``axes[i]`` is the grid axis along which ``a``'s axis ``i`` runs. With
        ``broadcast``, an axis of size 1 is broadcast (one chunk, the same for every
        block along the grid's axis); the whole axis is one chunk. Raises where no
        pairing is known (see the module's notes on unknown chunk sizes).
        """
        target: dict[int, Any] = {}
        for i, g in enumerate(axes):
            own, grid = a.chunks[i], self.chunks[g]
            if broadcast and a.shape[i] == 1:
                continue
            if not _unknown(grid):
                if _unknown(own):
                    raise ValueError(
                        f"{name} must have known chunk sizes along axis {i} to line up with "
                        f"{self.name}, whose chunks along axis {g} are "
                        f"{_describe(grid)}; got chunks {_describe(own)}. {_SIZES_HINT}."
                    )
                target[i] = grid
            elif len(grid) == 1:
                if _unknown(own) and len(own) > 1:
                    raise ValueError(
                        f"{name} must be in one chunk along axis {i}, as {self.name} are "
                        f"along axis {g} (of unknown size); got {len(own)} chunks of unknown "
                        f"size. {_SIZES_HINT}."
                    )
                if not _unknown(own):
                    target[i] = -1
            elif not _unknown(own):
                raise ValueError(
                    f"{name} must be chunked like {self.name} along axis {g}, whose chunk "
                    f"sizes are unknown {_describe(grid)}; got known chunks "
                    f"{_describe(own)}, which cannot be matched with them. Index {name} "
                    f"with the same mask as {self.name}, or make the sizes of "
                    f"{self.name} known: {_SIZES_HINT}."
                )
            elif len(own) != len(grid):
                raise ValueError(
                    f"{name} must have as many chunks as {self.name} along axis {g} when "
                    f"their sizes are unknown; got {len(own)} chunks of {name} and "
                    f"{len(grid)} of {self.name}. {_SIZES_HINT}."
                )
        if not target:
            return a
        return a.rechunk(target)

    @staticmethod
    def block_of(index: tuple[int, ...], axes: tuple[int, ...], a: da.Array) -> tuple[int, ...]:
        """The index of ``a``'s block that lines up with the grid's block ``index``
        (0 along broadcast axes, which hold one chunk)."""
        return tuple(0 if a.numblocks[i] == 1 else index[g] for i, g in enumerate(axes))

    def layout(self, axes: dict[str, tuple[int | None, ...]]) -> Layout:
        """The :class:`~smoothce.dask._positions.Layout` of the grid and its inputs."""
        return Layout(self.chunks, {self.name: tuple(range(self.ndim)), **axes})


def _stand_in(a: Any, shape: tuple[int, ...]) -> Any:
    """A read-only NumPy array of ``a``'s dtype and ``shape`` that occupies no memory."""
    return np.broadcast_to(np.zeros((), dtype=a.dtype), shape)


def _nan_to(shape: tuple[float, ...], value: int) -> tuple[int, ...]:
    return tuple(value if math.isnan(s) else int(s) for s in shape)


class Setup:
    """The Dask inputs of one call, validated and aligned block for block.

    Everything that needs no data (dtypes, shapes, ``axis``, ``epsilon``,
    ``reduction``, NumPy ``weight`` and ``prior``, ``z_loss``, ``softcap``) is checked
    here, by :func:`~smoothce._validation.prepare` on stand-ins with the shapes and
    dtypes of the real arrays: the in-memory messages. Unknown sizes stand in as 1;
    the blocks check their own sizes when they run.
    """

    def __init__(
        self,
        logits: Any,
        labels: Any,
        epsilon: Any,
        *,
        axis: Any,
        reduction: Any,
        prior: Any,
        weight: Any,
        ignore_index: Any,
        num_classes: Any,
        z_loss: Any = 0.0,
        softcap: Any = None,
        workers: Any = 1,
        top_k: int = 5,
        n_bins: int = 15,
        metrics: bool = False,
    ) -> None:
        z = logits if isinstance(logits, da.Array) else da.asarray(logits)
        y = labels if isinstance(labels, da.Array) else da.asarray(labels)
        # The class axis first, with prepare's messages, on a stand-in of the logits.
        _, ax = check_logits(_stand_in(z, _nan_to(z.shape, 1)), axis)
        prior, stand_prior = self._prior(prior, z, ax)
        y_axes = self._axes(y.ndim, z.ndim, ax, full=y.dtype.kind == "f")
        kwargs: dict[str, Any] = dict(
            axis=axis, reduction=reduction, prior=stand_prior, weight=weight,
            ignore_index=ignore_index, num_classes=num_classes, z_loss=z_loss,
            softcap=softcap,
        )  # fmt: skip
        p = prepare(
            _stand_in(z, _nan_to(z.shape, 1)), _stand_in(y, self._shape(y, y_axes, z)), epsilon,
            **kwargs,
        )  # fmt: skip
        if metrics and p.probabilistic:
            _metrics._reject_probabilities(y.dtype)
        if not p.batch_shape:
            raise ValueError(
                "smoothce.dask needs a batch axis (logits with at least 2 dimensions); "
                f"got logits of shape {z.shape}. Use smoothce.cross_entropy."
            )
        self.p = p
        self.ax = ax
        self.grid = grid = Grid(z, ax, "logits")
        self.z = grid.array
        assert y_axes is not None  # prepare refused labels of any other shape
        self.y_axes = y_axes
        self.y = grid.align(y, "labels", y_axes)
        # A per-sample prior travels with the blocks; a class prior (K,), a name or None
        # is the same for every block (in the settings).
        self.u: da.Array | None = None
        self.u_axes: tuple[int, ...] = ()
        shared = prior
        if p.prior.kind == "sample":
            u = prior if isinstance(prior, da.Array) else da.from_array(np.asarray(prior))
            self.u_axes = tuple(range(z.ndim - u.ndim, z.ndim))
            self.u = grid.align(u, "prior", self.u_axes, broadcast=True)
            shared = None
        axes: dict[str, tuple[int | None, ...]] = {
            "labels": y_axes,
            "batch position ": tuple(a for a in range(z.ndim) if a != ax),
        }
        if self.u is not None:
            axes["prior"] = tuple(
                None if self.u.shape[i] == 1 else g for i, g in enumerate(self.u_axes)
            )
        self.layout = grid.layout(axes)
        self.settings = Settings(
            epsilon=p.epsilon, axis=ax, K=p.num_classes, probabilistic=p.probabilistic,
            reduction=p.reduction, prior=shared, weight=weight,
            ignore_index=ignore_index, num_classes=num_classes, z_loss=p.z_loss,
            softcap=p.softcap, workers=workers, top_k=top_k, n_bins=n_bins,
        )  # fmt: skip

    @staticmethod
    def _prior(prior: Any, z: da.Array, ax: int) -> tuple[Any, Any]:
        """``(prior for the blocks, stand-in for prepare)``.

        A Dask class prior (K,) is K numbers, used by every block: computed now. A Dask
        per-sample prior stands in as the uniform 1/K (its values are checked per
        block), and so does a NumPy one whose rows cannot be matched to the logits'
        now (unknown sizes): prepare() checks the rest with their values.
        """
        if isinstance(prior, da.Array) and prior.ndim == 1:
            return np.asarray(prior.compute()), np.asarray(prior.compute())
        if isinstance(prior, (str, type(None))):
            return prior, prior
        if not isinstance(prior, da.Array):
            values = np.asarray(prior)
            if not any(math.isnan(s) for s in z.shape) or values.ndim <= 1:
                return values, values
            prior = values
        K = int(z.shape[ax])
        shape = _nan_to(prior.shape, 1)
        offset = z.ndim - len(shape)
        if offset >= 0:  # along the logits' unknown axes: 1, as the logits' stand-in
            shape = tuple(1 if math.isnan(z.shape[offset + i]) else s for i, s in enumerate(shape))
        uniform = np.asarray(1.0 / max(K, 1), prior.dtype)
        return prior, np.broadcast_to(uniform, shape)

    @staticmethod
    def _axes(ndim: int, z_ndim: int, ax: int, full: bool) -> tuple[int, ...] | None:
        """The logits' axes along which labels of ``ndim`` dimensions run (None when
        they fit neither way: prepare() says so)."""
        if full and ndim == z_ndim:
            return tuple(range(z_ndim))
        if not full and ndim == z_ndim - 1:
            return tuple(a for a in range(z_ndim) if a != ax)
        return None

    @staticmethod
    def _shape(y: da.Array, axes: tuple[int, ...] | None, z: da.Array) -> tuple[int, ...]:
        """The labels' stand-in shape: 1 where the logits' size is unknown, the logits'
        size where only the labels' is (their chunks are refused later)."""
        if axes is None:
            return _nan_to(y.shape, 1)
        out = []
        for s, g in zip(y.shape, axes, strict=True):
            if math.isnan(z.shape[g]):
                out.append(1)
            elif math.isnan(s):
                out.append(int(z.shape[g]))
            else:
                out.append(int(s))
        return tuple(out)

    # -- blocks ------------------------------------------------------------------
    def inputs(self) -> list[da.Array]:
        """The Dask arrays the tasks read (their keys are the blocks')."""
        return [a for a in (self.z, self.y, self.u) if a is not None]

    def blocks(self) -> dict[tuple[int, ...], tuple[Any, Any, Any]]:
        """``index -> (logits key, labels key, prior key or None)``, per block."""
        out = {}
        for index in self.grid.indices():
            yb = (self.y.name, *Grid.block_of(index, self.y_axes, self.y))
            ub = None
            if self.u is not None:
                ub = (self.u.name, *Grid.block_of(index, self.u_axes, self.u))
            out[index] = ((self.z.name, *index), yb, ub)
        return out

    def label_blocks(self) -> dict[tuple[int, ...], tuple[Any]]:
        """``index over the logits' axes -> (labels key,)``, one per labels block."""
        out = {}
        for idx in np.ndindex(*self.y.numblocks):
            index = [0] * self.grid.ndim
            for i, g in enumerate(self.y_axes):
                index[g] = idx[i]
            out[tuple(index)] = ((self.y.name, *idx),)
        return out
