"""Password guessing is throttled per account and per address, against the real daemon.

``[auth] pair_burst`` wrong passwords for one account from one address make further
attempts for that account from that address answer ``throttled`` with a ``retry_after``
(even with the right password: the check comes before the expensive hash), while other
accounts still log in. Wrong
passwords for many accounts from one address exhaust that address's bucket; a user
connecting from another address (127.0.0.2, still loopback) is not affected.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from securechat import wire
from tests.conftest import ConfigWriter
from tests.e2e.client import ServerError, WireClient
from tests.robustness.conftest import PASSWORD, exchange, running_daemon

ACCOUNT_BURST, ADDRESS_BURST = 3, 5
GUESS = "Tr0ub4dor-guess"  # never in a log line
#: Refill so slowly that no token comes back during the test.
CONFIG = {
    "auth": {
        "pair_burst": ACCOUNT_BURST,
        "pair_rate": 0.001,
        "address_burst": ADDRESS_BURST,
        "address_rate": 0.001,
    }
}


async def throttled_retry_after(client: WireClient, user: str, password: str) -> float:
    """Attempt a login that must be throttled; return its ``retry_after``."""
    msg = wire.LoginPassword(id=0, user=user, password=password)
    reply = await client.request(msg, wire.Error)
    assert reply.code == wire.E_THROTTLED, reply
    assert reply.retry_after is not None and reply.retry_after > 0
    return reply.retry_after


@pytest_twisted.ensureDeferred
async def test_password_guessing_is_throttled(reactor: Any, write_config: ConfigWriter) -> None:
    async with running_daemon(reactor, write_config, CONFIG) as relay:
        alice, bob = await defer.gatherResults(
            [defer.ensureDeferred(relay.user(name)) for name in ("alice", "bob")]
        )
        registrar = await relay.tls_client()
        await defer.gatherResults(
            [defer.ensureDeferred(registrar.register(n, PASSWORD)) for n in ("carol", "dave")]
        )

        # Per account and address: the burst of wrong guesses fails, then even the right
        # one waits.
        guesser = await relay.tls_client()
        for n in range(ACCOUNT_BURST):
            with pytest.raises(ServerError, match=wire.E_AUTH_FAILED):
                await guesser.login_password("carol", f"{GUESS}-{n}")
        await throttled_retry_after(guesser, "carol", GUESS)
        await throttled_retry_after(guesser, "carol", PASSWORD)
        # Another account logs in from the same address; live sessions never noticed.
        dave = await relay.tls_client()
        assert (await dave.login_password("dave", PASSWORD)).user == "dave"
        await dave.close()
        await exchange(alice, "alice", bob, "bob", "after-account-throttle")

        # Per address: wrong guesses spread over accounts drain 127.0.0.1's bucket.
        for n in range(ADDRESS_BURST - ACCOUNT_BURST):
            with pytest.raises(ServerError, match=wire.E_AUTH_FAILED):
                await guesser.login_password(f"user{n}", GUESS)
        wait = await throttled_retry_after(guesser, "dave", PASSWORD)
        assert wait > 60  # the address bucket refills at 0.001 tokens per second
        # The same account from another address is fine, and so are the live users.
        elsewhere = await relay.tls_client(source="127.0.0.2")
        assert (await elsewhere.login_password("dave", PASSWORD)).user == "dave"
        await exchange(alice, "alice", bob, "bob", "after-address-throttle")
        assert guesser.lost_reason is None  # throttled, not disconnected
        assert "login throttled" in relay.daemon.output
        assert GUESS not in relay.daemon.output and PASSWORD not in relay.daemon.output
        relay.assert_healthy()
