"""Hostile connections against the real daemon; honest users must not notice them.

Each attacker is dropped (garbage bytes, plaintext frames, a half-sent ClientHello, a
silent socket, a TLS client that never logs in) while two real TLS users keep exchanging
envelopes. The login deadline is ``[server] handshake_timeout``, set small here, and the
tests wait for the disconnect itself, never for a fixed time.
"""

from __future__ import annotations

import contextlib
import ssl
from typing import Any

import pytest_twisted

from securechat import wire
from securechat.server.protocol import CLOSE_GRACE
from tests.conftest import ConfigWriter
from tests.robustness.conftest import exchange, running_daemon

HANDSHAKE_TIMEOUT = 1.0
#: Slack for a loaded 2-core machine between the deadline and the socket closing.
SLACK = 3.0
CONFIG = {"server": {"handshake_timeout": HANDSHAKE_TIMEOUT}}


def client_hello() -> bytes:
    """A real TLS 1.3 ClientHello record, as the first flight of a handshake."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = ssl.create_default_context()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16" and len(hello) > 100, hello[:16]
    return hello


@pytest_twisted.ensureDeferred
async def test_garbage_and_plaintext_are_dropped(reactor: Any, write_config: ConfigWriter) -> None:
    """Raw garbage and plaintext protocol frames on the TLS port end those connections
    at once (no TLS session, no reply); the daemon and a live conversation go on."""
    async with running_daemon(reactor, write_config, CONFIG) as relay:
        alice, bob = await relay.user("alice"), await relay.user("bob")
        await exchange(alice, "alice", bob, "bob", "before")

        garbage = await relay.raw()
        garbage.transport.write(bytes(range(256)) * 8)  # type: ignore[union-attr]
        http = await relay.raw()
        http.transport.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")  # type: ignore[union-attr]
        plaintext = await relay.plain_client()
        plaintext.sendString(wire.encode(wire.Hello(id=1, version=wire.PROTOCOL_VERSION)))
        plaintext.sendString(wire.encode(wire.LoginPassword(id=2, user="alice", password="x")))

        for peer in (garbage, http):
            assert await peer.wait_lost() < HANDSHAKE_TIMEOUT + SLACK
            # Whatever came back is a TLS alert at most, never a protocol frame.
            assert not peer.received or peer.received[:1] == b"\x15", bytes(peer.received[:32])
        await plaintext.wait_lost()
        assert plaintext.lifetime() < HANDSHAKE_TIMEOUT + SLACK
        assert not plaintext._pushes and not plaintext._pending

        await exchange(alice, "alice", bob, "bob", "after")
        relay.assert_healthy()


@pytest_twisted.ensureDeferred
async def test_login_deadline_drops_silent_half_open_and_idle_peers(
    reactor: Any, write_config: ConfigWriter
) -> None:
    """Slowloris peers are dropped by ``handshake_timeout``; users chat throughout.

    The peers: a TCP socket that never speaks, one that sent half a ClientHello, one that
    sent only a TLS record header, a TLS client that never sends a request, and one that
    sends pre-login requests (which must not extend the deadline). TLS clients get a
    ``handshake-timeout`` bye at the deadline. The sockets themselves are closed within
    the close grace period after it (see ``test_close_delay.py`` for why not at once).
    """
    async with running_daemon(reactor, write_config, CONFIG) as relay:
        alice, bob = await relay.user("alice"), await relay.user("bob")
        silent = await relay.raw()
        half = await relay.raw()
        hello = client_hello()
        half.transport.write(hello[: len(hello) // 2])  # type: ignore[union-attr]
        header_only = await relay.raw()
        header_only.transport.write(hello[:5])  # type: ignore[union-attr]
        idle = await relay.tls_client()
        chatty = await relay.tls_client()
        await chatty.hello()
        assert isinstance(await chatty.request(wire.Ping(id=0), wire.Pong), wire.Pong)
        await exchange(alice, "alice", bob, "bob", "while-half-open")

        bound = HANDSHAKE_TIMEOUT + CLOSE_GRACE + SLACK
        for client in (idle, chatty):
            await client.wait_lost(bound + 5)
            assert client.bye_at is not None and client.made_at is not None
            bye_after = client.bye_at - client.made_at
            assert HANDSHAKE_TIMEOUT * 0.9 <= bye_after < HANDSHAKE_TIMEOUT + SLACK, bye_after
            [bye] = client.pushes(wire.Bye)
            assert bye.code == wire.E_HANDSHAKE_TIMEOUT
            assert client.lifetime() < bound
        for peer in (silent, half, header_only):
            lived = await peer.wait_lost(bound + 5)
            assert HANDSHAKE_TIMEOUT * 0.9 <= lived < bound, lived
            assert not peer.received or peer.received[:1] == b"\x15", bytes(peer.received[:32])
        # The logged-in users outlived every deadline and still chat.
        await exchange(alice, "alice", bob, "bob", "after-timeouts")
        assert relay.daemon.output.count("timed out: handshake-timeout") == 5
        relay.assert_healthy()
