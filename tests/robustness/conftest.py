"""Helpers for the robustness suite: a running daemon, honest users and hostile peers.

Everything connects to 127.0.0.1 (or another loopback address as the *source*), every
wait is on an event (a reply, a push, a lost connection, the process ending) with a
timeout, and nothing sleeps. A test that starts a daemon does it with
:func:`running_daemon`, which also closes every connection the test opened and stops
the daemon, so no test leaves sockets or processes behind.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from securechat import wire
from securechat.config import ServerConfig, load_config
from securechat.tls import client_tls_options
from tests.conftest import ConfigWriter
from tests.e2e.client import TIMEOUT, WireClient, connect
from tests.e2e.daemon import Daemon, start_daemon

PASSWORD = "robustness password 1"
_mids = itertools.count(1)


def mid() -> bytes:
    """A fresh, unique 16-byte message id (readable in assertion output)."""
    return b"m%015d" % next(_mids)


def item(to: str, payload: bytes, message_id: bytes | None = None) -> wire.SendItem:
    return wire.SendItem(to=to, backend="ecdh", mid=message_id or mid(), payload=payload)


class RawPeer(Protocol):
    """A plain TCP peer that writes what the test says and records when it is dropped."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.received = bytearray()
        self.made_at: float | None = None
        self.lost_at: float | None = None
        self.lost_reason: Failure | None = None
        self._waiters: list[defer.Deferred[None]] = []

    def connectionMade(self) -> None:
        self.made_at = self.reactor.seconds()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost_at = self.reactor.seconds()
        self.lost_reason = reason
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if not d.called:
                d.callback(None)

    async def wait_lost(self, timeout: float = TIMEOUT) -> float:
        """Wait until the server drops us; return how long the connection lived."""
        if self.lost_at is None:
            d: defer.Deferred[None] = defer.Deferred()
            self._waiters.append(d)
            await d.addTimeout(timeout, self.reactor)
        assert self.lost_at is not None and self.made_at is not None
        return self.lost_at - self.made_at


class TimedClient(WireClient):
    """A :class:`WireClient` that remembers when it connected and when it was dropped."""

    made_at: float | None = None
    lost_at: float | None = None
    bye_at: float | None = None

    def stringReceived(self, frame: bytes) -> None:
        if self.bye_at is None and isinstance(wire.decode(frame), wire.Bye):
            self.bye_at = self._reactor.seconds()
        super().stringReceived(frame)

    def connectionMade(self) -> None:
        self.made_at = self._reactor.seconds()
        super().connectionMade()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost_at = self._reactor.seconds()
        super().connectionLost(reason)

    def lifetime(self) -> float:
        assert self.made_at is not None and self.lost_at is not None
        return self.lost_at - self.made_at


@dataclass
class Running:
    """A daemon started for one test, and every connection the test opened to it."""

    reactor: Any
    daemon: Daemon
    config_path: Path
    config: ServerConfig
    ca: bytes
    connections: list[Any] = field(default_factory=list)

    @property
    def port(self) -> int:
        assert self.daemon.port is not None
        return self.daemon.port

    async def raw(self, source: str | None = None) -> RawPeer:
        """A plain TCP connection (no TLS) from ``source`` (a loopback address)."""
        peer = RawPeer(self.reactor)
        await connectProtocol(self._tcp(source), peer).addTimeout(TIMEOUT, self.reactor)
        self.connections.append(peer)
        return peer

    async def plain_client(self) -> TimedClient:
        """A wire client that speaks the protocol without TLS."""
        client = TimedClient(self.reactor)
        await connectProtocol(self._tcp(None), client).addTimeout(TIMEOUT, self.reactor)
        self.connections.append(client)
        return client

    async def tls_client(self, source: str | None = None) -> TimedClient:
        """A wire client over verified TLS, optionally from another loopback source address."""
        endpoint = wrapClientTLS(client_tls_options("localhost", self.ca), self._tcp(source))
        client = TimedClient(self.reactor)
        await connectProtocol(endpoint, client).addTimeout(TIMEOUT, self.reactor)
        self.connections.append(client)
        return client

    async def user(self, name: str, register: bool = True) -> WireClient:
        """A logged-in user, registered with :data:`PASSWORD` first unless ``register`` is False."""
        client = await connect(self.reactor, self.port, self.ca)
        self.connections.append(client)
        await client.hello()
        if register:
            await client.register(name, password=PASSWORD)
        await client.login_password(name, PASSWORD)
        return client

    def _tcp(self, source: str | None) -> TCP4ClientEndpoint:
        bind = (source, 0) if source else None
        return TCP4ClientEndpoint(
            self.reactor, "127.0.0.1", self.port, timeout=int(TIMEOUT), bindAddress=bind
        )

    async def close_all(self) -> None:
        conns, self.connections = self.connections, []
        for conn in conns:
            if getattr(conn, "lost_reason", None) is None and conn.transport is not None:
                conn.transport.abortConnection()
        for conn in conns:
            await conn.wait_lost()

    def assert_healthy(self) -> None:
        """The daemon runs and logged no unhandled error (bad input is not a crash)."""
        assert self.daemon.running, self.daemon.output
        assert "Unhandled Error" not in self.daemon.output, self.daemon.output
        assert "Unhandled error" not in self.daemon.output, self.daemon.output


@asynccontextmanager
async def running_daemon(
    reactor: Any,
    write_config: ConfigWriter,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> AsyncIterator[Running]:
    """Start the real daemon with ``overrides``; on exit close connections and stop it."""
    config_path = write_config(overrides)
    daemon = await start_daemon(reactor, config_path)
    config = load_config(config_path)
    running = Running(reactor, daemon, config_path, config, config.tls.ca.read_bytes())
    try:
        yield running
    finally:
        try:
            await running.close_all()
        finally:
            await stop_or_kill(running.daemon)


async def stop_or_kill(daemon: Daemon) -> None:
    """SIGTERM; SIGKILL if the daemon does not stop in time (never leave one behind)."""
    if not daemon.running:
        return
    try:
        await daemon.stop()
    except defer.TimeoutError:
        await daemon.kill()
        raise


async def collect(client: WireClient, count: int) -> list[wire.DeliverItem]:
    """Read ``deliver`` pushes until ``count`` envelopes have arrived."""
    items: list[wire.DeliverItem] = []
    while len(items) < count:
        items.extend((await client.next_push(wire.Deliver)).items)
    return items


async def collect_until(client: WireClient, marker: bytes) -> list[wire.DeliverItem]:
    """Read ``deliver`` pushes up to and including the envelope with id ``marker``.

    Delivery is in ``seq`` order, so once a marker sent last has arrived, everything
    stored before it has arrived too.
    """
    items: list[wire.DeliverItem] = []
    while not items or items[-1].mid != marker:
        items.extend((await client.next_push(wire.Deliver)).items)
        assert marker not in [i.mid for i in items[:-1]], "marker was not the last envelope"
    return items


async def exchange(a: WireClient, a_name: str, b: WireClient, b_name: str, tag: str) -> None:
    """``a`` sends one envelope to ``b`` and back; both are delivered at once and acked."""
    for src, src_name, dst, dst_name in ((a, a_name, b, b_name), (b, b_name, a, a_name)):
        payload = f"{tag}:{src_name}->{dst_name}".encode()
        sent = item(dst_name, payload)
        reply = await src.send(sent)
        assert [r.status for r in reply.results] == [wire.STATUS_DELIVERED], reply
        got = await next_from(dst, src_name)
        assert (got.mid, got.payload) == (sent.mid, payload)
        dst.ack(got.seq)


async def next_from(client: WireClient, sender: str) -> wire.DeliverItem:
    """The next delivered envelope from ``sender`` (others' envelopes are skipped)."""
    while True:
        for msg in client.pushes(wire.Deliver):
            for i, d in enumerate(msg.items):
                if d.sender == sender:
                    rest = msg.items[:i] + msg.items[i + 1 :]
                    client._pushes.remove(msg)
                    if rest:
                        client._pushes.insert(0, wire.Deliver(items=rest))
                    return d
        await _wait_push(client)


async def _wait_push(client: WireClient) -> None:
    """Wait until any new push arrives (without consuming it)."""
    if client.lost_reason is not None:
        raise AssertionError("connection lost while waiting for a delivery")
    d: defer.Deferred[None] = defer.Deferred()
    client._push_waiters.append(d)
    await d.addTimeout(TIMEOUT, client._reactor)
