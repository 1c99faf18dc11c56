"""The malicious relay itself: transparent until told otherwise, and it records everything.

These tests keep the harness honest (a relay that silently broke forwarding would make
every "the attack failed" test pass for the wrong reason).
"""

from __future__ import annotations

import pytest_twisted

from securechat import wire
from tests.adversary.arena import Arena, Impostor
from tests.adversary.relay import MaliciousRelay
from tests.e2e.clientproc import ClientProcess


async def _finish(*clients: ClientProcess) -> None:
    for c in clients:
        await c.finish()


@pytest_twisted.ensureDeferred
async def test_forwards_records_and_injects(arena: Arena, relay: MaliciousRelay) -> None:
    """Messages pass through unchanged and are recorded; an injected envelope reaches the
    client and its acknowledgement never deletes a real envelope on the daemon."""
    alice, bob = await arena.online("h-alice", "h-bob", register=True)
    alice.send("/msg h-bob hello through the relay")
    got = await bob.expect("message", **{"from": "h-alice"})
    assert got["text"] == "hello through the relay"
    [send] = await relay.sent(wire.Send, user="h-alice")
    assert send.items[0].to == "h-bob" and b"hello" not in send.items[0].payload

    # The relay injects an envelope of its own making while a real one waits on the
    # daemon; bob's ack of the injected one must not delete the real one unseen.
    old = await relay.link("h-bob")
    await bob.finish()
    alice.send("/msg h-bob queued while bob is away")
    await alice.expect("sent", to="h-bob", status=wire.STATUS_QUEUED)
    bob = arena.client("h-bob")
    link = await relay.link("h-bob", newer_than=old)
    got = await bob.expect("message", **{"from": "h-alice"})
    assert got["text"] == "queued while bob is away"
    # A user the relay made up, first contact (TOFU): shown, unverified.
    impostor = Impostor("h-nobody")
    bundle = await link.request(wire.FetchBundle, user="h-bob", backend="ecdh")
    assert isinstance(bundle, wire.Bundle)
    impostor.start("h-bob", bundle)
    link.deliver(impostor.envelope("h-bob", "injected"))
    got = await bob.expect("message", **{"from": "h-nobody"})
    assert (got["text"], got["verified"]) == ("injected", False)
    alice.send("/msg h-bob after the injection")
    assert (await bob.expect("message", **{"from": "h-alice"}))["text"] == "after the injection"
    await _finish(alice, bob)
    # Everything bob saw was acknowledged to the daemon: a new login gets no deliver.
    bob = arena.client("h-bob")
    third = await relay.link("h-bob", newer_than=link)
    await bob.logged_in()
    bob.send("/who")
    await bob.expect("who")
    await bob.finish()
    assert not [f for f in third.frames if isinstance(f.msg, wire.Deliver)], "redelivered"


@pytest_twisted.ensureDeferred
async def test_rules_rewrite_and_answer(arena: Arena, relay: MaliciousRelay) -> None:
    """``rewrite`` changes what the daemon said, ``answer`` replies instead of the daemon."""
    [carol] = await arena.online("h-carol", register=True)
    relay.rewrite(wire.Online, lambda _, m: wire.Online(id=m.id, users=("nobody-real",)))
    carol.send("/who")
    assert (await carol.expect("who"))["users"] == ["nobody-real"]
    relay.answer(wire.Who, lambda _, m: wire.Online(id=m.id, users=("answered",)))
    carol.send("/who")
    assert (await carol.expect("who"))["users"] == ["answered"]
    await carol.finish()
