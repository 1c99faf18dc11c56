"""The SQLite store's one-query operations: users, prekeys, contacts, rooms, status.

Split from :mod:`securechat.server.store.sqlite` to keep modules small: each method runs
one function of :mod:`securechat.server.store.queries` on the store's database thread
through :meth:`SQLiteStore.run`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from securechat.server.store import queries
from securechat.server.store.interface import ContactChange, PrekeyBundle, UserRecord
from securechat.server.store.quota import QueueLimits, QueueUsage

_P = ParamSpec("_P")
_T = TypeVar("_T")


class SocialQueries:
    """Mixin of :class:`SQLiteStore`: users, prekeys, contacts, rooms, status (IStore API)."""

    _clock: IReactorTime
    _usage: QueueUsage

    @property
    def queue_limit(self) -> int:
        """IStore API: envelopes queued per recipient at most."""
        return self._usage.limits.queue_limit

    @queue_limit.setter
    def queue_limit(self, value: int) -> None:
        self._usage.limits = replace(self._usage.limits, queue_limit=value)

    @property
    def limits(self) -> QueueLimits:
        """The queue quotas in force (tests and benchmarks may replace them)."""
        return self._usage.limits

    @limits.setter
    def limits(self, value: QueueLimits) -> None:
        self._usage.limits = value

    if TYPE_CHECKING:
        # Declared for the type checker only: the method is SQLiteStore.run.
        def run(
            self,
            fn: Callable[Concatenate[sqlite3.Connection, _P], _T],
            *args: _P.args,
            **kwargs: _P.kwargs,
        ) -> Deferred[_T]: ...

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

    def set_password_hash(self, name: str, password_hash: str) -> Deferred[None]:
        """IStore API."""
        return self.run(queries.set_password_hash, name, password_hash)

    # -- prekeys ---------------------------------------------------------------
    def publish_prekeys(
        self,
        user: str,
        backend: str,
        signed_prekey: bytes | None,
        one_time_prekeys: list[tuple[int, bytes]],
        max_one_time: int | None = None,
    ) -> Deferred[int]:
        """IStore API."""
        return self.run(
            queries.publish_prekeys, user, backend, signed_prekey, list(one_time_prekeys),
            max_one_time,
        )  # fmt: skip

    def fetch_bundle(
        self, user: str, backend: str, take_one_time: bool = True
    ) -> Deferred[PrekeyBundle | None]:
        """IStore API."""
        return self.run(queries.fetch_bundle, user, backend, take_one_time)

    def count_one_time_prekeys(self, user: str, backend: str) -> Deferred[int]:
        """IStore API."""
        return self.run(queries.count_one_time_prekeys, user, backend)

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
    def post_room_event(
        self, room: str, seq: int, event: bytes, changes: list[tuple[str, str | None]]
    ) -> Deferred[None]:
        """IStore API."""
        now = self._clock.seconds()
        return self.run(queries.post_room_event, room, seq, event, changes, now)

    def room_events(self, room: str, after: int, limit: int) -> Deferred[list[tuple[int, bytes]]]:
        """IStore API."""
        return self.run(queries.room_events, room, after, limit)

    def room_roster(self, room: str) -> Deferred[list[tuple[str, str]]]:
        """IStore API."""
        return self.run(queries.room_roster, room)

    def room_members(self, room: str) -> Deferred[list[str]]:
        """IStore API."""
        return self.run(queries.room_members, room)

    def user_rooms(self, user: str) -> Deferred[list[str]]:
        """IStore API."""
        return self.run(queries.user_rooms, user)

    def user_room_states(self, user: str) -> Deferred[list[tuple[str, str, int]]]:
        """IStore API."""
        return self.run(queries.user_room_states, user)

    # -- status ----------------------------------------------------------------
    def ping(self) -> Deferred[None]:
        """IStore API: one read on the store thread (behind any running transaction)."""
        return self.run(queries.ping).addCallback(lambda _: None)

    def queue_stats(self) -> Deferred[tuple[int, int, float | None]]:
        """IStore API."""
        return self.run(queries.queue_stats)
