"""Tests for securechat.server.ratelimit: token buckets, login back-off, send rate."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from securechat.config import AuthSection, PolicySection
from securechat.server.ratelimit import (
    MAX_KEY_LENGTH,
    BucketTable,
    LoginThrottle,
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


# -- LoginThrottle ------------------------------------------------------------------------------


def _throttle(clock: Clock, **kw: float) -> LoginThrottle:
    values = {"account_burst": 3, "account_rate": 0.5, "address_burst": 5, "address_rate": 1.0}
    values.update(kw)
    return LoginThrottle(now=clock.seconds, **values)  # type: ignore[arg-type]


def _fail(t: LoginThrottle, account: str, address: str) -> float:
    wait = t.check(account, address)
    if wait == 0:
        t.failed(account, address)
    return wait


def test_account_is_throttled_across_addresses(clock: Clock) -> None:
    """Failures for one account from many addresses exhaust the account's bucket."""
    t = _throttle(clock)
    assert [_fail(t, "alice", f"192.0.2.{i}") for i in range(3)] == [0, 0, 0]
    assert t.check("alice", "198.51.100.1") == pytest.approx(2.0)
    assert t.check("bob", "198.51.100.1") == 0  # other accounts are unaffected
    t.succeeded("bob", "198.51.100.1")
    clock.advance(2.0)
    assert t.check("alice", "198.51.100.1") == 0


def test_address_is_throttled_across_accounts(clock: Clock) -> None:
    """Failures from one address against many accounts exhaust the address's bucket."""
    t = _throttle(clock)
    assert all(_fail(t, f"user{i}", "203.0.113.9") == 0 for i in range(5))
    assert t.check("user99", "203.0.113.9") == pytest.approx(1.0)
    assert t.check("user99", "203.0.113.10") == 0
    t.succeeded("user99", "203.0.113.10")
    clock.advance(1.0)
    assert t.check("user99", "203.0.113.9") == 0


def test_ipv6_neighbours_share_an_address_bucket(clock: Clock) -> None:
    """Rotating through one /64 does not escape the per-address limit."""
    t = _throttle(clock)
    for i in range(5):
        assert _fail(t, f"user{i}", f"2001:db8::{i + 1:x}") == 0
    assert t.check("other", "2001:db8::ffff") > 0


def test_success_costs_nothing(clock: Clock) -> None:
    """Successful logins (reconnects) never throttle the account or the address."""
    t = _throttle(clock)
    for _ in range(100):
        assert t.check("alice", "192.0.2.1") == 0
        t.succeeded("alice", "192.0.2.1")


def test_concurrent_attempts_are_reserved(clock: Clock) -> None:
    """Attempts in flight hold their tokens: parallel logins cannot all pass one check."""
    t = _throttle(clock)
    assert [t.check("alice", f"192.0.2.{i}") for i in range(3)] == [0, 0, 0]
    assert t.check("alice", "192.0.2.9") > 0
    t.release("alice", "192.0.2.0")
    assert t.check("alice", "192.0.2.9") == 0


def test_refused_account_check_releases_address_reservation(clock: Clock) -> None:
    """When one bucket refuses, nothing stays reserved in the other."""
    t = _throttle(clock, account_burst=1)
    assert _fail(t, "alice", "192.0.2.1") == 0
    for _ in range(10):
        assert t.check("alice", "192.0.2.2") > 0
    assert t.addresses.get(address_key("192.0.2.2")).available() == 5


def test_failed_without_check_still_counts(clock: Clock) -> None:
    """failed() alone spends a token, so the throttle also works as a plain counter."""
    t = _throttle(clock)
    for _ in range(3):
        t.failed("alice", "192.0.2.1")
    assert t.check("alice", "192.0.2.1") > 0


def test_throttle_from_config_and_prune(clock: Clock) -> None:
    """from_config reads the [auth] section; prune empties refilled buckets."""
    t = LoginThrottle.from_config(AuthSection(account_burst=1, account_rate=0.1), clock.seconds)
    assert _fail(t, "alice", "192.0.2.1") == 0
    assert t.check("alice", "192.0.2.1") == pytest.approx(10.0)
    clock.advance(10)
    assert t.prune() == 2
    assert len(t.accounts) == len(t.addresses) == 0


def test_throttle_memory_is_bounded(clock: Clock) -> None:
    """A spray of account names and addresses cannot grow the tables past max_keys."""
    t = LoginThrottle(5, 0.2, 20, 1.0, clock.seconds, max_keys=50)
    for i in range(5000):
        _fail(t, f"guess{i}", f"10.{i // 256 % 256}.{i % 256}.1")
    assert len(t.accounts) <= 50
    assert len(t.addresses) <= 50


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
