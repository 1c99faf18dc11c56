"""Opening the SQLite database: connection settings, schema creation and migration.

Shared by the server's :class:`~securechat.server.store.sqlite.SQLiteStore` (on its pool
thread) and by ``securechat-admin`` (synchronously), so that both always agree on the file
format. The schema lives in versioned files shipped with the package: ``schema/v<N>.sql``
creates version N from nothing, ``schema/upgrade-v<N-1>-to-v<N>.sql`` moves an existing
file one step forward, and the one-row ``schema_version`` table says where a file stands.

A new file is built under a temporary name and renamed into place, so a crash or a bad
schema never leaves a half-created database behind. Before an upgrade a consistent copy
is saved as ``<file>-backup-v<old>``, so an operator can go back.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

from securechat.errors import StoreError

MEMORY = ":memory:"

#: Default time a connection waits for another writer (the admin tool, the server) before
#: giving up with "database is locked"; admin transactions are short, so this is generous.
DEFAULT_BUSY_TIMEOUT = 5.0

_SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL"}


class SchemaFiles:
    """Where schema scripts come from; tests substitute their own to exercise migrations.

    :param read: returns the text of a file in the schema directory, or raises
        ``FileNotFoundError``.
    :param latest: the version a fresh database gets.
    """

    def __init__(self, read: Callable[[str], str], latest: int) -> None:
        self.read = read
        self.latest = latest

    def create_script(self, version: int) -> str:
        """The script that builds ``version`` in an empty database."""
        return self.read(f"v{version}.sql")

    def upgrade_script(self, old: int) -> str:
        """The script that moves a database from ``old`` to ``old + 1``."""
        return self.read(f"upgrade-v{old}-to-v{old + 1}.sql")


def _read_packaged(name: str) -> str:
    return resources.files(__package__).joinpath("schema", name).read_text(encoding="utf-8")


def _latest_packaged() -> int:
    names = [p.name for p in resources.files(__package__).joinpath("schema").iterdir()]
    versions = [int(n[1:-4]) for n in names if n.startswith("v") and n.endswith(".sql")]
    return max(versions)


#: The schema files shipped in ``securechat/server/store/schema``.
PACKAGED = SchemaFiles(_read_packaged, _latest_packaged())


def configure(conn: sqlite3.Connection, synchronous: str, busy_timeout: float) -> None:
    """Per-connection settings every securechat connection needs.

    ``busy_timeout`` makes the server and the admin tool wait for each other's short
    transactions instead of failing at once, and ``synchronous`` decides whether each
    commit is fsynced (``full``: accepted envelopes survive power loss) or only the WAL
    checkpoints are (``normal``). WAL itself is switched on by :func:`migrate`, once the
    file is known to be ours: it is a persistent change to the file.
    """
    if synchronous not in _SYNCHRONOUS:
        raise StoreError(f"unknown synchronous mode {synchronous!r}")
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA synchronous = {_SYNCHRONOUS[synchronous]}")
    # Debian's SQLite is built with secure_delete on: every deleted page is overwritten,
    # so acknowledging an envelope would write (and need free disk for) as much as
    # storing it did, and on a full disk the deletes that would free space fail. FAST
    # still purges b-tree pages it rewrites anyway; freed overflow pages keep their old
    # (end-to-end encrypted) bytes until reused.
    conn.execute("PRAGMA secure_delete = FAST")


def enable_wal(conn: sqlite3.Connection, shown: str = MEMORY) -> None:
    """Put the file in WAL mode, which lets readers and one writer work at the same time
    (the admin tool writes while the server runs). Persistent; a no-op once done."""
    try:
        mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
    except sqlite3.Error as e:
        raise StoreError(f"{shown}: cannot switch to WAL mode ({e})") from None
    if mode not in ("wal", "memory"):
        raise StoreError(f"{shown}: cannot switch to WAL mode (got {mode})")


def connect(
    path: str,
    synchronous: str = "full",
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    check_same_thread: bool = True,
) -> sqlite3.Connection:
    """Open ``path`` in autocommit mode, configured by :func:`configure`.

    Autocommit (``isolation_level=None``) because the query functions issue their own
    ``BEGIN IMMEDIATE``: Python's implicit transactions would start only at the first
    write, after reads that the write depends on.
    """
    conn = sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=check_same_thread
    )
    try:
        configure(conn, synchronous, busy_timeout)
    except sqlite3.DatabaseError as e:
        conn.close()
        raise StoreError(f"{path}: not a usable securechat database ({e})") from None
    return conn


def read_version(conn: sqlite3.Connection, shown: str = MEMORY) -> int | None:
    """The file's schema version, or ``None`` for an empty database.

    :raises StoreError: for a file that is not SQLite, or SQLite without our table.
    """
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            return None
        if "schema_version" not in tables:
            raise StoreError(f"{shown}: not a securechat database (no schema_version table)")
        rows = conn.execute("SELECT version FROM schema_version").fetchall()
    except sqlite3.DatabaseError as e:
        raise StoreError(f"{shown}: not a securechat database ({e})") from None
    if len(rows) != 1 or not isinstance(rows[0][0], int):
        raise StoreError(f"{shown}: damaged schema_version table")
    return int(rows[0][0])


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    """Run ``script`` in one transaction: all of it is applied, or none.

    ``executescript`` commits any open transaction first, so the BEGIN and COMMIT are
    part of the script itself.
    """
    try:
        conn.executescript(f"BEGIN IMMEDIATE;\n{script}\nCOMMIT;")
    except sqlite3.Error:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def create_schema(conn: sqlite3.Connection, files: SchemaFiles = PACKAGED) -> None:
    """Build the latest schema in the empty database ``conn``."""
    _run_script(conn, files.create_script(files.latest))


def migrate(conn: sqlite3.Connection, shown: str = MEMORY, files: SchemaFiles = PACKAGED) -> int:
    """Create or upgrade the schema of ``conn`` to ``files.latest``; return the old version.

    An empty database counts as version 0. Nothing in the file changes (not even the
    journal mode) until it is known to be a securechat database. A file on disk is backed
    up before the first upgrade step (``:memory:`` has nothing worth keeping).

    :raises StoreError: for a foreign or damaged file, a version newer than this code, a
        missing upgrade script, or a failing upgrade (which leaves the file untouched).
    """
    version = read_version(conn, shown)
    enable_wal(conn, shown)
    if version is None:
        try:
            create_schema(conn, files)
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"{shown}: cannot create the schema ({e})") from None
        return 0
    if version > files.latest:
        raise StoreError(
            f"{shown}: schema version {version} is newer than this securechat supports "
            f"({files.latest}); upgrade securechat"
        )
    if version < files.latest and shown != MEMORY:
        _backup(conn, f"{shown}-backup-v{version}")
    for old in range(version, files.latest):
        try:
            _run_script(conn, files.upgrade_script(old))
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"{shown}: cannot upgrade from version {old} ({e})") from None
    return version


def _backup(conn: sqlite3.Connection, target: str) -> None:
    """Copy the database consistently (the online backup API), private to the owner."""
    try:
        with contextlib.closing(sqlite3.connect(target)) as dest:
            conn.backup(dest)
        os.chmod(target, 0o600)
    except (sqlite3.Error, OSError) as e:
        raise StoreError(f"cannot back up the database to {target} ({e})") from None


def prepare_file(path: Path, files: SchemaFiles = PACKAGED) -> bool:
    """Make sure ``path`` exists as a securechat database; return True if created now.

    The parent directory is created private (0700). A new file is built as a temporary
    file in the same directory, created 0600 before anything is written to it, and renamed
    into place only once its schema is committed: the database either exists completely
    or not at all. An existing file is left alone here; :func:`migrate` upgrades it.
    """
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.exists():
            return False
        tmp = path.with_name(f".{path.name}.creating-{os.getpid()}")
        with _removed_on_error(tmp):
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
            with contextlib.closing(sqlite3.connect(tmp, isolation_level=None)) as conn:
                create_schema(conn, files)
            os.replace(tmp, path)
    except (sqlite3.Error, OSError) as e:
        raise StoreError(f"{path}: cannot create the database ({e})") from None
    return True


@contextlib.contextmanager
def _removed_on_error(tmp: Path) -> Iterator[None]:
    try:
        yield
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def open_database(
    path: Path | str,
    synchronous: str = "full",
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    files: SchemaFiles = PACKAGED,
    check_same_thread: bool = True,
) -> sqlite3.Connection:
    """Create or open, configure and migrate the database: what the admin tool uses."""
    shown = str(path)
    if shown != MEMORY:
        prepare_file(Path(path), files)
    conn = connect(shown, synchronous, busy_timeout, check_same_thread)
    try:
        migrate(conn, shown, files)
    except BaseException:
        conn.close()
        raise
    return conn
