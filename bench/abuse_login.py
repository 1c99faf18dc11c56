"""Scenarios of ``bench.abuse`` for logins, registration and pre-login connections.

Each attack is the one tried in issue 10, with the same pace and counts as the matching
test in ``tests/abuse/`` (which asserts what these only measure).
"""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.internet import defer
from twisted.internet.error import ConnectError

from bench._abuse import Scenario, VictimFailed
from tests.abuse.harness import (
    ATTACKER_ADDRESS,
    OK,
    AttackStats,
    outcome_of,
    paced,
    timed_login,
)
from tests.abuse.test_prelogin import PARKED, PER_SOURCE, SOURCES
from tests.abuse.test_registration import register
from tests.e2e.client import WireClient
from tests.robustness.conftest import PASSWORD, Running

WRONG = "not alice's password"


class Guesser:
    """One attacker connection guessing a password; reconnects when the server drops it
    (the login deadline closes a connection that never logs in)."""

    def __init__(self, relay: Running, user: str, source: str) -> None:
        self._relay = relay
        self._user = user
        self._source = source
        self._client: WireClient | None = None

    async def attempt(self, n: int) -> str:
        client = self._client
        if client is None or client.lost_reason is not None:
            client = self._client = await self._relay.tls_client(self._source)
            await client.hello()
        return await outcome_of(client.login_password(self._user, f"{WRONG} {n}"))


class LoginLockout(Scenario):
    """Issue 10's first attack: wrong passwords for alice every 0.3 s from one address."""

    name = "login-lockout"
    attack_text = "login_password(alice, wrong) every 0.3 s from 127.0.0.2"
    victim_text = "alice logs in with the right password from 127.0.0.1 (where she did before)"
    interval: ClassVar[float] = 0.3
    source: ClassVar[str | None] = None

    async def prepare(self, relay: Running) -> None:
        client = await relay.tls_client()
        await client.hello()
        await client.register("alice", PASSWORD)
        await client.login_password("alice", PASSWORD)
        await client.close()

    async def victim(self, relay: Running) -> None:
        _, outcome, client = await timed_login(relay, "alice", PASSWORD, self.source)
        await client.close()
        if outcome != OK:
            raise VictimFailed(outcome)

    async def attack(self, relay: Running, stop: defer.Deferred[None]) -> AttackStats:
        guesser = Guesser(relay, "alice", ATTACKER_ADDRESS)
        return await paced(
            relay.reactor, guesser.attempt, interval=self.interval, max_count=200,
            max_seconds=60.0, stop=stop,
        )  # fmt: skip


class LoginLockoutNewAddress(LoginLockout):
    """The same attack; alice logs in from an address she never used before."""

    name = "login-lockout-new-address"
    victim_text = "alice logs in with the right password from 127.0.0.3 (a new address)"
    source = "127.0.0.3"


class RegistrationBurst(LoginLockout):
    """Issue 10's registration burst: waves of 40 registrations from 40 addresses at once."""

    name = "registration-burst"
    attack_text = "waves of 40 parallel registrations from 40 loopback addresses"
    victim_text = "alice logs in with the right password from 127.0.0.1"
    #: The bench process solves every challenge itself: keep the raised difficulty cheap.
    config: ClassVar[dict[str, dict[str, Any]]] = {"auth": {"registration_pow_max_bits": 12}}
    source = None

    async def attack(self, relay: Running, stop: defer.Deferred[None]) -> AttackStats:
        stats = AttackStats()
        start = relay.reactor.seconds()
        wave = 0
        while not stop.called and stats.attempts < 200 and relay.reactor.seconds() - start < 60:
            bits: list[int] = []
            outcomes = await defer.gatherResults([
                defer.ensureDeferred(register(relay, f"w{wave}u{n}", f"127.0.{2 + wave}.{n + 1}",
                                              bits))
                for n in range(40)
            ])  # fmt: skip
            stats.outcomes.update(outcomes)
            stats.attempts += len(outcomes)
            wave += 1
        stats.seconds = relay.reactor.seconds() - start
        return stats


class ParkedPrelogin(LoginLockout):
    """Issue 10's parked connections: 300 unauthenticated connections, each sending an
    almost complete 1 MiB frame, from 10 loopback addresses."""

    name = "parked-prelogin"
    attack_text = "300 connections from 10 addresses, each parking an almost complete 1 MiB frame"
    victim_text = "alice logs in with the right password from 127.0.0.1"
    config: ClassVar[dict[str, dict[str, Any]]] = {"server": {"handshake_timeout": 5.0}}
    source = None

    async def attack(self, relay: Running, stop: defer.Deferred[None]) -> AttackStats:
        stats = AttackStats()
        start = relay.reactor.seconds()
        clients = []
        for source in SOURCES:
            for _ in range(PER_SOURCE):
                stats.attempts += 1
                try:
                    client = await relay.tls_client(source)
                except ConnectError:
                    stats.outcomes["refused"] += 1
                    continue
                assert client.transport is not None
                client.transport.write(PARKED)
                clients.append(client)
        for client in clients:
            await client.wait_lost(30)
            stats.outcomes["dropped by the server"] += 1
        stats.seconds = relay.reactor.seconds() - start
        await stop
        return stats


SCENARIOS: list[Any] = [
    LoginLockout(), LoginLockoutNewAddress(), RegistrationBurst(), ParkedPrelogin(),
]
