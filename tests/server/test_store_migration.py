"""Schema files and migrations: an upgraded old file must be indistinguishable from a new one.

The central test builds a version-1 file from the shipped ``v1.sql``, opens it with the
current code (which runs every ``upgrade-v<N-1>-to-v<N>.sql``) and compares its
``iterdump()`` with a freshly created database. The others check that files the code
cannot handle (too new, corrupt, foreign, half-created) stop with a clear ``StoreError``
and are never damaged further.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from securechat.config import StoreSection
from securechat.errors import StoreError
from securechat.server.store import schema
from securechat.server.store.interface import ROLE_USER
from securechat.server.store.sqlite import SQLiteStore


def files_up_to(version: int, **overrides: str) -> schema.SchemaFiles:
    """The packaged schema files as if ``version`` were the latest, with some replaced."""

    def read(name: str) -> str:
        if name in overrides:
            return overrides[name]
        return schema.PACKAGED.read(name)

    return schema.SchemaFiles(read, version)


def dump(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def version_of(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT version FROM schema_version").fetchone()[0])
    finally:
        conn.close()


def open_and_close(path: Path, files: schema.SchemaFiles = schema.PACKAGED) -> None:
    schema.open_database(path, files=files).close()


def test_shipped_versions_are_complete() -> None:
    """Every version from 1 to the latest has a creation script and an upgrade path."""
    assert schema.PACKAGED.latest >= 2
    for v in range(1, schema.PACKAGED.latest + 1):
        assert f"VALUES ({v});" in schema.PACKAGED.create_script(v)
    for v in range(1, schema.PACKAGED.latest):
        assert schema.PACKAGED.upgrade_script(v)


@pytest.mark.parametrize("start", range(1, schema.PACKAGED.latest))
def test_upgrade_equals_fresh(tmp_path: Path, start: int) -> None:
    """An old file, upgraded, dumps exactly like a database created at the latest version."""
    old = tmp_path / "old.sqlite3"
    open_and_close(old, files_up_to(start))
    assert version_of(old) == start
    open_and_close(old)
    fresh = tmp_path / "fresh.sqlite3"
    open_and_close(fresh)
    assert dump(old) == dump(fresh)
    assert version_of(old) == schema.PACKAGED.latest


def test_upgrade_keeps_data_and_a_backup(tmp_path: Path) -> None:
    """Rows survive the upgrade and the pre-upgrade file is saved as ``-backup-v1``."""
    from securechat.server.store import queries, queuesql
    from securechat.server.store.interface import NewEnvelope
    from securechat.server.store.quota import QueueLimits, QueueUsage

    path = tmp_path / "db.sqlite3"
    conn = schema.open_database(path, files=files_up_to(1))
    queries.add_user(conn, "alice", ROLE_USER, None, b"ik", 1.0)
    envelope = NewEnvelope("alice", "bob", "dh", b"m", None, b"p")
    queuesql.enqueue_batch(conn, [[envelope]], 2.0, QueueUsage(QueueLimits()))
    conn.close()

    conn = schema.open_database(path)
    try:
        assert queries.get_user(conn, "alice") is not None
        assert [e.payload for e in queuesql.pending(conn, "alice", 0, 10)] == [b"p"]
    finally:
        conn.close()
    backup = tmp_path / "db.sqlite3-backup-v1"
    assert version_of(backup) == 1
    assert backup.stat().st_mode & 0o777 == 0o600


def test_up_to_date_file_is_not_backed_up(tmp_path: Path) -> None:
    """Opening a current file twice changes nothing and writes no backup."""
    path = tmp_path / "db.sqlite3"
    open_and_close(path)
    before = dump(path)
    open_and_close(path)
    assert dump(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db.sqlite3"]


def test_too_new_version(tmp_path: Path) -> None:
    """A file from a newer securechat is refused, naming both versions, and left alone."""
    path = tmp_path / "db.sqlite3"
    open_and_close(path)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_version SET version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=r"version 99 is newer .*\(3\)"):
        open_and_close(path)
    assert version_of(path) == 99


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"this is not a database at all, just some text" * 100, "not a usable"),
        (b"SQLite format 3\0" + b"\xff" * 2000, "not a"),
    ],
)
def test_corrupt_file(tmp_path: Path, content: bytes, problem: str) -> None:
    """Garbage in place of the database stops with a StoreError naming the file."""
    path = tmp_path / "db.sqlite3"
    path.write_bytes(content)
    with pytest.raises(StoreError, match=problem) as info:
        open_and_close(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == content


def test_foreign_sqlite_file(tmp_path: Path) -> None:
    """An SQLite file of some other program is not taken over."""
    path = tmp_path / "other.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="no schema_version table"):
        open_and_close(path)


def test_failed_create_leaves_nothing(tmp_path: Path) -> None:
    """A schema that fails half-way leaves neither the database nor a temporary file."""
    broken = files_up_to(2, **{"v2.sql": "CREATE TABLE a (x INTEGER);\nTHIS IS NOT SQL;"})
    path = tmp_path / "db" / "db.sqlite3"
    with pytest.raises(StoreError, match="cannot create the database"):
        open_and_close(path, broken)
    assert list((tmp_path / "db").iterdir()) == []


#: Its first statement succeeds, so the test sees whether the failed step is rolled back.
_HALF_UPGRADE = (
    "CREATE INDEX queue_accepted_at ON queue (accepted_at);\n"
    "CREATE INDEX q ON missing_table (x);\n"
    "UPDATE schema_version SET version = 2;"
)


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        (files_up_to(2, **{"upgrade-v1-to-v2.sql": _HALF_UPGRADE}), "no such table"),
        (files_up_to(4), "upgrade-v3-to-v4.sql"),
    ],
)
def test_failed_upgrade_leaves_file_at_old_version(
    tmp_path: Path, files: schema.SchemaFiles, problem: str
) -> None:
    """An upgrade step that fails or is missing rolls back: the file keeps its version."""
    path = tmp_path / "db.sqlite3"
    start = files.latest - 1
    open_and_close(path, files_up_to(start))
    before = dump(path)
    with pytest.raises(StoreError, match=f"cannot upgrade from version {start}.*{problem}"):
        open_and_close(path, files)
    assert dump(path) == before


@pytest_twisted.inlineCallbacks
def test_store_start_upgrades(tmp_path: Path) -> Any:
    """SQLiteStore.start() migrates an old file on its pool thread."""
    path = tmp_path / "db.sqlite3"
    open_and_close(path, files_up_to(1))
    store = SQLiteStore(StoreSection(path=path))
    try:
        yield store.start()
        yield store.add_user("alice", ROLE_USER, None, None)
    finally:
        yield store.stop()
    assert version_of(path) == schema.PACKAGED.latest


def _garbage(path: Path) -> None:
    path.write_bytes(b"garbage" * 1000)


def _foreign(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("spoil", [_garbage, _foreign], ids=["corrupt", "foreign"])
@pytest_twisted.inlineCallbacks
def test_store_start_refuses_bad_file(tmp_path: Path, spoil: Callable[[Path], None]) -> Any:
    """SQLiteStore.start() fails with StoreError instead of crashing or overwriting."""
    path = tmp_path / "db.sqlite3"
    spoil(path)
    before = path.read_bytes()
    store = SQLiteStore(StoreSection(path=path))
    try:
        with pytest.raises(StoreError, match="not a"):
            yield store.start()
    finally:
        yield store.stop()
    assert path.read_bytes() == before
