# -*- test-case-name: tests.server.test_ratelimit -*-
"""Token buckets and their bounded tables; the per-user send rate.

The login throttle built from them is :mod:`securechat.server.loginthrottle`.

Everything here is pure: time comes from an injected ``now()`` callable (``reactor.seconds``
in the server, ``Clock.seconds`` in tests), nothing schedules calls or touches the reactor.

Why token buckets: a bucket of ``capacity`` tokens refilled at ``rate`` tokens per second
allows a short burst (a user mistyping a password twice, a client flushing its outbox) and
then a steady rate, with O(1) state per key and no timers.

Memory is bounded: a bucket that has refilled completely behaves exactly like a missing one,
so it is dropped; and each table holds at most ``max_keys`` keys, evicting the least
recently used when full. Eviction forgives an old key rather than refusing new ones,
because refusing would let an attacker with many addresses lock everybody out.

A bucket whose capacity or rate is zero (or less) is *unlimited*: in the configuration,
``0`` switches a limit off.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable

from securechat.config import PolicySection

#: Longest key kept as given; longer account names or addresses are cut (they are invalid
#: anyway, and cutting bounds the memory an attacker can make us hold per key).
MAX_KEY_LENGTH = 64
#: Default bound on the number of keys per table (about 150 bytes each).
DEFAULT_MAX_KEYS = 100_000
#: How many least-recently-used buckets are examined for idleness on each new key;
#: a small constant keeps each call O(1) while idle buckets still drain steadily.
_SWEEP_PER_INSERT = 2


class TokenBucket:
    """A token bucket that starts full.

    ``reserved`` counts tokens promised to operations still in flight (a password hash
    running on a thread): they are not available to others until committed or cancelled,
    so concurrent attempts cannot all pass one check before any of them fails.

    :param capacity: the largest burst, in tokens.
    :param rate: tokens added per second.
    :param now: the clock, in seconds.
    """

    __slots__ = ("_now", "_reserved", "_stamp", "_tokens", "capacity", "rate")

    def __init__(self, capacity: float, rate: float, now: Callable[[], float]) -> None:
        self.capacity = float(capacity)
        self.rate = float(rate)
        self._now = now
        self._tokens = self.capacity
        self._stamp = now()
        self._reserved = 0

    @property
    def unlimited(self) -> bool:
        """True when this bucket never refuses (zero capacity or rate switches it off)."""
        return self.capacity <= 0 or self.rate <= 0

    def _refill(self) -> float:
        t = self._now()
        # A clock that steps backwards (NTP) must not drain the bucket: ignore negative time.
        elapsed = max(0.0, t - self._stamp)
        self._stamp = t
        self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
        return self._tokens

    def available(self) -> float:
        """Tokens usable now: the balance minus what is reserved."""
        return self._refill() - self._reserved

    def wait_time(self, n: float = 1.0) -> float:
        """Seconds until ``n`` tokens are available; 0 if they are now, ``inf`` if never."""
        if self.unlimited:
            return 0.0
        if n > self.capacity:
            return math.inf
        missing = n - self.available()
        return 0.0 if missing <= 0 else missing / self.rate

    def take(self, n: float = 1.0) -> bool:
        """Consume ``n`` tokens if available; otherwise consume nothing and return False."""
        if self.unlimited:
            return True
        if self.available() < n:
            return False
        self._tokens -= n
        return True

    def reserve(self) -> bool:
        """Promise one token to an in-flight operation, if one is available."""
        if self.unlimited:
            return True
        if self.available() < 1:
            return False
        self._reserved += 1
        return True

    def commit(self) -> None:
        """Spend a token: the reserved one if there is one, otherwise one from the balance.

        The balance never goes below zero, so a flood of failures cannot push recovery
        arbitrarily far into the future (the caller is already refused while it is empty).
        """
        if self.unlimited:
            return
        self._refill()
        if self._reserved > 0:
            self._reserved -= 1
        self._tokens = max(0.0, self._tokens - 1)

    def spend(self) -> None:
        """Spend a token from the balance (down to zero), leaving reservations alone."""
        if self.unlimited:
            return
        self._refill()
        self._tokens = max(0.0, self._tokens - 1)

    def charge(self, max_debt_bursts: float) -> None:
        """Spend a token even when there is none, down to ``max_debt_bursts`` bursts of
        debt: a refused attempt pushes the next allowed one further away, boundedly."""
        if self.unlimited or self._refill() >= 1:  # refused only for others' reservations
            return
        self._tokens = max(-self.capacity * max_debt_bursts, self._tokens - 1)

    def cancel(self) -> None:
        """Release a reservation without spending it."""
        if self._reserved > 0:
            self._reserved -= 1

    def idle(self) -> bool:
        """True when the bucket is full with nothing reserved: dropping it changes nothing."""
        return self._reserved == 0 and self._refill() >= self.capacity


class BucketTable:
    """Token buckets by key, with bounded memory.

    :param capacity: burst of each bucket.
    :param rate: refill rate of each bucket, per second.
    :param now: the clock.
    :param max_keys: at most this many buckets are kept.
    """

    def __init__(
        self,
        capacity: float,
        rate: float,
        now: Callable[[], float],
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.capacity = capacity
        self.rate = rate
        self.max_keys = max_keys
        self._now = now
        # dicts keep insertion order; re-inserting on use makes the first key the LRU one.
        self._buckets: dict[str, TokenBucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    @property
    def unlimited(self) -> bool:
        """True when buckets of this table never refuse."""
        return self.capacity <= 0 or self.rate <= 0

    def peek(self, key: str) -> TokenBucket | None:
        """The bucket for ``key`` if one is kept, without creating or touching it."""
        return self._buckets.get(key[:MAX_KEY_LENGTH])

    def get(self, key: str) -> TokenBucket:
        """The bucket for ``key``, created full if absent, marked most recently used."""
        key = key[:MAX_KEY_LENGTH]
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            self._sweep()
            bucket = TokenBucket(self.capacity, self.rate, self._now)
        self._buckets[key] = bucket
        return bucket

    def wait_time(self, key: str, n: float = 1.0) -> float:
        """Seconds until ``key`` has ``n`` tokens; a missing key is a full bucket."""
        if self.unlimited:
            return 0.0
        bucket = self.peek(key)
        if bucket is None:
            return 0.0 if n <= self.capacity else math.inf
        return bucket.wait_time(n)

    def _sweep(self) -> None:
        """Make room for one key: drop a few idle LRU buckets, then the LRU one if full."""
        for key in list(self._buckets)[:_SWEEP_PER_INSERT]:
            if self._buckets[key].idle():
                del self._buckets[key]
        while len(self._buckets) >= self.max_keys:
            del self._buckets[next(iter(self._buckets))]

    def prune(self) -> int:
        """Drop every idle bucket (for a periodic timer); returns how many were dropped."""
        idle = [k for k, b in self._buckets.items() if b.idle()]
        for key in idle:
            del self._buckets[key]
        return len(idle)


def address_key(host: str) -> str:
    """The throttling key for a peer address.

    One IPv6 subscriber usually gets a whole /64 (RFC 6177), so limiting single IPv6
    addresses would be no limit at all: IPv6 addresses are grouped by their /64 prefix.
    IPv4-mapped IPv6 addresses count as the IPv4 address.
    """
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host[:MAX_KEY_LENGTH]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class SendLimiter:
    """Envelopes per second per user (``[policy] send_rate``, ``send_burst``).

    Kept per user, not per connection, so reconnecting does not refill the bucket; the
    table forgets users whose bucket has refilled, so memory follows the active senders.
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        now: Callable[[], float],
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        self.table = BucketTable(burst, rate, now, max_keys)

    @classmethod
    def from_config(
        cls, policy: PolicySection, now: Callable[[], float], max_keys: int = DEFAULT_MAX_KEYS
    ) -> SendLimiter:
        """Build from ``[policy] send_rate/send_burst``."""
        return cls(policy.send_rate, policy.send_burst, now, max_keys)

    def take(self, user: str, n: int = 1) -> bool:
        """Consume ``n`` tokens for ``user``'s batch of ``n`` envelopes, or refuse all of it.

        A batch larger than the burst can never pass: the caller must split or refuse it.
        """
        if self.table.unlimited:
            return True
        return self.table.get(user).take(n)

    def wait_time(self, user: str, n: int = 1) -> float:
        """Seconds until ``user`` may send ``n`` envelopes (``inf`` if ``n`` exceeds the burst)."""
        return self.table.wait_time(user, n)

    def prune(self) -> int:
        """Drop idle buckets; returns how many were dropped."""
        return self.table.prune()
