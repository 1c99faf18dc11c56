"""Presence, who, contacts (and the contacts policy) and rooms, end to end."""

from __future__ import annotations

from securechat import wire
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
    h = Harness()
    a, b, c = h.online("alice"), h.online("bob"), h.online("carol")
    a.reply(wire.RoomJoin(id=1, room="#r"), wire.Room)
    b.reply(wire.RoomJoin(id=2, room="#r"), wire.Room)
    assert wire.Presence(user="bob", online=True) in a.received()
    assert wire.Presence(user="alice", online=True) in b.received()
    b.drop()
    assert _pushes(a, wire.Presence) == [wire.Presence(user="bob", online=False)]
    b = h.online("bob")
    assert _pushes(a, wire.Presence) == [wire.Presence(user="bob", online=True)]
    assert _pushes(c, wire.Presence) == []
    b.reply(wire.RoomLeave(id=3, room="#r"), wire.Ok)
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


def test_rooms_membership_fanout_and_leave() -> None:
    """Members learn of joins and leaves; room sends need sender and recipient in the room."""
    h = Harness(make_config(policy={"messaging": "contacts"}))
    a, b, c = h.online("alice"), h.online("bob"), h.online("carol")
    assert a.reply(wire.RoomJoin(id=1, room="#ops"), wire.Room).members == ("alice",)
    assert b.reply(wire.RoomJoin(id=2, room="#ops"), wire.Room).members == ("alice", "bob")
    assert _pushes(a, wire.RoomUpdate) == [wire.RoomUpdate(room="#ops", user="bob", joined=True)]
    # Pairwise fan-out: one envelope per other member, even without being contacts.
    results = _send(a, item("bob", b"to room", room="#ops"), item("carol", b"x", room="#ops"))
    assert [(r.status, r.code) for r in results] == [
        (wire.STATUS_DELIVERED, None), (wire.STATUS_ERROR, wire.E_NOT_A_MEMBER),
    ]  # fmt: skip
    got = delivered(b.received())
    assert [(i.room, i.sender, i.payload) for i in got] == [("#ops", "alice", b"to room")]
    assert _send(c, item("alice", room="#ops"))[0].code == wire.E_NOT_A_MEMBER
    assert c.error(wire.RoomMembers(id=3, room="#ops")).code == wire.E_NOT_A_MEMBER
    assert a.reply(wire.RoomMembers(id=4, room="#ops"), wire.Room).members == ("alice", "bob")
    # Room members may fetch each other's bundles under the contacts policy.
    assert a.error(wire.FetchBundle(id=5, user="bob", backend="ecdh")).code == wire.E_NO_BUNDLE
    assert b.reply(wire.RoomLeave(id=6, room="#ops"), wire.Ok).id == 6
    assert _pushes(a, wire.RoomUpdate) == [wire.RoomUpdate(room="#ops", user="bob", joined=False)]
    assert b.error(wire.RoomLeave(id=7, room="#ops")).code == wire.E_NOT_A_MEMBER
    assert _send(a, item("bob", room="#ops"))[0].code == wire.E_NOT_A_MEMBER


def test_room_limits_and_names() -> None:
    """Bad room names and full rooms are refused."""
    h = Harness(make_config(policy={"max_room_members": 2}))
    a, b, c = h.online("alice"), h.online("bob"), h.online("carol")
    assert a.error(wire.RoomJoin(id=1, room="no hash")).code == wire.E_BAD_NAME
    a.reply(wire.RoomJoin(id=2, room="#x"), wire.Room)
    b.reply(wire.RoomJoin(id=3, room="#x"), wire.Room)
    assert c.error(wire.RoomJoin(id=4, room="#x")).code == wire.E_ROOM_FULL
    assert a.reply(wire.RoomJoin(id=5, room="#x"), wire.Room).members == ("alice", "bob")
