"""The relay refuses send items naming a recipient identity key that is no longer current."""

from __future__ import annotations

from securechat import wire
from tests.server.harness import Client, Harness

OLD, NEW = b"\x11" * 32, b"\x22" * 32
MID = b"m" * 16


def send(c: Client, identity: bytes | None, mid: bytes = MID) -> wire.SendResult:
    item = wire.SendItem("bob", "ecdh", mid, b"ciphertext", None, identity)
    reply = c.reply(wire.Send(id=c.next_id(), items=(item,)), wire.SendReply)
    [result] = reply.results
    return result


def test_a_stale_identity_is_refused_and_nothing_stored() -> None:
    h = Harness()
    h.add_user("bob", identity_key=NEW)
    alice = h.online("alice")
    result = send(alice, wire.identity_digest(OLD))
    assert (result.status, result.code) == (wire.STATUS_ERROR, wire.E_STALE_IDENTITY)
    # The right key (cached after the first lookup) and an older client without the field.
    assert send(alice, wire.identity_digest(NEW), b"n" * 16).status == wire.STATUS_QUEUED
    assert send(alice, None, b"o" * 16).status == wire.STATUS_QUEUED
    bob = h.connect()
    bob.login("bob")
    h.clock.advance(0)
    delivered = [m for m in bob.received() if isinstance(m, wire.Deliver)]
    # Nothing was stored for the refused item: the backlog is the two accepted ones.
    assert [i.mid for d in delivered for i in d.items] == [b"n" * 16, b"o" * 16]


def test_a_new_identity_key_is_noticed_after_publishing() -> None:
    h = Harness()
    h.add_user("bob", identity_key=OLD)
    alice, bob = h.online("alice"), h.online("bob")
    assert send(alice, wire.identity_digest(OLD)).status == wire.STATUS_DELIVERED  # cached now
    bob.reply(wire.PublishPrekeys(id=bob.next_id(), backend="ecdh", one_time=(), identity_key=NEW),
              wire.PrekeysStored)  # fmt: skip
    result = send(alice, wire.identity_digest(OLD), b"p" * 16)
    assert result.code == wire.E_STALE_IDENTITY


def test_an_account_without_an_identity_key_is_stale_for_any_digest() -> None:
    h = Harness()
    h.add_user("bob")  # created by an admin, not set up yet
    alice = h.online("alice")
    assert send(alice, wire.identity_digest(OLD)).code == wire.E_STALE_IDENTITY
