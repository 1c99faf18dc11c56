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
from securechat.server.loglimit import RepeatLimiter
from securechat.server.metrics import NULL_METRICS, IMetrics
from securechat.server.store import lockfile, queries, queuesql, schema
from securechat.server.store.acks import PendingAcks
from securechat.server.store.diskspace import DiskSpace
from securechat.server.store.interface import (
    IStore,
    NewEnvelope,
    QueuedEnvelope,
)
from securechat.server.store.memory import _default_clock
from securechat.server.store.quota import QueueLimits, QueueUsage
from securechat.server.store.sqlitesocial import SocialQueries

_P = ParamSpec("_P")
_T = TypeVar("_T")

_Waiter = tuple[list[NewEnvelope], "Deferred[list[QueuedEnvelope]]"]

#: Seconds a coalesced acknowledgement waits for a group commit to ride in before it
#: gets a transaction of its own.
ACK_DELAY = 0.05
#: Seconds :meth:`SQLiteStore.stop` waits for work in flight before it interrupts the
#: database and refuses what is still waiting (never accepted, so nothing is lost); a
#: stop must finish well within the 5 s an init system gives before SIGKILL.
STOP_GRACE = 2.0


def _open_connection(
    conn: sqlite3.Connection,
    synchronous: str,
    busy_timeout: float,
    opened: list[sqlite3.Connection],
) -> None:
    """adbapi ``cp_openfun``: configure each new connection, closing it if that fails."""
    try:
        schema.configure(conn, synchronous, busy_timeout)
        opened[:] = [conn]  # the one connection, for interrupt() at stop
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
class SQLiteStore(SocialQueries):
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
        self.queue_ttl = section.queue_ttl
        self._usage = QueueUsage(QueueLimits.from_section(section))
        self._path = str(section.path)
        self.space = (
            None
            if self._path == schema.MEMORY
            else DiskSpace(str(Path(self._path).parent), section.min_free_bytes)
        )
        self._conn: list[sqlite3.Connection] = []
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
                _open_connection, synchronous=section.synchronous, busy_timeout=busy_timeout,
                opened=self._conn,
            ),
        )  # fmt: skip
        self._waiting: deque[_Waiter] = deque()
        #: Acknowledgements not yet written (they also filter :meth:`pending`).
        self._acks = PendingAcks()
        self._ack_call: IDelayedCall | None = None
        self._flushing = False
        self._busy = 0
        self._idle: list[Deferred[None]] = []
        self._stopping = False
        self._final_acks_tried = False
        self._grace_call: IDelayedCall | None = None
        self._grace_spent = False
        self._stopped = False
        self._opened = False
        self._lock_fd: int | None = None
        self._log_limit = RepeatLimiter(self._clock.seconds)
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
            if self._idle and self._acks and not self._final_acks_tried:
                # Stopping: acknowledgements are written before closing, in one last try
                # (a store that keeps failing must not keep the process from exiting).
                self._final_acks_tried = True
                self._flush(with_acks=True)
                return
            if self._idle and self._acks:
                n = self._acks.give_up()
                self.log.warn(
                    "{n} acknowledgements could not be written before stopping; those "
                    "envelopes will be delivered again (clients drop duplicates)", n=n
                )  # fmt: skip
            idle, self._idle = self._idle, []
            if self._grace_call is not None and self._grace_call.active():
                self._grace_call.cancel()
            self._grace_call = None
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

        From now on new envelopes are refused (not accepted, so the sender keeps them);
        those already waiting get their commit. Acknowledgements get one last try. If the
        work in flight is not done within :data:`STOP_GRACE` seconds (a database locked
        by another process, a very slow disk), the running statement is interrupted and
        what still waits is refused, so a stop always ends. The WAL is checkpointed on
        the pool thread first: closing the last connection otherwise does that disk work
        on the reactor thread, where adbapi closes it.
        """
        self._stopping = True
        if self._ack_call is not None and self._ack_call.active():
            self._ack_call.cancel()
        self._ack_call = None
        idle: Deferred[None] = Deferred()
        if self._busy or self._waiting or self._flushing or self._acks:
            self._idle.append(idle)
            if self._grace_call is None:
                self._grace_call = self._clock.callLater(STOP_GRACE, self._grace_over)
            self._maybe_idle()
        else:
            idle.callback(None)
        if self._opened and self._path != schema.MEMORY:
            idle.addCallback(self._final_checkpoint)
            idle.addErrback(self._checkpoint_failed)
        return idle.addCallback(lambda _: self._close())

    def _final_checkpoint(self, _: None) -> Deferred[None] | None:
        if self._grace_spent:  # the database hung once already: no more waiting
            return None
        return self.run(_checkpoint)

    def _grace_over(self) -> None:
        """A stop waited long enough: interrupt the database and refuse what waits."""
        self._grace_call = None
        self._grace_spent = True
        waiting, self._waiting = list(self._waiting), deque()
        self.log.warn(
            "stopping: interrupting the database ({n} calls refused, never accepted)",
            n=len(waiting),
        )
        for conn in self._conn:
            conn.interrupt()  # thread-safe; the running statement fails with "interrupted"
        for _, d in waiting:
            d.errback(StoreError("the store is stopping"))
        self._final_acks_tried = True
        self._maybe_idle()

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

    # -- users (the rest is in SocialQueries) ---------------------------------
    def remove_user(self, name: str) -> Deferred[bool]:
        """IStore API."""
        return self.run(self._remove_user_now, name)

    def _remove_user_now(self, conn: sqlite3.Connection, name: str) -> bool:
        self._usage.forget(name)
        return queries.remove_user(conn, name)

    # -- offline queue ---------------------------------------------------------
    def enqueue(self, envelopes: list[NewEnvelope]) -> Deferred[list[QueuedEnvelope]]:
        """IStore API: joins the next group-commit transaction.

        If no transaction is in flight one starts at once, so a lone sender pays one
        commit of latency and no timer; under load, everything that arrived during a
        commit goes into the next (at most ``max_batch`` envelopes, whole calls only).
        """
        if self._stopped or self._stopping:
            return defer.fail(StoreError("the store is stopping"))
        if not envelopes:
            return defer.succeed([])
        d: Deferred[list[QueuedEnvelope]] = Deferred()
        self._waiting.append((list(envelopes), d))
        if not self._flushing:
            self._flush()
        return d

    def _flush(self, with_acks: bool | None = None) -> None:
        """Start one transaction with as many waiting calls as fit in ``max_batch``.

        Acknowledgements ride along, unless they failed last time (``with_acks`` None):
        then only their back-off timer takes them (:mod:`securechat.server.store.acks`).
        """
        batch: list[_Waiter] = []
        size = 0
        while self._waiting and (not batch or size + len(self._waiting[0][0]) <= self._max_batch):
            waiter = self._waiting.popleft()
            batch.append(waiter)
            size += len(waiter[0])
        self._flushing = True
        if with_acks is None:
            with_acks = not self._acks.backing_off
        acks: list[tuple[str, int]] = []
        if with_acks:
            if self._ack_call is not None:
                if self._ack_call.active():
                    self._ack_call.cancel()
                self._ack_call = None
            acks = self._acks.take()
        now = self._clock.seconds()
        d = self.run(
            queuesql.enqueue_batch_counting_acks,
            [envelopes for envelopes, _ in batch],
            now,
            self._usage,
            acks,
            None if self.space is None else self.space.check,
        )
        d.addBoth(self._flushed, [waiter for _, waiter in batch], size, len(acks), now)

    def _flushed(
        self,
        done: tuple[list[list[QueuedEnvelope] | StoreError], int] | Failure,
        waiters: list[Deferred[list[QueuedEnvelope]]],
        size: int,
        acks: int,
        started: float,
    ) -> None:
        """Fire each caller of a finished transaction, then start the next one.

        Callers are fired while ``_flushing`` is still set, so envelopes they enqueue in
        their callbacks wait for the next batch instead of each starting a transaction.
        A failure that repeats (a full disk) is logged once per
        :data:`securechat.server.loglimit.DEFAULT_INTERVAL` with a count.
        """
        if isinstance(done, Failure):
            result: list[list[QueuedEnvelope] | StoreError] | Failure = done
        else:
            result, acked = done
            self.metrics.acked(acked)
            if waiters:
                self.metrics.group_commit(size, self._clock.seconds() - started)
        if isinstance(result, Failure):
            self._acks.failed()
            skipped = self._log_limit.allow("commit")
            if skipped is not None:
                self.log.warn(
                    "group commit of {calls} calls and {acks} acknowledgements failed: "
                    "{error} ({skipped} similar failures not logged)",
                    calls=len(waiters), acks=acks, error=result.value, skipped=skipped,
                )  # fmt: skip
            for waiter in waiters:
                waiter.errback(result.value)
        else:
            if acks:
                failures = self._acks.succeeded()
                if failures:
                    self.log.info(
                        "acknowledgements written again after {n} failed tries", n=failures
                    )
            self.acks_applied += acks
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
            if self._acks and not self._stopping:
                self._schedule_acks()
            self._maybe_idle()

    def _acked(self, recipient: str) -> int:
        """The highest seq ``recipient`` acknowledged that may not be deleted yet."""
        return self._acks.acked(recipient)

    def pending(self, recipient: str, after_seq: int, limit: int) -> Deferred[list[QueuedEnvelope]]:
        """IStore API: acknowledged envelopes are skipped even before they are deleted,
        and so are those past the TTL."""
        after = max(after_seq, self._acked(recipient))
        cutoff = self._clock.seconds() - self.queue_ttl
        return self.run(queuesql.pending, recipient, after, limit, cutoff)

    def acknowledge_later(self, recipient: str, up_to_seq: int) -> None:
        """IStore API: coalesced into the next group commit (see the module docstring)."""
        if self._stopped:
            return
        if self._acks.note(recipient, up_to_seq) and not self._flushing:
            self._schedule_acks()

    def _schedule_acks(self) -> None:
        if self._ack_call is None:
            delay = self._acks.retry_delay() if self._acks.backing_off else ACK_DELAY
            self._ack_call = self._clock.callLater(delay, self._ack_timer)

    def _ack_timer(self) -> None:
        self._ack_call = None
        if self._acks and not self._stopping:
            if self._flushing:  # a commit is in flight: the timer fires again after it
                return
            self._flush(with_acks=True)

    def acknowledge(self, recipient: str, up_to_seq: int) -> Deferred[int]:
        """IStore API."""
        return self.run(self._acknowledge_now, recipient, up_to_seq)

    def _acknowledge_now(self, conn: sqlite3.Connection, recipient: str, up_to_seq: int) -> int:
        # The quota counters are only touched on the pool thread, like the tables.
        self._usage.forget(recipient)
        return queuesql.acknowledge(conn, recipient, up_to_seq)

    def queue_length(self, recipient: str) -> Deferred[int]:
        """IStore API: acknowledged envelopes do not count, deleted yet or not."""
        return self.run(queuesql.queue_length, recipient, self._acked(recipient))

    def expire(self, now: float) -> Deferred[int]:
        """IStore API: drops envelopes accepted more than ``queue_ttl`` seconds before ``now``."""
        return self.run(self._expire_now, now - self.queue_ttl)

    def _expire_now(self, conn: sqlite3.Connection, cutoff: float) -> int:
        n = queuesql.expire(conn, cutoff)
        if n:
            self._usage.clear()  # counters reload from what is left
        return n
