"""The typed outbox: its keystore format, and the migration of version-1 keystores."""

from __future__ import annotations

from pathlib import Path

import pytest

from securechat.client.keystore import TEST_KDF, Keystore, KeystoreError
from securechat.client.outbox import Outbox, OutboxEntry
from securechat.crypto.identity import IdentityKeyPair
from tests.client.test_chat import FAST, Net, Peer
from tests.client.test_chat import few_one_time_prekeys as few_one_time_prekeys  # autouse
from tests.server.harness import Harness, make_config


@pytest.fixture
def net(tmp_path: Path) -> Net:
    return Net(tmp_path, Harness(make_config(**FAST)))


def test_a_version_1_outbox_is_migrated_and_survives_a_save(tmp_path: Path) -> None:
    ks = Keystore.create(tmp_path, "pw", "alice", IdentityKeyPair.generate().private_bytes(),
                         TEST_KDF)  # fmt: skip
    old = {"to": "bob", "backend": "ecdh", "mid": b"m" * 16, "payload": b"env", "room": None}
    ks.state.extra["outbox"] = [old]  # as written by clients before the typed outbox
    ks.save()
    outbox = Outbox(Keystore.open(tmp_path, "pw").state.extra)
    assert list(outbox) == [OutboxEntry(mid=b"m" * 16, to="bob", backend="ecdh",
                                        payload=b"env")]  # fmt: skip
    assert outbox.get(b"m" * 16) is not None and len(outbox) == 1


def test_changes_are_written_through_to_the_keystore_state(tmp_path: Path) -> None:
    ks = Keystore.create(tmp_path, "pw", "alice", IdentityKeyPair.generate().private_bytes(),
                         TEST_KDF)  # fmt: skip
    outbox = Outbox(ks.state.extra)
    outbox.add(OutboxEntry(mid=b"a" * 16, to="bob", backend="ecdh", text="typed offline"))
    ks.save()  # whoever saves next saves the outbox as it is in memory
    [entry] = Outbox(Keystore.open(tmp_path, "pw").state.extra)
    assert entry.text == "typed offline" and not entry.encrypted
    outbox.remove([entry.mid])
    ks.save()
    assert not Outbox(Keystore.open(tmp_path, "pw").state.extra)


def test_an_unknown_outbox_format_is_refused() -> None:
    with pytest.raises(KeystoreError):
        Outbox({"outbox": {"version": 99}})
    with pytest.raises(KeystoreError):
        Outbox({"outbox": [{"mid": b"x", "to": "bob", "backend": "ecdh"}]})


# -- durable first: messages typed while disconnected, with the real relay in memory --------


def test_a_first_message_typed_while_disconnected_is_sent_when_the_server_is_back(
    net: Net,
) -> None:
    alice, bob = net.peer("alice"), net.peer("bob")
    alice.drop()
    alice.type("/msg bob typed while the server was away", "/msg #nowhere room too")
    [entry, room_entry] = Outbox(alice.on_disk().state.extra)  # saved at once, in plaintext
    assert entry.text == "typed while the server was away" and not entry.encrypted
    assert room_entry.to == "#nowhere" and not room_entry.encrypted
    assert [e["code"] for e in alice.new_events("error")] == []
    alice.connect()
    assert bob.messages() == [("alice", None, "typed while the server was away")]
    assert bob.events("message")[-1]["id"] == entry.mid.hex()
    assert [e["status"] for e in alice.events("sent")] == ["delivered"]
    # alice is not in #nowhere: the relay refuses the member list; a typed error says so.
    [error] = alice.events("error")
    assert (error["to"], error["status"], error["code"]) == ("#nowhere", "failed", "not-a-member")
    assert not alice.client.outbox


def test_a_message_typed_while_disconnected_survives_a_restart(net: Net) -> None:
    alice, bob = net.peer("alice"), net.peer("bob")
    alice.drop()
    alice.type("/msg bob from a process that then died")
    restarted = Peer(net, "alice").connect()
    assert bob.messages() == [("alice", None, "from a process that then died")]
    assert not restarted.client.outbox and not Outbox(restarted.on_disk().state.extra)


def test_end_of_input_waits_while_the_server_is_away(net: Net) -> None:
    alice, bob = net.peer("alice"), net.peer("bob")
    alice.drop()
    alice.type("/msg bob wait for me")
    alice.console.readConnectionLost()
    net.harness.clock.advance(60)
    assert alice.stopped == []  # not accepted yet: keeps waiting (reconnecting)
    alice.connect()
    assert alice.stopped == [0]
    assert bob.messages() == [("alice", None, "wait for me")]


def test_a_message_to_an_unknown_user_fails_with_a_typed_error(net: Net) -> None:
    alice = net.peer("alice")
    alice.drop()
    alice.type("/msg nobody hello?")
    alice.console.readConnectionLost()
    alice.connect()
    [error] = alice.events("error")
    assert error["status"] == "failed" and error["to"] == "nobody" and error["code"]
    assert alice.stopped == [0] and not alice.client.outbox
