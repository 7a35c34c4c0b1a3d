"""Give freed heap memory back to the operating system after the daemon's large, short-lived allocations.

Closing a window allocates tens of megabytes for a moment (the encoded window, distance matrices, torch
intermediates) and fitting a model far more. CPython and torch free that memory, but glibc's allocator keeps
the freed pages in its arenas, so the resident size of a daemon with many models settles at the sum of its
high-water marks instead of what it holds. ``malloc_trim(0)`` returns the free pages at the top of every
arena; it costs a few milliseconds, so the pipeline calls it after fitting and after each pass of window
closes, not per event. Elsewhere (musl, macOS, Windows) there is no such call and this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Callable

__all__ = ["release_free_memory"]


def _find_malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)  # glibc only
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _find_malloc_trim()


def release_free_memory() -> bool:
    """Return free heap pages to the operating system; whether the allocator supports it here."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True
