# -*- test-case-name: tests.server.test_relay_social -*-
"""Contacts and rooms: the social graph the relay's policy reads.

Split from :mod:`securechat.server.relay` to keep modules small. Every change goes
through the store first and then updates the relay's caches (session contact sets, room
membership), and tells the other party if they are online, so clients never poll.
"""

from __future__ import annotations

from securechat import wire
from securechat.errors import NoSuchUser, StoreError
from securechat.server.auth import valid_room_name
from securechat.server.relay import Relay, RelayError, Session
from securechat.server.store.interface import (
    CONTACT_ACCEPTED,
    CONTACT_PENDING_IN,
    CONTACT_PENDING_OUT,
)

#: The state reported after a removal.
CONTACT_NONE = "none"
_MIRROR = {
    CONTACT_PENDING_OUT: CONTACT_PENDING_IN,
    CONTACT_PENDING_IN: CONTACT_PENDING_OUT,
    CONTACT_ACCEPTED: CONTACT_ACCEPTED,
    CONTACT_NONE: CONTACT_NONE,
}


def _changed(relay: Relay, user: str, peer: str, state: str) -> None:
    """Update caches after ``user``'s relation with ``peer`` became ``state``; tell ``peer``.

    Logins in flight of either user read their contacts again (see
    :mod:`securechat.server.social`).
    """
    relay.changes.bump(user, peer)
    mine = relay.sessions.get(user)
    theirs = relay.sessions.get(peer)
    for s, other in ((mine, peer), (theirs, user)):
        if s is not None:
            if state == CONTACT_ACCEPTED:
                s.contacts = s.contacts | {other}
            else:
                s.contacts = s.contacts - {other}
    if theirs is not None:
        theirs.sink.push(wire.ContactUpdate(user=user, state=_MIRROR[state]))
    if state == CONTACT_ACCEPTED and mine and theirs:
        # Presence goes to related users only: they may not have seen each other until now.
        mine.sink.push(wire.Presence(user=peer, online=True))
        theirs.sink.push(wire.Presence(user=user, online=True))


async def request_contact(relay: Relay, session: Session, peer: str) -> str:
    """Ask ``peer``; returns the new state (``accepted`` if they had asked first)."""
    if peer == session.user:
        raise RelayError(wire.E_BAD_REQUEST, "you cannot be your own contact")
    try:
        state = await relay.store.request_contact(session.user, peer)
    except NoSuchUser:
        raise RelayError(wire.E_NO_SUCH_USER, "no such user") from None
    _changed(relay, session.user, peer, state)
    return state


async def accept_contact(relay: Relay, session: Session, peer: str) -> str:
    """Accept ``peer``'s pending request."""
    if not await relay.store.accept_contact(session.user, peer):
        raise RelayError(wire.E_BAD_REQUEST, "there is no pending request from that user")
    _changed(relay, session.user, peer, CONTACT_ACCEPTED)
    return CONTACT_ACCEPTED


async def remove_contact(relay: Relay, session: Session, peer: str) -> str:
    """Remove the relation in both directions (idempotent)."""
    if await relay.store.remove_contact(session.user, peer):
        _changed(relay, session.user, peer, CONTACT_NONE)
    return CONTACT_NONE


async def list_contacts(relay: Relay, session: Session) -> tuple[wire.Contact, ...]:
    """The session's contacts and pending requests."""
    pairs = await relay.store.list_contacts(session.user)
    return tuple(wire.Contact(peer, state) for peer, state in pairs[: wire.MAX_LIST])


def _check_room_name(room: str) -> None:
    if not valid_room_name(room):
        raise RelayError(wire.E_BAD_NAME, "room names are '#' and 1 to 32 of [a-z0-9_.-]")


async def join_room(relay: Relay, session: Session, room: str) -> tuple[str, ...]:
    """Join (creating if needed); returns the members, and tells the online ones."""
    _check_room_name(room)
    members = await relay.room_members(room)
    if session.user in members:
        return tuple(sorted(members))
    if len(members) >= relay.config.policy.max_room_members:
        raise RelayError(wire.E_ROOM_FULL, "the room is full")
    try:
        await relay.store.join_room(room, session.user)
    except StoreError as e:
        raise RelayError(wire.E_INTERNAL, "could not join") from e
    relay.changes.bump(session.user)
    members = relay.rooms.setdefault(room, members)
    members.add(session.user)
    session.rooms = session.rooms | {room}
    _tell_members(relay, room, members, session.user, True)
    # Co-members see each other's presence from now on.
    online = wire.Presence(user=session.user, online=True)
    for member in members:
        s = relay.sessions.get(member)
        if s is not None and s is not session:
            s.sink.push(online)
            session.sink.push(wire.Presence(user=member, online=True))
    return tuple(sorted(members))


async def leave_room(relay: Relay, session: Session, room: str) -> None:
    """Leave; the remaining online members are told."""
    _check_room_name(room)
    if not await relay.store.leave_room(room, session.user):
        raise RelayError(wire.E_NOT_A_MEMBER, "you are not in that room")
    relay.changes.bump(session.user)
    session.rooms = session.rooms - {room}
    members = relay.rooms.get(room)
    if members is not None:
        members.discard(session.user)
        if not members:
            del relay.rooms[room]
        else:
            _tell_members(relay, room, members, session.user, False)


async def room_members(relay: Relay, session: Session, room: str) -> tuple[str, ...]:
    """Members of a room the session is in (non-members learn nothing)."""
    _check_room_name(room)
    members = await relay.room_members(room)
    if session.user not in members:
        raise RelayError(wire.E_NOT_A_MEMBER, "you are not in that room")
    return tuple(sorted(members))


def _tell_members(relay: Relay, room: str, members: set[str], user: str, joined: bool) -> None:
    msg = wire.RoomUpdate(room=room, user=user, joined=joined)
    for member in members:
        s = relay.sessions.get(member)
        if s is not None and member != user:
            s.sink.push(msg)
