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
from tests.server.harness import (
    Client,
    Harness,
    delivered,
    item,
    make_config,
    otk_record,
    spk_record,
)


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


# -- the key directory -----------------------------------------------------------------------
def _publish(c: Client, n: int, backend: str = "ecdh", **kw: Any) -> wire.Message:
    one_time = tuple(wire.OneTimePrekey(i, otk_record(i, backend)) for i in range(1, n + 1))
    msg = wire.PublishPrekeys(id=c.next_id(), backend=backend, one_time=one_time,
                              signed_prekey=kw.pop("signed", spk_record(backend)),
                              identity_key=kw.pop("identity", b"I" * 32))  # fmt: skip
    return c.request(msg)[0]


def test_junk_keys_are_refused_and_nothing_is_stored() -> None:
    """16 KiB of junk as an identity key (or a prekey record of the wrong shape or size)
    is refused with bad-request, and nothing of that publish is stored."""
    h = Harness()
    a, b = h.online("alice"), h.online("bob")
    for junk in (
        {"identity": b"\xff" * 16384},
        {"signed": b"\xff" * 4000},
        {"signed": spk_record(pub=b"P" * 2000)},  # no X25519 or P-256 key is that long
        {"signed": spk_record(backend="rsa")},  # made for another backend
    ):
        reply = _publish(a, 3, **junk)
        assert isinstance(reply, wire.Error) and reply.code == wire.E_BAD_REQUEST, junk
    odd = wire.OneTimePrekey(7, otk_record(8))  # published under another id
    reply = a.request(wire.PublishPrekeys(id=a.next_id(), backend="ecdh", one_time=(odd,)))[0]
    assert isinstance(reply, wire.Error) and reply.code == wire.E_BAD_REQUEST
    assert b.error(wire.FetchBundle(id=b.next_id(), user="alice", backend="ecdh")).code == (
        wire.E_NO_BUNDLE
    )
    assert isinstance(_publish(a, 3), wire.PrekeysStored)  # well-formed keys still go in


def test_one_requester_cannot_drain_a_pool() -> None:
    """Bundles keep coming, but one requester gets only a few of alice's one-time
    prekeys, then one per interval; others still get theirs."""
    h = Harness(make_config(policy={"one_time_per_peer_burst": 3,
                                    "one_time_per_peer_rate": 0.01}))  # fmt: skip
    a, b, c = h.online("alice"), h.online("bob"), h.online("carol")
    assert isinstance(_publish(a, 50), wire.PrekeysStored)

    def fetch(client: Client) -> int | None:
        msg = wire.FetchBundle(id=client.next_id(), user="alice", backend="ecdh")
        return client.reply(msg, wire.Bundle).one_time_id

    got = [fetch(b) for _ in range(20)]
    assert got[:3] == [1, 2, 3] and got[3:] == [None] * 17
    assert fetch(c) == 4
    h.clock.advance(100)  # one more for bob after 1/rate seconds
    assert [fetch(b), fetch(b)] == [5, None]


def test_prekeys_low_follows_the_backends_threshold() -> None:
    """The server asks for more only below the backend's one_time_low, which lies below
    the client's target: a top-up is a batch, never one key per fetch."""
    from securechat.crypto.backends import SPECS

    for backend, spec in SPECS.items():
        assert 0 < spec.one_time_low < spec.one_time_target, backend
    h = Harness(make_config(policy={"one_time_per_peer_burst": 0}))
    a, b = h.online("alice"), h.online("bob")
    assert isinstance(_publish(a, 4, "rsa"), wire.PrekeysStored)
    a.received()
    for _ in range(4):
        b.reply(wire.FetchBundle(id=b.next_id(), user="alice", backend="rsa"), wire.Bundle)
    lows = [m.remaining for m in a.received() if isinstance(m, wire.PrekeysLow)]
    assert lows == [1, 0]  # rsa's one_time_low is 2
