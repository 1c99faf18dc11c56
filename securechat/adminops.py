# -*- test-case-name: tests.ops.test_backup -*-
"""``securechat-admin backup | restore | status``: the operator's side of the database.

Split from :mod:`securechat.admin` (user management) to keep modules small.

- ``backup`` uses SQLite's online backup API in one read transaction: in WAL mode that
  never blocks the relay's writers, and the copy is one consistent snapshot including
  what only lives in the ``-wal`` file yet (which a ``cp`` would miss). The copy is
  written to a temporary file, checked, switched out of WAL mode (one self-contained
  file), fsynced and renamed into place with mode 0600.
- ``restore`` refuses while a relay holds the database (:mod:`lockfile`), checks the
  backup, keeps the current database as ``NAME.before-restore`` and copies the backup in.
- ``status`` reads without migrating or writing anything.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from cryptography import x509

from securechat.config import ServerConfig
from securechat.errors import SecureChatError, StoreError
from securechat.server.store import lockfile, queries, schema

PROG = "securechat-admin"


class OperationError(SecureChatError):
    """The backup, restore or status command cannot be carried out; the message says why."""


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``backup``, ``restore`` and ``status`` on ``securechat-admin``'s parser."""
    backup = commands.add_parser("backup", help="copy the database while the relay runs")
    backup.add_argument("file", type=Path, help="where to write the copy (replaced if it exists)")
    backup.set_defaults(run=cmd_backup)
    restore = commands.add_parser("restore", help="replace the database with a backup")
    restore.add_argument("file", type=Path, help="a file written by 'backup'")
    restore.set_defaults(run=cmd_restore)
    commands.add_parser("status", help="database, queue and certificate").set_defaults(
        run=cmd_status
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_copy(path: Path) -> tuple[int, int]:
    """A backup's schema version and user count; raises if it is not a sound database."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        if conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise OperationError(f"{path} is damaged (quick_check failed)")
        version = schema.read_version(conn, str(path))
        if version is None:
            raise OperationError(f"{path} is an empty database, not a securechat backup")
        if version > schema.PACKAGED.latest:
            raise OperationError(
                f"{path} has schema version {version}, newer than this release's "
                f"{schema.PACKAGED.latest}"
            )
        users = int(conn.execute("SELECT count(*) FROM users").fetchone()[0])
    except sqlite3.DatabaseError as e:
        raise OperationError(f"{path} is not a securechat database ({e})") from None
    finally:
        conn.close()
    return version, users


@contextlib.contextmanager
def _new_file_at(target: Path) -> Iterator[Path]:
    """A fresh 0600 temporary file next to ``target``, renamed onto it if the block ends
    normally (after an fsync of file and directory), deleted otherwise."""
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


def backup_database(source: Path, target: Path, busy_timeout: float = 30.0) -> tuple[int, int]:
    """Copy ``source`` to ``target`` consistently; returns the copy's version and users."""
    if not source.exists():
        raise OperationError(f"no database at {source}")
    if target.resolve() == source.resolve():
        raise OperationError("the backup file must not be the database itself")
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=busy_timeout)
    try:
        with _new_file_at(target) as tmp:
            dst = sqlite3.connect(tmp)
            try:
                src.backup(dst)  # all pages in one step: one snapshot, writers not blocked
                dst.execute("PRAGMA journal_mode=DELETE").fetchone()  # one self-contained file
            finally:
                dst.close()
            result = _check_copy(tmp)
    finally:
        src.close()
    return result


def cmd_backup(cfg: ServerConfig, args: argparse.Namespace, out: TextIO) -> None:
    """Write a consistent copy of the database to ``args.file``."""
    version, users = backup_database(cfg.store.path, args.file)
    print(f"backup of {cfg.store.path} written to {args.file} "
          f"(schema version {version}, {users} users)", file=out)  # fmt: skip


def restore_database(database: Path, backup: Path) -> tuple[int, Path | None]:
    """Replace ``database`` with ``backup`` while no relay runs; returns the restored
    schema version and where the previous database was kept (None if there was none)."""
    if not backup.exists():
        raise OperationError(f"no backup at {backup}")
    version, _ = _check_copy(backup)
    lock = lockfile.take_exclusive(database)
    if lock is None:
        raise OperationError(
            f"a securechat relay is running on {database} (it holds "
            f"{lockfile.lock_path(database)}); stop it first, e.g. 'systemctl stop securechat'"
        )
    try:
        kept = None
        if database.exists():
            kept = database.with_name(database.name + ".before-restore")
            backup_database(database, kept)  # includes what is still in the -wal file
        with _new_file_at(database) as tmp:
            src = sqlite3.connect(f"file:{backup}?mode=ro", uri=True)
            dst = sqlite3.connect(tmp)
            try:
                src.backup(dst)
            finally:
                src.close()
                dst.close()
            for suffix in ("-wal", "-shm"):  # they belong to the database being replaced
                database.with_name(database.name + suffix).unlink(missing_ok=True)
    finally:
        os.close(lock)
    return version, kept


def cmd_restore(cfg: ServerConfig, args: argparse.Namespace, out: TextIO) -> None:
    """Replace the database with ``args.file``; refused while the relay runs."""
    version, kept = restore_database(cfg.store.path, args.file)
    print(f"restored {cfg.store.path} from {args.file} (schema version {version}; the relay "
          f"upgrades it at start if needed)", file=out)  # fmt: skip
    if kept is not None:
        print(f"the previous database is kept as {kept}", file=out)


def _utc(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _certificate_line(cfg: ServerConfig, now: float) -> str:
    try:
        cert = x509.load_pem_x509_certificates(cfg.tls.cert.read_bytes())[0]
    except (OSError, ValueError) as e:
        return f"certificate\t{cfg.tls.cert}: unreadable ({e})"
    until = cert.not_valid_after_utc.timestamp()
    days = (until - now) / 86400
    state = "EXPIRED" if days < 0 else f"{days:.0f} days left"
    return f"certificate\t{cfg.tls.cert} valid until {_utc(until)} ({state})"


def cmd_status(cfg: ServerConfig, args: argparse.Namespace, out: TextIO) -> None:
    """One ``key<TAB>value`` line per fact, for people and for scripts."""
    path, now = cfg.store.path, time.time()
    if not path.exists():
        raise OperationError(f"no database at {path}; run '{PROG} --config ... init' first")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=schema.DEFAULT_BUSY_TIMEOUT)
    try:
        version = schema.read_version(conn, str(path))
        users = conn.execute("SELECT count(*), coalesce(sum(role = 'admin'), 0) FROM users")
        total, admins = users.fetchone()
        queued, size, oldest = queries.queue_stats(conn)
    except sqlite3.DatabaseError as e:
        raise StoreError(f"{path}: {e}") from None
    finally:
        conn.close()
    running = "running" if lockfile.in_use(path) else "not running"
    age = "-" if oldest is None else f"{_utc(oldest)} ({(now - oldest) / 3600:.1f} hours old)"
    for line in (
        f"database\t{path}",
        f"schema version\t{version} (this release: {schema.PACKAGED.latest})",
        f"relay\t{running}",
        f"users\t{total} ({admins} admins)",
        f"queued envelopes\t{queued}",
        f"queued bytes\t{size}",
        f"oldest envelope\t{age}",
        _certificate_line(cfg, now),
    ):
        print(line, file=out)
