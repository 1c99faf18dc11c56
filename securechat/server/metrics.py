# -*- test-case-name: tests.server.test_metrics -*-
"""The metrics sink: what the relay, the store and the protocol report, and nothing more.

The hot path calls a method of :class:`IMetrics` per batch (never per byte): with metrics
off that is :data:`NULL_METRICS`, whose methods do nothing, so the cost is one method call.
With ``[metrics] listen`` set, :class:`RelayMetrics` keeps plain integers and bucket
counts, still without locks or allocation per call; :mod:`securechat.server.monitoring`
turns them into Prometheus metric families only when ``/metrics`` is scraped.

This module imports nothing of ``prometheus_client``, so the relay and the store stay
independent of the exporter.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.interfaces import IReactorTime
from zope.interface import Interface, implementer

#: Send-to-deliver latency buckets (seconds): milliseconds online, up to a day offline.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 600.0,
    3600.0, 86400.0,
)  # fmt: skip
#: Group-commit duration buckets (seconds): an fsync is 0.1 to tens of milliseconds.
COMMIT_SECONDS_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
#: Envelopes per group commit.
COMMIT_SIZE_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0)

LOGIN_RESULTS = ("ok", "failed", "throttled", "refused", "error")


class IMetrics(Interface):
    """Events worth counting; every method is cheap and never raises."""

    def connection_opened() -> None:
        """A TCP connection was accepted."""

    def connection_closed(handshake_done: bool) -> None:
        """A connection ended; ``handshake_done`` is False if TLS never completed."""

    def login(method: str, result: str) -> None:
        """A login attempt ended; ``result`` is one of :data:`LOGIN_RESULTS`."""

    def accepted(count: int) -> None:
        """``count`` envelopes were committed (accepted means durable)."""

    def delivered(envelopes: Sequence[Any]) -> None:
        """These stored envelopes (with ``accepted_at``) were pushed to their recipient."""

    def acked(count: int) -> None:
        """``count`` envelopes were deleted after their recipient acknowledged them."""

    def expired(count: int) -> None:
        """``count`` envelopes were dropped past the queue TTL."""

    def group_commit(size: int, seconds: float) -> None:
        """One enqueue transaction of ``size`` envelopes took ``seconds``."""

    def store_error() -> None:
        """A store operation failed (locked, I/O, disk full)."""

    def rate_limited(kind: str, count: int) -> None:
        """``count`` requests or envelopes were refused by a limit named ``kind``."""


@implementer(IMetrics)
class NullMetrics:
    """Metrics off: every method does nothing."""

    def connection_opened(self) -> None:
        """IMetrics API."""

    def connection_closed(self, handshake_done: bool) -> None:
        """IMetrics API."""

    def login(self, method: str, result: str) -> None:
        """IMetrics API."""

    def accepted(self, count: int) -> None:
        """IMetrics API."""

    def delivered(self, envelopes: Sequence[Any]) -> None:
        """IMetrics API."""

    def acked(self, count: int) -> None:
        """IMetrics API."""

    def expired(self, count: int) -> None:
        """IMetrics API."""

    def group_commit(self, size: int, seconds: float) -> None:
        """IMetrics API."""

    def store_error(self) -> None:
        """IMetrics API."""

    def rate_limited(self, kind: str, count: int) -> None:
        """IMetrics API."""


NULL_METRICS = NullMetrics()


class Histogram:
    """Cumulative-at-export bucket counts, as Prometheus histograms are defined."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        """Count ``value`` (``times`` times) in the first bucket whose upper bound is >= it.

        ``value`` must be a float: ``bisect`` comparing an int with the float bounds is
        several times slower.
        """
        self.counts[bisect_left(self.bounds, value)] += times
        self.sum += value * times

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs, Prometheus style, ending with ``+Inf``."""
        out, total = [], 0
        for bound, n in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out

    @property
    def count(self) -> int:
        """How many values were observed."""
        return sum(self.counts)


@implementer(IMetrics)
class RelayMetrics:
    """Metrics on: plain counters read by the exporter at scrape time.

    :param clock: for send-to-deliver latency (the store stamps ``accepted_at`` with the
        same clock, ``reactor.seconds``).
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self.connections_opened = 0
        self.connections_closed = 0
        self.handshake_failures = 0
        self.logins: dict[tuple[str, str], int] = {}
        self.envelopes_accepted = 0
        self.envelopes_delivered = 0
        self.envelopes_acked = 0
        self.envelopes_expired = 0
        self.store_errors = 0
        self.rate_limited_by_kind: dict[str, int] = {}
        self.commit_size = Histogram(COMMIT_SIZE_BUCKETS)
        self.commit_seconds = Histogram(COMMIT_SECONDS_BUCKETS)
        self.deliver_latency = Histogram(LATENCY_BUCKETS)
        #: Live sessions (logged-in connections); wired to ``len(relay.sessions)``.
        self.sessions: Callable[[], int] = lambda: 0
        #: The last queue snapshot ``(envelopes, bytes, oldest accepted_at or None)``,
        #: refreshed on a timer (a full count is too dear per scrape on a big queue).
        self.queue: tuple[int, int, float | None] | None = None

    def now(self) -> float:
        """The metrics clock (for the age of the oldest envelope)."""
        return self._clock.seconds()

    def connection_opened(self) -> None:
        """IMetrics API."""
        self.connections_opened += 1

    def connection_closed(self, handshake_done: bool) -> None:
        """IMetrics API."""
        self.connections_closed += 1
        if not handshake_done:
            self.handshake_failures += 1

    def login(self, method: str, result: str) -> None:
        """IMetrics API."""
        key = (method, result)
        self.logins[key] = self.logins.get(key, 0) + 1

    def accepted(self, count: int) -> None:
        """IMetrics API."""
        self.envelopes_accepted += count

    def delivered(self, envelopes: Sequence[Any]) -> None:
        """IMetrics API: one histogram step per run of envelopes committed together (they
        share ``accepted_at``), not one per envelope: the direct path pushes whole commits."""
        if not envelopes:
            return
        self.envelopes_delivered += len(envelopes)
        now = float(self._clock.seconds())
        observe = self.deliver_latency.observe
        last, run = envelopes[0].accepted_at, 0
        for env in envelopes:
            if env.accepted_at == last:
                run += 1
            else:
                observe(max(0.0, now - last), run)
                last, run = env.accepted_at, 1
        observe(max(0.0, now - last), run)

    def acked(self, count: int) -> None:
        """IMetrics API."""
        self.envelopes_acked += count

    def expired(self, count: int) -> None:
        """IMetrics API."""
        self.envelopes_expired += count

    def group_commit(self, size: int, seconds: float) -> None:
        """IMetrics API."""
        self.commit_size.observe(float(size))
        self.commit_seconds.observe(seconds)

    def store_error(self) -> None:
        """IMetrics API."""
        self.store_errors += 1

    def rate_limited(self, kind: str, count: int) -> None:
        """IMetrics API."""
        self.rate_limited_by_kind[kind] = self.rate_limited_by_kind.get(kind, 0) + count

    @property
    def open_connections(self) -> int:
        """Connections accepted and not yet closed."""
        return self.connections_opened - self.connections_closed
