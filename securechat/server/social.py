# -*- test-case-name: tests.server.test_login_races -*-
"""Reading a user's contacts and rooms for a new session, consistently.

Split from :mod:`securechat.server.relay` to keep modules small. A login reads the
user's contacts and rooms across several store round trips before the relay registers
the session; a contact removed (or accepted) meanwhile only updates *registered*
sessions, so the new session could start with a stale contact set and keep messaging a
removed contact. Every change to a user's relations bumps that user's counter here
(:meth:`ChangeCounter.bump`); a login snapshots it before reading and reads again if it
moved. Counters exist only while a login of that user is in flight, so the table stays
as small as the number of logins in progress.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection

from securechat.errors import StoreError
from securechat.server.store.interface import IStore

#: Reads of one login before it gives up: a plain :class:`StoreError`, which the client
#: gets as ``unavailable`` with a ``retry_after``.
MAX_READS = 5


class ChangeCounter:
    """Per-user change counters, kept only for users someone is watching."""

    def __init__(self) -> None:
        #: user -> [watchers, changes seen while watched]
        self._counts: dict[str, list[int]] = {}

    def watch(self, user: str) -> None:
        entry = self._counts.setdefault(user, [0, 0])
        entry[0] += 1

    def unwatch(self, user: str) -> None:
        entry = self._counts[user]
        entry[0] -= 1
        if entry[0] == 0:
            del self._counts[user]

    def count(self, user: str) -> int:
        entry = self._counts.get(user)
        return entry[1] if entry is not None else 0

    def bump(self, *users: str) -> None:
        """``users``' contacts or rooms changed (cheap when nobody watches them)."""
        for user in users:
            entry = self._counts.get(user)
            if entry is not None:
                entry[1] += 1


async def read_social(
    store: IStore,
    room_members: Callable[[str], Awaitable[Collection[str]]],
    changes: ChangeCounter,
    user: str,
) -> tuple[list[tuple[str, str]], list[str]]:
    """``user``'s (peer, state) contacts and rooms, read again while they change.

    The caller must register the session in the same reactor turn as this returns (no
    await in between), so that a change made after the last read finds the session.
    Room members are loaded into the relay's cache on the way (presence reads them).
    """
    changes.watch(user)
    try:
        for _ in range(MAX_READS):
            before = changes.count(user)
            contacts = await store.list_contacts(user)
            rooms = await store.user_rooms(user)
            for room in rooms:
                await room_members(room)
            if changes.count(user) == before:
                return contacts, rooms
    finally:
        changes.unwatch(user)
    raise StoreError(f"the contacts or rooms of {user} kept changing during login")
