"""Tests for securechat.server.hashgate and securechat.server.registrationlimits."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from securechat.config import AuthSection
from securechat.server.autherrors import Busy
from securechat.server.hashgate import HashGate
from securechat.server.passwords import (
    DEFAULT_PARAMS,
    hash_memory_kib,
    hash_password,
    params_memory_kib,
    verify_password,
)
from securechat.server.registrationlimits import BURST_FLOOR_BITS, RegistrationLimits
from tests.server.harness import CHEAP


class ManualRunner:
    """A ThreadRunner whose calls finish when the test says so."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, Deferred[Any]]] = []

    def __call__(self, f: Any, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((args, d))
        return d

    def finish(self, i: int = 0) -> None:
        args, d = self.calls.pop(i)
        d.callback(args)


def test_memory_in_flight_is_bounded_and_the_rest_waits_in_order() -> None:
    runner, clock = ManualRunner(), Clock()
    gate = HashGate(128 * 1024, runner, clock, default_cost_kib=64 * 1024)
    results: list[Any] = []
    for n in range(5):
        gate(hash_password, n).addCallback(results.append)
    assert len(runner.calls) == 2 and len(gate) == 3 and gate.in_flight_kib == 128 * 1024
    runner.finish()
    assert [a[0] for a, _ in runner.calls] == [1, 2]  # FIFO
    while runner.calls:
        runner.finish()
    assert results == [(0,), (1,), (2,), (3,), (4,)] and gate.peak_running == 2
    assert gate.in_flight_kib == 0


def test_queue_deadline_and_limit_give_busy() -> None:
    runner, clock = ManualRunner(), Clock()
    gate = HashGate(64 * 1024, runner, clock, 64 * 1024, queue_timeout=5.0, max_queued=1)
    gate(hash_password, "a")
    waiting = gate(hash_password, "b")
    full = gate(hash_password, "c")
    assert isinstance(full.result.value, Busy)  # type: ignore[attr-defined]
    full.addErrback(lambda f: None)
    clock.advance(5.0)
    failure: list[Any] = []
    waiting.addErrback(failure.append)
    assert failure and failure[0].check(Busy) and failure[0].value.retry_after == 5.0
    runner.finish()
    assert gate.in_flight_kib == 0 and not runner.calls  # the expired one never runs


def test_verification_costs_what_its_hash_says() -> None:
    stored = hash_password("a password", "argon2id", CHEAP)
    gate = HashGate(1 << 20, ManualRunner(), Clock(), 64 * 1024)
    assert gate.cost_of(verify_password, (stored, "x")) == hash_memory_kib(stored)
    assert gate.cost_of(verify_password, ("garbage", "x")) == 0
    assert params_memory_kib("argon2id", DEFAULT_PARAMS) == 64 * 1024
    assert params_memory_kib("scrypt", DEFAULT_PARAMS) == 128 * 1024


def test_from_config() -> None:
    gate = HashGate.from_config(AuthSection(hash_memory_mib=256), DEFAULT_PARAMS,
                                ManualRunner(), Clock())  # fmt: skip
    assert gate.budget_kib == 256 * 1024


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_registrations_per_address(clock: Clock) -> None:
    limits = RegistrationLimits(now=clock.seconds, address_burst=2, address_rate=0.01)
    assert [limits.check("192.0.2.1") for _ in range(2)] == [0.0, 0.0]
    assert limits.check("192.0.2.1") == pytest.approx(100.0)
    assert limits.check("192.0.2.2") == 0.0


def test_proof_of_work_rises_with_a_burst_and_falls_after(clock: Clock) -> None:
    limits = RegistrationLimits(now=clock.seconds, address_burst=1000, burst_per_minute=10,
                                base_bits=4, max_bits=22)  # fmt: skip
    assert limits.pow_bits() == 4
    for i in range(10):
        limits.check(f"192.0.2.{i}")
    assert limits.pow_bits() == 4  # within the normal rate
    for i in range(30):
        limits.check(f"198.51.100.{i}")
    assert limits.pow_bits() == BURST_FLOOR_BITS + 4  # 40 a minute: 2 doublings over 10
    for i in range(200):
        limits.check(f"203.0.113.{i}")
    assert limits.pow_bits() == 22  # capped
    clock.advance(600)
    assert limits.pow_bits() == 4


def test_logins_go_before_waiting_registrations() -> None:
    runner, clock = ManualRunner(), Clock()
    gate = HashGate(64 * 1024, runner, clock, 64 * 1024)
    stored = hash_password("a password", "argon2id", CHEAP)
    for n in range(3):
        gate(hash_password, f"registration {n}")
    gate(verify_password, stored, "login")
    runner.finish()
    assert runner.calls[0][0] == (stored, "login")
