"""Give memory the collector no longer uses back to the system.

glibc keeps freed memory in its heaps for reuse; after a burst (the rollup
parsing InfluxDB's answers for every school) the resident size stays at the
burst's peak. ``malloc_trim`` returns the free pages. Elsewhere than glibc it
does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util


def _load_trim() -> ctypes._NamedFuncPointer | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_TRIM = _load_trim()


def release_free_memory() -> None:
    """Return free heap pages to the system (glibc), so RSS follows what is in use."""
    if _TRIM is not None:
        _TRIM(0)
