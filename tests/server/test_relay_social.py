"""Presence, who, contacts (and the contacts policy) and rooms, end to end."""

from __future__ import annotations

from securechat import wire
from tests.roomkit import RoomKit
from tests.server.harness import Client, Harness, delivered, item, make_config


def _send(c: Client, *items: wire.SendItem) -> tuple[wire.SendResult, ...]:
    return c.reply(wire.Send(id=c.next_id(), items=items), wire.SendReply).results


def _pushes(c: Client, kind: type[wire.Message]) -> list[wire.Message]:
    return [m for m in c.received() if isinstance(m, kind)]


def test_presence_and_who_under_anyone() -> None:
    """Under 'anyone', who lists everyone online, but presence goes only to related users
    (accepted contacts, room co-members): a login costs no push per online user."""
    h = Harness()
    for name in ("alice", "bob", "carol"):
        h.add_user(name)
    h.store.add_contact("alice", "bob")
    a, c = h.online("alice"), h.online("carol")
    b = h.online("bob")
    assert _pushes(a, wire.Presence) == [wire.Presence(user="bob", online=True)]
    assert _pushes(c, wire.Presence) == []
    assert a.reply(wire.Who(id=1), wire.Online).users == ("bob", "carol")
    assert c.reply(wire.Who(id=2), wire.Online).users == ("alice", "bob")
    b.drop()
    assert _pushes(a, wire.Presence) == [wire.Presence(user="bob", online=False)]
    assert _pushes(c, wire.Presence) == []
    assert a.reply(wire.Who(id=3), wire.Online).users == ("carol",)


def test_presence_reaches_room_co_members() -> None:
    """Co-members of a room see each other's presence, from the join on and at later logins."""
    h, kit = Harness(), RoomKit()
    a, b, c = h.online("alice"), h.online("bob"), h.online("carol")
    a.reply(wire.RoomPost(id=1, room="#r", event=kit.make("#r", "alice", wire.CREATE)), wire.Ok)
    invite = kit.make("#r", "alice", wire.INVITE, "bob")
    a.reply(wire.RoomPost(id=2, room="#r", event=invite), wire.Ok)
    b.reply(wire.RoomPost(id=3, room="#r", event=kit.make("#r", "bob", wire.JOIN)), wire.Ok)
    assert wire.Presence(user="bob", online=True) in a.received()
    assert wire.Presence(user="alice", online=True) in b.received()
    b.drop()
    assert _pushes(a, wire.Presence) == [wire.Presence(user="bob", online=False)]
    b = h.online("bob")
    assert _pushes(a, wire.Presence) == [wire.Presence(user="bob", online=True)]
    assert _pushes(c, wire.Presence) == []
    b.reply(wire.RoomPost(id=4, room="#r", event=kit.make("#r", "bob", wire.LEAVE)), wire.Ok)
    a.received()
    b.drop()
    assert _pushes(a, wire.Presence) == []


def test_contacts_policy_limits_presence_who_and_sending() -> None:
    """Under 'contacts', only accepted contacts see presence, appear in who, and may send."""
    h = Harness(make_config(policy={"messaging": "contacts"}))
    a, b, c = h.online("alice"), h.online("bob"), h.online("carol")
    assert _pushes(a, wire.Presence) == []
    assert a.reply(wire.Who(id=1), wire.Online).users == ()
    assert _send(a, item("bob"))[0].code == wire.E_NOT_PERMITTED
    assert a.error(wire.FetchBundle(id=2, user="bob", backend="ecdh")).code == (
        wire.E_NOT_PERMITTED
    )
    state = a.reply(wire.ContactRequest(id=3, user="bob"), wire.ContactState)
    assert state.state == "pending-out"
    assert _pushes(b, wire.ContactUpdate) == [wire.ContactUpdate(user="alice", state="pending-in")]
    assert _send(a, item("bob"))[0].code == wire.E_NOT_PERMITTED
    b.reply(wire.ContactAccept(id=4, user="alice"), wire.ContactState)
    msgs = a.received()
    assert wire.ContactUpdate(user="bob", state="accepted") in msgs
    assert wire.Presence(user="bob", online=True) in msgs
    assert a.reply(wire.Who(id=5), wire.Online).users == ("bob",)
    assert _send(a, item("bob", b"now ok"))[0].status == wire.STATUS_DELIVERED
    assert [i.payload for i in delivered(b.received())] == [b"now ok"]
    b.drop()
    assert wire.Presence(user="bob", online=False) in a.received()
    assert _pushes(c, wire.Presence) == []


def test_contact_list_and_remove() -> None:
    """contacts lists states; remove works in both directions and tells the peer."""
    h = Harness(make_config(policy={"messaging": "contacts"}))
    a, b = h.online("alice"), h.online("bob")
    a.reply(wire.ContactRequest(id=1, user="bob"), wire.ContactState)
    b.reply(wire.ContactRequest(id=2, user="alice"), wire.ContactState)  # crosses: accepted
    assert a.reply(wire.ContactList(id=3), wire.Contacts).contacts == (
        wire.Contact("bob", "accepted"),
    )
    b.received()
    assert a.reply(wire.ContactRemove(id=4, user="bob"), wire.ContactState).state == "none"
    assert _pushes(b, wire.ContactUpdate) == [wire.ContactUpdate(user="alice", state="none")]
    assert _send(b, item("alice"))[0].code == wire.E_NOT_PERMITTED
    assert a.reply(wire.ContactList(id=5), wire.Contacts).contacts == ()


def test_contact_errors() -> None:
    """Unknown peers, oneself and accepting nothing are typed errors."""
    h = Harness()
    a = h.online("alice")
    assert a.error(wire.ContactRequest(id=1, user="ghost")).code == wire.E_NO_SUCH_USER
    assert a.error(wire.ContactRequest(id=2, user="alice")).code == wire.E_BAD_REQUEST
    h.add_user("bob")
    assert a.error(wire.ContactAccept(id=3, user="bob")).code == wire.E_BAD_REQUEST
