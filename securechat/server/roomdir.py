# -*- test-case-name: tests.server.test_relay_social -*-
"""The room directory: the relay's view of who is in which room.

:class:`RoomDirectory` is the only writer of room state on the server: the store's
membership rows (through it), the cache of members per room and every live session's
:attr:`Session.rooms`. The relay's view is a second line of defence only; the members a
client encrypts to are the ones it verified from signed room events (see
``docs/protocol.md``, "Rooms").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from securechat import wire
from securechat.errors import StoreError
from securechat.server.auth import valid_room_name
from securechat.server.session import RelayError, Session
from securechat.server.social import ChangeCounter
from securechat.server.store.interface import IStore


def check_room_name(room: str) -> None:
    """Refuse names that are not ``#`` and 1 to 32 of ``[a-z0-9_.-]``."""
    if not valid_room_name(room):
        raise RelayError(wire.E_BAD_NAME, "room names are '#' and 1 to 32 of [a-z0-9_.-]")


class RoomDirectory:
    """Room membership, cached per room on first use and kept current by every change.

    :param store: where memberships are durable.
    :param sessions: the relay's live sessions (read only here).
    :param changes: bumped on every change so that logins in flight read again.
    :param max_members: ``[policy] max_room_members``.
    """

    def __init__(
        self,
        store: IStore,
        sessions: Mapping[str, Session],
        changes: ChangeCounter,
        max_members: int,
    ) -> None:
        self._store = store
        self._sessions = sessions
        self._changes = changes
        self._max_members = max_members
        #: room -> members, for rooms read since start.
        self._members: dict[str, set[str]] = {}
        #: user -> cached rooms listing them (so a login or a removal is not a full scan).
        self._by_user: dict[str, set[str]] = {}

    # -- reading ---------------------------------------------------------------------------
    def cached(self, room: str) -> set[str] | None:
        """Members of ``room`` if cached (the send hot path never waits for the store)."""
        return self._members.get(room)

    async def members(self, room: str) -> set[str]:
        """Members of ``room``, from the cache or the store."""
        members = self._members.get(room)
        if members is None:
            members = set(await self._store.room_members(room))
            if not members:
                return members
            if room in self._members:  # filled while we waited
                return self._members[room]
            self._members[room] = members
            for user in members:
                self._by_user.setdefault(user, set()).add(room)
        return members

    async def members_for(self, session: Session, room: str) -> tuple[str, ...]:
        """Members of a room the session is in (non-members learn nothing)."""
        check_room_name(room)
        members = await self.members(room)
        if session.user not in members:
            raise RelayError(wire.E_NOT_A_MEMBER, "you are not in that room")
        return tuple(sorted(members))

    def co_members(self, session: Session) -> Iterable[str]:
        """Everyone sharing a room with ``session``'s user (presence goes to them)."""
        for room in session.rooms:
            yield from self._members.get(room, ())

    async def shares_room(self, user: str, peer: str) -> bool:
        """``user`` and ``peer`` are members of a common room."""
        for room in await self._store.user_rooms(user):
            if peer in await self.members(room):
                return True
        return False

    # -- writing ---------------------------------------------------------------------------
    def load(self, session: Session, rooms: list[str]) -> None:
        """A new session of a user who is in ``rooms`` (read from the store at login).

        Cached memberships the store no longer has are dropped: the account may have
        been removed and registered again while the relay was not looking.
        """
        if rooms:
            session.rooms = frozenset(rooms)
        stale = self._by_user.get(session.user, set()) - set(rooms)
        for room in stale:
            self._drop(room, session.user)

    async def join(self, session: Session, room: str) -> tuple[str, ...]:
        """Join (creating if needed); returns the members, and tells the online ones."""
        check_room_name(room)
        members = await self.members(room)
        if session.user in members:
            return tuple(sorted(members))
        if len(members) >= self._max_members:
            raise RelayError(wire.E_ROOM_FULL, "the room is full")
        try:
            await self._store.join_room(room, session.user)
        except StoreError as e:
            raise RelayError(wire.E_INTERNAL, "could not join") from e
        self._changes.bump(session.user)
        members = self._members.setdefault(room, members)
        members.add(session.user)
        self._by_user.setdefault(session.user, set()).add(room)
        session.rooms = session.rooms | {room}
        self._tell(room, members, session.user, True)
        # Co-members see each other's presence from now on.
        online = wire.Presence(user=session.user, online=True)
        for member in members:
            s = self._sessions.get(member)
            if s is not None and s is not session:
                s.sink.push(online)
                session.sink.push(wire.Presence(user=member, online=True))
        return tuple(sorted(members))

    async def leave(self, session: Session, room: str) -> None:
        """Leave; the remaining online members are told."""
        check_room_name(room)
        if not await self._store.leave_room(room, session.user):
            raise RelayError(wire.E_NOT_A_MEMBER, "you are not in that room")
        self._changes.bump(session.user)
        session.rooms = session.rooms - {room}
        self._drop(room, session.user)

    def forget(self, user: str) -> None:
        """``user``'s account is gone (the store already dropped its memberships)."""
        self._changes.bump(user)
        for room in list(self._by_user.get(user, ())):
            self._drop(room, user)

    def _drop(self, room: str, user: str) -> None:
        """Take ``user`` out of the cached ``room`` and tell the remaining members."""
        rooms = self._by_user.get(user)
        if rooms is not None:
            rooms.discard(room)
            if not rooms:
                del self._by_user[user]
        s = self._sessions.get(user)
        if s is not None and room in s.rooms:
            s.rooms = s.rooms - {room}
        members = self._members.get(room)
        if members is None or user not in members:
            return
        members.discard(user)
        if not members:
            del self._members[room]
        else:
            self._tell(room, members, user, False)

    def _tell(self, room: str, members: set[str], user: str, joined: bool) -> None:
        msg = wire.RoomUpdate(room=room, user=user, joined=joined)
        for member in members:
            s = self._sessions.get(member)
            if s is not None and member != user:
                s.sink.push(msg)
