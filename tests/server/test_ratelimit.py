"""Tests for securechat.server.ratelimit: token buckets and the send rate."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from securechat.config import PolicySection
from securechat.server.ratelimit import (
    MAX_KEY_LENGTH,
    BucketTable,
    SendLimiter,
    TokenBucket,
    address_key,
)


@pytest.fixture
def clock() -> Clock:
    return Clock()


# -- TokenBucket ------------------------------------------------------------------------


def test_bucket_allows_burst_then_refuses(clock: Clock) -> None:
    """A new bucket is full: ``capacity`` takes pass, the next one is refused."""
    b = TokenBucket(3, 1.0, clock.seconds)
    assert [b.take() for _ in range(4)] == [True, True, True, False]


def test_bucket_refills_at_rate_and_caps_at_capacity(clock: Clock) -> None:
    """Tokens come back at ``rate`` per second, never above ``capacity``."""
    b = TokenBucket(2, 0.5, clock.seconds)
    assert b.take(2)
    clock.advance(1.0)
    assert b.available() == pytest.approx(0.5)
    assert not b.take()
    clock.advance(1.0)
    assert b.take()
    clock.advance(1000)
    assert b.available() == 2


def test_bucket_wait_time(clock: Clock) -> None:
    """wait_time says exactly when enough tokens will be there; inf beyond capacity."""
    b = TokenBucket(4, 2.0, clock.seconds)
    assert b.wait_time(4) == 0
    assert b.take(4)
    assert b.wait_time(1) == pytest.approx(0.5)
    assert b.wait_time(3) == pytest.approx(1.5)
    assert b.wait_time(5) == math.inf
    clock.advance(0.5)
    assert b.wait_time(1) == 0


def test_failed_take_consumes_nothing(clock: Clock) -> None:
    """A refused take leaves the balance unchanged (all or nothing)."""
    b = TokenBucket(5, 1.0, clock.seconds)
    assert b.take(4)
    assert not b.take(2)
    assert b.available() == 1


def test_clock_stepping_back_does_not_change_balance(clock: Clock) -> None:
    """A clock that jumps backwards neither drains nor refills the bucket."""
    t = [100.0]
    b = TokenBucket(2, 1.0, lambda: t[0])
    assert b.take(2)
    t[0] = 50.0
    assert b.available() == 0
    t[0] = 51.0
    assert b.available() == 1


@pytest.mark.parametrize(("capacity", "rate"), [(0, 1.0), (5, 0.0), (-1, 1.0)])
def test_zero_capacity_or_rate_means_unlimited(clock: Clock, capacity: int, rate: float) -> None:
    """In the configuration 0 switches a limit off: such a bucket never refuses."""
    b = TokenBucket(capacity, rate, clock.seconds)
    assert b.unlimited
    assert all(b.take(1000) for _ in range(100))
    assert b.wait_time(10**9) == 0
    assert b.reserve()


def test_reservations_hold_tokens_until_commit_or_cancel(clock: Clock) -> None:
    """Reserved tokens are unavailable; commit spends them, cancel gives them back."""
    b = TokenBucket(2, 1.0, clock.seconds)
    assert b.reserve()
    assert b.reserve()
    assert not b.reserve()
    assert not b.idle()
    b.commit()
    assert b.available() == 0
    b.cancel()
    assert b.available() == 1
    b.cancel()  # nothing reserved any more: a no-op
    assert b.available() == 1


def test_commit_without_reservation_never_goes_negative(clock: Clock) -> None:
    """A flood of failures empties the bucket but cannot push recovery further away."""
    b = TokenBucket(2, 1.0, clock.seconds)
    for _ in range(50):
        b.commit()
    assert b.available() == 0
    assert b.wait_time() == pytest.approx(1.0)


# -- BucketTable --------------------------------------------------------------------------


def test_table_never_exceeds_max_keys(clock: Clock) -> None:
    """However many distinct keys arrive, at most ``max_keys`` buckets are kept."""
    table = BucketTable(5, 1.0, clock.seconds, max_keys=100)
    for i in range(10_000):
        table.get(f"key{i}").take()
        assert len(table) <= 100
    assert len(table) == 100


def test_table_evicts_least_recently_used(clock: Clock) -> None:
    """When full of busy buckets, the least recently used one is forgiven first."""
    table = BucketTable(5, 1.0, clock.seconds, max_keys=3)
    for k in ("a", "b", "c"):
        table.get(k).take(5)
    table.get("a").take(0)  # touch a: b is now the oldest
    table.get("d").take(5)
    assert table.peek("b") is None
    assert all(table.peek(k) is not None for k in ("a", "c", "d"))


def test_table_drops_idle_buckets_as_keys_arrive(clock: Clock) -> None:
    """Buckets that refilled completely are dropped without waiting for the cap."""
    table = BucketTable(2, 1.0, clock.seconds, max_keys=1000)
    for i in range(10):
        table.get(f"old{i}").take()
    clock.advance(10)  # all refilled: idle
    for i in range(10):
        table.get(f"new{i}").take()
    assert all(table.peek(f"old{i}") is None for i in range(10))
    assert len(table) == 10


def test_table_prune_drops_only_idle_buckets(clock: Clock) -> None:
    """prune() removes refilled buckets and keeps the ones still owed tokens."""
    table = BucketTable(2, 1.0, clock.seconds)
    table.get("busy").take(2)
    table.get("light").take(1)
    clock.advance(1.5)
    assert table.prune() == 1
    assert table.peek("light") is None
    assert table.peek("busy") is not None


def test_table_cuts_long_keys(clock: Clock) -> None:
    """Keys are truncated, so one huge key cannot cost more than a short one."""
    table = BucketTable(1, 1.0, clock.seconds)
    assert table.get("x" * 10_000).take()
    assert not table.get("x" * MAX_KEY_LENGTH).take()
    assert len(table) == 1


def test_table_rejects_zero_max_keys(clock: Clock) -> None:
    """A table that can hold nothing is a configuration error."""
    with pytest.raises(ValueError, match="max_keys"):
        BucketTable(1, 1.0, clock.seconds, max_keys=0)


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(st.tuples(st.integers(0, 40), st.floats(0, 5), st.integers(1, 3)), max_size=200)
)
def test_table_bounds_hold_for_any_sequence(ops: list[tuple[int, float, int]]) -> None:
    """For any interleaving of keys, waits and takes: size <= max_keys, 0 <= tokens <= cap."""
    clock = Clock()
    table = BucketTable(3, 0.7, clock.seconds, max_keys=8)
    for key, wait, n in ops:
        clock.advance(wait)
        bucket = table.get(str(key))
        bucket.take(n)
        assert len(table) <= 8
        assert 0 <= bucket.available() <= 3


# -- address_key ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("not-an-address", "not-an-address"),
        ("z" * 500, "z" * MAX_KEY_LENGTH),
    ],
)
def test_address_key(host: str, key: str) -> None:
    """IPv6 peers are grouped by /64 (one subscriber's allocation); IPv4 stays as is."""
    assert address_key(host) == key


# -- SendLimiter -----------------------------------------------------------------------------


def test_send_limiter_burst_then_rate(clock: Clock) -> None:
    """A user may send a burst, then ``rate`` envelopes per second; batches count fully."""
    s = SendLimiter(rate=10, burst=20, now=clock.seconds)
    assert s.take("alice", 15)
    assert not s.take("alice", 6)
    assert s.take("alice", 5)
    assert not s.take("alice")
    assert s.wait_time("alice", 5) == pytest.approx(0.5)
    clock.advance(0.5)
    assert s.take("alice", 5)
    assert s.take("bob", 20)  # per user


def test_send_limiter_batch_larger_than_burst_never_passes(clock: Clock) -> None:
    """A batch above the burst is refused outright; the caller must split it."""
    s = SendLimiter(rate=10, burst=20, now=clock.seconds)
    assert not s.take("alice", 21)
    assert s.wait_time("alice", 21) == math.inf
    assert s.take("alice", 20)


def test_send_limiter_from_config_unlimited_and_bounded(clock: Clock) -> None:
    """send_rate = 0 switches the limit off; the table stays bounded."""
    off = SendLimiter.from_config(PolicySection(send_rate=0.0), clock.seconds)
    assert all(off.take("alice", 10_000) for _ in range(10))
    s = SendLimiter.from_config(PolicySection(send_rate=1.0, send_burst=2), clock.seconds, 10)
    for i in range(1000):
        s.take(f"user{i}", 2)
    assert len(s.table) == 10
    clock.advance(5)
    assert s.prune() == 10
    assert len(s.table) == 0
