"""The small attacks of issue 10, against the real daemon.

* junk published as an identity key or prekey record is refused (16 KiB used to be kept
  and served to everyone who fetched the bundle);
* one account fetching bob's bundle 60 times gets only a few of his one-time prekeys (it
  used to drain all 50), and others still get theirs;
* 50 identical contact requests reach the target as one ``contact_update``, not 50;
* an envelope past its TTL is not delivered, although the periodic sweep has not run.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted

from securechat import wire
from tests.abuse.harness import pause
from tests.conftest import ConfigWriter
from tests.e2e.client import ServerError, WireClient
from tests.robustness.conftest import collect_until, item, running_daemon
from tests.server.harness import otk_record, spk_record


def publish(n: int, **kw: Any) -> wire.PublishPrekeys:
    one_time = tuple(wire.OneTimePrekey(i, otk_record(i)) for i in range(1, n + 1))
    return wire.PublishPrekeys(id=0, backend="ecdh", one_time=one_time,
                               signed_prekey=kw.get("signed", spk_record()),
                               identity_key=kw.get("identity", b"I" * 32))  # fmt: skip


async def code_of(client: WireClient, msg: wire.Message) -> str:
    try:
        reply = await client.request(msg, wire.Message)
    except ServerError as e:
        return e.code
    return reply.code if isinstance(reply, wire.Error) else "ok"


@pytest_twisted.ensureDeferred
async def test_junk_keys_are_refused(reactor: Any, write_config: ConfigWriter) -> None:
    async with running_daemon(reactor, write_config) as relay:
        mallory, alice = await relay.user("mallory"), await relay.user("alice")
        assert await code_of(mallory, publish(2, identity=b"\xff" * 16384)) == wire.E_BAD_REQUEST
        assert await code_of(mallory, publish(2, signed=b"\xff" * 4000)) == wire.E_BAD_REQUEST
        fetch = wire.FetchBundle(id=0, user="mallory", backend="ecdh")
        assert await code_of(alice, fetch) == wire.E_NO_BUNDLE  # nothing was stored
        relay.assert_healthy()


@pytest_twisted.ensureDeferred
async def test_one_account_cannot_drain_a_pool(reactor: Any, write_config: ConfigWriter) -> None:
    async with running_daemon(reactor, write_config) as relay:
        bob, mallory = await relay.user("bob"), await relay.user("mallory")
        stored = await bob.request(publish(50), wire.PrekeysStored)
        assert stored.one_time_count == 50
        taken = []
        for _ in range(60):
            bundle = await mallory.request(
                wire.FetchBundle(id=0, user="bob", backend="ecdh"), wire.Bundle
            )
            taken.append(bundle.one_time_id)
        got = [t for t in taken if t is not None]
        assert len(got) <= 3, taken  # the default burst; none regained within the test
        carol = await relay.user("carol")
        bundle = await carol.request(wire.FetchBundle(id=0, user="bob", backend="ecdh"),
                                     wire.Bundle)  # fmt: skip
        assert bundle.one_time_id is not None
        relay.assert_healthy()


@pytest_twisted.ensureDeferred
async def test_repeated_contact_requests_push_once(
    reactor: Any, write_config: ConfigWriter
) -> None:
    async with running_daemon(reactor, write_config) as relay:
        dave, mallory = await relay.user("dave"), await relay.user("mallory")
        for _ in range(50):
            await mallory.request(wire.ContactRequest(id=0, user="dave"), wire.ContactState)
        await dave.request(wire.Ping(id=0), wire.Pong)  # pushes to dave came before this
        updates = dave.pushes(wire.ContactUpdate)
        assert updates == [wire.ContactUpdate(user="mallory", state="pending-in")]


@pytest_twisted.ensureDeferred
async def test_expired_envelopes_are_not_delivered(
    reactor: Any, write_config: ConfigWriter
) -> None:
    async with running_daemon(reactor, write_config, {"store": {"queue_ttl": 1.0}}) as relay:
        dave, alice = await relay.user("dave"), await relay.user("alice")
        await dave.close()
        old = item("dave", b"sent before the TTL ran out")
        await alice.send(old)
        await pause(reactor, 1.5)  # the TTL passes (the sweep runs only every 300 s)
        dave = await relay.user("dave", register=False)
        fresh = item("dave", b"fresh")
        await alice.send(fresh)
        got = await collect_until(dave, fresh.mid)
        assert [d.mid for d in got] == [fresh.mid]
