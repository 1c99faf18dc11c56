# -*- test-case-name: tests.client.test_rooms -*-
"""Rooms whose membership the client decides: verified rosters and the room commands.

:class:`RoomBook` is the only writer of the client's room state: for every room it keeps
the roster it has verified from signed room events (:mod:`securechat.wireroom`), in the
encrypted keystore. An event is applied only if it is the next link of the chain (its
``seq`` and ``prev``), carries a valid Ed25519 signature by the key the chain (or, for a
room's creator, the pin) gives its actor, and obeys the rules. A room message is
encrypted only to the members this book lists; the relay's own member list is only
compared with it, and a difference is reported as a ``warning`` naming the extra and the
missing users.

:class:`RoomController` runs the room commands and keeps the book in step with the relay
(pushes, a sync after each login, a retry when someone else's event came first).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

from securechat import wire
from securechat.client import events as ev
from securechat.client.network import RemoteError
from securechat.crypto.identity import IdentityKeyPair, SignatureError, verify
from securechat.wireroom import RoomEventError, Roster, SignedRoomEvent

#: Hashes of recent events kept per room, to tell a harmless duplicate from a replay.
RECENT = 64
_ACTIONS_TEXT = {
    wire.CREATE: "{actor} created {room}",
    wire.INVITE: "{actor} invited {target} to {room}",
    wire.JOIN: "{actor} joined {room}",
    wire.LEAVE: "{actor} left {room}",
    wire.REMOVE: "{actor} removed {target} from {room}",
    wire.PROMOTE: "{actor} made {target} an admin of {room}",
    wire.DEMOTE: "{actor} took {target}'s admin role in {room}",
}


class RoomGap(RoomEventError):
    """An event is ahead of the chain: the ones between are missing (sync first)."""


@dataclass(frozen=True)
class Applied:
    """An event the book verified and applied."""

    signed: SignedRoomEvent
    roster: Roster

    def describe(self, me: str) -> ev.Room:
        """The ``room`` console event for it."""
        e = self.signed.event
        text = _ACTIONS_TEXT[e.action].format(
            actor="you" if e.actor == me else e.actor,
            target="you" if e.target == me else e.target, room=e.room,
        )  # fmt: skip
        if e.action == wire.INVITE and e.target == me:
            text = f"{e.actor} invited you to {e.room}: /join {e.room} to accept"
        return ev.Room(
            room=e.room, action=e.action, message=text, by=e.actor, user=e.target, seq=e.seq,
            members=sorted(self.roster.members),
        )  # fmt: skip


class RoomBook:
    """Verified rosters, persisted in the keystore's ``extra["rooms"]``.

    :param extra: the keystore's free-form state (saved by the caller).
    :param user: this client's user name.
    :param identity: this client's identity key pair (signs our events).
    :param pinned: the pinned identity key of a user, if any (TOFU or verified).
    """

    def __init__(
        self,
        extra: dict[str, Any],
        user: str,
        identity: IdentityKeyPair,
        pinned: Callable[[str], bytes | None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._state: dict[str, dict[str, Any]] = extra.setdefault("rooms", {})
        self.user = user
        self._identity = identity
        self._pinned = pinned
        self._clock = clock

    def roster(self, room: str) -> Roster | None:
        """The verified roster of ``room`` (None: nothing verified about it)."""
        entry = self._state.get(room)
        return None if entry is None else Roster.from_map(entry["roster"])

    def rooms(self) -> list[str]:
        return sorted(self._state)

    def head(self, room: str) -> int:
        entry = self._state.get(room)
        return 0 if entry is None else int(entry["roster"]["seq"])

    def forget(self, room: str) -> None:
        """Drop what we know of ``room`` (we left it or were removed)."""
        self._state.pop(room, None)

    def is_member(self, room: str, user: str) -> bool:
        """``user`` was admitted to ``room`` by a valid signed event (and is still in)."""
        roster = self.roster(room)
        return roster is not None and user in roster.members

    def recipients(self, room: str) -> dict[str, bytes]:
        """Verified members other than us, with the identity key the chain admitted."""
        roster = self.roster(room)
        if roster is None or self.user not in roster.members:
            return {}
        return {u: k for u, k in roster.members.items() if u != self.user}

    def make(
        self, room: str, action: str, target: str | None = None, *, key: bytes | None = None,
        is_open: bool = False,
    ) -> SignedRoomEvent:  # fmt: skip
        """Sign our next event for ``room`` (checked against the rules first).

        :raises RoomEventError: the rules do not allow it.
        """
        roster = self.roster(room) or Roster(room)
        if action in (wire.CREATE, wire.JOIN):
            key = self._identity.public_bytes()
        ev = wire.RoomEvent(
            room=room, seq=roster.seq + 1, prev=roster.head, actor=self.user, action=action,
            target=target or self.user, time=float(self._clock()), key=key, open=is_open,
        )  # fmt: skip
        roster.check(ev)
        body = ev.to_body()
        return SignedRoomEvent(body, self._identity.sign(wire.signed_payload(body)), ev)

    def apply(self, blob: bytes) -> Applied | None:
        """Verify one event and apply it; None for a duplicate of one already applied.

        :raises RoomGap: events between ours and this one are missing.
        :raises RoomEventError: malformed, replayed, reordered, forged or not allowed.
        """
        signed = wire.decode_room_event(blob)
        ev = signed.event
        entry = self._state.get(ev.room)
        roster = Roster.from_map(entry["roster"]) if entry is not None else Roster(ev.room)
        recent: list[bytes] = list(entry["recent"]) if entry is not None else []
        if ev.seq <= roster.seq and signed.hash in recent:
            return None
        if ev.seq > roster.seq + 1:
            raise RoomGap(f"events {roster.seq + 1} to {ev.seq - 1} of {ev.room} are missing")
        roster.fits(signed)
        key = roster.signer_key(ev)
        if key is None:
            raise RoomEventError(f"{ev.actor} may not {ev.action} in {ev.room}")
        if ev.action == wire.CREATE or (ev.action == wire.JOIN and ev.actor not in roster.invited):
            # A self-certified key (a creator's, an open room's newcomer's): it must be
            # the one we pinned for that user, if we pinned one.
            known = self._identity.public_bytes() if ev.actor == self.user else None
            known = known or self._pinned(ev.actor)
            if known is not None and known != key:
                raise RoomEventError(
                    f"{ev.actor}'s key in {ev.room} is not the one you have pinned"
                )
        try:
            verify(key, wire.signed_payload(signed.body), signed.sig)
        except SignatureError:
            raise RoomEventError(f"bad signature on event {ev.seq} of {ev.room}") from None
        roster.check(ev)
        roster.apply(signed)
        recent = [*recent, signed.hash][-RECENT:]
        self._state[ev.room] = {"roster": roster.to_map(), "recent": recent}
        return Applied(signed, roster)

    def diff(self, room: str, server: Collection[str]) -> tuple[list[str], list[str]]:
        """(extra, missing): the relay's member list against the verified one."""
        roster = self.roster(room)
        verified = set(roster.members) if roster is not None else set()
        return sorted(set(server) - verified), sorted(verified - set(server))


Request = Callable[..., Awaitable[wire.Message]]


class RoomController:
    """The room commands and the book's sync with the relay.

    :param book: the verified rosters.
    :param request: sends a request on the current connection, fires with the reply.
    :param emit: shows a console event.
    :param save: saves the keystore (after every applied event).
    :param peer_key: the identity key we would encrypt to for a user (pinning it).
    """

    def __init__(
        self,
        book: RoomBook,
        request: Request,
        emit: Callable[[ev.Event], None],
        save: Callable[[], None],
        peer_key: Callable[[str], Awaitable[bytes]],
    ) -> None:
        self.book = book
        self._request = request
        self._emit = emit
        self._save = save
        self._peer_key = peer_key
        #: The relay's member lists (cleared on reconnect), and the last difference shown.
        self._server: dict[str, set[str]] = {}
        self._warned: dict[str, tuple[list[str], list[str]]] = {}

    # -- relay pushes and login ------------------------------------------------------------
    def disconnected(self) -> None:
        self._server.clear()

    def server_update(self, msg: wire.RoomUpdate) -> None:
        members = self._server.get(msg.room)
        if members is not None:
            (members.add if msg.joined else members.discard)(msg.user)

    async def pushed(self, msg: wire.RoomEventPush) -> None:
        """A new event of a room we are in, invited to, or removed from."""
        try:
            self._show(self.book.apply(msg.event))
        except RoomGap:
            await self.sync(msg.room)
        except RoomEventError as e:
            self._refused(msg.room, e)

    async def logged_in(self) -> None:
        """Catch up with every room the relay lists for us; say what it no longer lists."""
        reply = await self._request(wire.RoomList)
        assert isinstance(reply, wire.Rooms)
        listed = {info.room for info in reply.rooms}
        for info in reply.rooms:
            if info.head != self.book.head(info.room):
                await self.sync(info.room)
        for room in self.book.rooms():
            roster = self.book.roster(room)
            if room not in listed and roster is not None and self.book.user in roster.members:
                self._emit(ev.RoomWarning(room=room, message=(
                    f"the server no longer lists you in {room}, and no signed event says "
                    f"you left: /leave {room} forgets it here")))  # fmt: skip

    async def sync(self, room: str) -> None:
        """Fetch and apply ``room``'s events after the verified head."""
        while True:
            reply = await self._request(wire.RoomSync, room=room, after=self.book.head(room))
            assert isinstance(reply, wire.RoomEvents)
            for blob in reply.events:
                try:
                    self._show(self.book.apply(blob))
                except RoomEventError as e:
                    self._refused(room, e)
                    return
            if len(reply.events) < wire.MAX_ROOM_EVENTS:
                return

    def _show(self, applied: Applied | None) -> None:
        if applied is None:
            return
        self._save()
        e = applied.signed.event
        if e.action in (wire.LEAVE, wire.REMOVE) and e.target == self.book.user:
            self.book.forget(e.room)
            self._save()
        self._emit(applied.describe(self.book.user))

    def _refused(self, room: str, e: RoomEventError) -> None:
        self._emit(ev.RoomWarning(room=room, message=f"refused a room event: {e}"))

    # -- commands --------------------------------------------------------------------------
    async def join(self, room: str, is_open: bool = False) -> None:
        """Accept an invitation, join an open room, or create the room."""
        roster = self.book.roster(room)
        if roster is None or self.book.user not in roster.invited:
            try:
                await self.sync(room)
            except RemoteError as e:
                if e.code != wire.E_NOT_A_MEMBER:
                    raise
                self._invite_only(room)
                return
            roster = self.book.roster(room)
        if roster is not None and self.book.user in roster.members:
            self._emit(ev.Info(f"you are already in {room}", room=room))
        elif roster is None:
            await self._post(room, wire.CREATE, is_open=is_open)
        elif self.book.user in roster.invited or roster.open:
            await self._post(room, wire.JOIN)
        else:
            self._invite_only(room)

    def _invite_only(self, room: str) -> None:
        self._emit(ev.Error(f"{room} is invite-only: ask a member to /invite "
                            f"{self.book.user} {room}", code="not-invited", room=room,
                            command="/join"))  # fmt: skip

    async def invite(self, user: str, room: str) -> None:
        key = await self._peer_key(user)
        await self._post(room, wire.INVITE, user, key=key)

    async def remove(self, user: str, room: str) -> None:
        await self._post(room, wire.REMOVE, user)

    async def promote(self, user: str, room: str, admin: bool) -> None:
        await self._post(room, wire.PROMOTE if admin else wire.DEMOTE, user)

    async def leave(self, room: str) -> None:
        roster = self.book.roster(room)
        if roster is not None and self.book.user in roster.members:
            await self._post(room, wire.LEAVE)
        else:
            self.book.forget(room)
            self._save()
            self._emit(ev.Room(room=room, action=wire.LEAVE, message=f"forgot {room}"))

    async def members(self, room: str) -> None:
        """Show the verified roster, and how the relay's list differs."""
        roster = self.book.roster(room)
        if roster is None or self.book.user not in roster.members:
            self.not_in(room, "/members")
            return
        await self.server_members(room)
        self._emit(ev.Members(
            room=room, members=sorted(roster.members), admins=sorted(roster.admins),
            invited=sorted(roster.invited), owner=roster.owner, open=roster.open,
        ))  # fmt: skip

    def not_in(self, room: str, command: str) -> None:
        self._emit(ev.Error(f"you are not in {room}: /join {room}", code="not-a-member",
                            room=room, command=command))  # fmt: skip

    async def server_members(self, room: str) -> None:
        """Compare the relay's member list with the verified one; warn on a new difference."""
        server = self._server.get(room)
        if server is None:
            reply = await self._request(wire.RoomMembers, room=room)
            assert isinstance(reply, wire.Room)
            server = self._server[room] = set(reply.members)
        extra, missing = self.book.diff(room, server)
        if (extra, missing) == self._warned.get(room, ([], [])):
            return
        self._warned[room] = (extra, missing)
        if not extra and not missing:
            return
        parts = [f"extra {', '.join(extra)}"] if extra else []
        parts += [f"missing {', '.join(missing)}"] if missing else []
        self._emit(ev.RoomWarning(room=room, extra=extra, missing=missing, message=(
            f"the server's member list of {room} differs from the verified one "
            f"({'; '.join(parts)}): messages go to verified members only")))  # fmt: skip

    async def recipients(self, room: str) -> dict[str, bytes]:
        """Whom a message to ``room`` goes to: the members verified from signed events
        (with the key each was admitted with), never the relay's list, which is only
        compared with them (a ``warning`` names the extra and the missing users).

        :raises RoomEventError: we are not a verified member of ``room``.
        """
        if not self.book.is_member(room, self.book.user):
            raise RoomEventError(f"you are not in {room}: /join {room}")
        await self.server_members(room)
        return self.book.recipients(room)

    async def _post(
        self, room: str, action: str, target: str | None = None, *, key: bytes | None = None,
        is_open: bool = False,
    ) -> None:  # fmt: skip
        """Sign and post our event; after a ``conflict``, sync and try once more."""
        for attempt in (1, 2):
            try:
                signed = self.book.make(room, action, target, key=key, is_open=is_open)
            except RoomEventError as e:
                verb = {wire.CREATE: "join", wire.JOIN: "join"}.get(action, action)
                who = f"{target} " if target is not None else ""
                self._emit(ev.Error(str(e), code="not-permitted", room=room,
                                    command=f"/{verb} {who}{room}"))  # fmt: skip
                return
            try:
                await self._request(wire.RoomPost, room=room, event=signed.blob)
            except RemoteError as e:
                if e.code != wire.E_CONFLICT or attempt == 2:
                    raise
                await self.sync(room)
                continue
            self._show(self.book.apply(signed.blob))
            return
