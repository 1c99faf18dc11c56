"""Scenarios of ``bench.abuse`` for logins, registration and pre-login connections.

Each attack is the one tried in issue 10, with the same pace and counts as the matching
test in ``tests/abuse/`` (which asserts what these only measure).
"""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.internet import defer

from bench._abuse import Scenario, VictimFailed
from tests.abuse.harness import (
    ATTACKER_ADDRESS,
    OK,
    AttackStats,
    outcome_of,
    paced,
    timed_login,
)
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


SCENARIOS: list[Any] = [LoginLockout(), LoginLockoutNewAddress()]
