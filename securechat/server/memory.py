# -*- test-case-name: tests.server.test_admission -*-
"""Give memory freed by closed connections back to the operating system.

glibc's allocator keeps freed heap memory for reuse; after a burst of connections (each
with TLS state and buffers) closes, the process would keep its peak size for good (issue
10: 390 MB after 300 parked connections had closed). ``malloc_trim(0)`` returns the free
pages at the top of the heap and any whole free pages inside it. It is a no-op elsewhere
(musl, macOS): :func:`trim` then does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

_trim: Callable[[int], int] | None = None
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _trim = _libc.malloc_trim
except (OSError, AttributeError):  # pragma: no cover - not glibc
    _trim = None


def trim() -> bool:
    """Return free heap memory to the OS; True if any was returned."""
    return bool(_trim(0)) if _trim is not None else False


class Trimmer:
    """Calls :func:`trim` once ``every`` connections have closed since the last call, at
    most once per ``min_interval`` seconds (a trim walks the heap: a few ms)."""

    def __init__(self, now: Callable[[], float], every: int = 64, min_interval: float = 1.0):
        self._now = now
        self._every = every
        self._min_interval = min_interval
        self._closed = 0
        self._last = -min_interval

    def closed(self, burst_over: bool = False) -> None:
        """A connection closed; ``burst_over``: no connection is waiting for its login
        any more, so whatever a burst of them held can go back now."""
        self._closed += 1
        if (burst_over or self._closed >= self._every) and (
            self._now() - self._last >= self._min_interval or burst_over
        ):
            self.flush()

    def flush(self) -> None:
        """Trim now if any connection closed since the last trim."""
        if self._closed:
            self._closed, self._last = 0, self._now()
            trim()
