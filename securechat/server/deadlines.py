# -*- test-case-name: tests.server.test_deadlines -*-
"""Coarse deadlines for many connections on one timer.

A ``DelayedCall`` per connection (login deadline, idle limit, close grace) costs about
0.6 KB each, and 10,000 idle connections are the budget (``architecture.md``,
"Performance budget"). :class:`Deadlines` instead files each connection in a bucket per
:data:`GRANULARITY` step (a timer wheel keyed by the step number) and keeps a single
timer for the earliest non-empty bucket. A deadline fires within ``GRANULARITY`` seconds
after it passed, never before.

Cancelling is a set removal, so a connection that goes away is not kept alive by its
bucket; buckets left empty are dropped when their time comes, and with no entries left
the timer is cancelled altogether.
"""

from __future__ import annotations

import heapq
import math
from typing import Generic, Protocol, TypeVar

from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: Seconds between the steps deadlines are rounded up to.
GRANULARITY = 0.5


class Expiring(Protocol):
    """What :class:`Deadlines` holds: something told when its deadline has passed."""

    def deadline_passed(self) -> None:
        """The deadline this entry was filed under has passed; it is no longer filed."""


_E = TypeVar("_E", bound=Expiring)


class Deadlines(Generic[_E]):
    """Entries filed by deadline, expired by one shared timer.

    :param clock: the reactor's clock (tests pass a ``Clock``).
    :param granularity: deadlines are rounded up to a multiple of this many seconds.
    """

    def __init__(self, clock: IReactorTime, granularity: float = GRANULARITY) -> None:
        self._clock = clock
        self._granularity = granularity
        self._buckets: dict[int, set[_E]] = {}
        self._steps: list[int] = []  # heap of the keys of _buckets
        self._call: IDelayedCall | None = None
        self._call_step = 0
        self._size = 0

    def __len__(self) -> int:
        """Entries filed now."""
        return self._size

    def add(self, entry: _E, deadline: float) -> set[_E]:
        """File ``entry`` to be told at ``deadline`` (rounded up to the granularity).

        :returns: the bucket, which :meth:`cancel` needs; an entry is filed once at most.
        """
        step = math.ceil(deadline / self._granularity)
        bucket = self._buckets.get(step)
        if bucket is None:
            bucket = self._buckets[step] = set()
            heapq.heappush(self._steps, step)
            if self._call is None or step < self._call_step:
                self._schedule(step)
        bucket.add(entry)
        self._size += 1
        return bucket

    def cancel(self, entry: _E, bucket: set[_E]) -> None:
        """Take ``entry`` out of ``bucket`` (no-op if it is not there any more)."""
        if entry not in bucket:
            return
        bucket.discard(entry)
        self._size -= 1
        if self._size == 0:
            self._stop()

    def _schedule(self, step: int) -> None:
        if self._call is not None:
            self._call.cancel()
        delay = max(0.0, step * self._granularity - self._clock.seconds())
        self._call = self._clock.callLater(delay, self._fire)
        self._call_step = step

    def _stop(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None
        self._buckets.clear()
        self._steps.clear()

    def _fire(self) -> None:
        # The timer was set for the earliest bucket: that one and any before it are due
        # (compared by step, not by float time, so rounding cannot make it early).
        self._call = None
        due = self._call_step
        steps, buckets = self._steps, self._buckets
        while steps and steps[0] <= due:
            bucket = buckets.pop(heapq.heappop(steps))
            while bucket:
                # Popped before it is told, so it may re-file itself (always in a later
                # bucket: its new deadline is in the future) or cancel without effect.
                entry = bucket.pop()
                self._size -= 1
                entry.deadline_passed()
        if steps and (self._call is None or self._call_step != steps[0]):
            self._schedule(steps[0])
