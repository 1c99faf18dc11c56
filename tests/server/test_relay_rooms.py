"""The relay's second line for rooms: signed events are posted, stored, forwarded, and
checked against the same rules the clients apply (plus accounts and the contacts policy)."""

from __future__ import annotations

from typing import Any

import pytest

from securechat import wire
from tests.roomkit import RoomKit
from tests.server.harness import Client, Harness, delivered, item, make_config


def _post(c: Client, kit: RoomKit, room: str, actor: str, action: str,
          target: str | None = None, **kw: Any) -> wire.Message:  # fmt: skip
    """Post an event; the kit's chain advances only when the relay says ok."""
    signed = kit.event(room, actor, action, target, **kw)
    [reply] = [m for m in c.request(wire.RoomPost(id=c.next_id(), room=room,
                                                  event=signed.blob))
               if getattr(m, "id", None) is not None]  # fmt: skip
    if isinstance(reply, wire.Ok):
        kit.accepted(signed)
    return reply


def _code(reply: wire.Message) -> str:
    assert isinstance(reply, wire.Error), reply
    return reply.code


def _events(c: Client) -> list[wire.RoomEvent]:
    out = []
    for m in c.received():
        if isinstance(m, wire.RoomEventPush):
            out.append(wire.decode_room_event(m.event).event)
    return out


def _room(h: Harness, kit: RoomKit, owner: str, *members: str, room: str = "#ops",
          is_open: bool = False) -> dict[str, Client]:  # fmt: skip
    """``owner`` creates ``room``, invites ``members``, who accept; all online."""
    clients = {name: h.online(name) for name in (owner, *members)}
    assert isinstance(_post(clients[owner], kit, room, owner, wire.CREATE, is_open=is_open),
                      wire.Ok)  # fmt: skip
    for m in members:
        assert isinstance(_post(clients[owner], kit, room, owner, wire.INVITE, m), wire.Ok)
        assert isinstance(_post(clients[m], kit, room, m, wire.JOIN), wire.Ok)
    for c in clients.values():
        c.received()
    return clients


def test_create_invite_join_and_the_events_reach_everyone_concerned() -> None:
    """An invitation reaches the invitee (and the members), the acceptance reaches the
    members; the relay's member list follows, and room_list tells each user where it is."""
    h, kit = Harness(), RoomKit()
    a, b, c = h.online("alice"), h.online("bob"), h.online("carol")
    assert isinstance(_post(a, kit, "#ops", "alice", wire.CREATE), wire.Ok)
    assert isinstance(_post(a, kit, "#ops", "alice", wire.INVITE, "bob"), wire.Ok)
    assert [(e.action, e.target) for e in _events(b)] == [(wire.INVITE, "bob")]
    assert _events(c) == []  # not concerned
    rooms = b.reply(wire.RoomList(id=1), wire.Rooms).rooms
    assert rooms == (wire.RoomInfo("#ops", "invited", 2),)
    # The invitee reads the whole chain before accepting (to verify it).
    got = b.reply(wire.RoomSync(id=2, room="#ops", after=0), wire.RoomEvents).events
    assert [wire.decode_room_event(e).event.action for e in got] == [wire.CREATE, wire.INVITE]
    assert b.error(wire.RoomMembers(id=3, room="#ops")).code == wire.E_NOT_A_MEMBER
    assert isinstance(_post(b, kit, "#ops", "bob", wire.JOIN), wire.Ok)
    assert [(e.action, e.actor) for e in _events(a)] == [(wire.JOIN, "bob")]
    assert a.reply(wire.RoomMembers(id=4, room="#ops"), wire.Room).members == ("alice", "bob")
    assert b.reply(wire.RoomList(id=5), wire.Rooms).rooms == (wire.RoomInfo("#ops", "member", 3),)
    # Room envelopes flow between members only.
    results = a.reply(wire.Send(id=6, items=(item("bob", room="#ops"), item("carol", room="#ops"))),
                      wire.SendReply).results  # fmt: skip
    assert [r.code for r in results] == [None, wire.E_NOT_A_MEMBER]
    assert [i.room for i in delivered(b.received())] == ["#ops"]


def test_join_without_invitation_is_refused_unless_the_room_is_open() -> None:
    h, kit = Harness(), RoomKit()
    clients = _room(h, kit, "alice", "bob")
    mallory = h.online("mallory")
    assert _code(_post(mallory, kit, "#ops", "mallory", wire.JOIN)) == wire.E_NOT_PERMITTED
    assert mallory.error(wire.RoomSync(id=1, room="#ops", after=0)).code == wire.E_NOT_A_MEMBER
    # Posting someone else's event, or creating a room that exists, is refused too.
    forged = kit.event("#ops", "bob", wire.INVITE, "mallory")
    reply = mallory.request(wire.RoomPost(id=2, room="#ops", event=forged.blob))
    assert [m.code for m in reply if isinstance(m, wire.Error)] == [wire.E_NOT_PERMITTED]
    assert _code(_post(mallory, kit, "#ops", "mallory", wire.CREATE, seq=1,
                       prev=wire.GENESIS)) == wire.E_CONFLICT  # fmt: skip
    assert _events(clients["alice"]) == []
    # An open room: anyone reads its chain and joins.
    _room(h, kit, "carol", room="#lobby", is_open=True)
    events = mallory.reply(wire.RoomSync(id=3, room="#lobby", after=0), wire.RoomEvents).events
    assert len(events) == 1
    assert isinstance(_post(mallory, kit, "#lobby", "mallory", wire.JOIN), wire.Ok)


def test_non_members_get_no_member_list_no_presence_no_history() -> None:
    h, kit = Harness(), RoomKit()
    clients = _room(h, kit, "alice", "bob")
    eve = h.online("eve")
    assert eve.error(wire.RoomMembers(id=1, room="#ops")).code == wire.E_NOT_A_MEMBER
    assert eve.error(wire.RoomSync(id=2, room="#ops", after=0)).code == wire.E_NOT_A_MEMBER
    assert eve.reply(wire.RoomList(id=3), wire.Rooms).rooms == ()
    clients["bob"].drop()
    assert [m for m in eve.received() if isinstance(m, wire.Presence)] == []
    assert wire.Presence(user="bob", online=False) in clients["alice"].received()
    # An invitee is not a member yet: no member list, no presence either.
    assert isinstance(_post(clients["alice"], kit, "#ops", "alice", wire.INVITE, "eve"), wire.Ok)
    assert eve.error(wire.RoomMembers(id=4, room="#ops")).code == wire.E_NOT_A_MEMBER
    h.online("bob")
    assert [m for m in eve.received() if isinstance(m, wire.Presence)] == []


def test_contacts_policy_applies_to_invitations() -> None:
    """Under 'contacts' you invite only accepted contacts; a room then lets co-members
    message each other, which is why the invitation is where the policy bites."""
    h, kit = Harness(make_config(policy={"messaging": "contacts"})), RoomKit()
    a, b = h.online("alice"), h.online("bob")
    h.add_user("carol")
    assert isinstance(_post(a, kit, "#ops", "alice", wire.CREATE), wire.Ok)
    assert _code(_post(a, kit, "#ops", "alice", wire.INVITE, "bob")) == wire.E_NOT_PERMITTED
    assert _events(b) == []
    a.reply(wire.ContactRequest(id=1, user="bob"), wire.ContactState)
    b.reply(wire.ContactAccept(id=2, user="alice"), wire.ContactState)
    assert isinstance(_post(a, kit, "#ops", "alice", wire.INVITE, "bob"), wire.Ok)
    assert _code(_post(a, kit, "#ops", "alice", wire.INVITE, "nobody")) == wire.E_NOT_PERMITTED


def test_only_admins_remove_and_only_the_owner_changes_admins() -> None:
    h, kit = Harness(), RoomKit()
    cs = _room(h, kit, "alice", "bob", "carol")
    assert _code(_post(cs["bob"], kit, "#ops", "bob", wire.REMOVE, "carol")) == wire.E_NOT_PERMITTED
    assert _code(_post(cs["bob"], kit, "#ops", "bob", wire.PROMOTE, "bob")) == wire.E_NOT_PERMITTED
    assert isinstance(_post(cs["alice"], kit, "#ops", "alice", wire.PROMOTE, "bob"), wire.Ok)
    assert _code(_post(cs["bob"], kit, "#ops", "bob", wire.REMOVE, "alice")) == wire.E_NOT_PERMITTED
    assert isinstance(_post(cs["bob"], kit, "#ops", "bob", wire.REMOVE, "carol"), wire.Ok)
    # The removed member is told (the signed event), and is out at once.
    assert [(e.action, e.target) for e in _events(cs["carol"])] == [
        (wire.PROMOTE, "bob"), (wire.REMOVE, "carol")]  # fmt: skip
    assert cs["carol"].error(wire.RoomMembers(id=1, room="#ops")).code == wire.E_NOT_A_MEMBER
    sent = cs["carol"].reply(wire.Send(id=2, items=(item("alice", room="#ops"),)),
                             wire.SendReply).results  # fmt: skip
    assert sent[0].code == wire.E_NOT_A_MEMBER
    assert cs["alice"].reply(wire.RoomMembers(id=3, room="#ops"), wire.Room).members == (
        "alice", "bob")  # fmt: skip


def test_stale_and_replayed_events_are_conflicts() -> None:
    """An event that does not follow the room's latest (a race, or a replay) is refused
    with ``conflict``; nothing is stored or forwarded."""
    h, kit = Harness(), RoomKit()
    cs = _room(h, kit, "alice", "bob")
    old = kit.event("#ops", "alice", wire.INVITE, "carol", seq=2, prev=kit.rosters["#ops"].head)
    assert _code(_post(cs["alice"], kit, "#ops", "alice", wire.INVITE, "carol", seq=2)) == (
        wire.E_CONFLICT)  # fmt: skip
    reply = cs["alice"].request(wire.RoomPost(id=9, room="#ops", event=old.blob))
    assert [m.code for m in reply if isinstance(m, wire.Error)] == [wire.E_CONFLICT]
    assert _events(cs["bob"]) == []
    bad = cs["alice"].request(wire.RoomPost(id=10, room="#ops", event=b"\xa0"))
    assert [m.code for m in bad if isinstance(m, wire.Error)] == [wire.E_BAD_REQUEST]


def test_a_newcomer_registering_a_removed_name_inherits_nothing() -> None:
    """``securechat-admin`` removed bob while he was offline (the database only); a
    newcomer registers the name: no room message reaches the newcomer, not even queued."""
    h, kit = Harness(), RoomKit()
    cs = _room(h, kit, "alice", "bob")
    cs["bob"].drop()
    assert h.store.remove_user("bob").result is True
    stranger = h.connect()
    stranger.reply(wire.Register(id=1, user="bob", password=h.password("bob")),
                   wire.Registered)  # fmt: skip
    sent = cs["alice"].reply(wire.Send(id=2, items=(item("bob", room="#ops"),)),
                             wire.SendReply).results  # fmt: skip
    assert sent[0].code == wire.E_NOT_A_MEMBER
    assert h.store.queue_length("bob").result == 0


@pytest.mark.parametrize("online", [True, False])
def test_removed_accounts_lose_their_memberships(online: bool) -> None:
    """A removed account's memberships are forgotten, also when ``securechat-admin``
    removed it while it was offline: a newcomer taking that name inherits nothing."""
    h, kit = Harness(), RoomKit()
    cs = _room(h, kit, "alice", "bob", "carol")
    if online:
        root = h.online("root", role="admin")
        root.reply(wire.AdminRemoveUser(id=1, user="bob"), wire.Ok)
    else:
        cs["bob"].drop()
        assert h.store.remove_user("bob").result is True  # the admin tool: database only
    h.add_user("bob")  # a newcomer takes the name (securechat-admin user add)
    newbob = h.online("bob")
    assert newbob.reply(wire.RoomList(id=2), wire.Rooms).rooms == ()
    assert newbob.error(wire.RoomMembers(id=3, room="#ops")).code == wire.E_NOT_A_MEMBER
    assert newbob.error(wire.RoomSync(id=4, room="#ops", after=0)).code == wire.E_NOT_A_MEMBER
    sent = cs["alice"].reply(wire.Send(id=5, items=(item("bob", room="#ops"),)),
                             wire.SendReply).results  # fmt: skip
    assert sent[0].code == wire.E_NOT_A_MEMBER
    assert cs["alice"].reply(wire.RoomMembers(id=6, room="#ops"), wire.Room).members == (
        "alice", "carol")  # fmt: skip
    assert "#ops" not in h.relay.sessions["bob"].rooms


def test_last_member_leaving_ends_the_room() -> None:
    h, kit = Harness(), RoomKit()
    cs = _room(h, kit, "alice", "bob")
    assert isinstance(_post(cs["bob"], kit, "#ops", "bob", wire.LEAVE), wire.Ok)
    assert isinstance(_post(cs["alice"], kit, "#ops", "alice", wire.LEAVE), wire.Ok)
    assert h.store.room_events("#ops", 0, 10).result == []
    assert cs["bob"].reply(wire.RoomSync(id=1, room="#ops", after=0), wire.RoomEvents).events == ()
    kit.rosters.pop("#ops")
    assert isinstance(_post(cs["bob"], kit, "#ops", "bob", wire.CREATE), wire.Ok)


def test_room_limits_and_names() -> None:
    """Bad room names and full rooms (members and invitees together) are refused."""
    h, kit = Harness(make_config(policy={"max_room_members": 2})), RoomKit()
    cs = _room(h, kit, "alice", "bob")
    h.add_user("carol")
    bad = kit.event("nohash", "alice", wire.CREATE)
    reply = cs["alice"].request(wire.RoomPost(id=1, room="nohash", event=bad.blob))
    assert [m.code for m in reply if isinstance(m, wire.Error)] == [wire.E_BAD_NAME]
    assert _code(_post(cs["alice"], kit, "#ops", "alice", wire.INVITE, "carol")) == (
        wire.E_ROOM_FULL)  # fmt: skip
