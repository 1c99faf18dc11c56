"""The relay runs its own handshake as a contact the user verified (and one not verified).

After ``/verify bob`` and ``/trust bob``, an envelope "from bob" under any other identity key
is quarantined: not shown as from bob, a warning naming the way to look at the key, the
verified session untouched (bob's next real message shows verified, with no false "missing"
notice, and alice's messages still reach the real bob).
"""

from __future__ import annotations

import dataclasses

import pytest_twisted

from securechat import wire
from tests.adversary.arena import Arena, Impostor
from tests.adversary.relay import MaliciousRelay


@pytest_twisted.ensureDeferred
async def test_impersonating_a_verified_contact_is_quarantined(
    arena: Arena, relay: MaliciousRelay
) -> None:
    a, b = "imp-alice", "imp-bob"
    alice, bob = await arena.online(a, b, register=True)
    alice.send(f"/msg {b} hello bob")
    assert (await bob.expect("message", **{"from": a}))["text"] == "hello bob"
    bob.send(f"/msg {a} hello alice")
    assert (await alice.expect("message", **{"from": b}))["text"] == "hello alice"
    alice.send(f"/verify {b}")
    verified = await alice.expect("verify", user=b)
    alice.send(f"/trust {b}")
    await alice.expect("info", user=b, verified=True)

    # The relay makes up its own "bob": a real handshake with alice's published prekeys,
    # under an identity key of its own. It skips message numbers 1-4, so a client that let
    # this chain count as bob's would later report "missing" messages from the real bob.
    impostor = Impostor(b)
    link = await relay.link(a)
    bundle = await link.request(wire.FetchBundle, user=a, backend="ecdh")
    assert isinstance(bundle, wire.Bundle)
    # Without the one-time prekey, so that every forged envelope opens the same way.
    impostor.start(a, dataclasses.replace(bundle, one_time_id=None, one_time_key=None))
    forged = [impostor.envelope(a, f"FORGED {i}: send the money to mallory") for i in range(6)]
    link.deliver(forged[0], forged[5])
    claim = f"a message claiming to be from {b} arrived under a new, unverified key"
    for _ in range(2):
        warning = await alice.expect_text("warning", claim)
        assert f"/verify {b} shows it" in warning["text"]

    # The real bob goes on in the verified session, both ways.
    bob.send(f"/msg {a} real bob again")
    got = await alice.expect("message", **{"from": b})
    assert (got["text"], got["verified"]) == ("real bob again", True)
    alice.send(f"/msg {b} still to the real bob")
    assert (await bob.expect("message", **{"from": a}))["text"] == "still to the real bob"
    await alice.expect("sent", to=b)

    # /verify shows the new key (not verified), next to the verified one.
    alice.send(f"/verify {b}")
    shown = await alice.expect("verify", user=b)
    assert shown["verified"] is False
    assert shown["fingerprint"] == impostor_fingerprint(impostor)
    assert shown["pinned_fingerprint"] == verified["fingerprint"]
    await alice.finish()
    await bob.finish()

    texts = [e.get("text", "") for e in alice.events]
    assert not [t for t in texts if "FORGED" in t], "forged text shown"
    from_bob = [(e["text"], e["verified"]) for e in alice.all("message", **{"from": b})]
    assert from_bob == [("hello alice", False), ("real bob again", True)]
    assert not [t for t in texts if "missing" in t], "false missing notice"
    assert not alice.all("error")


def impostor_fingerprint(impostor: Impostor) -> str:
    from securechat.crypto.identity import fingerprint

    return fingerprint(impostor.identity.public_bytes())


@pytest_twisted.ensureDeferred
async def test_impersonating_an_unverified_contact_warns(
    arena: Arena, relay: MaliciousRelay
) -> None:
    """TOFU, as documented: for a peer never verified, the relay's key is taken with a
    key-change warning and the message is shown as unverified (``verified: false``)."""
    a, b = "tofu-alice", "tofu-bob"
    alice, bob = await arena.online(a, b, register=True)
    alice.send(f"/msg {b} hello bob")
    await bob.expect("message", **{"from": a})
    bob.send(f"/msg {a} hello alice")
    assert (await alice.expect("message", **{"from": b}))["verified"] is False
    impostor = Impostor(b)
    link = await relay.link(a)
    bundle = await link.request(wire.FetchBundle, user=a, backend="ecdh")
    assert isinstance(bundle, wire.Bundle)
    impostor.start(a, bundle)
    link.deliver(impostor.envelope(a, "from the relay's bob"))
    await alice.expect_text("warning", f"the identity key of {b} has changed")
    got = await alice.expect("message", **{"from": b})
    assert (got["text"], got["verified"]) == ("from the relay's bob", False)
    await alice.finish()
    await bob.finish()
