"""Tests for securechat.server.loginthrottle: nobody can lock an account's owner out."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from securechat.config import AuthSection
from securechat.server.loginthrottle import ALLOW, LoginThrottle, Verdict

OWNER, ATTACKER = "192.0.2.1", "203.0.113.9"


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _throttle(clock: Clock, **kw: float) -> LoginThrottle:
    values: dict[str, float] = {
        "pair_burst": 3, "pair_rate": 0.5, "address_burst": 5, "address_rate": 1.0,
        "account_burst": 4, "account_rate": 0.1, "login_pow_bits": 12,
    }  # fmt: skip
    values.update(kw)
    return LoginThrottle(now=clock.seconds, **values)  # type: ignore[arg-type]


def _fail(t: LoginThrottle, account: str, address: str, proof: bool = False) -> Verdict:
    verdict = t.check(account, address, proof)
    if verdict.allowed:
        t.failed(account, address, verdict)
    return verdict


def _succeed(t: LoginThrottle, account: str, address: str, proof: bool = False) -> Verdict:
    verdict = t.check(account, address, proof)
    if verdict.allowed:
        t.succeeded(account, address, verdict)
    return verdict


def test_pair_limit_refuses_only_that_address(clock: Clock) -> None:
    """The punitive limit is per (account, address): the owner elsewhere is unaffected."""
    t = _throttle(clock)
    assert [_fail(t, "alice", ATTACKER).allowed for _ in range(3)] == [True] * 3
    assert t.check("alice", ATTACKER).wait == pytest.approx(4.0)  # 2 tokens short: 1 + debt
    assert _succeed(t, "alice", OWNER).allowed


def test_refused_attempts_push_the_attacker_back(clock: Clock) -> None:
    """Polling while refused costs the attacker: each refusal deepens its debt (bounded)."""
    t = _throttle(clock)
    for _ in range(3):
        _fail(t, "alice", ATTACKER)
    waits = [t.check("alice", ATTACKER).wait for _ in range(10)]
    assert waits == sorted(waits) and waits[0] < waits[-1]
    assert waits[-1] == pytest.approx((1 + 3) / 0.5)  # at most one burst of debt
    clock.advance(waits[-1])
    assert t.check("alice", ATTACKER).allowed


def test_address_limit_across_accounts(clock: Clock) -> None:
    """One address spraying many accounts is refused; other addresses are not."""
    t = _throttle(clock)
    assert all(_fail(t, f"user{i}", ATTACKER).allowed for i in range(5))
    assert t.check("user99", ATTACKER).wait > 0
    assert t.check("user99", "203.0.113.10").allowed


def test_account_limit_asks_unknown_addresses_for_work(clock: Clock) -> None:
    """Failures spread over addresses make unknown addresses pay a proof of work; the
    owner's known address goes straight in, and a proof lets a new address in too."""
    t = _throttle(clock)
    assert _succeed(t, "alice", OWNER).allowed  # alice's usual address
    for i in range(4):
        assert _fail(t, "alice", f"198.51.100.{i}").allowed
    assert t.check("alice", "198.51.100.77") == Verdict(pow_bits=12)  # a price, not a refusal
    assert _succeed(t, "alice", OWNER).allowed
    assert _succeed(t, "alice", "198.51.100.77", proof=True).allowed
    assert _succeed(t, "alice", "198.51.100.77") == ALLOW  # known now: no more work
    assert t.check("bob", "198.51.100.78").allowed  # other accounts are not affected


def test_known_address_expires(clock: Clock) -> None:
    """A success keeps an address known for known_address_ttl only."""
    t = _throttle(clock, known_address_ttl=100.0, account_rate=0.0001)
    _succeed(t, "alice", OWNER)
    for i in range(4):
        _fail(t, "alice", f"198.51.100.{i}")
    assert t.check("alice", OWNER).allowed
    t.release("alice", OWNER)
    clock.advance(101)
    assert t.check("alice", OWNER).pow_bits == 12


def test_zero_bits_switches_proof_of_work_off(clock: Clock) -> None:
    t = _throttle(clock, login_pow_bits=0)
    for i in range(6):
        _fail(t, "alice", f"198.51.100.{i}")
    assert t.check("alice", "198.51.100.99").allowed


def test_signature_logins_ignore_password_failures(clock: Clock) -> None:
    """Public-key and certificate logins have their own bucket."""
    t = _throttle(clock)
    for i in range(5):
        _fail(t, f"user{i}", ATTACKER)
    assert t.check("alice", ATTACKER).wait > 0
    assert t.check_signature(ATTACKER).allowed
    t.release_signature(ATTACKER)
    for _ in range(5):
        assert t.check_signature(ATTACKER).allowed
        t.failed_signature(ATTACKER)
    assert t.check_signature(ATTACKER).wait > 0


def test_concurrent_attempts_are_reserved(clock: Clock) -> None:
    """Attempts in flight hold their tokens: parallel logins cannot all pass one check."""
    t = _throttle(clock)
    assert [t.check("alice", ATTACKER).allowed for _ in range(3)] == [True] * 3
    assert t.check("alice", ATTACKER).wait > 0
    t.release("alice", ATTACKER)
    assert t.check("alice", ATTACKER).allowed


def test_from_config_and_prune(clock: Clock) -> None:
    """from_config reads [auth]; prune forgets refilled buckets and expired addresses."""
    auth = AuthSection(pair_burst=1, pair_rate=0.1, known_address_ttl=50.0)
    t = LoginThrottle.from_config(auth, clock.seconds)
    assert _fail(t, "alice", ATTACKER).allowed
    assert t.check("alice", ATTACKER).wait == pytest.approx(20.0)
    _succeed(t, "alice", OWNER)
    clock.advance(3600)
    assert t.prune() >= 4
    assert len(t.pairs) == len(t.addresses) == len(t.accounts) == len(t.known) == 0


def test_memory_is_bounded(clock: Clock) -> None:
    """A spray of names and addresses cannot grow the tables past max_keys."""
    t = LoginThrottle(now=clock.seconds, max_keys=50)
    for i in range(2000):
        address = f"10.{i // 256 % 256}.{i % 256}.1"
        _fail(t, f"guess{i}", address)
        _succeed(t, f"user{i}", address)
    assert max(len(t.pairs), len(t.addresses), len(t.accounts), len(t.known)) <= 50
