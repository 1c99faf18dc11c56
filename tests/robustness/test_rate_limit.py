"""One user flooding is rate-limited; another user's conversation goes on unaffected.

``[policy] send_rate``/``send_burst`` are small here. The flooder pipelines many
``send`` requests at once; the relay grants the burst, then answers ``rate-limited``
with a ``retry_after`` for the rest, while alice and bob, who have their own buckets,
keep getting their envelopes accepted and delivered.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import defer

from securechat import wire
from tests.conftest import ConfigWriter
from tests.robustness.conftest import collect, exchange, item, running_daemon

RATE, BURST = 1.0, 5
REQUESTS, PER_REQUEST = 40, 4
CONFIG = {"policy": {"send_rate": RATE, "send_burst": BURST}}


@pytest_twisted.ensureDeferred
async def test_flooder_is_rate_limited_while_others_chat(
    reactor: Any, write_config: ConfigWriter
) -> None:
    async with running_daemon(reactor, write_config, CONFIG) as relay:
        alice, bob = await relay.user("alice"), await relay.user("bob")
        flooder = await relay.user("mallory")

        floods = [
            defer.ensureDeferred(
                flooder.send(*(item("bob", b"flood %d.%d" % (r, i)) for i in range(PER_REQUEST)))
            )
            for r in range(REQUESTS)
        ]
        # alice and bob talk while the flood is being answered.
        await exchange(alice, "alice", bob, "bob", "during-flood")
        replies = await defer.gatherResults(floods)
        await exchange(alice, "alice", bob, "bob", "after-flood")

        results = [r for reply in replies for r in reply.results]
        accepted = [r for r in results if r.status in (wire.STATUS_DELIVERED, wire.STATUS_QUEUED)]
        limited = [r for r in results if r.code == wire.E_RATE_LIMITED]
        assert len(accepted) + len(limited) == len(results) == REQUESTS * PER_REQUEST
        # The burst plus what refilled while the flood was answered; far from all of it.
        assert BURST <= len(accepted) <= BURST + 10, len(accepted)
        assert all(r.status == wire.STATUS_ERROR for r in limited)
        assert all(r.retry_after is not None and 0 < r.retry_after <= 1 / RATE for r in limited)
        # Exactly the accepted flood envelopes reached bob (besides alice's).
        delivered = await collect_flood(bob, len(accepted))
        assert len(delivered) == len(accepted)
        assert len({d.mid for d in delivered}) == len(delivered)
        assert flooder.lost_reason is None  # limited, not disconnected
        relay.assert_healthy()


async def collect_flood(bob: Any, count: int) -> list[wire.DeliverItem]:
    """Bob's deliveries from mallory; alice's were consumed by the exchanges already."""
    items = [d for d in await collect(bob, count) if d.sender == "mallory"]
    while len(items) < count:
        items += [d for d in await collect(bob, 1) if d.sender == "mallory"]
    return items
