"""Delivery and sending: durability, ordering, acks, the login-drain race, per-item policy."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from securechat import wire
from securechat.server.relay import DELIVER_BATCH
from securechat.server.store.interface import NewEnvelope, QueuedEnvelope
from tests.server.harness import Client, Harness, delivered, item, make_config


class HeldStore:
    """Wraps a MemoryStore: chosen calls do their work at once but fire only on release.

    That models a commit (or a query) that happened in the database thread while its
    result has not reached the reactor thread yet.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.hold: set[str] = set()
        self.held: list[tuple[defer.Deferred[Any], Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _maybe_hold(self, name: str, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        if name not in self.hold:
            return d
        results: list[Any] = []
        d.addBoth(results.append)
        out: defer.Deferred[Any] = defer.Deferred()
        self.held.append((out, results[0]))
        return out

    def enqueue(self, envelopes: list[NewEnvelope]) -> defer.Deferred[list[QueuedEnvelope]]:
        return self._maybe_hold("enqueue", self._inner.enqueue(envelopes))

    def pending(self, recipient: str, after: int, limit: int) -> defer.Deferred[Any]:
        return self._maybe_hold("pending", self._inner.pending(recipient, after, limit))

    def release(self) -> None:
        held, self.held = self.held, []
        for d, result in held:
            d.callback(result)


def _held(h: Harness) -> HeldStore:
    store = HeldStore(h.store)
    h.relay.store = store  # type: ignore[assignment]
    return store


def _send(c: Client, *items: wire.SendItem) -> tuple[wire.SendResult, ...]:
    return c.reply(wire.Send(id=c.next_id(), items=items), wire.SendReply).results


def test_online_delivery_and_ack_deletes() -> None:
    """An online recipient gets the envelope at once; it is deleted only after the ack."""
    h = Harness()
    a, b = h.online("alice"), h.online("bob")
    assert _send(a, item("bob", b"hello")) == (wire.SendResult(wire.STATUS_DELIVERED),)
    got = delivered(b.received())
    assert [(i.sender, i.payload, i.backend) for i in got] == [("alice", b"hello", "ecdh")]
    assert len(h.store._queues["bob"]) == 1
    b.send(wire.Ack(up_to=got[0].seq))
    assert b.received() == []
    assert h.store._queues.get("bob") is None


def test_offline_queued_then_delivered_in_order_at_login() -> None:
    """An offline recipient's envelopes are queued and arrive in order at login."""
    h = Harness()
    a = h.online("alice")
    h.add_user("bob")
    results = _send(a, item("bob", b"1"), item("bob", b"2"), item("bob", b"3", room=None))
    assert [r.status for r in results] == [wire.STATUS_QUEUED] * 3
    b = h.connect()
    msgs = b.request(wire.LoginPassword(id=1, user="bob", password=h.password("bob")))
    assert isinstance(msgs[0], wire.LoggedIn)  # the reply comes before the backlog
    assert [i.payload for i in delivered(msgs)] == [b"1", b"2", b"3"]


def test_unacked_envelopes_are_redelivered_after_reconnect() -> None:
    """What was pushed but not acknowledged comes again on the next connection."""
    h = Harness()
    a, b = h.online("alice"), h.online("bob")
    _send(a, item("bob", b"1"), item("bob", b"2"))
    first = delivered(b.received())
    b.send(wire.Ack(up_to=first[0].seq))
    b.drop()
    b2 = h.connect()
    b2.login("bob")
    h.clock.advance(0)
    assert [i.payload for i in delivered(b2.received())] == [b"2"]


def test_ack_beyond_what_was_sent_is_clamped() -> None:
    """An ack for a seq not yet handed to the session cannot delete waiting envelopes."""
    h = Harness()
    h.add_user("bob")
    a = h.online("alice")
    _send(a, item("bob", b"1"))
    store = _held(h)
    store.hold.add("pending")
    b = h.connect()
    b.login("bob")  # the backlog has not reached the session yet
    b.send(wire.Ack(up_to=10**9))
    assert len(h.store._queues["bob"]) == 1
    store.hold = set()
    store.release()
    h.clock.advance(0)
    assert [i.payload for i in delivered(b.received())] == [b"1"]


def test_backlog_is_delivered_in_bounded_batches() -> None:
    """A large backlog arrives in deliver frames of at most DELIVER_BATCH envelopes."""
    h = Harness()
    h.add_user("bob")
    a = h.online("alice")
    for start in range(0, DELIVER_BATCH * 2 + 10, 100):
        _send(a, *(item("bob", b"%04d" % n) for n in range(start, start + 100)))
    b = h.connect()
    b.login("bob")
    h.clock.advance(0)
    frames = [m for m in b.received() if isinstance(m, wire.Deliver)]
    assert all(len(f.items) <= DELIVER_BATCH for f in frames) and len(frames) >= 3
    payloads = [i.payload for f in frames for i in f.items]
    assert payloads == [b"%04d" % n for n in range(len(payloads))]


def test_live_pushes_in_one_turn_are_coalesced() -> None:
    """Envelopes committed in the same reactor turn go out in one deliver frame."""
    h = Harness()
    a, c, b = h.online("alice"), h.online("carol"), h.online("bob")
    a.send(wire.Send(id=1, items=(item("bob", b"a1"),)))
    c.send(wire.Send(id=2, items=(item("bob", b"c1"), item("bob", b"c2"))))
    assert b.received() == []
    h.clock.advance(0)
    frames = b.received()
    assert len(frames) == 1 and isinstance(frames[0], wire.Deliver)
    assert [i.payload for i in frames[0].items] == [b"a1", b"c1", b"c2"]


def test_send_reply_only_after_commit() -> None:
    """The send reply (and the push) wait until the store's enqueue has fired."""
    h = Harness()
    a, b = h.online("alice"), h.online("bob")
    a.received()
    store = _held(h)
    store.hold.add("enqueue")
    a.send(wire.Send(id=1, items=(item("bob"),)))
    h.clock.advance(0)
    assert a.received() == [] and b.received() == []
    store.release()
    h.clock.advance(0)
    assert [type(m) for m in a.received()] == [wire.SendReply]
    assert len(delivered(b.received())) == 1


def test_login_drain_races_with_live_sends() -> None:
    """Envelopes committed while the backlog query is in flight are neither lost nor
    duplicated, whichever order the query and the commits complete in."""
    h = Harness()
    h.add_user("bob")
    a = h.online("alice")
    _send(a, item("bob", b"old1"), item("bob", b"old2"))
    store = _held(h)
    store.hold.add("pending")
    b = h.connect()
    b.login("bob")  # the backlog query ran (snapshot: old1, old2) but has not returned
    _send(a, item("bob", b"new1"))  # committed and routed while the drain is in flight
    store.hold = {"enqueue"}
    a.send(wire.Send(id=a.next_id(), items=(item("bob", b"new2"),)))  # committed, not fired
    store.hold = set()
    held_enqueue = store.held.pop()
    store.release()  # the first backlog batch arrives; the drain reads again (dirty)
    h.clock.advance(0)
    store.held.append(held_enqueue)
    store.release()  # new2's commit reaches the relay after the drain already sent it
    h.clock.advance(0)
    _send(a, item("bob", b"new3"))
    h.clock.advance(0)
    got = delivered(b.received())
    assert [i.payload for i in got] == [b"old1", b"old2", b"new1", b"new2", b"new3"]
    assert [i.seq for i in got] == sorted({i.seq for i in got})


def test_replaced_session_is_told_and_new_one_gets_backlog() -> None:
    """A second login replaces the first, which gets a bye; un-acked mail moves over."""
    h = Harness()
    a, b1 = h.online("alice"), h.online("bob")
    _send(a, item("bob", b"x"))
    b1.received()
    b2 = h.connect()
    b2.login("bob")
    h.clock.advance(0)
    byes = [m for m in b1.received() if isinstance(m, wire.Bye)]
    assert [m.code for m in byes] == [wire.E_REPLACED] and b1.transport.disconnecting
    assert [i.payload for i in delivered(b2.received())] == [b"x"]
    b1.proto.connectionLost()
    assert h.relay.sessions["bob"].sink is b2.proto
    assert _send(a, item("bob", b"y"))[0].status == wire.STATUS_DELIVERED


def test_per_item_policy_errors() -> None:
    """Each refused item carries its own code; the others in the batch still go through."""
    h = Harness(make_config(crypto={"backends": ["ecdh", "dh"]},
                            policy={"max_envelope_bytes": 100}))  # fmt: skip
    a, _ = h.online("alice"), h.online("bob")
    results = _send(
        a, item("bob", b"ok"), item("bob", backend="rsa"), item("nobody"),
        item("bob", b"x" * 101), item("bob", room="#ops"),
    )  # fmt: skip
    assert [(r.status, r.code) for r in results] == [
        (wire.STATUS_DELIVERED, None),
        (wire.STATUS_ERROR, wire.E_BACKEND_NOT_ALLOWED),
        (wire.STATUS_ERROR, wire.E_NO_SUCH_USER),
        (wire.STATUS_ERROR, wire.E_TOO_LARGE),
        (wire.STATUS_ERROR, wire.E_NOT_A_MEMBER),
    ]


def test_queue_full_is_reported_per_recipient() -> None:
    """A full recipient queue refuses that recipient's items only."""
    h = Harness(queue_limit=2)
    a = h.online("alice")
    h.add_user("bob")
    h.add_user("carol")
    results = _send(a, item("bob", b"1"), item("bob", b"2"), item("carol", b"3"))
    assert [r.status for r in results] == [wire.STATUS_QUEUED] * 3
    results = _send(a, item("bob", b"4"), item("carol", b"5"))
    assert [(r.status, r.code) for r in results] == [
        (wire.STATUS_ERROR, wire.E_QUEUE_FULL), (wire.STATUS_QUEUED, None),
    ]  # fmt: skip


def test_rate_limit_with_retry_hint() -> None:
    """Past the burst, items are refused with rate-limited and a retry hint; later they pass."""
    h = Harness(make_config(policy={"send_rate": 2.0, "send_burst": 3}))
    a, _ = h.online("alice"), h.online("bob")
    results = _send(a, *(item("bob", b"%d" % n) for n in range(5)))
    assert [r.code for r in results] == [None, None, None, wire.E_RATE_LIMITED,
                                         wire.E_RATE_LIMITED]  # fmt: skip
    assert results[3].retry_after is not None and 0 < results[3].retry_after <= 1
    h.clock.advance(1)
    assert _send(a, item("bob"))[0].status == wire.STATUS_DELIVERED


def test_sending_to_oneself_is_allowed() -> None:
    """A user may send to their own account (another device's session)."""
    h = Harness(make_config(policy={"messaging": "contacts"}))
    a = h.online("alice")
    assert _send(a, item("alice"))[0].status == wire.STATUS_DELIVERED


def test_one_flush_per_turn_skips_sessions_that_closed_meanwhile() -> None:
    """Envelopes committed in one turn go out in one deliver per recipient, from one timer;
    a recipient that disconnected before the flush gets nothing and loses nothing."""
    h = Harness()
    a, b, c = h.online("alice"), h.online("bob"), h.online("carol")
    for x in (a, b, c):
        x.received()
    a.send(wire.Send(id=1, items=(item("bob", b"1"), item("carol", b"2"), item("bob", b"3"))))
    pending = [d for d in h.clock.getDelayedCalls() if d.getTime() == h.clock.seconds()]
    assert [d.func.__name__ for d in pending] == ["_flush"]  # one timer, not one per session
    c.drop()
    h.clock.advance(0)
    delivers = [m for m in b.received() if isinstance(m, wire.Deliver)]
    assert [[i.payload for i in d.items] for d in delivers] == [[b"1", b"3"]]
    assert [e.payload for e in h.store._queues["carol"]] == [b"2"]
