# -*- test-case-name: tests.server.test_store_quota -*-
"""The free-space watermark: refuse new envelopes before the disk is full.

A relay whose disk fills up cannot even delete: SQLite writes a DELETE to the WAL first.
So new envelopes are refused (``unavailable`` with a ``retry_after``) while less than
``[store] min_free_bytes`` is free, which keeps room for acknowledgements, expiry, logins
and everything else that frees or barely uses space. Free space counts the filesystem's
free blocks available to the server plus the database's own free pages (space deleted
envelopes left inside the file, which new ones reuse first).

The check runs on the store's thread once per group commit, never per envelope. Keep
``min_free_bytes`` well above what one burst of commits and a WAL checkpoint write at once
(the WAL is checkpointed at about 4 MiB).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable

from securechat.errors import StoreError, StoreUnavailable

#: Seconds a free-space reading is reused (``statvfs`` costs about a microsecond, far
#: less than a commit, so every group commit reads it afresh by default).
RECHECK = 0.0
#: Seconds a refused sender is told to wait.
RETRY_AFTER = 10.0


class DiskSpace:
    """Free space of the filesystem that holds the database.

    :param directory: the database's directory.
    :param min_free: bytes that must stay free; 0 switches the check off.
    :param now: a monotonic clock (the store thread's, not the reactor's).
    :param statvfs: ``os.statvfs`` (tests substitute a fake filesystem).
    """

    def __init__(
        self,
        directory: str,
        min_free: int,
        now: Callable[[], float] = time.monotonic,
        statvfs: Callable[[str], os.statvfs_result] = os.statvfs,
    ) -> None:
        self.directory = directory
        self.min_free = min_free
        self._now = now
        self._statvfs = statvfs
        self._checked = -RECHECK
        self._fs_free = 0
        self._page_size = 0

    def free(self, conn: sqlite3.Connection) -> int:
        """Bytes available: the filesystem's plus the database's free pages."""
        now = self._now()
        if now - self._checked >= RECHECK or now <= self._checked:
            st = self._statvfs(self.directory)
            self._fs_free = st.f_bavail * st.f_frsize
            self._checked = now
        pages = conn.execute("PRAGMA freelist_count").fetchone()[0]
        if not self._page_size:
            self._page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        return int(self._fs_free + pages * self._page_size)

    def check(self, conn: sqlite3.Connection) -> StoreError | None:
        """The error new envelopes get now, or None when there is room."""
        if self.min_free <= 0:
            return None
        try:
            free = self.free(conn)
        except OSError as e:
            return StoreUnavailable(f"cannot read the free disk space: {e}", RETRY_AFTER)
        if free < self.min_free:
            return StoreUnavailable(
                f"disk almost full ({free} bytes free, {self.min_free} kept free)", RETRY_AFTER
            )
        return None
