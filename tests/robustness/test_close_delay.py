"""A connection the server closes goes away at once, not after the close grace period.

Two things used to keep such a TLS connection open until ``CLOSE_GRACE`` later, when the
protocol's timer aborted it: the protocol stayed registered as a streaming producer (and
``TLSMemoryBIOProtocol.loseConnection`` waits for ``unregisterProducer``), and before the
TLS handshake had finished the ``bye`` sat in TLS's application buffer, which never drains.
A slowloris then cost the server ``handshake_timeout`` + 10 s per socket. ``close`` now
unregisters the producer and aborts when the handshake never finished; these tests hold
it to closing within ``SLACK``, well under ``CLOSE_GRACE``.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest_twisted

from securechat import wire
from securechat.server.protocol import CLOSE_GRACE
from tests.conftest import ConfigWriter
from tests.robustness.conftest import running_daemon

HANDSHAKE_TIMEOUT = 1.0
SLACK = 1.0


@pytest_twisted.ensureDeferred
async def test_server_initiated_close_is_prompt(reactor: Any, write_config: ConfigWriter) -> None:
    """The socket closes soon after the ``bye``, not ``CLOSE_GRACE`` seconds later."""
    config = {"server": {"handshake_timeout": HANDSHAKE_TIMEOUT}}
    async with running_daemon(reactor, write_config, config) as relay:
        never_logs_in = await relay.tls_client()  # TLS handshake done, no request
        silent = await relay.raw()  # no TLS handshake at all
        oversized = await relay.tls_client()
        await oversized.hello()
        oversized.transport.write(struct.pack(">I", 1 << 30))  # type: ignore[union-attr]

        limit = CLOSE_GRACE + HANDSHAKE_TIMEOUT + SLACK + 5
        await never_logs_in.wait_lost(limit)
        await silent.wait_lost(limit)
        await oversized.wait_lost(limit)
        assert never_logs_in.bye_at is not None and oversized.bye_at is not None
        assert oversized.pushes(wire.Bye)[0].code == wire.E_TOO_LARGE
        lingered = {
            "TLS client that never logged in (after its bye)": never_logs_in.lost_at
            - never_logs_in.bye_at,
            "oversized frame (after its bye)": oversized.lost_at - oversized.bye_at,  # type: ignore[operator]
        }
        assert silent.made_at is not None and silent.lost_at is not None
        lingered["silent TCP socket (after the deadline)"] = (
            silent.lost_at - silent.made_at - HANDSHAKE_TIMEOUT
        )
        slow = {what: round(t, 1) for what, t in lingered.items() if t > SLACK}
        assert not slow, (
            f"sockets stayed open this many seconds after the server decided to close "
            f"them (CLOSE_GRACE = {CLOSE_GRACE}): {slow}"
        )
