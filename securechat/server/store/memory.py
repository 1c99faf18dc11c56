"""An in-memory :class:`IStore` with the same observable behaviour as the SQLite store.

It exists so that relay and protocol tests run synchronously: every method returns a
Deferred that has already fired, so a test can drive the relay without a reactor or a
thread pool. It is not durable and is never used by the real server. The shared contract
tests in ``tests/server/test_store.py`` run against both stores, which is what keeps the
two in step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from securechat.config import StoreSection
from securechat.errors import NoSuchUser, RoomConflict, StoreError, TooManyPrekeys, UserExists
from securechat.server.store.interface import (
    CONTACT_ACCEPTED,
    CONTACT_PENDING_IN,
    CONTACT_PENDING_OUT,
    ROLE_ADMIN,
    ROLE_USER,
    ROOM_MEMBER,
    ContactChange,
    IStore,
    NewEnvelope,
    PrekeyBundle,
    QueuedEnvelope,
    UserRecord,
)
from securechat.server.store.quota import QueueLimits, QueueUsage, UsageRows, wanted_of

_P = ParamSpec("_P")
_T = TypeVar("_T")


@dataclass
class _Keys:
    """One user's key material for one backend."""

    signed_prekey: bytes | None = None
    one_time: dict[int, bytes] = field(default_factory=dict)


def _default_clock() -> IReactorTime:
    """The global reactor, imported late so that importing this module installs nothing."""
    from twisted.internet import reactor

    return reactor


@implementer(IStore)
class MemoryStore:
    """:class:`IStore` kept in dictionaries; results are already-fired Deferreds.

    :param section: queue policy (``queue_limit``, ``queue_ttl``); ``path`` is ignored.
    :param clock: source of ``created`` and ``accepted_at`` timestamps.
    """

    def __init__(self, section: StoreSection | None = None, clock: IReactorTime | None = None):
        section = section or StoreSection()
        self.queue_ttl = section.queue_ttl
        self._usage = QueueUsage(QueueLimits.from_section(section))
        self._clock = clock if clock is not None else _default_clock()
        self._users: dict[str, UserRecord] = {}
        self._keys: dict[tuple[str, str], _Keys] = {}
        self._contacts: dict[str, dict[str, str]] = {}
        #: room -> user -> ``member`` or ``invited``; room -> signed events in order.
        self._rooms: dict[str, dict[str, str]] = {}
        self._room_events: dict[str, list[bytes]] = {}
        self._queues: dict[str, list[QueuedEnvelope]] = {}
        self._last_seq = 0
        #: Number of enqueue "transactions", mirroring :attr:`SQLiteStore.transactions`.
        self.transactions = 0

    @property
    def queue_limit(self) -> int:
        """IStore API: envelopes queued per recipient at most."""
        return self._usage.limits.queue_limit

    @property
    def limits(self) -> QueueLimits:
        """The queue quotas in force."""
        return self._usage.limits

    @limits.setter
    def limits(self, value: QueueLimits) -> None:
        self._usage.limits = value

    def _usage_rows(self, recipient: str) -> UsageRows:
        rows: dict[str, list[int]] = {}
        for e in self._queues.get(recipient, ()):
            entry = rows.setdefault(e.sender, [0, 0])
            entry[0] += 1
            entry[1] += len(e.payload)
        return [(sender, n, size) for sender, (n, size) in rows.items()]

    @staticmethod
    def _call(fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> Deferred[_T]:
        """Run ``fn`` now; errors become a failed Deferred, as they would from a pool."""
        return defer.maybeDeferred(fn, *args, **kwargs)

    def _need_user(self, name: str) -> UserRecord:
        user = self._users.get(name)
        if user is None:
            raise NoSuchUser(name)
        return user

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> Deferred[None]:
        """Nothing to open."""
        return defer.succeed(None)

    def stop(self) -> Deferred[None]:
        """Nothing to flush."""
        return defer.succeed(None)

    # -- users -----------------------------------------------------------------
    def add_user(
        self, name: str, role: str, password_hash: str | None, identity_key: bytes | None
    ) -> Deferred[UserRecord]:
        """IStore API."""
        return self._call(self._add_user, name, role, password_hash, identity_key)

    def _add_user(
        self, name: str, role: str, password_hash: str | None, identity_key: bytes | None
    ) -> UserRecord:
        if role not in (ROLE_ADMIN, ROLE_USER):
            raise StoreError(f"unknown role {role!r}")
        if name in self._users:
            raise UserExists(name)
        record = UserRecord(name, role, password_hash, identity_key, self._clock.seconds())
        self._users[name] = record
        return record

    def get_user(self, name: str) -> Deferred[UserRecord | None]:
        """IStore API."""
        return defer.succeed(self._users.get(name))

    def list_users(self) -> Deferred[list[UserRecord]]:
        """IStore API."""
        return defer.succeed([self._users[n] for n in sorted(self._users)])

    def remove_user(self, name: str) -> Deferred[bool]:
        """IStore API: envelopes the user *sent* stay queued for their recipients."""
        if self._users.pop(name, None) is None:
            return defer.succeed(False)
        for key in [k for k in self._keys if k[0] == name]:
            del self._keys[key]
        for peer in self._contacts.pop(name, {}):
            self._contacts.get(peer, {}).pop(name, None)
        for room in [r for r, roster in self._rooms.items() if name in roster]:
            del self._rooms[room][name]
            self._drop_room_if_empty(room)
        self._queues.pop(name, None)
        self._usage.forget(name)
        return defer.succeed(True)

    def set_identity_key(self, name: str, identity_key: bytes) -> Deferred[None]:
        """IStore API."""
        return self._call(self._set_identity_key, name, identity_key)

    def _set_identity_key(self, name: str, identity_key: bytes) -> None:
        user = self._need_user(name)
        self._users[name] = UserRecord(
            user.name, user.role, user.password_hash, identity_key, user.created
        )

    def set_password_hash(self, name: str, password_hash: str) -> Deferred[None]:
        """IStore API."""
        return self._call(self._set_password_hash, name, password_hash)

    def _set_password_hash(self, name: str, password_hash: str) -> None:
        user = self._need_user(name)
        self._users[name] = UserRecord(
            user.name, user.role, password_hash, user.identity_key, user.created
        )

    # -- prekeys ---------------------------------------------------------------
    def publish_prekeys(
        self,
        user: str,
        backend: str,
        signed_prekey: bytes | None,
        one_time_prekeys: list[tuple[int, bytes]],
        max_one_time: int | None = None,
    ) -> Deferred[int]:
        """IStore API: a one-time prekey id published again replaces the old blob."""
        return self._call(
            self._publish_prekeys, user, backend, signed_prekey, one_time_prekeys, max_one_time
        )

    def _publish_prekeys(
        self,
        user: str,
        backend: str,
        signed_prekey: bytes | None,
        one_time_prekeys: list[tuple[int, bytes]],
        max_one_time: int | None,
    ) -> int:
        self._need_user(user)
        keys = self._keys.setdefault((user, backend), _Keys())
        if max_one_time is not None:
            total = len(keys.one_time.keys() | {key_id for key_id, _ in one_time_prekeys})
            if total > max_one_time:
                raise TooManyPrekeys(user, backend, total)
        if signed_prekey is not None:
            keys.signed_prekey = signed_prekey
        keys.one_time.update(one_time_prekeys)
        return len(keys.one_time)

    def fetch_bundle(
        self, user: str, backend: str, take_one_time: bool = True
    ) -> Deferred[PrekeyBundle | None]:
        """IStore API: ``None`` without an identity key or a signed prekey for ``backend``."""
        record = self._users.get(user)
        keys = self._keys.get((user, backend))
        if record is None or record.identity_key is None or keys is None:
            return defer.succeed(None)
        if keys.signed_prekey is None:
            return defer.succeed(None)
        otk_id: int | None = None
        otk: bytes | None = None
        if keys.one_time and take_one_time:
            otk_id = min(keys.one_time)
            otk = keys.one_time.pop(otk_id)
        return defer.succeed(
            PrekeyBundle(user, backend, record.identity_key, keys.signed_prekey, otk_id, otk)
        )

    def count_one_time_prekeys(self, user: str, backend: str) -> Deferred[int]:
        """IStore API."""
        keys = self._keys.get((user, backend))
        return defer.succeed(len(keys.one_time) if keys else 0)

    # -- contacts --------------------------------------------------------------
    def request_contact(self, user: str, peer: str) -> Deferred[ContactChange]:
        """IStore API."""
        return self._call(self._request_contact, user, peer)

    def _request_contact(self, user: str, peer: str) -> ContactChange:
        self._check_pair(user, peer)
        state = self._contacts.get(user, {}).get(peer)
        if state == CONTACT_PENDING_IN:
            self._set_pair(user, peer, CONTACT_ACCEPTED, CONTACT_ACCEPTED)
            return ContactChange(CONTACT_ACCEPTED, True)
        if state is None:
            self._set_pair(user, peer, CONTACT_PENDING_OUT, CONTACT_PENDING_IN)
            return ContactChange(CONTACT_PENDING_OUT, True)
        return ContactChange(state, False)

    def accept_contact(self, user: str, peer: str) -> Deferred[bool]:
        """IStore API."""
        if self._contacts.get(user, {}).get(peer) != CONTACT_PENDING_IN:
            return defer.succeed(False)
        self._set_pair(user, peer, CONTACT_ACCEPTED, CONTACT_ACCEPTED)
        return defer.succeed(True)

    def remove_contact(self, user: str, peer: str) -> Deferred[bool]:
        """IStore API."""
        mine = self._contacts.get(user, {}).pop(peer, None)
        theirs = self._contacts.get(peer, {}).pop(user, None)
        return defer.succeed(mine is not None or theirs is not None)

    def add_contact(self, a: str, b: str) -> Deferred[None]:
        """IStore API."""
        return self._call(self._add_contact, a, b)

    def _add_contact(self, a: str, b: str) -> None:
        self._check_pair(a, b)
        self._set_pair(a, b, CONTACT_ACCEPTED, CONTACT_ACCEPTED)

    def list_contacts(self, user: str) -> Deferred[list[tuple[str, str]]]:
        """IStore API: ordered by peer name."""
        return defer.succeed(sorted(self._contacts.get(user, {}).items()))

    def are_contacts(self, a: str, b: str) -> Deferred[bool]:
        """IStore API."""
        return defer.succeed(self._contacts.get(a, {}).get(b) == CONTACT_ACCEPTED)

    def _check_pair(self, a: str, b: str) -> None:
        if a == b:
            raise StoreError("a user cannot be their own contact")
        self._need_user(a)
        self._need_user(b)

    def _set_pair(self, a: str, b: str, state_a: str, state_b: str) -> None:
        self._contacts.setdefault(a, {})[b] = state_a
        self._contacts.setdefault(b, {})[a] = state_b

    # -- rooms -----------------------------------------------------------------
    def post_room_event(
        self, room: str, seq: int, event: bytes, changes: list[tuple[str, str | None]]
    ) -> Deferred[None]:
        """IStore API."""
        return self._call(self._post_room_event, room, seq, event, changes)

    def _post_room_event(
        self, room: str, seq: int, event: bytes, changes: list[tuple[str, str | None]]
    ) -> None:
        events = self._room_events.get(room, [])
        if len(events) != seq - 1:
            raise RoomConflict(room)
        for user, state in changes:
            if state is not None:
                self._need_user(user)
        self._room_events[room] = [*events, event]
        roster = self._rooms.setdefault(room, {})
        for user, state in changes:
            if state is None:
                roster.pop(user, None)
            else:
                roster[user] = state
        self._drop_room_if_empty(room)

    def _drop_room_if_empty(self, room: str) -> None:
        if ROOM_MEMBER not in self._rooms.get(room, {}).values():
            self._rooms.pop(room, None)
            self._room_events.pop(room, None)

    def room_events(self, room: str, after: int, limit: int) -> Deferred[list[tuple[int, bytes]]]:
        """IStore API."""
        events = self._room_events.get(room, [])[after : after + limit]
        return defer.succeed([(after + 1 + i, e) for i, e in enumerate(events)])

    def room_roster(self, room: str) -> Deferred[list[tuple[str, str]]]:
        """IStore API."""
        return defer.succeed(sorted(self._rooms.get(room, {}).items()))

    def room_members(self, room: str) -> Deferred[list[str]]:
        """IStore API."""
        roster = self._rooms.get(room, {})
        return defer.succeed(sorted(u for u, st in roster.items() if st == ROOM_MEMBER))

    def user_rooms(self, user: str) -> Deferred[list[str]]:
        """IStore API."""
        rooms = self._rooms.items()
        return defer.succeed(sorted(r for r, m in rooms if m.get(user) == ROOM_MEMBER))

    def user_room_states(self, user: str) -> Deferred[list[tuple[str, str, int]]]:
        """IStore API."""
        return defer.succeed(sorted(
            (r, m[user], len(self._room_events.get(r, ()))) for r, m in self._rooms.items()
            if user in m
        ))  # fmt: skip

    # -- offline queue ---------------------------------------------------------
    def enqueue(self, envelopes: list[NewEnvelope]) -> Deferred[list[QueuedEnvelope]]:
        """IStore API: all of ``envelopes`` are stored, or none (``QueueFull``, ``NoSuchUser``)."""
        return self._call(self._enqueue, envelopes)

    def _enqueue(self, envelopes: list[NewEnvelope]) -> list[QueuedEnvelope]:
        wanted = wanted_of((e.recipient, e.sender, len(e.payload), e.stranger) for e in envelopes)
        for recipient, _, _ in wanted:
            self._need_user(recipient)
        error = self._usage.admit(wanted, self._usage_rows)
        if error is not None:
            raise error
        now = self._clock.seconds()
        stored = []
        for env in envelopes:
            self._last_seq += 1
            queued = QueuedEnvelope(
                self._last_seq,
                env.recipient,
                env.sender,
                env.backend,
                env.message_id,
                env.room,
                now,
                env.payload,
            )
            self._queues.setdefault(env.recipient, []).append(queued)
            stored.append(queued)
        self.transactions += 1
        return stored

    def pending(self, recipient: str, after_seq: int, limit: int) -> Deferred[list[QueuedEnvelope]]:
        """IStore API: envelopes past the TTL are left out."""
        queue = self._queues.get(recipient, [])
        cutoff = self._clock.seconds() - self.queue_ttl
        fresh = [e for e in queue if e.seq > after_seq and e.accepted_at >= cutoff]
        return defer.succeed(fresh[: max(limit, 0)])

    def acknowledge(self, recipient: str, up_to_seq: int) -> Deferred[int]:
        """IStore API."""
        queue = self._queues.get(recipient, [])
        kept = [e for e in queue if e.seq > up_to_seq]
        removed = len(queue) - len(kept)
        if kept:
            self._queues[recipient] = kept
        else:
            self._queues.pop(recipient, None)
        self._usage.forget(recipient)
        return defer.succeed(removed)

    def acknowledge_later(self, recipient: str, up_to_seq: int) -> None:
        """IStore API: applied at once (nothing here is durable anyway), which meets the
        contract: acknowledged envelopes are gone from :meth:`pending` from now on."""
        queue = self._queues.get(recipient)
        if queue and queue[0].seq <= up_to_seq:
            self.acknowledge(recipient, up_to_seq)

    def queue_length(self, recipient: str) -> Deferred[int]:
        """IStore API."""
        return defer.succeed(len(self._queues.get(recipient, ())))

    def expire(self, now: float) -> Deferred[int]:
        """IStore API: drops envelopes accepted more than ``queue_ttl`` seconds before ``now``."""
        cutoff = now - self.queue_ttl
        removed = 0
        for recipient in list(self._queues):
            queue = self._queues[recipient]
            kept = [e for e in queue if e.accepted_at >= cutoff]
            removed += len(queue) - len(kept)
            if kept:
                self._queues[recipient] = kept
            else:
                del self._queues[recipient]
        self._usage.clear()
        return defer.succeed(removed)

    def ping(self) -> Deferred[None]:
        """IStore API: memory always answers."""
        return defer.succeed(None)

    def queue_stats(self) -> Deferred[tuple[int, int, float | None]]:
        """IStore API."""
        envelopes = [e for queue in self._queues.values() for e in queue]
        oldest = min((e.accepted_at for e in envelopes), default=None)
        return defer.succeed((len(envelopes), sum(len(e.payload) for e in envelopes), oldest))
