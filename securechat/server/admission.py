# -*- test-case-name: tests.server.test_admission -*-
"""Pre-login limits: connections per address, before and after login, and frame size.

An unauthenticated peer costs the server a TLS session, a protocol object and whatever
it has buffered until the login deadline. Without a limit, one address could open
hundreds of such connections and hold their memory (issue 10: 300 parked connections,
404 MB). :class:`Admission` counts, per address (IPv6 grouped by /64, as the login
throttle does), all open connections and those not logged in yet ("pending"), and the
protocol refuses a connection that would exceed either, before TLS even starts.

Before login a frame may be at most ``[server] prelogin_max_frame_bytes`` (16 KiB): nothing
before login needs more, and a connection cannot park a large buffer unauthenticated.

The counts live only while connections do: an address whose count falls to zero is
forgotten, so the tables hold at most one entry per open connection.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

from securechat.config import ServerSection
from securechat.server.memory import Trimmer
from securechat.server.ratelimit import address_key

#: At most one log line per this many seconds about refused connections (with a count).
LOG_INTERVAL = 10.0


class Admission:
    """Counts of open and pending connections per address.

    :param max_open: connections per address at most (0: no limit).
    :param max_pending: connections per address not logged in yet, at most (0: no limit).
    :param now: the clock, for rate-limiting the log line about refusals.
    :param frame_bytes: the largest frame before login.
    """

    log = Logger()

    def __init__(
        self, max_open: int, max_pending: int, now: Callable[[], float], frame_bytes: int = 16384
    ) -> None:
        self.frame_bytes = frame_bytes
        self.max_open = max_open
        self.max_pending = max_pending
        self._now = now
        self.open: dict[str, int] = {}
        self.pending: dict[str, int] = {}
        self.refused = 0
        self.trimmer = Trimmer(now)
        self._unlogged = 0
        self._logged_at = -LOG_INTERVAL

    @classmethod
    def from_config(cls, server: ServerSection, now: Callable[[], float]) -> Admission:
        """From ``[server]``; the pre-login frame limit never exceeds ``max_frame_bytes``."""
        frame = min(server.prelogin_max_frame_bytes, server.max_frame_bytes)
        return cls(server.max_connections_per_address, server.max_pending_per_address, now, frame)

    def admit(self, host: str) -> str | None:
        """Count a new connection from ``host``; its key, or None if it must be refused."""
        key = address_key(host)
        opened, pending = self.open.get(key, 0), self.pending.get(key, 0)
        if (self.max_open and opened >= self.max_open) or (
            self.max_pending and pending >= self.max_pending
        ):
            self._refused(key)
            return None
        self.open[key] = opened + 1
        self.pending[key] = pending + 1
        return key

    def logged_in(self, key: str) -> None:
        """The connection counted under ``key`` is no longer pending."""
        _decrement(self.pending, key)

    def closed(self, key: str, pending: bool) -> None:
        """The connection counted under ``key`` is gone."""
        _decrement(self.open, key)
        if pending:
            _decrement(self.pending, key)
        self.trimmer.closed(burst_over=pending and not self.pending)

    def _refused(self, key: str) -> None:
        self.refused += 1
        self._unlogged += 1
        now = self._now()
        if now - self._logged_at >= LOG_INTERVAL:
            self.log.warn(
                "refused {count} connection(s) over the per-address limits (latest from {key})",
                count=self._unlogged, key=key,
            )  # fmt: skip
            self._logged_at, self._unlogged = now, 0


def _decrement(table: dict[str, int], key: str) -> None:
    n = table.get(key, 0) - 1
    if n > 0:
        table[key] = n
    else:
        table.pop(key, None)
