# -*- test-case-name: tests.server.test_monitoring -*-
"""The ``[metrics] listen`` listener: Prometheus ``/metrics`` and ``/healthz``.

It is a separate plain-HTTP listener, on loopback only (the config refuses anything
else): scrapers run on the same host, or reach it through their own tunnel, and the
metrics never share the chat port. ``/metrics`` is ``prometheus_client``'s Twisted
``MetricsResource`` over a registry of its own holding :class:`RelayCollector` (the
counters of :class:`~securechat.server.metrics.RelayMetrics`) and the process, platform
and GC collectors. ``/healthz`` answers 200 when the store answers a read within
:data:`HEALTH_TIMEOUT`, 503 otherwise, so a load balancer or systemd watchdog script can
tell a relay that accepts connections from one that can still make envelopes durable.

Every metric is listed in ``docs/operations.md``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.twisted import MetricsResource
from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from securechat.config import parse_listen
from securechat.server.metrics import Histogram, RelayMetrics
from securechat.server.store.interface import IStore

#: Seconds ``/healthz`` waits for the store before answering 503.
HEALTH_TIMEOUT = 5.0
#: Seconds between queue snapshots (one pass over the queue table each).
QUEUE_STATS_INTERVAL = 30.0


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    buckets = h.cumulative()
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=h.sum)


class RelayCollector(Collector):
    """Exports :class:`RelayMetrics` at scrape time (on the web thread pool: everything
    is copied first, so the reactor thread may go on counting meanwhile)."""

    def __init__(self, metrics: RelayMetrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        """Collector API."""
        m = self._m
        sessions = m.sessions()
        connections = GaugeMetricFamily(
            "securechat_connections", "Open client connections by state.", labels=["state"]
        )
        connections.add_metric(["logged_in"], sessions)
        connections.add_metric(["pre_login"], max(0, m.open_connections - sessions))
        yield connections
        yield CounterMetricFamily(
            "securechat_connections_opened", "Client connections accepted.",
            m.connections_opened,
        )  # fmt: skip
        yield CounterMetricFamily(
            "securechat_tls_handshake_failures",
            "Connections that closed before the TLS handshake completed.",
            m.handshake_failures,
        )
        logins = CounterMetricFamily(
            "securechat_logins", "Login attempts by method and result.",
            labels=["method", "result"],
        )  # fmt: skip
        for (method, result), n in sorted(m.logins.copy().items()):
            logins.add_metric([method, result], n)
        yield logins
        for what, value, doc in (
            ("accepted", m.envelopes_accepted, "Envelopes committed to the store."),
            ("delivered", m.envelopes_delivered, "Envelopes pushed to their recipient."),
            ("acked", m.envelopes_acked, "Envelopes deleted after their recipient's ack."),
            ("expired", m.envelopes_expired, "Envelopes dropped past the queue TTL."),
        ):
            yield CounterMetricFamily(f"securechat_envelopes_{what}", doc, value)
        yield CounterMetricFamily(
            "securechat_store_errors", "Store operations that failed.", m.store_errors
        )
        limited = CounterMetricFamily(
            "securechat_rate_limited", "Requests or envelopes refused by a limit, by kind.",
            labels=["kind"],
        )  # fmt: skip
        for kind, n in sorted(m.rate_limited_by_kind.copy().items()):
            limited.add_metric([kind], n)
        yield limited
        yield _histogram(
            "securechat_group_commit_size", "Envelopes per group-commit transaction.",
            m.commit_size,
        )  # fmt: skip
        yield _histogram(
            "securechat_group_commit_seconds", "Duration of group-commit transactions.",
            m.commit_seconds,
        )  # fmt: skip
        yield _histogram(
            "securechat_deliver_latency_seconds",
            "Time from commit of an envelope to its push to the recipient.",
            m.deliver_latency,
        )
        yield from self._queue(m)

    @staticmethod
    def _queue(m: RelayMetrics) -> Iterator[Metric]:
        if m.queue is None:
            return
        envelopes, size, oldest = m.queue
        yield GaugeMetricFamily("securechat_queue_envelopes", "Envelopes waiting.", envelopes)
        yield GaugeMetricFamily("securechat_queue_bytes", "Payload bytes waiting.", size)
        age = 0.0 if oldest is None else max(0.0, m.now() - oldest)
        yield GaugeMetricFamily(
            "securechat_queue_oldest_age_seconds", "Age of the oldest waiting envelope.", age
        )


def build_registry(metrics: RelayMetrics) -> CollectorRegistry:
    """A registry of this relay's own (never the global one: tests build several)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RelayCollector(metrics))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class HealthResource(Resource):
    """``/healthz``: 200 ``ok`` when the store answers a read in time, else 503."""

    isLeaf = True

    def __init__(self, store: IStore, clock: Any, timeout: float = HEALTH_TIMEOUT) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._store, self._clock, self._timeout = store, clock, timeout

    def render_GET(self, request: Any) -> int:
        """Resource API."""
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        d: Deferred[None] = self._store.ping()
        d.addTimeout(self._timeout, self._clock)
        d.addCallbacks(self._healthy, self._unhealthy, (request,), {}, (request,))
        return NOT_DONE_YET

    def _healthy(self, _: None, request: Any) -> None:
        self._finish(request, 200, b"ok\n")

    def _unhealthy(self, failure: Failure, request: Any) -> None:
        self._finish(request, 503, b"store unavailable\n")

    @staticmethod
    def _finish(request: Any, code: int, body: bytes) -> None:
        if request.finished or getattr(request, "_disconnected", False):
            return
        request.setResponseCode(code)
        request.write(body)
        request.finish()


class _QuietSite(Site):
    """No access-log line per scrape (every 15 s from Prometheus)."""

    noisy = False

    def log(self, request: Any) -> None:
        """HTTPFactory API: not logged."""


def build_site(metrics: RelayMetrics, store: IStore, clock: Any) -> Site:
    """``/metrics`` and ``/healthz``; anything else is 404."""
    root = Resource()  # type: ignore[no-untyped-call]
    root.putChild(b"metrics", MetricsResource(build_registry(metrics)))  # type: ignore[no-untyped-call]
    root.putChild(b"healthz", HealthResource(store, clock))
    return _QuietSite(root)  # type: ignore[no-untyped-call]


class MonitoringService(MultiService):
    """The loopback HTTP listener and the queue-snapshot timer."""

    log = Logger()

    def __init__(self, listen: str, metrics: RelayMetrics, store: IStore, reactor: Any) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._metrics, self._store = metrics, store
        host, port = parse_listen(listen)
        endpoint_type = TCP6ServerEndpoint if ":" in host else TCP4ServerEndpoint
        endpoint = endpoint_type(reactor, port, interface=host)
        listener = StreamServerEndpointService(  # type: ignore[no-untyped-call]
            endpoint, build_site(metrics, store, reactor)
        )
        listener._raiseSynchronously = True  # a failed bind stops the daemon, not a log line
        listener.setServiceParent(self)  # type: ignore[no-untyped-call]
        self._listener = listener
        timer = TimerService(QUEUE_STATS_INTERVAL, self.refresh_queue)  # type: ignore[no-untyped-call]
        timer.clock = reactor
        self._timer = timer
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        """Bind with the chat port, before privileges are dropped."""
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        self._watch_port()

    def startService(self) -> None:
        """Service API."""
        super().startService()  # type: ignore[no-untyped-call]
        self._watch_port()

    def _watch_port(self) -> None:
        waiting = self._listener._waitingForPort
        if self.port is None and waiting is not None:
            waiting.addCallback(self._listening)

    def _listening(self, port: IListeningPort) -> IListeningPort:
        if self.port is None:
            self.port = port
            address = port.getHost()
            self.log.info(
                "metrics and health check on http://{host}:{port}/metrics",
                host=getattr(address, "host", "?"),
                port=getattr(address, "port", 0),
            )
        return port

    def store_opened(self) -> None:
        """Start the queue snapshots once the store can answer them."""
        if self.running and self._timer.parent is None:
            self._timer.setServiceParent(self)  # type: ignore[no-untyped-call]

    def refresh_queue(self) -> Deferred[None]:
        """Take a queue snapshot for the gauges; a failure only drops them until the next."""
        d: Deferred[Any] = self._store.queue_stats()
        d.addCallback(self._set_queue)
        d.addErrback(self._no_queue)
        return d

    def _set_queue(self, stats: tuple[int, int, float | None]) -> None:
        self._metrics.queue = stats

    def _no_queue(self, failure: Failure) -> None:
        self._metrics.queue = None
        self.log.warn("queue snapshot for metrics failed: {error}", error=failure.value)
