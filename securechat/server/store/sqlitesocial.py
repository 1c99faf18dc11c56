"""The SQLite store's one-query operations on users, contacts and rooms.

Split from :mod:`securechat.server.store.sqlite` to keep modules small: each method runs
one function of :mod:`securechat.server.store.queries` on the store's database thread
through :meth:`SQLiteStore.run`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from securechat.server.store import queries
from securechat.server.store.interface import ContactChange, UserRecord

_P = ParamSpec("_P")
_T = TypeVar("_T")


class SocialQueries:
    """Mixin of :class:`SQLiteStore`: users, contacts and rooms (IStore API)."""

    _clock: IReactorTime

    def run(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, _P], _T],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> Deferred[_T]:
        raise NotImplementedError

    # -- users -----------------------------------------------------------------
    def add_user(
        self, name: str, role: str, password_hash: str | None, identity_key: bytes | None
    ) -> Deferred[UserRecord]:
        """IStore API."""
        now = self._clock.seconds()
        return self.run(queries.add_user, name, role, password_hash, identity_key, now)

    def get_user(self, name: str) -> Deferred[UserRecord | None]:
        """IStore API."""
        return self.run(queries.get_user, name)

    def list_users(self) -> Deferred[list[UserRecord]]:
        """IStore API."""
        return self.run(queries.list_users)

    def set_identity_key(self, name: str, identity_key: bytes) -> Deferred[None]:
        """IStore API."""
        return self.run(queries.set_identity_key, name, identity_key)

    # -- contacts --------------------------------------------------------------
    def request_contact(self, user: str, peer: str) -> Deferred[ContactChange]:
        """IStore API."""
        return self.run(queries.request_contact, user, peer)

    def accept_contact(self, user: str, peer: str) -> Deferred[bool]:
        """IStore API."""
        return self.run(queries.accept_contact, user, peer)

    def remove_contact(self, user: str, peer: str) -> Deferred[bool]:
        """IStore API."""
        return self.run(queries.remove_contact, user, peer)

    def add_contact(self, a: str, b: str) -> Deferred[None]:
        """IStore API."""
        return self.run(queries.add_contact, a, b)

    def list_contacts(self, user: str) -> Deferred[list[tuple[str, str]]]:
        """IStore API."""
        return self.run(queries.list_contacts, user)

    def are_contacts(self, a: str, b: str) -> Deferred[bool]:
        """IStore API."""
        return self.run(queries.are_contacts, a, b)

    # -- rooms -----------------------------------------------------------------
    def join_room(self, room: str, user: str) -> Deferred[None]:
        """IStore API."""
        return self.run(queries.join_room, room, user, self._clock.seconds())

    def leave_room(self, room: str, user: str) -> Deferred[bool]:
        """IStore API."""
        return self.run(queries.leave_room, room, user)

    def room_members(self, room: str) -> Deferred[list[str]]:
        """IStore API."""
        return self.run(queries.room_members, room)

    def user_rooms(self, user: str) -> Deferred[list[str]]:
        """IStore API."""
        return self.run(queries.user_rooms, user)
