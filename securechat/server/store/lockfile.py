"""``DATABASE.lock``: how ``securechat-admin restore`` knows that a relay uses the database.

A running relay holds a *shared* ``flock`` on the lock file next to its SQLite database
for as long as its store is open; ``restore`` takes an *exclusive* one without waiting,
so it fails while any relay runs on that file, and no relay can open the database while a
restore runs. The kernel drops the lock when the process dies (even by ``kill -9``), so a
crash never leaves a stale lock behind, unlike a pid file.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from securechat.errors import StoreError


def lock_path(database: Path) -> Path:
    """The lock file of ``database``."""
    return database.with_name(database.name + ".lock")


def _open(database: Path) -> int:
    path = lock_path(database)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)


def hold_shared(database: Path) -> int:
    """Take the relay's shared lock; returns the descriptor to keep open (and close).

    :raises StoreError: while a restore holds the database.
    """
    fd = _open(database)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(f"{database} is being restored; try again when that is done") from None
    return fd


def take_exclusive(database: Path) -> int | None:
    """The exclusive lock (a descriptor to close when done), or None while a relay runs."""
    fd = _open(database)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def in_use(database: Path) -> bool:
    """True while a relay (or a restore) holds ``database``."""
    fd = take_exclusive(database)
    if fd is None:
        return True
    os.close(fd)
    return False
