# -*- test-case-name: tests.server.test_loglimit -*-
"""Rate-limited log lines for failures that repeat.

A failure that hits every request (a full disk, a locked database) must not turn into one
log line per request: at thousands of requests per second the log itself fills the disk
and costs the CPU the relay needs to recover. :class:`RepeatLimiter` lets the first line of
a kind through, then at most one line per ``interval`` seconds, each saying how many were
left out since the previous one, so the operator still sees that, and how often, it goes on.
"""

from __future__ import annotations

from collections.abc import Callable

#: Seconds between two lines of the same kind.
DEFAULT_INTERVAL = 10.0
#: Kinds remembered at most (kinds are a small fixed set in practice; this only bounds a bug).
_MAX_KINDS = 1024


class RepeatLimiter:
    """Decides whether a line of a given kind may be logged now.

    :param now: the clock, in seconds (``reactor.seconds``).
    :param interval: at most one line per kind per this many seconds.
    """

    def __init__(self, now: Callable[[], float], interval: float = DEFAULT_INTERVAL) -> None:
        self._now = now
        self.interval = interval
        #: kind -> [time of the last line, lines suppressed since]
        self._kinds: dict[str, list[float]] = {}

    def allow(self, kind: str) -> int | None:
        """None if the line must be left out; else how many lines of ``kind`` were left
        out since the last one logged (0 for the first)."""
        now = self._now()
        entry = self._kinds.get(kind)
        if entry is None:
            if len(self._kinds) >= _MAX_KINDS:
                self._kinds.clear()
            self._kinds[kind] = [now, 0]
            return 0
        if now - entry[0] < self.interval and now >= entry[0]:
            entry[1] += 1
            return None
        suppressed = int(entry[1])
        entry[0], entry[1] = now, 0
        return suppressed

    def reset(self, kind: str) -> int:
        """The failure of ``kind`` ended: forget it; returns lines left out since the last."""
        entry = self._kinds.pop(kind, None)
        return 0 if entry is None else int(entry[1])
