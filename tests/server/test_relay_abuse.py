"""The relay against an ordinary account used as an attacker (no sockets, MemoryStore).

The same attacks run against the real daemon in ``tests/abuse/``; these pin the relay's
part: who counts as a stranger, that old envelopes are never delivered, that a repeated
contact request is not pushed again, and how a store that refuses is reported.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from securechat import wire
from securechat.config import StoreSection
from securechat.errors import StoreUnavailable
from tests.roomkit import RoomKit
from tests.server.harness import Client, Harness, delivered, item


def _send(c: Client, *items: wire.SendItem) -> tuple[wire.SendResult, ...]:
    return c.reply(wire.Send(id=c.next_id(), items=items), wire.SendReply).results


def _codes(results: tuple[wire.SendResult, ...]) -> list[str | None]:
    return [r.code or r.status for r in results]


def test_a_stranger_cannot_fill_the_queue_a_contact_still_gets_through() -> None:
    """Under 'anyone' a non-contact gets the first-contact allowance; dave's contact is
    not affected by the flood."""
    h = Harness(store_section=StoreSection(stranger_limit=5))
    for name in ("dave", "alice"):
        h.add_user(name)
    h.store.add_contact("dave", "alice")
    mallory, alice = h.online("mallory"), h.online("alice")
    flood = _send(mallory, *(item("dave", b"%d" % i) for i in range(5)))
    assert _codes(flood) == [wire.STATUS_QUEUED] * 5
    assert _codes(_send(mallory, item("dave", b"more"))) == [wire.E_QUEUE_FULL]
    assert _codes(_send(alice, item("dave", b"hi dave"))) == [wire.STATUS_QUEUED]
    # Once they are contacts, the larger per-contact share applies.
    h.store.add_contact("dave", "mallory")
    mallory.drop()
    mallory = h.online("mallory")
    assert _codes(_send(mallory, item("dave", b"now a contact"))) == [wire.STATUS_QUEUED]


def test_room_envelopes_are_not_counted_as_strangers() -> None:
    """Room co-members are not held to the first-contact allowance."""
    h = Harness(store_section=StoreSection(stranger_limit=1))
    h.add_user("dave")
    a = h.online("alice")
    d = h.online("dave")
    kit = RoomKit()
    for c, blob in ((a, kit.make("#r", "alice", wire.CREATE)),
                    (a, kit.make("#r", "alice", wire.INVITE, "dave")),
                    (d, kit.make("#r", "dave", wire.JOIN))):  # fmt: skip
        c.reply(wire.RoomPost(id=c.next_id(), room="#r", event=blob), wire.Ok)
    d.drop()
    results = _send(a, *(item("dave", b"%d" % i, room="#r") for i in range(3)))
    assert _codes(results) == [wire.STATUS_QUEUED] * 3


def test_envelopes_past_their_ttl_are_not_delivered() -> None:
    """The TTL holds at delivery, not only at the periodic sweep."""
    h = Harness(store_section=StoreSection(queue_ttl=60.0))
    h.add_user("bob")
    a = h.online("alice")
    _send(a, item("bob", b"old"))
    h.clock.advance(61)
    _send(a, item("bob", b"new"))
    b = h.connect()
    msgs = b.request(wire.LoginPassword(id=1, user="bob", password=h.password("bob")))
    h.clock.advance(0)
    assert [i.payload for i in delivered(msgs + b.received())] == [b"new"]


def test_a_repeated_contact_request_is_pushed_once() -> None:
    """200 identical requests give one contact_update to the target, not 200."""
    h = Harness()
    a, b = h.online("alice"), h.online("bob")
    for _ in range(20):
        reply = a.reply(wire.ContactRequest(id=a.next_id(), user="bob"), wire.ContactState)
        assert reply.state == "pending-out"
    updates = [m for m in b.received() if isinstance(m, wire.ContactUpdate)]
    assert updates == [wire.ContactUpdate(user="alice", state="pending-in")]


class _LowDiskStore:
    """A store whose enqueue is refused as on an almost full disk."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def enqueue(self, envelopes: Any) -> defer.Deferred[Any]:
        return defer.fail(StoreUnavailable("disk almost full", 7.0))


def test_low_disk_is_unavailable_with_the_stores_retry_hint() -> None:
    """The sender is told to come back later, with the store's retry_after."""
    h = Harness()
    a, b = h.online("alice"), h.online("bob")
    h.relay.store = _LowDiskStore(h.store)
    error = a.error(wire.Send(id=a.next_id(), items=(item("bob", b"x"),)))
    assert (error.code, error.retry_after) == (wire.E_UNAVAILABLE, 7.0)
    assert b.received() == []
