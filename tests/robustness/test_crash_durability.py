"""``kill -9`` of the daemon in the middle of a burst of sends loses nothing accepted.

With ``[store] synchronous = "full"`` an envelope whose ``send_reply`` said ``delivered``
or ``queued`` is committed to disk. The sender keeps a window of requests in flight,
the recipient acknowledges as it receives, and the daemon is killed after a number of
replies, so requests are always in flight at the kill. After a restart:

* every accepted envelope reached the recipient, before the crash (and was acknowledged)
  or after the restart: ``accepted <= acked_before | received_after``;
* what was received before the crash but never acknowledged comes again;
* what was acknowledged *and known to be committed* before the burst never comes again;
* nothing arrives twice after the restart, and nothing arrives that was refused.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest_twisted
from twisted.internet import defer

from securechat import wire
from tests.conftest import ConfigWriter
from tests.e2e.client import WireClient
from tests.e2e.daemon import start_daemon
from tests.robustness.conftest import collect, collect_until, item, running_daemon

ACCEPTED = (wire.STATUS_DELIVERED, wire.STATUS_QUEUED)
WINDOW, PER_REQUEST, KILL_AFTER, MAX_REQUESTS = 8, 5, 25, 400
#: alice and bob are not contacts: the strangers' quota must not refuse the burst.
CONFIG = {"store": {"synchronous": "full", "stranger_limit": 100_000, "strangers_limit": 100_000}}


class Burst:
    """Keeps ``WINDOW`` sends in flight until the connection dies; records every outcome."""

    def __init__(self, alice: WireClient, on_reply: Any) -> None:
        self.alice = alice
        self.on_reply = on_reply
        self.numbers = itertools.count()
        self.accepted: dict[bytes, bytes] = {}
        self.refused: set[bytes] = set()
        self.unknown: set[bytes] = set()  # in flight at the crash: either outcome is fine
        self.replies = 0

    async def worker(self) -> None:
        while self.alice.lost_reason is None:
            n = next(self.numbers)
            if n >= MAX_REQUESTS:
                return
            items = [item("bob", b"burst %d.%d" % (n, i)) for i in range(PER_REQUEST)]
            try:
                reply = await self.alice.send(*items)
            except Exception:
                self.unknown.update(i.mid for i in items)
                return
            for sent, result in zip(items, reply.results, strict=True):
                if result.status in ACCEPTED:
                    self.accepted[sent.mid] = sent.payload
                else:
                    self.refused.add(sent.mid)
            self.replies += 1
            self.on_reply(self.replies)


async def receive_and_ack(bob: WireClient, received: list[wire.DeliverItem]) -> set[bytes]:
    """Receive until the connection dies, acknowledging each batch; return what was acked."""
    acked: set[bytes] = set()
    while True:
        try:
            batch = await bob.next_push(wire.Deliver)
        except AssertionError:  # connection lost
            return acked
        received.extend(batch.items)
        bob.ack(batch.items[-1].seq)
        acked.update(d.mid for d in received)  # cumulative: everything so far


@pytest_twisted.ensureDeferred
async def test_kill_during_burst_loses_no_accepted_envelope(
    reactor: Any, write_config: ConfigWriter
) -> None:
    async with running_daemon(reactor, write_config, CONFIG) as relay:
        alice, bob = await relay.user("alice"), await relay.user("bob")

        # Acknowledged and known to be committed: an enqueue issued after the ack runs
        # after it on the store's single database thread.
        early = [item("bob", b"early %d" % i) for i in range(10)]
        assert {r.status for r in (await alice.send(*early)).results} == {"delivered"}
        got = await collect(bob, len(early))
        bob.ack(got[-1].seq)
        await bob.send(item("alice", b"ack barrier"))
        committed_acks = {i.mid for i in early}

        received_before: list[wire.DeliverItem] = []
        kill: list[defer.Deferred[Any]] = []

        def on_reply(replies: int) -> None:
            if replies == KILL_AFTER:
                kill.append(defer.ensureDeferred(relay.daemon.kill()))

        burst = Burst(alice, on_reply)
        receiver = defer.ensureDeferred(receive_and_ack(bob, received_before))
        await defer.gatherResults(
            [defer.ensureDeferred(burst.worker()) for _ in range(WINDOW)]
        ).addTimeout(60, reactor)
        assert kill, f"only {burst.replies} replies before the burst ended"
        assert (await kill[0]).signal == 9
        acked_before = await receiver
        assert burst.unknown, "the kill did not land while sends were in flight"
        assert len(burst.accepted) >= KILL_AFTER * PER_REQUEST

        relay.daemon = await start_daemon(reactor, relay.config_path)
        bob = await relay.user("bob", register=False)
        alice = await relay.user("alice", register=False)
        marker = item("bob", b"marker")
        await alice.send(marker)
        after = [d for d in await collect_until(bob, marker.mid) if d.mid != marker.mid]
        after_mids = [d.mid for d in after]

        assert len(after_mids) == len(set(after_mids)), "an envelope came twice after restart"
        missing = set(burst.accepted) - acked_before - set(after_mids)
        assert not missing, f"{len(missing)} accepted envelopes lost: {sorted(missing)[:5]}"
        unacked = {d.mid for d in received_before} - acked_before
        assert unacked <= set(after_mids)
        assert not committed_acks & set(after_mids), "acknowledged envelopes came back"
        assert set(after_mids) <= set(burst.accepted) | burst.unknown
        assert not burst.refused & set(after_mids)
        for d in after:
            assert d.sender == "alice"
            assert d.mid not in burst.accepted or burst.accepted[d.mid] == d.payload
        relay.assert_healthy()
