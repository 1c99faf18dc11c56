"""Oversized frames against the real daemon: that one connection is closed, nobody else's.

A frame over ``[server] max_frame_bytes`` is refused as soon as its 4-byte length prefix
is read, so a peer cannot make the server buffer it: announcing a gigabyte and sending
nothing more is refused just the same. An envelope over ``[policy] max_envelope_bytes``
inside a frame that fits is a per-item error and the connection stays up.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest_twisted

from securechat import wire
from securechat.server.protocol import CLOSE_GRACE
from tests.conftest import ConfigWriter
from tests.robustness.conftest import TimedClient, exchange, item, running_daemon

MAX_FRAME = 4096
SLACK = 3.0
CONFIG = {"server": {"max_frame_bytes": MAX_FRAME}, "policy": {"max_envelope_bytes": 2048}}


def assert_closed_for_size(client: TimedClient, sent_at: float) -> None:
    """An untagged ``too-large`` error, a ``too-large`` bye soon after, then the close."""
    assert [e.code for e in client.pushes(wire.Error)] == [wire.E_TOO_LARGE]
    assert [b.code for b in client.pushes(wire.Bye)] == [wire.E_TOO_LARGE]
    assert client.bye_at is not None and client.bye_at - sent_at < SLACK
    assert client.lost_at is not None and client.lost_at - sent_at < CLOSE_GRACE + SLACK
    assert not client.pushes(wire.Deliver)


@pytest_twisted.ensureDeferred
async def test_oversized_frames_close_only_that_connection(
    reactor: Any, write_config: ConfigWriter
) -> None:
    async with running_daemon(reactor, write_config, CONFIG) as relay:
        alice, bob = await relay.user("alice"), await relay.user("bob")
        mallory = await relay.user("mallory")

        # An envelope too big for policy but in a frame that fits: a per-item error only.
        reply = await alice.send(item("bob", b"\0" * 3000), item("bob", b"small"))
        assert [(r.status, r.code) for r in reply.results] == [
            (wire.STATUS_ERROR, wire.E_TOO_LARGE),
            (wire.STATUS_DELIVERED, None),
        ]
        small = await bob.next_push(wire.Deliver)
        assert [d.payload for d in small.items] == [b"small"]
        bob.ack(small.items[-1].seq)

        # Three attackers: a whole oversized frame from a logged-in user, and a huge
        # length prefix without a body, before and after login.
        whole = await relay.tls_client()
        await whole.hello()
        await whole.register("trudy", "trudy's password")
        await whole.login_password("trudy", "trudy's password")
        prefix_anon = await relay.tls_client()
        await prefix_anon.hello()
        prefix_user = await relay.tls_client()
        await prefix_user.hello()
        await prefix_user.register("eve", "eve's password")
        await prefix_user.login_password("eve", "eve's password")

        sent_at = reactor.seconds()
        body = wire.encode(wire.Send(id=99, items=(item("bob", b"x" * 2000),) * 3))
        assert len(body) > MAX_FRAME
        whole.transport.write(struct.pack(">I", len(body)) + body)  # type: ignore[union-attr]
        prefix_anon.transport.write(struct.pack(">I", 0x7FFF_FFFF))  # type: ignore[union-attr]
        prefix_user.transport.write(struct.pack(">I", 0xFFFF_FFFF))  # type: ignore[union-attr]

        # Users chat while the attackers are being closed ...
        await exchange(alice, "alice", bob, "bob", "during")
        for client in (whole, prefix_anon, prefix_user):
            await client.wait_lost(CLOSE_GRACE + SLACK + 5)
            assert_closed_for_size(client, sent_at)
        # ... and after; a logged-in bystander kept its session, and new logins work.
        await exchange(alice, "alice", bob, "bob", "after")
        assert isinstance(await mallory.request(wire.Ping(id=0), wire.Pong), wire.Pong)
        assert mallory.lost_reason is None
        carol = await relay.user("carol")
        assert (await carol.send(item("alice", b"hi"))).results[0].status == wire.STATUS_DELIVERED
        # Nothing of the oversized send was stored or delivered.
        assert all(d.payload != b"x" * 2000 for m in bob.pushes(wire.Deliver) for d in m.items)
        assert relay.daemon.output.count("-byte frame") == 3
        relay.assert_healthy()
