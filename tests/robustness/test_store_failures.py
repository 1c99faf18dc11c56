"""A locked database or a full disk: a clear error, no crash, no accepted envelope lost.

* Locked: the real daemon, while the test holds SQLite's write lock (``BEGIN EXCLUSIVE``
  on its own connection) for longer than the daemon's busy timeout (5 s, not
  configurable). The send made meanwhile is refused, the daemon keeps serving, and
  once the lock is gone sends succeed and everything accepted before is still delivered.
* Disk full: ``PRAGMA max_page_count`` is a per-connection setting, so another process
  cannot impose it on the daemon's connection. This part therefore runs the production
  relay factory and :class:`SQLiteStore` in-process, on a plain TCP listener on 127.0.0.1,
  and limits the store's own connection (as ``tests/server/test_store.py`` does for the
  store alone): now the whole path, ``send`` to ``send_reply`` to delivery, is covered.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from securechat import wire
from securechat.config import StoreSection
from securechat.server.passwords import hash_password
from securechat.server.protocol import build_factory
from securechat.server.store.sqlite import SQLiteStore
from tests.conftest import ConfigWriter
from tests.e2e.client import ServerError, WireClient
from tests.robustness.conftest import collect, collect_until, item, running_daemon
from tests.server.harness import CHEAP, FakeInfo, make_config, run_inline

ACCEPTED = (wire.STATUS_DELIVERED, wire.STATUS_QUEUED)


async def send_outcome(client: WireClient, sent: wire.SendItem) -> str:
    """``delivered``/``queued``, a per-item error code, or the code of an ``error`` reply."""
    try:
        reply = await client.send(sent)
    except ServerError as e:
        return e.code
    [result] = reply.results
    return result.status if result.status in ACCEPTED else str(result.code)


@pytest_twisted.ensureDeferred
async def test_locked_database_refuses_then_recovers(
    reactor: Any, write_config: ConfigWriter
) -> None:
    async with running_daemon(reactor, write_config) as relay:
        alice, bob = await relay.user("alice"), await relay.user("bob")
        early = [item("bob", b"early %d" % i) for i in range(3)]
        assert {r.status for r in (await alice.send(*early)).results} == {"delivered"}
        await collect(bob, 3)  # received, deliberately not acknowledged

        lock = sqlite3.connect(relay.config.store.path, isolation_level=None, timeout=0)
        try:
            lock.execute("BEGIN EXCLUSIVE")
            blocked = item("bob", b"while locked")
            outcome = defer.ensureDeferred(send_outcome(alice, blocked))
            # The daemon still answers what needs no database write.
            assert isinstance(await bob.request(wire.Ping(id=0), wire.Pong), wire.Pong)
            code = await outcome
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        assert code not in ACCEPTED, "a send was accepted while the database was locked"
        assert code == wire.E_UNAVAILABLE, code  # typed and retryable, not internal-error
        assert alice.lost_reason is None and bob.lost_reason is None
        assert "database is locked" in relay.daemon.output

        after = item("bob", b"after the lock")
        assert await send_outcome(alice, after) == wire.STATUS_DELIVERED
        [got] = await collect(bob, 1)
        assert got.mid == after.mid  # the refused one was not stored

        # A fresh session gets the whole un-acknowledged backlog, and nothing else.
        bob = await relay.user("bob", register=False)
        marker = item("bob", b"marker")
        await alice.send(marker)
        backlog = await collect_until(bob, marker.mid)
        assert [d.mid for d in backlog] == [i.mid for i in early] + [after.mid, marker.mid]
        relay.assert_healthy()


@asynccontextmanager
async def in_process_relay(reactor: Any, path: Path) -> AsyncIterator[tuple[SQLiteStore, int]]:
    """The production factory over SQLiteStore, listening without TLS on 127.0.0.1."""
    store = SQLiteStore(StoreSection(path=path, synchronous="full"), clock=reactor)
    await store.start()
    port = None
    try:
        for name in ("alice", "bob"):
            await store.add_user(name, "user", hash_password(name, "argon2id", CHEAP), None)
        factory = build_factory(
            make_config(), store, reactor, run_in_thread=run_inline, hash_params=CHEAP,
            connection_info=lambda transport: FakeInfo(None),
        )  # fmt: skip
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        yield store, port.getHost().port
    finally:
        if port is not None:
            await port.stopListening()
        await store.stop()


async def plain_login(reactor: Any, port: int, name: str, opened: list[WireClient]) -> WireClient:
    client = WireClient(reactor)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    opened.append(client)
    await client.login_password(name, name)
    return client


@pytest_twisted.ensureDeferred
async def test_disk_full_refuses_then_recovers(reactor: Any, tmp_path: Path) -> None:
    opened: list[WireClient] = []
    async with in_process_relay(reactor, tmp_path / "db" / "relay.sqlite3") as (store, port):
        try:
            alice = await plain_login(reactor, port, "alice", opened)
            bob = await plain_login(reactor, port, "bob", opened)
            early = [item("bob", b"early %d" % i) for i in range(3)]
            assert {r.status for r in (await alice.send(*early)).results} == {"delivered"}
            await collect(bob, 3)  # not acknowledged

            pages = await store.run(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
            await store.run(lambda c: c.execute(f"PRAGMA max_page_count = {pages + 4}").fetchall())
            bigs = [item("bob", bytes([n]) * 3000) for n in range(40)]
            outcomes = await defer.gatherResults(
                [defer.ensureDeferred(send_outcome(alice, b)) for b in bigs]
            )
            accepted = [b.mid for b, o in zip(bigs, outcomes, strict=True) if o in ACCEPTED]
            refused = {b.mid for b, o in zip(bigs, outcomes, strict=True) if o not in ACCEPTED}
            assert refused, outcomes  # the disk filled up ...
            assert {o for o in outcomes if o not in ACCEPTED} == {wire.E_UNAVAILABLE}
            assert alice.lost_reason is None  # ... and that is an error reply, not a crash
            assert isinstance(await alice.request(wire.Ping(id=0), wire.Pong), wire.Pong)

            await store.run(lambda c: c.execute("PRAGMA max_page_count = 1073741823").fetchall())
            after = item("bob", b"after the disk was freed")
            assert await send_outcome(alice, after) == wire.STATUS_DELIVERED

            bob = await plain_login(reactor, port, "bob", opened)  # replaces the old session
            marker = item("bob", b"marker")
            await alice.send(marker)
            backlog = [d.mid for d in await collect_until(bob, marker.mid)]
            assert backlog == [i.mid for i in early] + accepted + [after.mid, marker.mid]
            assert not refused & set(backlog)
        finally:
            for client in opened:
                await client.close()
