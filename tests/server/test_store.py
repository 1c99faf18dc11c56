"""The IStore contract, run against MemoryStore and SQLiteStore alike, plus SQLite durability.

One parametrised fixture builds either store, so every behaviour the relay relies on is
checked on both and the fast in-memory store cannot drift from the real one. The tests
after the contract section need a file: restart durability, group commit, and database
errors (locked, disk full) that must reach the caller as ``StoreError`` without losing or
falsely acknowledging an envelope.
"""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from securechat.config import StoreSection
from securechat.errors import (
    NoSuchUser,
    QueueFull,
    RoomConflict,
    StoreError,
    TooManyPrekeys,
    UserExists,
)
from securechat.server.store.interface import (
    CONTACT_ACCEPTED,
    CONTACT_PENDING_IN,
    CONTACT_PENDING_OUT,
    ROLE_ADMIN,
    ROLE_USER,
    IStore,
    NewEnvelope,
)
from securechat.server.store.memory import MemoryStore
from securechat.server.store.sqlite import SQLiteStore

TTL = 100.0
LIMIT = 8


def env(recipient: str, n: int = 0, sender: str = "bob", room: str | None = None) -> NewEnvelope:
    return NewEnvelope(recipient, sender, "ecdh", b"id%d" % n, room, b"payload %d" % n)


def section(tmp_path: Path, **kw: Any) -> StoreSection:
    values: dict[str, Any] = {
        "path": tmp_path / "db" / "store.sqlite3",
        "queue_ttl": TTL,
        "queue_limit": LIMIT,
    }
    values.update(kw)
    return StoreSection(**values)


def make_store(kind: str, sec: StoreSection, clock: Clock, **kw: Any) -> Any:
    if kind == "memory":
        return MemoryStore(sec, clock)
    return SQLiteStore(sec, clock, **kw)


@pytest.fixture
def clock() -> Clock:
    c = Clock()
    c.advance(1000.0)
    return c


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Iterator[Any]:
    s = make_store(request.param, section(tmp_path), clock)
    pytest_twisted.blockon(s.start())
    for name in ("alice", "bob", "carol"):
        pytest_twisted.blockon(s.add_user(name, ROLE_USER, None, b"ik-" + name.encode()))
    yield s
    pytest_twisted.blockon(s.stop())


@pytest.fixture
def sqlite_store(tmp_path: Path, clock: Clock) -> Iterator[SQLiteStore]:
    s = SQLiteStore(section(tmp_path), clock, busy_timeout=0.05)
    pytest_twisted.blockon(s.start())
    for name in ("alice", "bob"):
        pytest_twisted.blockon(s.add_user(name, ROLE_USER, None, None))
    yield s
    pytest_twisted.blockon(s.stop())


def failure_of(d: defer.Deferred[Any]) -> Any:
    """A Deferred that fires with the exception ``d`` failed with (fails if ``d`` succeeds)."""

    def succeeded(result: Any) -> None:
        raise AssertionError(f"expected a failure, got {result!r}")

    return d.addCallbacks(succeeded, lambda f: f.value)


# -- users ---------------------------------------------------------------------
def test_provides_interface(store: Any) -> None:
    """Both stores implement every IStore method with the right names."""
    assert verifyObject(IStore, store)
    assert store.queue_limit == LIMIT


@pytest_twisted.inlineCallbacks
def test_users(store: Any, clock: Clock) -> Any:
    """Users are created once, stamped with the clock, listed by name and can be looked up."""
    rec = yield store.add_user("dave", ROLE_ADMIN, "$scrypt$x", None)
    assert (rec.name, rec.role, rec.password_hash, rec.created) == (
        "dave",
        "admin",
        "$scrypt$x",
        1000.0,
    )
    assert (yield store.get_user("dave")) == rec
    assert (yield store.get_user("nobody")) is None
    assert [u.name for u in (yield store.list_users())] == ["alice", "bob", "carol", "dave"]
    assert isinstance((yield failure_of(store.add_user("dave", ROLE_USER, None, None))), UserExists)
    assert isinstance((yield failure_of(store.add_user("eve", "root", None, None))), StoreError)
    yield store.set_identity_key("dave", b"new-ik")
    assert (yield store.get_user("dave")).identity_key == b"new-ik"
    assert isinstance((yield failure_of(store.set_identity_key("zed", b"k"))), NoSuchUser)
    yield store.set_password_hash("dave", "$argon2id$new")
    dave = yield store.get_user("dave")
    assert (dave.password_hash, dave.identity_key) == ("$argon2id$new", b"new-ik")
    assert isinstance((yield failure_of(store.set_password_hash("zed", "h"))), NoSuchUser)


@pytest_twisted.inlineCallbacks
def test_remove_user_cascades(store: Any) -> Any:
    """Removing a user removes their keys, contacts, rooms and queue, not what they sent."""
    yield store.publish_prekeys("alice", "ecdh", b"spk", [(1, b"o1")])
    yield store.add_contact("alice", "bob")
    yield store.post_room_event("solo", 1, b"e1", [("alice", "member")])
    yield store.post_room_event("pair", 1, b"e1", [("alice", "member")])
    yield store.post_room_event("pair", 2, b"e2", [("carol", "member")])
    yield store.post_room_event("pair", 3, b"e3", [("bob", "invited")])
    yield store.enqueue([env("alice", 1), env("bob", 2, sender="alice")])
    assert (yield store.remove_user("alice")) is True
    assert (yield store.remove_user("alice")) is False
    assert (yield store.get_user("alice")) is None
    assert (yield store.count_one_time_prekeys("alice", "ecdh")) == 0
    assert (yield store.fetch_bundle("alice", "ecdh")) is None
    assert (yield store.list_contacts("bob")) == []
    assert (yield store.room_members("solo")) == []
    assert (yield store.room_events("solo", 0, 10)) == []  # the room ended with alice
    assert (yield store.room_members("pair")) == ["carol"]
    assert (yield store.room_roster("pair")) == [("bob", "invited"), ("carol", "member")]
    assert (yield store.queue_length("alice")) == 0
    assert [e.sender for e in (yield store.pending("bob", 0, 10))] == ["alice"]
    # The name is free again, with nothing left over from before.
    yield store.add_user("alice", ROLE_USER, None, None)
    assert (yield store.user_rooms("alice")) == []
    assert (yield store.user_room_states("alice")) == []


# -- prekeys -------------------------------------------------------------------
@pytest_twisted.inlineCallbacks
def test_prekeys(store: Any) -> Any:
    """Bundles hand out one-time prekeys lowest id first, each once, then none."""
    assert (yield store.publish_prekeys("alice", "ecdh", b"spk1", [(7, b"o7"), (3, b"o3")])) == 2
    assert (yield store.publish_prekeys("alice", "dh", b"dh-spk", [(1, b"d1")])) == 1
    assert (yield store.publish_prekeys("alice", "ecdh", None, [(9, b"o9")])) == 3
    first = yield store.fetch_bundle("alice", "ecdh")
    assert (first.identity_key, first.signed_prekey) == (b"ik-alice", b"spk1")
    assert (first.one_time_prekey_id, first.one_time_prekey) == (3, b"o3")
    yield store.publish_prekeys("alice", "ecdh", b"spk2", [])
    ids = []
    for _ in range(3):
        ids.append((yield store.fetch_bundle("alice", "ecdh")).one_time_prekey_id)
    assert ids == [7, 9, None]
    last = yield store.fetch_bundle("alice", "ecdh")
    assert (last.signed_prekey, last.one_time_prekey) == (b"spk2", None)
    assert (yield store.count_one_time_prekeys("alice", "ecdh")) == 0
    assert (yield store.count_one_time_prekeys("alice", "dh")) == 1
    assert (yield store.fetch_bundle("alice", "rsa")) is None
    assert (yield store.fetch_bundle("nobody", "ecdh")) is None
    bad = yield failure_of(store.publish_prekeys("nobody", "ecdh", b"s", []))
    assert isinstance(bad, NoSuchUser)


@pytest_twisted.inlineCallbacks
def test_prekey_cap_refuses_the_whole_publish(store: Any) -> Any:
    """Above ``max_one_time`` nothing of the call is stored; republished ids count once."""
    keys = [(i, b"o%d" % i) for i in range(8)]
    assert (yield store.publish_prekeys("alice", "ecdh", b"spk1", keys, 10)) == 8
    assert (yield store.publish_prekeys("alice", "ecdh", None, keys[:5], 10)) == 8
    more = [(i, b"n%d" % i) for i in range(6, 11)]  # 8 + 3 new = 11
    bad = yield failure_of(store.publish_prekeys("alice", "ecdh", b"spk2", more, 10))
    assert isinstance(bad, TooManyPrekeys)
    assert (yield store.count_one_time_prekeys("alice", "ecdh")) == 8
    bundle = yield store.fetch_bundle("alice", "ecdh")
    assert (bundle.signed_prekey, bundle.one_time_prekey) == (b"spk1", b"o0")
    assert (yield store.publish_prekeys("alice", "ecdh", None, more, 10)) == 10
    assert (yield store.publish_prekeys("alice", "dh", None, more, 10)) == 5  # per backend


@pytest_twisted.inlineCallbacks
def test_bundle_needs_identity_key(store: Any) -> Any:
    """Without an identity key there is no bundle, and no one-time prekey is used up."""
    yield store.add_user("dave", ROLE_USER, "$h", None)
    yield store.publish_prekeys("dave", "ecdh", b"spk", [(1, b"o1")])
    assert (yield store.fetch_bundle("dave", "ecdh")) is None
    assert (yield store.count_one_time_prekeys("dave", "ecdh")) == 1


@pytest_twisted.inlineCallbacks
def test_concurrent_fetches_hand_out_each_prekey_once(store: Any) -> Any:
    """Many fetches in flight at once never receive the same one-time prekey."""
    yield store.publish_prekeys("bob", "ecdh", b"spk", [(i, b"o%d" % i) for i in range(20)])
    bundles = yield defer.gatherResults([store.fetch_bundle("bob", "ecdh") for _ in range(30)])
    ids = [b.one_time_prekey_id for b in bundles if b.one_time_prekey_id is not None]
    assert sorted(ids) == list(range(20))
    assert sum(b.one_time_prekey is None for b in bundles) == 10


# -- contacts ------------------------------------------------------------------
@pytest_twisted.inlineCallbacks
def test_contact_request_and_accept(store: Any) -> Any:
    """A request is pending on both sides until the peer accepts it."""
    assert (yield store.request_contact("alice", "bob")) == (CONTACT_PENDING_OUT, True)
    assert (yield store.request_contact("alice", "bob")) == (CONTACT_PENDING_OUT, False)
    assert (yield store.list_contacts("alice")) == [("bob", CONTACT_PENDING_OUT)]
    assert (yield store.list_contacts("bob")) == [("alice", CONTACT_PENDING_IN)]
    assert (yield store.are_contacts("alice", "bob")) is False
    assert (yield store.accept_contact("alice", "bob")) is False  # one's own request
    assert (yield store.accept_contact("bob", "alice")) is True
    assert (yield store.are_contacts("alice", "bob")) is True
    assert (yield store.are_contacts("bob", "alice")) is True
    assert (yield store.request_contact("bob", "alice")) == (CONTACT_ACCEPTED, False)
    assert (yield store.accept_contact("bob", "alice")) is False


@pytest_twisted.inlineCallbacks
def test_crossing_requests_accept(store: Any) -> Any:
    """If the peer already asked, asking back makes both accepted contacts."""
    yield store.request_contact("alice", "carol")
    assert (yield store.request_contact("carol", "alice")) == (CONTACT_ACCEPTED, True)
    assert (yield store.list_contacts("alice")) == [("carol", CONTACT_ACCEPTED)]


@pytest_twisted.inlineCallbacks
def test_contact_remove_and_admin_add(store: Any) -> Any:
    """Removal works from either side; the admin add skips the request."""
    yield store.request_contact("alice", "bob")
    assert (yield store.remove_contact("bob", "alice")) is True
    assert (yield store.list_contacts("alice")) == []
    assert (yield store.remove_contact("bob", "alice")) is False
    yield store.add_contact("carol", "alice")
    yield store.add_contact("carol", "bob")
    assert (yield store.list_contacts("carol")) == [
        ("alice", CONTACT_ACCEPTED),
        ("bob", CONTACT_ACCEPTED),
    ]
    assert isinstance((yield failure_of(store.add_contact("alice", "zed"))), NoSuchUser)
    assert isinstance((yield failure_of(store.request_contact("zed", "alice"))), NoSuchUser)
    assert isinstance((yield failure_of(store.add_contact("alice", "alice"))), StoreError)


# -- rooms ---------------------------------------------------------------------
@pytest_twisted.inlineCallbacks
def test_rooms(store: Any) -> Any:
    """Room events are appended in order (a stale one is a conflict) with their membership
    changes; a room ends, events and invitations too, when its last member goes."""
    yield store.post_room_event("#ops", 1, b"create", [("carol", "member")])
    yield store.post_room_event("#ops", 2, b"invite", [("alice", "invited")])
    assert isinstance((yield failure_of(store.post_room_event("#ops", 2, b"x", []))),
                      RoomConflict)  # fmt: skip
    assert isinstance((yield failure_of(store.post_room_event("#ops", 9, b"x", []))),
                      RoomConflict)  # fmt: skip
    assert isinstance(
        (yield failure_of(store.post_room_event("#ops", 3, b"x", [("zed", "invited")]))),
        NoSuchUser,
    )
    assert (yield store.room_events("#ops", 0, 10)) == [(1, b"create"), (2, b"invite")]
    assert (yield store.room_events("#ops", 1, 10)) == [(2, b"invite")]
    assert (yield store.room_members("#ops")) == ["carol"]
    assert (yield store.user_rooms("alice")) == []
    assert (yield store.user_room_states("alice")) == [("#ops", "invited", 2)]
    yield store.post_room_event("#ops", 3, b"join", [("alice", "member")])
    yield store.post_room_event("#dev", 1, b"create", [("alice", "member")])
    assert (yield store.room_members("#ops")) == ["alice", "carol"]
    assert (yield store.user_rooms("alice")) == ["#dev", "#ops"]
    assert (yield store.user_room_states("alice")) == [("#dev", "member", 1),
                                                       ("#ops", "member", 3)]  # fmt: skip
    yield store.post_room_event("#ops", 4, b"invite", [("bob", "invited")])
    yield store.post_room_event("#ops", 5, b"leave", [("alice", None)])
    yield store.post_room_event("#ops", 6, b"leave", [("carol", None)])
    assert (yield store.room_members("#ops")) == []
    assert (yield store.room_roster("#ops")) == []
    assert (yield store.room_events("#ops", 0, 10)) == []
    assert (yield store.user_room_states("bob")) == []
    yield store.post_room_event("#ops", 1, b"again", [("bob", "member")])  # the name is free


# -- offline queue -------------------------------------------------------------
@pytest_twisted.inlineCallbacks
def test_queue_order_and_pending(store: Any, clock: Clock) -> Any:
    """Seq grows per recipient in acceptance order; pending pages through it."""
    first = yield store.enqueue([env("alice", 1), env("bob", 2), env("alice", 3, room="#r")])
    second = yield store.enqueue([env("alice", 4)])
    assert [e.message_id for e in first] == [b"id1", b"id2", b"id3"]
    assert first[2].room == "#r" and first[0].accepted_at == clock.seconds()
    seqs = [e.seq for e in (yield store.pending("alice", 0, 100))]
    assert seqs == [first[0].seq, first[2].seq, second[0].seq]
    assert seqs == sorted(set(seqs))
    page = yield store.pending("alice", first[0].seq, 1)
    assert page == [first[2]]
    assert (yield store.pending("alice", second[0].seq, 10)) == []
    assert (yield store.queue_length("alice")) == 3
    assert (yield store.enqueue([])) == []


@pytest_twisted.inlineCallbacks
def test_acknowledge_is_cumulative(store: Any) -> Any:
    """Acknowledging a seq deletes it and everything before, for that recipient only."""
    stored = yield store.enqueue([env("alice", i) for i in range(5)] + [env("bob", 9)])
    assert (yield store.acknowledge("alice", stored[2].seq)) == 3
    assert [e.seq for e in (yield store.pending("alice", 0, 10))] == [stored[3].seq, stored[4].seq]
    assert (yield store.acknowledge("alice", stored[2].seq)) == 0
    assert (yield store.queue_length("bob")) == 1
    assert (yield store.acknowledge("alice", stored[5].seq)) == 2
    # Seq never goes back, even after the queue was emptied.
    again = yield store.enqueue([env("alice", 10)])
    assert again[0].seq > stored[5].seq


@pytest_twisted.inlineCallbacks
def test_queue_limit_fails_whole_call(store: Any) -> Any:
    """A call that would overfill any recipient stores nothing; smaller calls still fit."""
    yield store.enqueue([env("alice", i) for i in range(LIMIT - 2)])
    full = yield failure_of(store.enqueue([env("bob", 0)] + [env("alice", i) for i in range(3)]))
    assert isinstance(full, QueueFull)
    assert (yield store.queue_length("alice")) == LIMIT - 2
    assert (yield store.queue_length("bob")) == 0
    yield store.enqueue([env("alice", 7), env("alice", 8)])
    assert isinstance((yield failure_of(store.enqueue([env("alice", 9)]))), QueueFull)
    unknown = yield failure_of(store.enqueue([env("bob", 1), env("zed", 2)]))
    assert isinstance(unknown, NoSuchUser)
    assert (yield store.queue_length("bob")) == 0


@pytest_twisted.inlineCallbacks
def test_queue_limit_among_concurrent_calls(store: Any) -> Any:
    """Calls grouped into one commit are limited one by one: only the overflow fails."""
    calls = [store.enqueue([env("carol", i), env("bob", i)]) for i in range(LIMIT + 3)]
    results = yield defer.DeferredList(calls, consumeErrors=True)
    ok = [r for good, r in results if good]
    failed = [r.value for good, r in results if not good]
    assert len(ok) == LIMIT
    assert len(failed) == 3 and all(isinstance(e, QueueFull) for e in failed)
    assert (yield store.queue_length("carol")) == LIMIT
    assert (yield store.queue_length("bob")) == LIMIT


@pytest_twisted.inlineCallbacks
def test_expire_by_ttl(store: Any, clock: Clock) -> Any:
    """Expire removes exactly the envelopes accepted more than the TTL ago."""
    old = yield store.enqueue([env("alice", 1), env("bob", 2)])
    clock.advance(TTL / 2)
    new = yield store.enqueue([env("alice", 3)])
    assert (yield store.expire(clock.seconds())) == 0
    clock.advance(TTL / 2 + 1)
    assert (yield store.expire(clock.seconds())) == 2
    assert (yield store.pending("alice", 0, 10)) == new
    assert old[1].seq not in [e.seq for e in (yield store.pending("bob", 0, 10))]
    clock.advance(TTL)
    assert (yield store.expire(clock.seconds())) == 1
    assert (yield store.queue_length("alice")) == 0


# -- SQLite only: files, durability, group commit, failures --------------------
@pytest_twisted.inlineCallbacks
def test_file_permissions(sqlite_store: SQLiteStore, tmp_path: Path) -> Any:
    """The database directory is private to the owner and the file is 0600."""
    yield sqlite_store.queue_length("alice")
    assert stat.S_IMODE((tmp_path / "db").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "db" / "store.sqlite3").stat().st_mode) == 0o600


@pytest_twisted.inlineCallbacks
def test_memory_path(clock: Clock, tmp_path: Path) -> Any:
    """``:memory:`` works for tests: the one pooled connection keeps the database."""
    s = SQLiteStore(section(tmp_path, path=Path(":memory:")), clock)
    yield s.start()
    try:
        yield s.add_user("alice", ROLE_USER, None, None)
        yield s.enqueue([env("alice")])
        assert (yield s.queue_length("alice")) == 1
    finally:
        yield s.stop()


@pytest_twisted.inlineCallbacks
def test_restart_keeps_every_committed_envelope(tmp_path: Path, clock: Clock) -> Any:
    """Close and reopen the file: every envelope whose enqueue fired is there, in order."""
    sec = section(tmp_path, queue_limit=10_000)
    s = SQLiteStore(sec, clock)
    yield s.start()
    yield s.add_user("alice", ROLE_USER, None, None)
    calls = [s.enqueue([env("alice", i * 10 + j) for j in range(1 + i % 4)]) for i in range(200)]
    stored = [e for batch in (yield defer.gatherResults(calls)) for e in batch]
    yield s.stop()
    assert isinstance((yield failure_of(s.enqueue([env("alice")]))), StoreError)

    reopened = SQLiteStore(sec, clock)
    yield reopened.start()
    try:
        assert (yield reopened.pending("alice", 0, 10_000)) == stored
    finally:
        yield reopened.stop()


@pytest_twisted.inlineCallbacks
def test_group_commit_fires_after_commit(sqlite_store: SQLiteStore, tmp_path: Path) -> Any:
    """Concurrent enqueues share transactions, and each fires only once its rows are
    visible to another connection, i.e. committed."""
    path = tmp_path / "db" / "store.sqlite3"
    sqlite_store.queue_limit = 10_000
    seen_committed: list[bool] = []

    def check_committed(stored: list[Any]) -> list[Any]:
        other = sqlite3.connect(path)
        try:
            found = other.execute(
                "SELECT count(*) FROM queue WHERE seq BETWEEN ? AND ?",
                (stored[0].seq, stored[-1].seq),
            ).fetchone()[0]
        finally:
            other.close()
        seen_committed.append(found == len(stored))
        return stored

    before = sqlite_store.transactions
    calls = [
        sqlite_store.enqueue([env("alice", i), env("bob", i)]).addCallback(check_committed)
        for i in range(100)
    ]
    yield defer.gatherResults(calls)
    assert seen_committed == [True] * 100
    assert 1 <= sqlite_store.transactions - before < 10


@pytest_twisted.inlineCallbacks
def test_group_commit_respects_max_batch(tmp_path: Path, clock: Clock) -> Any:
    """No transaction exceeds max_batch envelopes, except one call bigger than it alone."""
    s = SQLiteStore(section(tmp_path, max_batch=10, queue_limit=10_000), clock)
    yield s.start()
    try:
        yield s.add_user("alice", ROLE_USER, None, None)
        calls = [s.enqueue([env("alice", i)] * 3) for i in range(30)]
        calls.append(s.enqueue([env("alice", 99)] * 25))
        results = yield defer.gatherResults(calls)
        # 90 envelopes in calls of 3 take at least 9 transactions, the big call one more.
        assert s.transactions >= 10
        assert len(results[-1]) == 25 and s.envelopes_committed == 115
    finally:
        yield s.stop()


@pytest_twisted.inlineCallbacks
def test_stop_flushes_pending_enqueues(tmp_path: Path, clock: Clock) -> Any:
    """stop() waits for enqueues already accepted by the store before closing."""
    s = SQLiteStore(section(tmp_path), clock)
    yield s.start()
    yield s.add_user("alice", ROLE_USER, None, None)
    calls = [s.enqueue([env("alice", i)]) for i in range(5)]
    yield s.stop()
    assert all(d.called for d in calls)
    assert len((yield defer.gatherResults(calls))) == 5


@pytest_twisted.inlineCallbacks
def test_locked_database_is_a_store_error(sqlite_store: SQLiteStore, tmp_path: Path) -> Any:
    """While another process holds the write lock past busy_timeout, enqueues fail as
    StoreError, nothing of them is stored, and the store works again afterwards."""
    other = sqlite3.connect(tmp_path / "db" / "store.sqlite3", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        calls = [sqlite_store.enqueue([env("alice", i)]) for i in range(3)]
        errors = yield defer.gatherResults([failure_of(d) for d in calls])
        assert all(isinstance(e, StoreError) and "locked" in str(e) for e in errors)
        assert isinstance((yield failure_of(sqlite_store.acknowledge("alice", 99))), StoreError)
        other.execute("ROLLBACK")
    finally:
        other.close()
    assert (yield sqlite_store.queue_length("alice")) == 0
    stored = yield sqlite_store.enqueue([env("alice", 5)])
    assert (yield sqlite_store.pending("alice", 0, 10)) == stored


@pytest_twisted.inlineCallbacks
def test_disk_full_is_a_store_error(sqlite_store: SQLiteStore) -> Any:
    """When the database cannot grow, enqueues fail as StoreError; exactly the envelopes
    acknowledged as accepted are stored, and the store recovers once there is room."""
    sqlite_store.queue_limit = 10_000
    pages = yield sqlite_store.run(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
    yield sqlite_store.run(lambda c: c.execute(f"PRAGMA max_page_count = {pages + 4}").fetchall())
    big = NewEnvelope("alice", "bob", "ecdh", b"m", None, b"\0" * 3000)
    calls = [sqlite_store.enqueue([big]) for _ in range(40)]
    results = yield defer.DeferredList(calls, consumeErrors=True)
    accepted = [r[0].seq for ok, r in results if ok]
    failed = [r.value for ok, r in results if not ok]
    assert failed and all(isinstance(e, StoreError) and "full" in str(e) for e in failed)
    assert [e.seq for e in (yield sqlite_store.pending("alice", 0, 100))] == accepted
    yield sqlite_store.run(lambda c: c.execute("PRAGMA max_page_count = 1073741823").fetchall())
    yield sqlite_store.enqueue([big])
    assert (yield sqlite_store.queue_length("alice")) == len(accepted) + 1


@pytest_twisted.inlineCallbacks
def test_admin_writes_while_server_runs(sqlite_store: SQLiteStore, tmp_path: Path) -> Any:
    """Another connection (the admin tool) can write while the store is open."""
    from securechat.server.store import queries, schema

    conn = schema.open_database(tmp_path / "db" / "store.sqlite3")
    try:
        queries.add_user(conn, "dave", ROLE_USER, None, None, 5.0)
        queries.add_contact(conn, "dave", "alice")
    finally:
        conn.close()
    assert (yield sqlite_store.get_user("dave")).created == 5.0
    assert (yield sqlite_store.are_contacts("alice", "dave")) is True


@pytest.mark.parametrize(("mode", "level"), [("full", 2), ("normal", 1)])
@pytest_twisted.inlineCallbacks
def test_connection_settings(tmp_path: Path, clock: Clock, mode: str, level: int) -> Any:
    """The pool's connection runs in WAL with foreign keys and the configured sync level."""
    s = SQLiteStore(section(tmp_path, synchronous=mode), clock, busy_timeout=1.5)
    yield s.start()
    try:
        settings = yield s.run(
            lambda c: [
                c.execute(f"PRAGMA {name}").fetchone()[0]
                for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            ]
        )
    finally:
        yield s.stop()
    assert settings == ["wal", level, 1, 1500]
