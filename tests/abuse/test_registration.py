"""Issue 10, registration: a burst cannot exhaust the server's memory or lock others out.

Before the fix, 40 registrations from one address in 4.9 s took the relay from 58 MB to a
713 MB peak (parallel 64 MiB Argon2id hashes) and another user's login from 229 ms to
1,412 ms. Now: each address may register ``registration_address_burst`` accounts and then
one per ``1/registration_address_rate`` seconds; at most ``hash_memory_mib`` (128 MiB:
two production hashes) of password hashes run at once, logins first; and the proof of
work rises while registrations come faster than ``registration_burst`` a minute.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import defer

from securechat import wire
from tests.abuse.harness import OK, Probe, outcome_of, timed_login
from tests.conftest import ConfigWriter
from tests.robustness.conftest import PASSWORD, Running, running_daemon

#: The burst comes from this many loopback addresses at once (one registration each), so
#: the per-address limit does not stop it: the memory bound must.
BURST = 40
#: Two production hashes (64 MiB each) in flight, plus the rest of the process's growth.
MEMORY_BOUND_MIB = 128 + 48
#: Kept cheap for the test process, which solves every challenge itself.
MAX_BITS = 10
CONFIG = {"auth": {"registration_pow_max_bits": MAX_BITS}}


async def register(relay: Running, user: str, source: str, bits_seen: list[int]) -> str:
    """What the client does: hello, a challenge, its solution, register."""
    client = await relay.tls_client(source)
    await client.hello()
    challenge = await client.request(wire.PowChallenge(id=0), wire.PowChallengeReply)
    bits_seen.append(challenge.bits)
    solution = wire.pow_solve(challenge.challenge, user, challenge.bits)
    msg = wire.Register(id=0, user=user, password=PASSWORD, pow_challenge=challenge.challenge,
                        pow_solution=solution)  # fmt: skip
    outcome = await outcome_of(client.request(msg, wire.Registered))
    await client.close()
    return outcome


@pytest_twisted.ensureDeferred
async def test_registration_burst_memory_is_bounded(
    reactor: Any, write_config: ConfigWriter
) -> None:
    async with running_daemon(reactor, write_config, CONFIG) as relay:
        first = await relay.tls_client()
        await first.hello()
        await first.register("alice", PASSWORD)
        await first.login_password("alice", PASSWORD)
        await first.close()

        probe = Probe(reactor, relay.daemon.pid)
        bits: list[int] = []
        burst = defer.gatherResults([
            defer.ensureDeferred(register(relay, f"mass{n}", f"127.0.2.{n + 1}", bits))
            for n in range(BURST)
        ])  # fmt: skip
        # alice logs in while the burst's hashes are queued: logins go first.
        _, alice, client = await timed_login(relay, "alice", PASSWORD)
        await client.close()
        outcomes = await burst
        figures = probe.stop()

        assert alice == OK
        # Those that could not be hashed in time were told to come back (retry_after).
        assert set(outcomes) <= {OK, wire.E_UNAVAILABLE}, outcomes
        assert OK in outcomes, outcomes
        grown = figures.peak_kib - figures.start_kib
        assert grown < MEMORY_BOUND_MIB * 1024, figures
        # The burst raised the difficulty (from [auth] registration_pow_bits, 0); an honest
        # newcomer pays it and gets in.
        assert bits and min(bits) == 0, bits
        late: list[int] = []
        assert await register(relay, "newcomer", "127.0.0.9", late) == OK
        assert late == [MAX_BITS]
        relay.assert_healthy()


@pytest_twisted.ensureDeferred
async def test_registrations_per_address_are_limited(
    reactor: Any, write_config: ConfigWriter
) -> None:
    config = {"auth": {"registration_address_burst": 3, "registration_burst": 0}}
    async with running_daemon(reactor, write_config, config) as relay:
        bits: list[int] = []
        outcomes = [await register(relay, f"spam{n}", "127.0.0.2", bits) for n in range(4)]
        assert outcomes == [OK, OK, OK, wire.E_THROTTLED]
        client = await relay.tls_client("127.0.0.2")
        await client.hello()
        refused = await client.request(wire.Register(id=0, user="spam9", password=PASSWORD),
                                       wire.Error)  # fmt: skip
        assert refused.code == wire.E_THROTTLED and (refused.retry_after or 0) > 60
        # Another address registers as usual.
        assert await register(relay, "carol", "127.0.0.3", bits) == OK
        relay.assert_healthy()
