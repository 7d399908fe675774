"""The two places smoothce reaches into NumPy's private modules, each with its public
fallback.

* :data:`c_einsum`: the C function behind :func:`numpy.einsum` (the same loops, the
  same bits) without its Python wrapper, which is most of the cost of a row sum on a
  small block (1.5 us against 5.4 us at (32, 10)).
* :class:`Quiet`: NumPy's floating-point error state with overflow, invalid operations
  and division by zero ignored. :class:`numpy.errstate` builds a new state from the
  current one on every entry (a tenth of a small call); in NumPy 2 the state is a
  context variable, so the quiet version of each current state is built once and set
  directly. NumPy 1.x uses :class:`numpy.errstate`.

``tests/test_compat.py`` checks both against their public twins.
"""

from __future__ import annotations

import importlib
from contextvars import ContextVar
from typing import Any

import numpy as np

__all__ = ["Quiet", "c_einsum"]


def _find_c_einsum() -> Any:
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return importlib.import_module(module).c_einsum
        except (ImportError, AttributeError):
            continue
    return np.einsum  # pragma: no cover - a NumPy without either


c_einsum: Any = _find_c_einsum()


def _find_error_state() -> ContextVar[Any] | None:
    try:
        from numpy._core import _ufunc_config
    except ImportError:  # pragma: no cover - NumPy 1.x
        return None
    var = getattr(_ufunc_config, "_extobj_contextvar", None)
    return var if isinstance(var, ContextVar) else None


_state: ContextVar[Any] | None = _find_error_state()
# The quiet twin of each error state met so far, keyed by the state object itself
# (kept alive by the key, so never confused with a later one) and bounded.
_QUIET: dict[Any, Any] = {}
_IGNORED = {"over": "ignore", "invalid": "ignore", "divide": "ignore"}


def _quiet_twin(current: Any) -> Any:
    assert _state is not None
    quiet = _QUIET.get(current)
    if quiet is None:
        with np.errstate(**_IGNORED):  # type: ignore[arg-type]
            quiet = _state.get()
        if len(_QUIET) < 16:
            _QUIET[current] = quiet
    return quiet


class Quiet:
    """Ignore overflow, invalid operations and division by zero inside a ``with`` block.

    The callers decide every edge these produce (inf, NaN) explicitly; the semantics
    page promises that no NumPy warning leaks. The state is per thread (per context),
    so each worker thread enters it itself. A class rather than a generator: entering
    and leaving cost a third as much, which a small call notices.
    """

    __slots__ = ("_errstate", "_token")

    def __enter__(self) -> None:
        if _state is None:  # pragma: no cover - NumPy 1.x
            self._errstate = np.errstate(**_IGNORED)  # type: ignore[arg-type]
            self._errstate.__enter__()
            return
        self._token = _state.set(_quiet_twin(_state.get()))

    def __exit__(self, *exc: Any) -> None:
        if _state is None:  # pragma: no cover - NumPy 1.x
            self._errstate.__exit__(*exc)
            return
        _state.reset(self._token)
