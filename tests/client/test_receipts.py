"""End-to-end receipts (issue 9): ``received`` once the peer's client decrypted and stored
a message, ``failed`` (sent under a new session) when it could not, and the sender's
automatic resend of the same message id. The real client and relay protocol in memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from securechat import wire
from tests.client.test_chat import FAST, Net
from tests.client.test_chat import few_one_time_prekeys as few_one_time_prekeys  # autouse
from tests.server.harness import Harness, make_config


@pytest.fixture
def net(tmp_path: Path) -> Net:
    return Net(tmp_path, Harness(make_config(**FAST)))


def spy_sends(net: Net) -> list[tuple[str, wire.SendItem]]:
    """Every item the relay is asked to send, with its sender."""
    seen: list[tuple[str, wire.SendItem]] = []
    original = net.harness.relay.send

    def spy(session: object, items: tuple[wire.SendItem, ...]) -> object:
        seen.extend((session.user, i) for i in items)  # type: ignore[attr-defined]
        return original(session, items)  # type: ignore[arg-type]

    net.harness.relay.send = spy  # type: ignore[method-assign]
    return seen


def test_received_receipts_follow_delivered(net: Net) -> None:
    alice, bob = net.peer("alice"), net.peer("bob")
    alice.type("/msg bob hello")
    [sent] = alice.events("sent")
    [receipt] = alice.events("receipt")
    assert sent["status"] == "delivered"
    assert (receipt["status"], receipt["id"], receipt["from"]) == ("received", sent["id"], "bob")
    assert bob.events("receipt") == []  # receipts are never answered by receipts
    assert not alice.client.outbox and not bob.client.outbox


def test_receipts_for_a_backlog_are_batched_and_small(net: Net) -> None:
    alice, bob = net.peer("alice"), net.peer("bob")
    bob.drop()
    alice.type(*(f"/msg bob offline {i} " + "x" * 500 for i in range(5)))
    assert [e["status"] for e in alice.events("sent")] == ["queued"] * 5
    sends = spy_sends(net)
    bob.connect()
    receipts = [item for user, item in sends if user == "bob"]
    assert len(receipts) == 1  # one envelope answers the whole backlog
    assert len(receipts[0].payload) < 600  # status and ids only: never the text
    ids = {e["id"] for e in alice.events("receipt") if e["status"] == "received"}
    assert ids == {e["id"] for e in alice.events("sent")}


def test_a_peer_that_lost_its_session_state_says_failed_and_gets_a_resend(net: Net) -> None:
    alice, bob = net.peer("alice"), net.peer("bob")
    alice.type("/msg bob first")
    bob.type("/msg alice reply")  # both directions: a ratchet with state on each side
    # bob loses every session (restored an old backup, deleted state...).
    state = bob.client.sessions.state
    state.sessions.clear()
    state.extra.pop("archive", None)
    bob.client.keystore.save()
    alice.type("/msg bob after the loss")
    # bob could not decrypt: one warning, a signed could-not-decrypt receipt under a new
    # session; alice resends the same id under it; bob shows the message exactly once.
    assert [m[2] for m in bob.messages()] == ["first", "after the loss"]
    failed, received = [e for e in alice.events("receipt")][-2:]
    sent = alice.events("sent")[-1]
    assert (failed["status"], failed["id"]) == ("failed", sent["id"])
    assert "resent" in failed["reason"]
    assert (received["status"], received["id"]) == ("received", sent["id"])
    assert bob.events("message")[-1]["id"] == sent["id"]
    assert [e["status"] for e in alice.events("sent")].count("delivered") == 3
    assert not alice.client.outbox and not bob.client.outbox
    # And the conversation goes on both ways under the new session.
    bob.type("/msg alice back again")
    alice.type("/msg bob good")
    assert alice.messages()[-1][2] == "back again" and bob.messages()[-1][2] == "good"


def test_a_receipt_from_someone_else_is_ignored(net: Net) -> None:
    alice, bob, mallory = net.peer("alice"), net.peer("bob"), net.peer("mallory")
    bob.drop()
    alice.type("/msg bob for bob only")
    [sent] = alice.events("sent")
    mid = bytes.fromhex(sent["id"])
    mallory.client.sender.owe_receipt("alice", "ecdh", "received", [mid])
    mallory.client.sender.pump()
    net.flush()
    assert alice.events("receipt") == []
    bob.connect()
    assert [e["from"] for e in alice.events("receipt")] == ["bob"]


def test_a_room_message_gets_one_receipt_per_member_under_its_sent_id(net: Net) -> None:
    alice, bob, carol = net.peer("alice"), net.peer("bob"), net.peer("carol")
    alice.type("/join #ops", "/invite bob #ops", "/invite carol #ops")
    for p in (bob, carol):
        p.type("/join #ops")
    alice.type("/msg #ops hello room")
    [sent] = alice.events("sent")
    receipts = alice.events("receipt")
    assert sorted(e["from"] for e in receipts) == ["bob", "carol"]
    assert {(e["id"], e["to"], e["status"]) for e in receipts} == {(sent["id"], "#ops",
                                                                    "received")}  # fmt: skip
