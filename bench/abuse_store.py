"""Scenarios of ``bench.abuse`` for mailboxes and the key directory (issue 10 items 2, 6).

Each attack is the one tried in issue 10 at the pace of the matching test in
``tests/abuse/`` (which asserts what these only measure). The full disk is not measured
here: it needs a filesystem mounted by root (``tests/abuse/test_store_abuse.py``).
"""

from __future__ import annotations

import itertools
from typing import Any, ClassVar

from twisted.internet import defer

from bench._abuse import Scenario, VictimFailed
from bench._common import cpu_seconds
from securechat import wire
from tests.abuse.harness import OK, AttackStats, paced
from tests.e2e.client import ServerError, WireClient
from tests.robustness.conftest import Running, item
from tests.server.harness import otk_record, spk_record

_mids = itertools.count(1)


async def _befriend(a: WireClient, a_name: str, b: WireClient, b_name: str) -> None:
    await a.request(wire.ContactRequest(id=0, user=b_name), wire.ContactState)
    await b.request(wire.ContactAccept(id=0, user=a_name), wire.ContactState)


class QueueFlood(Scenario):
    """Issue 10: one non-contact stored 10,000 envelopes for offline dave in 17 s, then
    alice (his contact) got ``queue-full``."""

    name = "queue-flood"
    attack_text = "3 stranger accounts send batches of 10 x 4 KiB to offline dave, every 0.05 s"
    victim_text = "alice (dave's contact) sends dave one envelope; it must be queued"
    config: ClassVar[dict[str, dict[str, Any]]] = {
        "store": {"queue_limit": 2000},
        "auth": {"registration_address_burst": 20},  # the accounts come from 127.0.0.1
    }
    victim_runs = 6

    async def prepare(self, relay: Running) -> None:
        dave = await relay.user("dave")
        self.alice = await relay.user("alice")
        await _befriend(self.alice, "alice", dave, "dave")
        await dave.close()
        self.strangers = [await relay.user(f"mallory{i}") for i in range(3)]

    async def victim(self, relay: Running) -> None:
        reply = await self.alice.send(item("dave", b"hello dave %d" % next(_mids)))
        [result] = reply.results
        if result.status != "queued":
            raise VictimFailed(str(result.code))

    async def attack(self, relay: Running, stop: defer.Deferred[None]) -> AttackStats:
        payload = b"\xa5" * 4096

        async def attempt(n: int) -> str:
            mallory = self.strangers[n % len(self.strangers)]
            try:
                reply = await mallory.send(*(item("dave", payload) for _ in range(10)))
            except ServerError as e:
                return e.code
            codes = {r.code or r.status for r in reply.results}
            return ",".join(sorted(codes))

        return await paced(relay.reactor, attempt, interval=0.05, max_count=400,
                           max_seconds=60.0, stop=stop)  # fmt: skip


class BundleDrain(Scenario):
    """Issue 10: one user drained all 50 of bob's one-time prekeys in 60 fetches (and 100
    fetches of an RSA bundle cost bob's client 21.5 s of CPU in key generation)."""

    name = "bundle-drain"
    attack_text = "mallory fetches bob's bundle every 0.3 s (100 fetches at most)"
    victim_text = "a new peer of bob's fetches his bundle; it must carry a one-time prekey"
    config: ClassVar[dict[str, dict[str, Any]]] = {"auth": {"registration_address_burst": 20}}
    victim_interval = 5.0  # the phase lasts about 30 s, as the attack in the issue

    async def prepare(self, relay: Running) -> None:
        bob = await relay.user("bob")
        one_time = tuple(wire.OneTimePrekey(i, otk_record(i)) for i in range(1, 51))
        await bob.request(
            wire.PublishPrekeys(
                id=0,
                backend="ecdh",
                one_time=one_time,
                signed_prekey=spk_record(),
                identity_key=b"I" * 32,
            ),
            wire.PrekeysStored,
        )
        self.peers = [await relay.user(f"carol{i}") for i in range(self.victim_runs)]
        self.mallory = await relay.user("mallory")

    async def victim(self, relay: Running) -> None:
        bundle = await self.peers.pop().request(
            wire.FetchBundle(id=0, user="bob", backend="ecdh"), wire.Bundle
        )
        if bundle.one_time_id is None:
            raise VictimFailed("no one-time prekey left for a new peer")

    async def attack(self, relay: Running, stop: defer.Deferred[None]) -> AttackStats:
        async def attempt(n: int) -> str:
            bundle = await self.mallory.request(
                wire.FetchBundle(id=0, user="bob", backend="ecdh"), wire.Bundle
            )
            return "one-time prekey" if bundle.one_time_id is not None else OK

        return await paced(relay.reactor, attempt, interval=0.3, max_count=100,
                           max_seconds=30.0, stop=stop)  # fmt: skip


class RsaDrain(Scenario):
    """Issue 10: fetching a victim's RSA bundle 100 times in 30 s made the victim's real
    client spend 21.5 s of CPU generating RSA-3072 keys. Bob runs the real client here;
    the attacker's outcomes include bob's client CPU over the phase."""

    name = "rsa-drain"
    attack_text = "mallory fetches bob's rsa bundle every 0.3 s (100 fetches at most)"
    victim_text = "a new peer fetches bob's rsa bundle (bob: the real securechat-client)"
    config: ClassVar[dict[str, dict[str, Any]]] = {
        "auth": {"registration_address_burst": 20},
        "crypto": {"backends": ["rsa"], "default_backend": "rsa"},
    }
    victim_interval = 5.0

    async def prepare(self, relay: Running) -> None:
        from tests.e2e.clientproc import client_argv, spawn_client

        home = relay.config_path.parent / "bob-home"
        password = relay.config_path.parent / "bob-password"
        password.write_text("bob's long password\n")
        argv = client_argv(port=relay.port, ca=relay.config.tls.ca, user="bob",
                           password_file=password, home=home, register=True, backend="rsa")
        self.bob = spawn_client(relay.reactor, "bob", argv, relay.config_path.parent)
        await self.bob.logged_in()
        self.peers = [await relay.user(f"carol{i}") for i in range(self.victim_runs)]
        self.mallory = await relay.user("mallory")
        assert self.bob.transport is not None
        self.bob_cpu = cpu_seconds(self.bob.transport.pid)

    async def victim(self, relay: Running) -> None:
        await self.peers.pop().request(wire.FetchBundle(id=0, user="bob", backend="rsa"),
                                       wire.Bundle)  # fmt: skip
        if not self.peers:  # the phase's last run: bob's CPU over the phase, then stop him
            assert self.bob.transport is not None
            used = cpu_seconds(self.bob.transport.pid) - self.bob_cpu
            print(f"  rsa-drain: bob's client used {used:.1f} s CPU in this phase")
            self.bob.kill()

    async def attack(self, relay: Running, stop: defer.Deferred[None]) -> AttackStats:
        async def attempt(n: int) -> str:
            bundle = await self.mallory.request(
                wire.FetchBundle(id=0, user="bob", backend="rsa"), wire.Bundle
            )
            return "one-time prekey" if bundle.one_time_id is not None else OK

        return await paced(relay.reactor, attempt, interval=0.3, max_count=100,
                           max_seconds=30.0, stop=stop)  # fmt: skip


SCENARIOS: list[Any] = [QueueFlood(), BundleDrain(), RsaDrain()]
