"""The relay withholds one-time prekeys, then replays a first message 5,000 messages later.

The attack from issue 8: without a one-time prekey, alice's first message to bob depends only
on bob's signed prekey. Once its id has left bob's 4,096-entry seen list and its chain the
ratchet's retired chains, a v1 client opened it again (``wire 100 EUR`` shown twice, bob's
session replaced). Handshake v2 keeps the transcript hash of every first message accepted
under a signed prekey in bob's keystore for that prekey's whole life: the replay is refused
with a warning, nothing is shown, and the real session goes on.
"""

from __future__ import annotations

import time

import pytest_twisted

from securechat import wire
from securechat.crypto.handshake import v2
from securechat.crypto.session import Session
from tests.adversary.arena import Arena
from tests.adversary.relay import MaliciousRelay

#: 45 rounds of 112 messages from alice, each answered by bob: 5,040 other messages and 45
#: ratchet turns (more than the ratchet keeps retired chains for).
ROUNDS, PER_ROUND = 45, 112
#: Generous bound for one round (112 messages through two client processes and the daemon,
#: each keystore write fsynced) on a loaded 2-core machine; never a sleep.
ROUND_TIMEOUT = 120.0


@pytest_twisted.ensureDeferred
async def test_first_message_replayed_after_5000_messages_is_refused(
    arena: Arena, relay: MaliciousRelay
) -> None:
    a, b = "replay-alice", "replay-bob"
    relay.withhold_one_time_prekeys()
    alice, bob = await arena.online(a, b, register=True)
    # Contacts, so that alice may have more than the first-contact allowance queued for bob.
    alice.send(f"/contact add {b}")
    await bob.expect("contact", user=a, state="pending-in")
    bob.send(f"/contact accept {a}")
    await alice.expect("contact", user=b, state="accepted")
    alice.send(f"/msg {b} wire 100 EUR")
    got = await bob.expect("message", **{"from": a})
    assert got["text"] == "wire 100 EUR"
    [first] = [i for s in relay.sent_by_clients(wire.Send, a) for i in s.items if i.to == b]
    handshake = Session.peek(first.payload).handshake
    assert handshake is not None
    assert v2.HandshakeMessage.from_bytes(handshake).one_time_prekey_id is None  # withheld

    for r in range(ROUNDS):
        alice.send(*(f"/msg {b} m{r}-{i}" for i in range(PER_ROUND)))
        await bob.expect("message", timeout=ROUND_TIMEOUT, text=f"m{r}-{PER_ROUND - 1}")
        bob.send(f"/msg {a} turn {r}")
        await alice.expect("message", text=f"turn {r}")

    link = await relay.link(b)
    link.deliver(wire.DeliverItem(
        0, a, first.backend, first.mid, time.time(), first.payload, first.room
    ))  # fmt: skip
    warning = await bob.expect_text("warning", "replay refused")
    assert warning["text"].startswith(f"dropped a message from {a}")

    # The real session goes on both ways.
    alice.send(f"/msg {b} after the replay")
    assert (await bob.expect("message", text="after the replay"))["from"] == a
    bob.send(f"/msg {a} still here")
    await alice.expect("message", text="still here")
    await alice.finish()
    await bob.finish()
    shown = [e["text"] for e in bob.all("message", **{"from": a})]
    assert shown.count("wire 100 EUR") == 1
    assert len(shown) == 1 + ROUNDS * PER_ROUND + 1
    assert not bob.all("error")
