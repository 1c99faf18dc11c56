"""Issue 10, first attack: a stranger polling wrong passwords cannot lock alice out.

The attacker polls ``login_password(alice, wrong)`` every 0.3 s from 127.0.0.2 (before the
fix alice, with the right password, got in 2 times out of 20). While it runs:

- alice logs in on her first try from 127.0.0.1, where she logged in before, every time;
- alice logs in on her first try from 127.0.0.3, a new address: the account is under
  attack, so the server asks that address for a proof of work, which the client solves;
- bob logs in with his key from the attacker's own address: password failures never
  throttle public-key logins;
- the attacker's guesses are checked (hashed) only ``pair_burst`` times, even though it
  pays every proof of work asked of it; the rest are refused before any work, and
  polling while refused pushes its next chance further away.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import pytest_twisted
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet import defer

from securechat import wire
from tests.abuse.harness import ATTACKER_ADDRESS, OK, outcome_of, paced, pause, timed_login
from tests.conftest import ConfigWriter
from tests.e2e.client import WireClient, public_key_bytes
from tests.robustness.conftest import PASSWORD, running_daemon

PAIR_BURST = 5
CONFIG = {
    "auth": {
        "methods": ["password", "publickey"],
        "pair_burst": PAIR_BURST,
        # Fewer than the attacker's guesses, so that the account counts as under attack.
        "account_burst": 3,
        # Cheap enough for a test; production asks for 18 bits.
        "login_pow_bits": 12,
    }
}
WRONG = "Tr0ub4dor-guess"  # never in a log line


@pytest_twisted.ensureDeferred
async def test_stranger_cannot_lock_alice_out(reactor: Any, write_config: ConfigWriter) -> None:
    async with running_daemon(reactor, write_config, CONFIG) as relay:
        first = await relay.tls_client()
        await first.hello()
        await first.register("alice", PASSWORD)
        key = Ed25519PrivateKey.generate()
        await first.register("bob", identity_key=public_key_bytes(key))
        await first.login_password("alice", PASSWORD)  # 127.0.0.1 is now alice's address
        await first.close()

        guesser: list[WireClient] = []
        refusals: list[float] = []
        limited: defer.Deferred[None] = defer.Deferred()

        async def guess(n: int) -> str:
            if not guesser or guesser[-1].lost_reason is not None:
                guesser.append(await relay.tls_client(ATTACKER_ADDRESS))
                await guesser[-1].hello()
            msg = wire.LoginPassword(id=0, user="alice", password=f"{WRONG}-{n}")
            reply = await guesser[-1].request(msg, wire.Message)
            if isinstance(reply, wire.PowRequired):  # a determined attacker pays
                solution = wire.pow_solve(reply.challenge, "alice", reply.bits)
                msg = replace(msg, pow_challenge=reply.challenge, pow_solution=solution)
                reply = await guesser[-1].request(msg, wire.Message)
            assert isinstance(reply, wire.Error), reply
            if reply.code == wire.E_THROTTLED:
                assert reply.retry_after is not None
                refusals.append(reply.retry_after)
                if not limited.called:
                    limited.callback(None)
            return reply.code

        stop: defer.Deferred[None] = defer.Deferred()
        attack = defer.ensureDeferred(
            paced(reactor, guess, interval=0.3, max_count=100, max_seconds=30.0, stop=stop)
        )
        # The attacker has used up everything it can (account burst, then pair burst).
        await limited.addTimeout(60, reactor)

        tries = []
        for source in ("127.0.0.1", "127.0.0.3", "127.0.0.1", "127.0.0.3"):
            _, outcome, client = await timed_login(relay, "alice", PASSWORD, source)
            tries.append((source, outcome))
            await client.close()
            await pause(reactor, 0.6)  # the attack goes on in between
        signer = await relay.tls_client(ATTACKER_ADDRESS)
        await signer.hello()
        bob = await outcome_of(signer.login_publickey("bob", key))

        stop.callback(None)
        stats = await attack

        assert tries == [(s, OK) for s, _ in tries], tries
        assert bob == OK
        # The attacker really was attacking, and the server checked only its first guesses.
        assert stats.attempts > PAIR_BURST, stats
        assert stats.outcomes[wire.E_AUTH_FAILED] == PAIR_BURST, stats
        assert stats.outcomes[wire.E_THROTTLED] == stats.attempts - PAIR_BURST, stats
        # Refused attempts are charged: the wait grows while the attacker polls (up to
        # one burst of debt, where it only ticks down with the clock).
        assert refusals[-1] > refusals[0], refusals
        assert all(b > a - 1.0 for a, b in itertools.pairwise(refusals)), refusals
        output = relay.daemon.output
        assert WRONG not in output and PASSWORD not in output
        relay.assert_healthy()


@pytest_twisted.ensureDeferred
async def test_new_address_pays_proof_of_work(reactor: Any, write_config: ConfigWriter) -> None:
    """Under attack, a login from an address the account never used is answered with
    ``pow_required``; without a valid solution it is ``bad-proof-of-work``."""
    async with running_daemon(reactor, write_config, CONFIG) as relay:
        client = await relay.tls_client()
        await client.hello()
        await client.register("alice", PASSWORD)
        attacker = await relay.tls_client(ATTACKER_ADDRESS)
        await attacker.hello()
        for n in range(3):
            await outcome_of(attacker.login_password("alice", f"{WRONG}-{n}"))
        newcomer = await relay.tls_client("127.0.0.3")
        await newcomer.hello()
        msg = wire.LoginPassword(id=0, user="alice", password=PASSWORD)
        asked = await newcomer.request(msg, wire.PowRequired)
        assert asked.bits == 12
        wrong = replace(msg, pow_challenge=asked.challenge, pow_solution=b"\xff" * 8)
        if wire.pow_valid(asked.challenge, "alice", b"\xff" * 8, asked.bits):
            wrong = replace(wrong, pow_solution=b"\xfe" * 8)  # 1 in 4096: pick another
        refused = await newcomer.request(wrong, wire.Error)
        assert refused.code == wire.E_BAD_PROOF_OF_WORK
        again = await newcomer.request(msg, wire.PowRequired)  # the challenge was used up
        assert again.challenge != asked.challenge
        solution = wire.pow_solve(again.challenge, "alice", again.bits)
        solved = replace(msg, pow_challenge=again.challenge, pow_solution=solution)
        assert (await newcomer.request(solved, wire.LoggedIn)).user == "alice"
        relay.assert_healthy()
