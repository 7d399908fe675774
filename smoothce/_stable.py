"""Stable numerics: row blocking, the max shift, and log-softmax.

Everything here works in *shifted coordinates* ``s = z - max(z)``: after the shift
every ``s_k <= 0``, so ``exp(s_k)`` cannot overflow, the largest term of the sum is
exactly ``exp(0) = 1`` (the sum is at least 1 and its log at least 0), and
``log p_k = s_k - log(sum_j exp(s_j))`` is a difference of a non-positive and a
non-negative number: no cancellation. The textbook ``log(softmax(z))`` instead rounds
small probabilities to 0 and returns ``-inf``; ``logsumexp(z) - z_k`` on unshifted
logits near 3e4 loses every digit of a loss near 1 in float32.

Arrays are processed in row blocks of at most
:data:`smoothce._engine.BLOCK_ELEMENTS` elements, so the workspace is bounded
independently of the batch size.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from math import prod
from typing import Any

import numpy as np
import numpy.typing as npt

from ._compat import c_einsum
from ._validation import check_logits, classes_last, compute_dtypes

__all__ = [
    "is_view_of",
    "log_softmax",
    "row_blocks",
    "row_sums",
    "shift_rows",
    "store_float16",
    "widen_float16",
]

#: Classes summed by one einsum accumulation; longer rows are cut into chunks of this
#: many whose sums are added in float64. einsum accumulates sequentially in SIMD
#: lanes, so its error grows with the length summed (measured on sums of exp(3 N(0,1))
#: in float32: 3e-7 relative at 1,000 classes, 1e-5 at 1,000,000); capped at 4096 it
#: stays near NumPy's pairwise sum (1e-7) at a fraction of the pairwise sum's cost on
#: short rows (0.2 against 0.8 of an exp pass at K = 100).
SUM_CHUNK = 4096

Key = tuple[Any, ...]


def row_blocks(batch_shape: tuple[int, ...], rows: int) -> Iterator[Key]:
    """Index keys covering ``batch_shape`` in blocks of at most ``rows`` rows.

    A key indexes an array of shape ``(*batch_shape, K)`` (or ``batch_shape``) and
    selects a sub-array whose batch part holds at most ``rows`` rows (at least one).
    Blocks run along the leading batch axis; when one index of it already exceeds
    ``rows``, the next axis is split instead. The order is fixed (C order), so partial
    results can be combined deterministically.
    """
    if not batch_shape:
        yield ()
        return
    n0, inner = batch_shape[0], prod(batch_shape[1:])
    if inner == 0:
        return
    if inner <= rows:
        step = max(1, rows // inner)
        for start in range(0, n0, step):
            yield (slice(start, min(start + step, n0)),)
    else:
        for i in range(n0):
            for key in row_blocks(batch_shape[1:], rows):
                yield (i, *key)


def is_view_of(view: np.ndarray, base: np.ndarray) -> bool:
    """Whether a reshape result still refers to ``base``'s memory (no copy was made)."""
    return view.size == 0 or np.may_share_memory(view, base)


def row_sums(x: np.ndarray) -> np.ndarray:
    """Sums along axis 1 of a 2-D array, fast and accurate (float64 result).

    Each row's sum depends on that row alone, never on how many rows share the call:
    a row's loss is the same in any batch, chunk or block (so Dask's chunkings and the
    engine's blocks agree bit for bit). BLAS's matrix-vector product ``x @ ones`` is
    1.7x faster on short rows but groups rows in its kernels (measured with OpenBLAS:
    54 of 80 row splits changed some row's bits, even on one thread), so it is not
    used. float16 is accumulated in float32; see :data:`SUM_CHUNK` for the chunking.
    """
    n, k = x.shape
    if k <= SUM_CHUNK:
        # `c_einsum` is the C function behind np.einsum (same loops, same bits) without
        # its Python wrapper, and without `dtype=` when none is needed: 1.5 us against
        # 5.4 us at (32, 10), where the wrapper and the casting setup were most of it.
        if x.dtype.char in "fd":  # float32/64 (a char test: dtype == costs 0.2 us)
            raw = c_einsum("ij->i", x)
        else:
            raw = c_einsum("ij->i", x, dtype=np.promote_types(x.dtype, np.float32))
        sums: np.ndarray = raw.astype(np.float64, copy=False)
        return sums
    acc = np.promote_types(x.dtype, np.float32)
    whole = (k // SUM_CHUNK) * SUM_CHUNK
    # Rows are contiguous runs, so the first `whole` columns reshape to a view.
    parts = np.einsum("ijk->ij", x[:, :whole].reshape(n, -1, SUM_CHUNK), dtype=acc)
    total: np.ndarray = parts.sum(axis=1, dtype=np.float64)
    if whole < k:
        total += np.einsum("ij->i", x[:, whole:], dtype=acc)
    return total


def shift_rows(z: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Write ``z - max(z, axis=1)`` into ``out`` (compute dtype); return the row maxima.

    Parameters
    ----------
    z : ndarray, shape (rows, K)
        Logits of any real dtype; read only.
    out : ndarray, shape (rows, K)
        Floating workspace; may be ``z`` itself (the shift is elementwise).

    Notes
    -----
    A row with a ``+inf`` logit has ``inf - inf = nan`` in it, and a row of all
    ``-inf`` has ``-inf - (-inf) = nan`` everywhere: softmax is undefined there and NaN
    is the documented answer, so the invalid-operation warning is silenced for exactly
    this subtraction. Rows with some (not all) ``-inf`` shift to ``-inf`` silently.

    A row whose spread exceeds the largest float (``1e308 - (-1e308)``) overflows to
    ``-inf`` here, silently too, and that is the right shifted value: ``s_k < -max``
    means ``exp(s_k)`` underflows to 0 and ``log p_k <= s_k`` is not representable
    either. Only the dot product ``T`` needs those entries finite; it is formed from
    ``z`` itself at a quarter scale (:meth:`smoothce._terms.Terms.exact_dot`).
    """
    m = z.max(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", over="ignore"):
        # dtype= makes float16 and integer logits subtract in the compute dtype.
        np.subtract(z, m, out=out, dtype=out.dtype)
    maxima: np.ndarray = m.reshape(-1)
    return maxima


def log_softmax(logits: npt.ArrayLike, axis: int = -1) -> np.ndarray:
    r"""Log-softmax along ``axis``, computed stably in shifted coordinates.

    .. math::

        \log \operatorname{softmax}(z)_k = s_k - \log \sum_j e^{s_j},
        \qquad s = z - \max_j z_j .

    Parameters
    ----------
    logits : array_like, shape (..., K, ...)
        Real logits (float16/32/64 or integer); the classes lie on ``axis``.
    axis : int, default -1
        The class axis.

    Returns
    -------
    ndarray
        Same shape as ``logits``, C-contiguous; dtype of ``logits`` (float16 is
        computed in float32 and rounded once at the end; integers give float64).
        ``-inf`` logits give ``-inf``; a row with a NaN or ``+inf`` logit, or with
        every logit ``-inf``, gives NaN. Values below the dtype's range (a float16
        row spanning more than 65504) are ``-inf``, without a warning.

    Examples
    --------
    The naive formula underflows where the shifted one does not:

    >>> import numpy as np, smoothce
    >>> z = np.array([0.0, 1000.0])
    >>> with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
    ...     naive = np.log(np.exp(z) / np.exp(z).sum())
    >>> naive
    array([-inf,  nan])
    >>> smoothce.log_softmax(z)
    array([-1000.,     0.])
    """
    z_in, ax = check_logits(logits, axis)
    compute_dtype, out_dtype = compute_dtypes(z_in.dtype)
    K = z_in.shape[ax]
    out = np.empty(z_in.shape, dtype=out_dtype)
    z = classes_last(z_in, ax)
    res = classes_last(out, ax)
    from ._engine import BLOCK_ELEMENTS  # the engine's setting, read at call time

    rows = max(1, BLOCK_ELEMENTS // K)
    s_buf = np.empty((min(rows, max(1, prod(z.shape[:-1]))), K), dtype=compute_dtype)
    e_buf = np.empty_like(s_buf)
    for key in row_blocks(z.shape[:-1], rows):
        z2 = z[key].reshape(-1, K)
        b = z2.shape[0]
        s, e = s_buf[:b], e_buf[:b]
        shift_rows(z2, s)
        np.exp(s, out=e)
        # The sum is >= 1 on every row with a finite maximum (its largest term is
        # exp(0)), so the log never sees 0; NaN rows stay NaN without a warning.
        log_sum = np.log(e.sum(axis=1, keepdims=True))
        np.subtract(s, log_sum, out=s)
        with np.errstate(over="ignore"):  # below float16's range: -inf, as it should be
            res[key] = s.reshape(res[key].shape)
    return out


@functools.lru_cache(maxsize=1)
def _float16_table() -> np.ndarray:
    """Every float16 bit pattern's float32 value (256 KiB, read-only), by NumPy's cast."""
    table = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
    table.setflags(write=False)
    return table


def widen_float16(src: np.ndarray, out: np.ndarray) -> None:
    """``out[...] = src`` for float16 ``src`` and float32 ``out``, by table lookup.

    The table holds NumPy's own cast of each of the 65,536 bit patterns, so the values
    (NaN payloads included) are those of the cast, bit for bit; looking them up takes
    0.85 ns per value here against 1.9 ns for NumPy's float16 -> float32 cast (which
    does not use F16C on this machine), with an exp pass at 1.3 ns.
    """
    np.take(_float16_table(), src.view(np.uint16), out=out, mode="wrap")


_U32 = np.dtype(np.uint32)
# float32 bit patterns: |x| below 2**-14 rounds to a float16 subnormal (or zero); at
# 65520 (biased exponent 143) and above |x| overflows to inf; above inf's pattern, NaN.
_F16_SMALL = np.uint32(113 << 23)
_F16_OVER = np.uint32(143 << 23)
_F32_INF = np.uint32(255 << 23)
# The float whose ulp is float16's subnormal spacing 2**-24: adding it to |x| < 2**-14
# rounds |x| to that spacing (to nearest, ties to even, as the cast), and its bits,
# subtracted, leave the float16 subnormal's bit pattern.
_F16_MAGIC = np.uint32((127 - 15 + 23 - 10 + 1) << 23)
_F16_MAGIC_F = float(_F16_MAGIC.reshape(1).view(np.float32)[0])
# Rebias the exponent from 127 to 15 and add half a float16 ulp less one (the
# even/odd correction adds the last one): (bits + bias + odd) >> 13 rounds to nearest
# even, the carry moving into the exponent as it should.
_F16_BIAS = np.uint32(((15 - 127) << 23) + 0xFFF & 0xFFFFFFFF)


def store_float16(dst: np.ndarray, src: np.ndarray, scratch: np.ndarray | None = None) -> None:
    """``dst[...] = src`` for float32 ``src`` into float16 ``dst``, bit for bit as NumPy's
    cast, in a fifth of its time or less.

    NumPy's float32 -> float16 cast is a scalar software conversion: about 2.5 ns a
    value here (five exponentials' worth), and 65 ns for every value that rounds into
    float16's subnormal range (below 2**-14), where it raises the underflow flag value
    by value; gradients are full of such values (``c W p`` of unlikely classes). Here
    the conversion is integer arithmetic on the bits, a dozen vectorised passes over
    the block in cache (1.4 ns a value): the normal range by rounding the bit pattern
    (bias, plus one for an odd result: ties to even), the subnormal range by adding a
    float whose spacing is float16's (the FPU rounds, ties to even), overflow and NaN
    (rare: only when the block holds one) as the cast has them, NaN payloads included.

    Parameters
    ----------
    dst : ndarray of float16
        Any layout, the shape of ``src``.
    src : ndarray of float32, C-contiguous
        Overwritten (it is a workspace).
    scratch : ndarray of uint32 with at least ``src.size`` elements, optional
        Reused between calls by the engine's threads.
    """
    n = src.size
    f = src.reshape(-1).view(_U32)
    out = dst.view(np.uint16)
    work = np.empty(n, dtype=_U32) if scratch is None or scratch.size < n else scratch[:n]
    # The sign, into the destination's bits first: f is rewritten below.
    np.right_shift(f.reshape(out.shape), 16, out=out, casting="unsafe")
    out &= 0x8000
    a = np.bitwise_and(f, np.uint32(0x7FFFFFFF), out=f)  # |x|, in place
    # Normal range: (a + bias + ((a >> 13) & 1)) >> 13.
    np.right_shift(a, np.uint32(13), out=work)
    work &= np.uint32(1)
    work += a
    work += _F16_BIAS
    work >>= np.uint32(13)
    top = np.maximum.reduce(a)
    if top >= _F16_OVER:  # inf for overflow, NaN with its payload's top bits
        over = np.flatnonzero(a >= _F16_OVER)
        payload = (a[over] & np.uint32(0x7FFFFF)) >> np.uint32(13)
        nan = a[over] > _F32_INF
        work[over] = np.where(nan, np.uint32(0x7C00) + np.maximum(payload, 1), 0x7C00)
    small = a < _F16_SMALL
    if small.any():
        af = a.view(np.float32)
        # A signalling NaN in the block raises "invalid" in the addition; its result
        # is not used (NaN is not small).
        with np.errstate(invalid="ignore"):
            np.add(af, np.float32(_F16_MAGIC_F), out=af)
        a -= _F16_MAGIC
        np.copyto(work, a, where=small)
    np.bitwise_or(out, work.reshape(out.shape), out=out, casting="unsafe")
