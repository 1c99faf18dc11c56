# -*- test-case-name: tests.server.test_relay_rooms -*-
"""The room directory: the relay's view of who is in which room.

:class:`RoomDirectory` is the only writer of room state on the server: the store's
membership rows and room events (through it), the cache of rooms and every live
session's :attr:`Session.rooms`.

Clients decide membership: each change is a room event signed by the acting member (see
:mod:`securechat.wireroom` and ``docs/protocol.md``, "Rooms"). The relay cannot check
signatures (it never imports cryptography) but applies the same rules to what its users
post, as a second line: no join without an invitation unless the room is open, the
``contacts`` policy for invitations, nothing about a room for non-members. It forgets
the memberships of removed accounts, which the signed chain cannot do on its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping

from securechat import wire
from securechat.errors import NoSuchUser, RoomConflict
from securechat.server.auth import valid_room_name
from securechat.server.session import RelayError, Session
from securechat.server.social import ChangeCounter
from securechat.server.store.interface import ROOM_INVITED, ROOM_MEMBER, IStore

_NOBODY: frozenset[str] = frozenset()
#: ``ContactGraph.may_contact``: the ``contacts`` policy for invitations.
_MayContact = Callable[[Session, str], Awaitable[bool]]


def check_room_name(room: str) -> None:
    """Refuse names that are not ``#`` and 1 to 32 of ``[a-z0-9_.-]``."""
    if not valid_room_name(room):
        raise RelayError(wire.E_BAD_NAME, "room names are '#' and 1 to 32 of [a-z0-9_.-]")


def _changes(ev: wire.RoomEvent) -> list[tuple[str, str | None]]:
    """The membership rows an accepted event changes (user, new state or None)."""
    if ev.action in (wire.CREATE, wire.JOIN):
        return [(ev.actor, ROOM_MEMBER)]
    if ev.action == wire.INVITE:
        return [(ev.target, ROOM_INVITED)]
    if ev.action in (wire.LEAVE, wire.REMOVE):
        return [(ev.target, None)]
    return []


class RoomDirectory:
    """Rooms, cached on first use and kept current by every accepted event.

    :param store: where memberships and events are durable.
    :param sessions: the relay's live sessions (read only here).
    :param changes: bumped on every change so that logins in flight read again.
    :param max_members: ``[policy] max_room_members`` (members and invitees together).
    :param contacts_only: the ``contacts`` messaging policy, which invitations obey.
    """

    def __init__(
        self,
        store: IStore,
        sessions: Mapping[str, Session],
        changes: ChangeCounter,
        max_members: int,
        contacts_only: bool = False,
    ) -> None:
        self._store = store
        self._sessions = sessions
        self._changes = changes
        self._max_members = max_members
        self._contacts_only = contacts_only
        #: room -> roster rebuilt from its events, limited to the store's memberships.
        self._rooms: dict[str, wire.Roster] = {}
        #: user -> cached rooms listing them (so a login or a removal is not a full scan).
        self._by_user: dict[str, set[str]] = {}

    # -- reading ---------------------------------------------------------------------------
    def cached(self, room: str) -> Collection[str] | None:
        """Members of ``room`` if cached (the send hot path never waits for the store)."""
        roster = self._rooms.get(room)
        return None if roster is None else roster.members

    async def members(self, room: str) -> Collection[str]:
        """Members of ``room``, from the cache or the store (empty: no such room)."""
        roster = await self._roster(room)
        return _NOBODY if roster is None else roster.members

    async def _roster(self, room: str) -> wire.Roster | None:
        roster = self._rooms.get(room)
        if roster is not None:
            return roster
        rows = await self._store.room_roster(room)
        if not rows:
            return None
        events: list[bytes] = []
        while True:
            batch = await self._store.room_events(room, len(events), wire.MAX_ROOM_EVENTS)
            events.extend(e for _, e in batch)
            if len(batch) < wire.MAX_ROOM_EVENTS:
                break
        if room in self._rooms:  # loaded by someone else while we read
            return self._rooms[room]
        roster = _replay(room, events, dict(rows))
        self._rooms[room] = roster
        for user in (*roster.members, *roster.invited):
            self._by_user.setdefault(user, set()).add(room)
        return roster

    async def members_for(self, session: Session, room: str) -> tuple[str, ...]:
        """Members of a room the session is in (non-members learn nothing)."""
        check_room_name(room)
        members = await self.members(room)
        if session.user not in members:
            raise RelayError(wire.E_NOT_A_MEMBER, "you are not in that room")
        return tuple(sorted(members))

    async def events_for(self, session: Session, room: str, after: int) -> tuple[bytes, ...]:
        """Events after ``after`` for a member, an invitee, or anyone if the room is open;
        none for a room that does not exist."""
        check_room_name(room)
        roster = await self._roster(room)
        if roster is None:
            return ()
        user = session.user
        if user not in roster.members and user not in roster.invited and not roster.open:
            raise RelayError(wire.E_NOT_A_MEMBER, "that room is invite-only")
        batch = await self._store.room_events(room, after, wire.MAX_ROOM_EVENTS)
        return tuple(e for _, e in batch)

    async def rooms_of(self, session: Session) -> tuple[wire.RoomInfo, ...]:
        """The session's rooms and invitations with their latest event."""
        rows = await self._store.user_room_states(session.user)
        return tuple(wire.RoomInfo(r, state, head) for r, state, head in rows[: wire.MAX_LIST])

    def co_members(self, session: Session) -> Iterable[str]:
        """Everyone sharing a room with ``session``'s user (presence goes to them)."""
        for room in session.rooms:
            roster = self._rooms.get(room)
            if roster is not None:
                yield from roster.members

    async def shares_room(self, user: str, peer: str) -> bool:
        """``user`` and ``peer`` are members of a common room."""
        for room in await self._store.user_rooms(user):
            if peer in await self.members(room):
                return True
        return False

    # -- writing ---------------------------------------------------------------------------
    def load(self, session: Session, rooms: list[str]) -> None:
        """A new session of a user who is a member of ``rooms`` (read at login).

        Cached memberships the store no longer has are dropped: the account may have
        been removed and registered again while the relay was not looking.
        """
        if rooms:
            session.rooms = frozenset(rooms)
        mine = set(rooms)
        for room in list(self._by_user.get(session.user, ())):
            roster = self._rooms.get(room)
            if room not in mine and roster is not None and session.user in roster.members:
                self._drop(room, session.user)

    async def post(
        self, session: Session, room: str, blob: bytes, may_contact: _MayContact
    ) -> None:
        """Check one signed event against the rules, store it, apply it, forward it.

        :param may_contact: the contact graph's check, for invitations under ``contacts``.
        """
        check_room_name(room)
        try:
            signed = wire.decode_room_event(blob)
        except wire.RoomEventError as e:
            raise RelayError(wire.E_BAD_REQUEST, f"bad room event: {e}") from None
        ev = signed.event
        if ev.room != room:
            raise RelayError(wire.E_BAD_REQUEST, "the event is for another room")
        if ev.actor != session.user:
            raise RelayError(wire.E_NOT_PERMITTED, "you can only post your own events")
        roster = await self._roster(room) or wire.Roster(room)
        try:
            roster.fits(signed)
        except wire.RoomEventError as e:
            raise RelayError(wire.E_CONFLICT, str(e)) from None
        try:
            roster.check(ev)
        except wire.RoomEventError as e:
            raise RelayError(wire.E_NOT_PERMITTED, str(e)) from None
        await self._policy(session, roster, ev, may_contact)
        try:
            await self._store.post_room_event(room, ev.seq, blob, _changes(ev))
        except RoomConflict:
            raise RelayError(wire.E_CONFLICT, f"{room} has moved on: sync and retry") from None
        except NoSuchUser:
            raise RelayError(wire.E_NO_SUCH_USER, "no such user") from None
        self._accepted(session, room, signed)

    async def _policy(
        self, session: Session, roster: wire.Roster, ev: wire.RoomEvent, may: _MayContact
    ) -> None:
        """What the relay adds to the shared rules: accounts, the contacts policy, size."""
        if ev.action == wire.INVITE:
            if self._contacts_only and not await may(session, ev.target):
                raise RelayError(wire.E_NOT_PERMITTED, "you can invite only your contacts")
            if await self._store.get_user(ev.target) is None:
                raise RelayError(wire.E_NO_SUCH_USER, "no such user")
        grows = ev.action in (wire.INVITE, wire.JOIN) and ev.target not in roster.invited
        if grows and len(roster.members) + len(roster.invited) >= self._max_members:
            raise RelayError(wire.E_ROOM_FULL, "the room is full")

    def _accepted(self, session: Session, room: str, signed: wire.SignedRoomEvent) -> None:
        """The event is durable: update the cache and sessions, tell who it concerns."""
        ev = signed.event
        roster = self._rooms.setdefault(room, wire.Roster(room))
        before = set(roster.members)
        roster.apply(signed)
        self._changes.bump(ev.actor, ev.target)
        push = wire.RoomEventPush(room=room, event=signed.blob)
        for name in before | set(roster.members) | {ev.target}:
            s = self._sessions.get(name)
            if s is not None and s is not session:
                s.sink.push(push)
        if ev.action == wire.INVITE:
            self._by_user.setdefault(ev.target, set()).add(room)
        elif ev.action in (wire.CREATE, wire.JOIN):
            self._joined(session, room, roster)
        elif ev.action in (wire.LEAVE, wire.REMOVE):
            self._left(room, ev.target, before)

    def _joined(self, session: Session, room: str, roster: wire.Roster) -> None:
        self._by_user.setdefault(session.user, set()).add(room)
        session.rooms = session.rooms | {room}
        self._tell(room, roster.members, session.user, True)
        # Co-members see each other's presence from now on.
        online = wire.Presence(user=session.user, online=True)
        for member in roster.members:
            s = self._sessions.get(member)
            if s is not None and s is not session:
                s.sink.push(online)
                session.sink.push(wire.Presence(user=member, online=True))

    def _left(self, room: str, user: str, before: set[str]) -> None:
        self._unindex(room, user)
        roster = self._rooms.get(room)
        if roster is not None and not roster.members:
            del self._rooms[room]  # the store deleted the room with its last member
            for other in list(roster.invited):
                self._unindex(room, other)
        if user in before and roster is not None:
            self._tell(room, roster.members, user, False)

    def forget(self, user: str) -> None:
        """``user``'s account is gone (the store already dropped its memberships)."""
        self._changes.bump(user)
        for room in list(self._by_user.get(user, ())):
            self._drop(room, user)

    def _drop(self, room: str, user: str) -> None:
        """Take ``user`` out of the cached ``room`` (no event: the account is gone)."""
        self._unindex(room, user)
        roster = self._rooms.get(room)
        if roster is None:
            return
        roster.invited.pop(user, None)
        if roster.members.pop(user, None) is None:
            return
        roster.admins.discard(user)
        if not roster.members:
            del self._rooms[room]
        else:
            self._tell(room, roster.members, user, False)

    def _unindex(self, room: str, user: str) -> None:
        rooms = self._by_user.get(user)
        if rooms is not None:
            rooms.discard(room)
            if not rooms:
                del self._by_user[user]
        s = self._sessions.get(user)
        if s is not None and room in s.rooms:
            s.rooms = s.rooms - {room}

    def _tell(self, room: str, members: Iterable[str], user: str, joined: bool) -> None:
        msg = wire.RoomUpdate(room=room, user=user, joined=joined)
        for member in members:
            s = self._sessions.get(member)
            if s is not None and member != user:
                s.sink.push(msg)


def _replay(room: str, events: list[bytes], rows: dict[str, str]) -> wire.Roster:
    """The roster ``events`` build, limited to the memberships the store still has.

    Events were checked when posted; one that no longer passes (its actor's account was
    removed since) still advances the chain, as it did for the clients.
    """
    roster = wire.Roster(room)
    for blob in events:
        signed = wire.decode_room_event(blob)
        try:
            roster.check(signed.event)
        except wire.RoomEventError:
            roster.seq, roster.head = signed.event.seq, signed.hash
            continue
        roster.apply(signed)
    roster.members = {u: k for u, k in roster.members.items() if rows.get(u) == ROOM_MEMBER}
    roster.invited = {u: k for u, k in roster.invited.items() if rows.get(u) == ROOM_INVITED}
    roster.admins &= set(roster.members)
    if roster.owner not in roster.members:
        roster.owner = None
    return roster
