"""The relay's durable store: SQLite through a one-connection adbapi pool, with group commit.

All database work runs on the pool's single thread, so the reactor never waits on disk
and SQLite sees one writer from this process. ``enqueue`` is the hot path: with
``synchronous = full`` every commit costs an fsync, so instead of one transaction per
``Send`` the store collects the calls that arrive while a transaction is in flight and
writes them together in the next one (group commit). Each caller's Deferred fires only
after the transaction holding its envelopes has committed: accepted means durable.

Acknowledgements are coalesced the same way but lazily (:meth:`SQLiteStore.acknowledge_later`):
the store keeps the highest ``up_to`` per recipient and applies the DELETEs inside the next
group-commit transaction, or after :data:`ACK_DELAY` when no envelope arrives. An ack is
therefore not durable when it is accepted: if the process dies first, the envelopes are
delivered again at the next login, and clients drop them as duplicates (they dedupe on
``mid``). Nothing is ever lost, since an envelope is deleted only after its recipient's ack.
Within the process, :meth:`SQLiteStore.pending` already skips acknowledged envelopes.

The SQL itself lives in :mod:`securechat.server.store.queries` and the file format in
:mod:`securechat.server.store.schema`, both shared with ``securechat-admin``.
"""

from __future__ import annotations

import os
import sqlite3
from collections import deque
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar, cast

from twisted.enterprise import adbapi
from twisted.internet import defer, threads
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from securechat.config import StoreSection
from securechat.errors import StoreError
from securechat.server.metrics import NULL_METRICS, IMetrics
from securechat.server.store import lockfile, queries, schema
from securechat.server.store.interface import (
    IStore,
    NewEnvelope,
    PrekeyBundle,
    QueuedEnvelope,
    UserRecord,
)
from securechat.server.store.memory import _default_clock

_P = ParamSpec("_P")
_T = TypeVar("_T")

_Waiter = tuple[list[NewEnvelope], "Deferred[list[QueuedEnvelope]]"]

#: Seconds a coalesced acknowledgement waits for a group commit to ride in before it
#: gets a transaction of its own.
ACK_DELAY = 0.05


def _open_connection(conn: sqlite3.Connection, synchronous: str, busy_timeout: float) -> None:
    """adbapi ``cp_openfun``: configure each new connection, closing it if that fails."""
    try:
        schema.configure(conn, synchronous, busy_timeout)
    except sqlite3.DatabaseError as e:
        conn.close()
        raise StoreError(f"not a usable securechat database ({e})") from None
    except BaseException:
        conn.close()
        raise


def _checkpoint(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def _as_store_error(failure: Failure) -> Failure:
    """Turn a database-level exception into the ``StoreError`` the relay handles."""
    if isinstance(failure.value, sqlite3.Error):
        raise StoreError(f"database error: {failure.value}") from None
    return failure


@implementer(IStore)
class SQLiteStore:
    """:class:`IStore` on an SQLite file in WAL mode.

    :param section: the ``[store]`` config (path, queue policy, synchronous, max_batch).
        ``path`` may be ``":memory:"`` in tests: the pool keeps its one connection.
    :param clock: source of ``created`` and ``accepted_at`` timestamps.
    :param busy_timeout: seconds to wait for another process's write lock (the admin tool)
        before an operation fails with ``StoreError``.
    :param schema_files: where the schema scripts come from (tests substitute their own).
    """

    log = Logger()
    #: Group commits, acknowledged envelopes and errors are counted here (off by default).
    metrics: IMetrics = NULL_METRICS

    def __init__(
        self,
        section: StoreSection,
        clock: IReactorTime | None = None,
        *,
        busy_timeout: float = schema.DEFAULT_BUSY_TIMEOUT,
        schema_files: schema.SchemaFiles = schema.PACKAGED,
    ) -> None:
        self.queue_limit = section.queue_limit
        self.queue_ttl = section.queue_ttl
        self._path = str(section.path)
        self._max_batch = section.max_batch
        self._clock = clock if clock is not None else _default_clock()
        self._schema_files = schema_files
        self._pool = adbapi.ConnectionPool(  # type: ignore[no-untyped-call]
            "sqlite3",
            self._path,
            timeout=busy_timeout,
            isolation_level=None,
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_noisy=False,
            cp_openfun=partial(
                _open_connection, synchronous=section.synchronous, busy_timeout=busy_timeout
            ),
        )
        self._waiting: deque[_Waiter] = deque()
        #: recipient -> highest acknowledged seq not yet in a transaction, and the ones
        #: in the transaction in flight (both filter :meth:`pending`).
        self._acks: dict[str, int] = {}
        self._acks_applying: dict[str, int] = {}
        self._ack_call: IDelayedCall | None = None
        self._flushing = False
        self._busy = 0
        self._idle: list[Deferred[None]] = []
        self._stopped = False
        self._opened = False
        self._lock_fd: int | None = None
        #: Committed enqueue transactions: with :attr:`envelopes_committed`, the batching
        #: factor of the group commit (tests and ``bench/store.py`` read it).
        self.transactions = 0
        self.envelopes_committed = 0
        #: Coalesced acknowledgements applied, and transactions that carried only those.
        self.acks_applied = 0
        self.ack_transactions = 0

    # -- plumbing --------------------------------------------------------------
    def run(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, _P], _T],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> Deferred[_T]:
        """Run ``fn(connection, ...)`` on the store's database thread.

        Every store operation goes through here, so :meth:`stop` can wait for all of them,
        and any ``sqlite3.Error`` (locked, disk full, I/O) reaches the caller as
        ``StoreError``. Also useful for maintenance and tests that need the connection.
        """
        if self._stopped:
            return defer.fail(StoreError("the store is stopped"))
        self._busy += 1
        d = cast(
            "Deferred[_T]",
            self._pool.runWithConnection(fn, *args, **kwargs),  # type: ignore[no-untyped-call]
        )
        d.addErrback(self._store_error)
        d.addBoth(self._done)
        return d

    def _store_error(self, failure: Failure) -> Failure:
        if isinstance(failure.value, sqlite3.Error) or type(failure.value) is StoreError:
            self.metrics.store_error()
        return _as_store_error(failure)

    def _done(self, result: _T) -> _T:
        self._busy -= 1
        self._maybe_idle()
        return result

    def _maybe_idle(self) -> None:
        if self._busy == 0 and not self._waiting and not self._flushing:
            if self._idle and self._acks:
                self._flush()  # stopping: acknowledgements are written before closing
                return
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> Deferred[None]:
        """IStore API: create the file (0600, in a 0700 directory) or migrate it."""
        if self._path == schema.MEMORY:
            prepared: Deferred[bool] = defer.succeed(False)
        else:
            from twisted.internet import reactor

            prepared = threads.deferToThreadPool(
                reactor,  # type: ignore[arg-type]
                self._pool.threadpool,
                self._lock_and_prepare,
                Path(self._path),
            )

        def migrate(_: bool) -> Deferred[None]:
            d = self.run(schema.migrate, self._path, self._schema_files)
            return d.addCallback(self._log_opened)

        return prepared.addCallback(migrate)

    def _lock_and_prepare(self, path: Path) -> bool:
        """Hold the database's shared lock (``securechat-admin restore`` waits for it to
        go), then create or check the file."""
        if self._lock_fd is None:
            self._lock_fd = lockfile.hold_shared(path)
        return schema.prepare_file(path, self._schema_files)

    def _log_opened(self, old: int) -> None:
        self._opened = True
        self.log.info(
            "store {path} at schema version {version} (was {old})",
            path=self._path,
            version=self._schema_files.latest,
            old=old,
        )

    def stop(self) -> Deferred[None]:
        """IStore API: wait for queued and running operations, then close the pool.

        The WAL is checkpointed on the pool thread first: closing the last connection
        otherwise does that disk work on the reactor thread, where adbapi closes it.
        """
        idle: Deferred[None] = Deferred()
        if self._busy or self._waiting or self._flushing or self._acks:
            self._idle.append(idle)
            self._maybe_idle()
        else:
            idle.callback(None)
        if self._opened and self._path != schema.MEMORY:
            idle.addCallback(lambda _: self.run(_checkpoint))
            idle.addErrback(self._checkpoint_failed)
        return idle.addCallback(lambda _: self._close())

    def _checkpoint_failed(self, failure: Failure) -> None:
        # Nothing is lost: SQLite replays the WAL on the next open.
        self.log.warn("could not checkpoint {path}: {error}", path=self._path, error=failure.value)

    def _close(self) -> None:
        if self._ack_call is not None and self._ack_call.active():
            self._ack_call.cancel()
        self._ack_call = None
        if not self._stopped:
            self._stopped = True
            self._opened = False
            self._pool.close()  # type: ignore[no-untyped-call]
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

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

    def remove_user(self, name: str) -> Deferred[bool]:
        """IStore API."""
        return self.run(queries.remove_user, name)

    def set_identity_key(self, name: str, identity_key: bytes) -> Deferred[None]:
        """IStore API."""
        return self.run(queries.set_identity_key, name, identity_key)

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

    def fetch_bundle(self, user: str, backend: str) -> Deferred[PrekeyBundle | None]:
        """IStore API."""
        return self.run(queries.fetch_bundle, user, backend)

    def count_one_time_prekeys(self, user: str, backend: str) -> Deferred[int]:
        """IStore API."""
        return self.run(queries.count_one_time_prekeys, user, backend)

    # -- contacts --------------------------------------------------------------
    def request_contact(self, user: str, peer: str) -> Deferred[str]:
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

    # -- offline queue ---------------------------------------------------------
    def enqueue(self, envelopes: list[NewEnvelope]) -> Deferred[list[QueuedEnvelope]]:
        """IStore API: joins the next group-commit transaction.

        If no transaction is in flight one starts at once, so a lone sender pays one
        commit of latency and no timer; under load, everything that arrived during a
        commit goes into the next (at most ``max_batch`` envelopes, whole calls only).
        """
        if self._stopped:
            return defer.fail(StoreError("the store is stopped"))
        if not envelopes:
            return defer.succeed([])
        d: Deferred[list[QueuedEnvelope]] = Deferred()
        self._waiting.append((list(envelopes), d))
        if not self._flushing:
            self._flush()
        return d

    def _flush(self) -> None:
        """Start one transaction with as many waiting calls as fit in ``max_batch``."""
        batch: list[_Waiter] = []
        size = 0
        while self._waiting and (not batch or size + len(self._waiting[0][0]) <= self._max_batch):
            waiter = self._waiting.popleft()
            batch.append(waiter)
            size += len(waiter[0])
        self._flushing = True
        if self._ack_call is not None:
            if self._ack_call.active():
                self._ack_call.cancel()
            self._ack_call = None
        self._acks_applying, self._acks = self._acks, {}
        now = self._clock.seconds()
        d = self.run(
            queries.enqueue_batch_counting_acks,
            [envelopes for envelopes, _ in batch],
            now,
            self.queue_limit,
            list(self._acks_applying.items()),
        )
        d.addBoth(self._flushed, [waiter for _, waiter in batch], size, now)

    def _flushed(
        self,
        done: tuple[list[list[QueuedEnvelope] | StoreError], int] | Failure,
        waiters: list[Deferred[list[QueuedEnvelope]]],
        size: int,
        started: float,
    ) -> None:
        """Fire each caller of a finished transaction, then start the next one.

        Callers are fired while ``_flushing`` is still set, so envelopes they enqueue in
        their callbacks wait for the next batch instead of each starting a transaction.
        """
        applied, self._acks_applying = self._acks_applying, {}
        if isinstance(done, Failure):
            result: list[list[QueuedEnvelope] | StoreError] | Failure = done
        else:
            result, acked = done
            self.metrics.acked(acked)
            if waiters:
                self.metrics.group_commit(size, self._clock.seconds() - started)
        if isinstance(result, Failure):
            self.log.warn(
                "group commit of {calls} calls failed: {error}",
                calls=len(waiters),
                error=result.value,
            )
            for recipient, seq in applied.items():  # try those again with the next one
                self._note_ack(recipient, seq)
            for waiter in waiters:
                waiter.errback(result.value)
        else:
            self.acks_applied += len(applied)
            if waiters:
                self.transactions += 1
            else:
                self.ack_transactions += 1
            for waiter, outcome in zip(waiters, result, strict=True):
                if isinstance(outcome, StoreError):
                    waiter.errback(outcome)
                else:
                    self.envelopes_committed += len(outcome)
                    waiter.callback(outcome)
        self._flushing = False
        if self._waiting:
            self._flush()
        else:
            if self._acks and not self._stopped:
                self._schedule_acks()
            self._maybe_idle()

    def _acked(self, recipient: str) -> int:
        """The highest seq ``recipient`` acknowledged that may not be deleted yet."""
        return max(self._acks.get(recipient, 0), self._acks_applying.get(recipient, 0))

    def pending(self, recipient: str, after_seq: int, limit: int) -> Deferred[list[QueuedEnvelope]]:
        """IStore API: acknowledged envelopes are skipped even before they are deleted."""
        after = max(after_seq, self._acked(recipient))
        return self.run(queries.pending, recipient, after, limit)

    def acknowledge_later(self, recipient: str, up_to_seq: int) -> None:
        """IStore API: coalesced into the next group commit (see the module docstring)."""
        if self._stopped:
            return
        if self._note_ack(recipient, up_to_seq) and not self._flushing:
            self._schedule_acks()

    def _note_ack(self, recipient: str, up_to_seq: int) -> bool:
        if up_to_seq <= self._acks.get(recipient, 0):
            return False
        self._acks[recipient] = up_to_seq
        return True

    def _schedule_acks(self) -> None:
        if self._ack_call is None:
            self._ack_call = self._clock.callLater(ACK_DELAY, self._ack_timer)

    def _ack_timer(self) -> None:
        self._ack_call = None
        if self._acks and not self._flushing and not self._stopped:
            self._flush()

    def acknowledge(self, recipient: str, up_to_seq: int) -> Deferred[int]:
        """IStore API."""
        return self.run(queries.acknowledge, recipient, up_to_seq)

    def queue_length(self, recipient: str) -> Deferred[int]:
        """IStore API: acknowledged envelopes do not count, deleted yet or not."""
        return self.run(queries.queue_length, recipient, self._acked(recipient))

    def expire(self, now: float) -> Deferred[int]:
        """IStore API: drops envelopes accepted more than ``queue_ttl`` seconds before ``now``."""
        return self.run(queries.expire, now - self.queue_ttl)

    def ping(self) -> Deferred[None]:
        """IStore API: one read on the store thread (behind any running transaction)."""
        return self.run(queries.ping).addCallback(lambda _: None)

    def queue_stats(self) -> Deferred[tuple[int, int, float | None]]:
        """IStore API."""
        return self.run(queries.queue_stats)
