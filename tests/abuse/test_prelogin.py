"""Issue 10, unauthenticated connections: they cannot hold the server's memory.

Before the fix, each connection could park an almost complete 1 MiB frame until the login
deadline: 300 of them took the relay to 404 MB, still 390 MB after they closed, and one
address could open as many as it liked. Now a frame before login is at most
``[server] prelogin_max_frame_bytes`` (16 KiB), and each address may hold at most
``max_pending_per_address`` connections that have not logged in, and
``max_connections_per_address`` in all.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest_twisted
from twisted.internet import defer
from twisted.internet.error import ConnectError

from tests.abuse.harness import Probe, rss_below
from tests.conftest import ConfigWriter
from tests.robustness.conftest import (
    PASSWORD,
    Running,
    TimedClient,
    exchange,
    running_daemon,
)

#: The attacker's connections come from these loopback addresses (30 each: 300 in all).
SOURCES = [f"127.0.1.{i}" for i in range(1, 11)]
PER_SOURCE = 30
#: An almost complete frame of the old 1 MiB limit, as in the issue.
PARKED = struct.pack(">I", (1 << 20) - 1) + b"\0" * ((1 << 20) - 64)
#: What the daemon may grow by while 300 such connections are open, and keep after.
PEAK_BOUND_MIB, AFTER_BOUND_MIB = 64, 24


@pytest_twisted.ensureDeferred
async def test_parked_prelogin_connections_hold_little_memory(
    reactor: Any, write_config: ConfigWriter
) -> None:
    config = {"server": {"handshake_timeout": 5.0}}
    async with running_daemon(reactor, write_config, config) as relay:
        alice, bob = await relay.user("alice"), await relay.user("bob")
        probe = Probe(reactor, relay.daemon.pid)
        parked: list[TimedClient] = []
        for source in SOURCES:
            clients = await defer.gatherResults(
                [defer.ensureDeferred(relay.tls_client(source)) for _ in range(PER_SOURCE)]
            )
            for client in clients:
                assert client.transport is not None
                client.transport.write(PARKED)
            parked.extend(clients)
        # The server drops every one of them (at the frame header now, at the login
        # deadline before the fix), and the memory they held is given back.
        await defer.gatherResults([defer.ensureDeferred(_lost(c)) for c in parked])
        figures = probe.stop()
        assert figures.peak_kib - figures.start_kib < PEAK_BOUND_MIB * 1024, figures
        # The server may see the last of them close a moment after we do.
        bound = figures.start_kib + AFTER_BOUND_MIB * 1024
        after = await rss_below(reactor, relay.daemon.pid, bound)
        assert after < bound, (figures, after)
        await exchange(alice, "alice", bob, "bob", "after-parked-connections")
        relay.assert_healthy()


async def _lost(client: TimedClient) -> None:
    await client.wait_lost(30)


async def _refused(relay: Running, source: str) -> None:
    """A connection from ``source`` is refused: reset while connecting, or dropped at once
    before TLS finishes."""
    try:
        client = await relay.tls_client(source)
    except ConnectError:
        return
    await client.wait_lost()
    assert client.bye_at is None  # never got as far as a frame


@pytest_twisted.ensureDeferred
async def test_per_address_connection_limits(reactor: Any, write_config: ConfigWriter) -> None:
    """One address cannot hold more than its share of pending (or open) connections;
    users elsewhere are not affected, and logging in frees a pending slot."""
    config = {"server": {"max_pending_per_address": 4, "max_connections_per_address": 6}}
    async with running_daemon(reactor, write_config, config) as relay:
        pending = [await relay.tls_client("127.0.0.2") for _ in range(4)]
        for client in pending:
            await client.hello()
        await _refused(relay, "127.0.0.2")
        # Elsewhere nothing changed.
        alice = await relay.user("alice")
        registrar = await relay.tls_client()
        await registrar.hello()
        for n in range(4):
            await registrar.register(f"user{n}", PASSWORD)
        # Logged-in connections count only against the open limit (6).
        for n, client in enumerate(pending):
            await client.login_password(f"user{n}", PASSWORD)
        more = [await relay.tls_client("127.0.0.2") for _ in range(2)]
        for client in more:
            await client.hello()
        await _refused(relay, "127.0.0.2")
        # Closing one frees its slot.
        await pending[0].close()
        again = await relay.tls_client("127.0.0.2")
        await again.hello()
        assert alice.lost_reason is None
        relay.assert_healthy()
