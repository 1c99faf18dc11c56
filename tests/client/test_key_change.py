"""A peer re-creates their account (new identity key) while a session exists (issue 9).

The real client and the real relay protocol in memory (see ``test_chat``). Each ``send``
item names the recipient identity key it was encrypted to; the relay refuses items for a
stale identity and stores nothing; the sender then fetches the new bundle, warns, and
either resends the same message ids under a new session (unverified peer) or holds them
until ``/verify`` + ``/trust`` (verified peer).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from securechat import wire
from tests.client.test_chat import FAST, Net, Peer
from tests.client.test_chat import few_one_time_prekeys as few_one_time_prekeys  # autouse
from tests.server.harness import Harness, make_config


@pytest.fixture
def net(tmp_path: Path) -> Net:
    return Net(tmp_path, Harness(make_config(**FAST)))


def reinstall(net: Net, old: Peer) -> Peer:
    """``securechat-admin user remove bob``, then bob registers again with a fresh home."""
    old.drop()
    assert net.harness.store.remove_user(old.name).result
    net.harness.relay.forget_user(old.name)
    shutil.move(old.home, old.home.with_name(old.name + ".old"))
    return net.peer(old.name)


def test_unverified_peer_warned_and_the_refused_message_resent_once(net: Net) -> None:
    alice, bob = net.peer("alice"), net.peer("bob")
    alice.type("/msg bob before")
    assert bob.messages() == [("alice", None, "before")]
    bob = reinstall(net, bob)
    sends: list[wire.SendItem] = []
    original = net.harness.relay.send

    def spy(session: object, items: tuple[wire.SendItem, ...]) -> object:
        sends.extend(i for i in items if i.to == "bob")
        return original(session, items)  # type: ignore[arg-type]

    net.harness.relay.send = spy  # type: ignore[method-assign]
    alice.new_events()
    alice.type("/msg bob after the reinstall")
    events = alice.new_events()
    kinds = [e["type"] for e in events]
    assert kinds == ["warning", "sent", "receipt"], events
    assert events[2]["status"] == "received" and events[2]["id"] == events[1]["id"]
    assert "identity key of bob has changed" in events[0]["text"]
    # The first copy (to the old key) was refused, the second went under a new session.
    assert [i.mid for i in sends] == [sends[0].mid] * 2 and sends[0].identity != sends[1].identity
    assert bob.messages() == [("alice", None, "after the reinstall")]
    assert bob.events("message")[0]["id"] == events[1]["id"] == sends[0].mid.hex()
    assert bob.events("warning") == []  # nothing undecryptable reached the new bob
    assert not alice.client.outbox


def test_verified_peer_blocked_and_warned_until_verify_and_trust(net: Net) -> None:
    alice, bob = net.peer("alice"), net.peer("bob")
    alice.type("/msg bob before", "/verify bob", "/trust bob")
    old_fingerprint = alice.events("verify")[-1]["fingerprint"]
    bob = reinstall(net, bob)
    alice.new_events()
    alice.type("/msg bob held for now")
    warning, held = alice.new_events()
    assert "sending is blocked" in warning["text"]
    assert (held["type"], held["status"], held["code"]) == ("error", "held", "blocked")
    assert bob.messages() == [] and bob.events("warning") == []  # nothing stored for bob
    alice.type("/msg bob refused at once")
    [refused] = alice.new_events()
    assert refused["type"] == "error" and "verified identity key changed" in refused["text"]
    assert len(alice.client.outbox) == 1  # only the held message

    # /verify shows the key the relay serves now next to the pinned (verified) one.
    alice.type("/verify bob")
    [shown] = alice.new_events("verify")
    assert shown["pinned_fingerprint"] == old_fingerprint
    assert shown["served_fingerprint"] == shown["fingerprint"] != old_fingerprint
    assert shown["verified"] is False
    alice.type("/trust bob")
    assert bob.messages() == [("alice", None, "held for now")]
    assert bob.events("message")[0]["id"] == held["id"]
    assert not alice.client.outbox


def test_held_messages_are_dropped_with_an_error_on_quit(net: Net) -> None:
    alice, bob = net.peer("alice"), net.peer("bob")
    alice.type("/msg bob before", "/verify bob", "/trust bob")
    bob = reinstall(net, bob)
    alice.type("/msg bob never trusted")
    alice.console.readConnectionLost()
    assert alice.stopped == [0]
    failed = alice.events("error")[-1]
    assert (failed["status"], failed["code"]) == ("failed", "blocked")
    assert bob.messages() == []


def test_verify_with_an_unchanged_key_shows_no_difference(net: Net) -> None:
    alice, _ = net.peer("alice"), net.peer("bob")
    alice.type("/msg bob hi", "/verify bob")
    [shown] = alice.events("verify")
    assert shown["served_fingerprint"] == shown["fingerprint"]
    assert "pinned_fingerprint" not in shown  # only when the key shown is not the pinned one
    assert alice.events("warning") == []
