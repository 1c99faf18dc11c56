"""Coalesced acknowledgements (``IStore.acknowledge_later``) on both stores.

An acknowledgement is applied lazily: SQLite deletes the envelopes inside the next
group-commit transaction, or after ``ACK_DELAY`` when no envelope comes. Until then
``pending`` and ``queue_length`` already leave them out, so a session that logs in again
in the same process gets nothing twice. A crash before the deletion is written may deliver
them again (clients drop duplicates), but never loses an envelope that was not acknowledged.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock

from securechat.server.store.interface import ROLE_USER
from securechat.server.store.sqlite import ACK_DELAY, SQLiteStore
from tests.server.test_store import env, failure_of, make_store, section


@pytest.fixture
def clock() -> Clock:
    c = Clock()
    c.advance(1000.0)
    return c


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Iterator[Any]:
    s = make_store(request.param, section(tmp_path, queue_limit=100), clock)
    pytest_twisted.blockon(s.start())
    for name in ("alice", "bob"):
        pytest_twisted.blockon(s.add_user(name, ROLE_USER, None, None))
    yield s
    pytest_twisted.blockon(s.stop())


def _rows(conn: sqlite3.Connection, recipient: str) -> list[int]:
    cur = conn.execute("SELECT seq FROM queue WHERE recipient = ? ORDER BY seq", (recipient,))
    return [int(r[0]) for r in cur]


@pytest_twisted.inlineCallbacks
def test_acknowledged_envelopes_leave_pending_at_once(store: Any) -> Any:
    """From the call on, pending and queue_length skip what was acknowledged."""
    stored = yield store.enqueue([env("alice", i) for i in range(5)] + [env("bob", 9)])
    store.acknowledge_later("alice", stored[2].seq)
    store.acknowledge_later("alice", stored[1].seq)  # an older ack changes nothing
    assert [e.seq for e in (yield store.pending("alice", 0, 10))] == [stored[3].seq, stored[4].seq]
    assert (yield store.pending("alice", stored[3].seq, 10)) == [stored[4]]
    assert (yield store.queue_length("alice")) == 2
    assert (yield store.queue_length("bob")) == 1
    store.acknowledge_later("alice", stored[4].seq)
    assert (yield store.pending("alice", 0, 10)) == []
    again = yield store.enqueue([env("alice", 10)])
    assert (yield store.pending("alice", 0, 10)) == again


@pytest_twisted.inlineCallbacks
def test_acks_ride_in_the_next_group_commit(tmp_path: Path, clock: Clock) -> Any:
    """The DELETE is written by the next enqueue's transaction: no transaction of its own."""
    s = SQLiteStore(section(tmp_path), clock)
    yield s.start()
    try:
        yield s.add_user("alice", ROLE_USER, None, None)
        stored = yield s.enqueue([env("alice", i) for i in range(3)])
        s.acknowledge_later("alice", stored[1].seq)
        assert (yield s.run(_rows, "alice")) == [e.seq for e in stored]  # not yet
        more = yield s.enqueue([env("alice", 7)])
        assert (yield s.run(_rows, "alice")) == [stored[2].seq, more[0].seq]
        assert (s.ack_transactions, s.acks_applied) == (0, 1)
    finally:
        yield s.stop()


@pytest_twisted.inlineCallbacks
def test_idle_acks_are_written_after_a_short_delay(tmp_path: Path, clock: Clock) -> Any:
    """With no envelope to ride with, one transaction applies all acks after ACK_DELAY."""
    s = SQLiteStore(section(tmp_path), clock)
    yield s.start()
    try:
        for name in ("alice", "bob"):
            yield s.add_user(name, ROLE_USER, None, None)
        stored = yield s.enqueue([env("alice", 1), env("bob", 2), env("alice", 3)])
        yield s.run(lambda conn: None)  # out of the commit's callbacks
        s.acknowledge_later("alice", stored[0].seq)
        s.acknowledge_later("bob", stored[1].seq)
        s.acknowledge_later("alice", stored[2].seq)
        clock.advance(ACK_DELAY / 2)
        assert s.ack_transactions == 0
        clock.advance(ACK_DELAY)
        assert (yield s.run(_rows, "alice")) == []  # runs after the ack transaction
        assert (yield s.run(_rows, "bob")) == []
        assert (s.ack_transactions, s.acks_applied) == (1, 2)
    finally:
        yield s.stop()


@pytest_twisted.inlineCallbacks
def test_stop_writes_pending_acks(tmp_path: Path, clock: Clock) -> Any:
    """A clean shutdown applies the acknowledgements still waiting."""
    sec = section(tmp_path)
    s = SQLiteStore(sec, clock)
    yield s.start()
    yield s.add_user("alice", ROLE_USER, None, None)
    stored = yield s.enqueue([env("alice", i) for i in range(4)])
    s.acknowledge_later("alice", stored[2].seq)
    yield s.stop()
    reopened = SQLiteStore(sec, clock)
    yield reopened.start()
    try:
        assert (yield reopened.pending("alice", 0, 10)) == [stored[3]]
    finally:
        yield reopened.stop()


@pytest_twisted.inlineCallbacks
def test_crash_before_the_ack_is_written_redelivers_never_loses(
    tmp_path: Path, clock: Clock
) -> Any:
    """If the process dies before the DELETE commits, the acknowledged envelopes come
    again (duplicates the client drops); the unacknowledged ones are all there."""
    sec = section(tmp_path)
    s = SQLiteStore(sec, clock)
    yield s.start()
    yield s.add_user("alice", ROLE_USER, None, None)
    stored = yield s.enqueue([env("alice", i) for i in range(4)])
    s.acknowledge_later("alice", stored[1].seq)
    # What a crash leaves behind: the file as committed, read by a fresh process.
    survivor = SQLiteStore(sec, clock)
    yield survivor.start()
    try:
        assert (yield survivor.pending("alice", 0, 10)) == stored
    finally:
        yield survivor.stop()
    yield s.stop()


@pytest_twisted.inlineCallbacks
def test_failed_ack_transaction_is_retried(tmp_path: Path, clock: Clock) -> Any:
    """A failed group commit keeps its acknowledgements for the next transaction."""
    s = SQLiteStore(section(tmp_path), clock, busy_timeout=0.05)
    yield s.start()
    try:
        yield s.add_user("alice", ROLE_USER, None, None)
        stored = yield s.enqueue([env("alice", i) for i in range(3)])
        s.acknowledge_later("alice", stored[0].seq)
        blocker = sqlite3.connect(str(section(tmp_path).path), isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            clock.advance(ACK_DELAY)
            yield s.run(lambda conn: None)  # after the failed attempt
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert s.ack_transactions == 0  # it failed
        assert [e.seq for e in (yield s.pending("alice", 0, 10))] == [e.seq for e in stored[1:]]
        clock.advance(ACK_DELAY)
        assert (yield s.run(_rows, "alice")) == [e.seq for e in stored[1:]]
        assert s.ack_transactions == 1
    finally:
        yield s.stop()


@pytest.mark.parametrize("count", [1, 3, 4, 21, 64, 341])
@pytest_twisted.inlineCallbacks
def test_multi_row_inserts_keep_order_and_fields(tmp_path: Path, clock: Clock, count: int) -> Any:
    """A group commit inserts its rows in chunks of fixed sizes; every row and field is
    stored in order, for any batch size."""
    s = SQLiteStore(section(tmp_path, queue_limit=1000), clock)
    yield s.start()
    try:
        yield s.add_user("alice", ROLE_USER, None, None)
        calls = [s.enqueue([env("alice", i, room="#r" if i % 2 else None)]) for i in range(count)]
        stored = [e for call in (yield defer.gatherResults(calls)) for e in call]
        assert [e.message_id for e in stored] == [b"id%d" % i for i in range(count)]
        assert (yield s.pending("alice", 0, 10_000)) == stored
    finally:
        yield s.stop()


def _query_only(on: bool) -> Any:
    def set_it(conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA query_only = {int(on)}")

    return set_it


@pytest_twisted.inlineCallbacks
def test_failed_acks_back_off_instead_of_riding_every_commit(tmp_path: Path, clock: Clock) -> Any:
    """When the transaction carrying acks fails, later group commits go without them (so
    they are not failed by them) and the acks are retried on their own, ever later."""
    from securechat.server.store.acks import FIRST_RETRY

    s = SQLiteStore(section(tmp_path, queue_limit=100), clock)
    yield s.start()
    try:
        yield s.add_user("alice", ROLE_USER, None, None)
        stored = yield s.enqueue([env("alice", i) for i in range(3)])
        yield s.run(_query_only(True))  # every write fails from now on, like a full disk
        s.acknowledge_later("alice", stored[1].seq)
        clock.advance(ACK_DELAY)
        yield s.run(lambda c: None)  # the failed ack transaction has finished
        assert s._acks.failures == 1
        assert [e.seq for e in (yield s.pending("alice", 0, 10))] == [stored[2].seq]
        yield s.run(_query_only(False))
        more = yield s.enqueue([env("alice", 7)])  # succeeds: the acks stay out of it
        assert (yield s.run(_rows, "alice")) == [e.seq for e in stored] + [more[0].seq]
        yield s.run(_query_only(True))
        clock.advance(FIRST_RETRY)  # the retry fails: the next waits twice as long
        yield s.run(lambda c: None)
        assert s._acks.failures == 2 and s._acks.retry_delay() == 2 * FIRST_RETRY
        yield s.run(_query_only(False))
        clock.advance(2 * FIRST_RETRY)
        yield s.run(lambda c: None)
        assert (yield s.run(_rows, "alice")) == [stored[2].seq, more[0].seq]
        assert s._acks.failures == 0
    finally:
        yield s.stop()


@pytest_twisted.inlineCallbacks
def test_stop_ends_when_acks_keep_failing(tmp_path: Path, clock: Clock) -> Any:
    """Stopping tries the acks once and then stops (it used to retry them in a tight
    loop forever, so SIGTERM never finished)."""
    s = SQLiteStore(section(tmp_path, queue_limit=100), clock)
    yield s.start()
    yield s.add_user("alice", ROLE_USER, None, None)
    stored = yield s.enqueue([env("alice", i) for i in range(3)])
    yield s.run(_query_only(True))
    s.acknowledge_later("alice", stored[2].seq)
    yield s.stop()
    assert s.ack_transactions == 0 and not s._acks


_FOREVER = (
    "WITH RECURSIVE c(x) AS (SELECT started() UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
)


def _run_forever(conn: sqlite3.Connection, started: threading.Event) -> None:
    conn.create_function("started", 0, lambda: started.set() or 1)
    conn.execute(_FOREVER).fetchone()


@pytest_twisted.inlineCallbacks
def test_stop_refuses_new_envelopes_and_ends_after_the_grace(tmp_path: Path, clock: Clock) -> Any:
    """A stop refuses new envelopes at once; work that does not finish (a statement that
    runs forever, standing in for a hung disk) is interrupted after the grace period,
    and what still waits is refused (never accepted, so nothing is lost)."""
    from securechat.errors import StoreError
    from securechat.server.store.sqlite import STOP_GRACE

    s = SQLiteStore(section(tmp_path, queue_limit=100), clock)
    yield s.start()
    yield s.add_user("alice", ROLE_USER, None, None)
    started = threading.Event()
    hung = s.run(_run_forever, started)
    assert started.wait(10)  # the statement is running on the pool thread
    in_flight = s.enqueue([env("alice", 1)])  # its transaction is behind the hung statement
    waiting = s.enqueue([env("alice", 2)])  # waits for the next group commit
    stopped = s.stop()
    assert isinstance((yield failure_of(s.enqueue([env("alice", 3)]))), StoreError)
    clock.advance(STOP_GRACE)
    assert isinstance((yield failure_of(hung)), StoreError)  # "interrupted"
    assert isinstance((yield failure_of(waiting)), StoreError)
    assert [e.message_id for e in (yield in_flight)] == [b"id1"]  # committed: accepted
    yield stopped
