"""End-to-end: the real ``twistd -n securechat`` daemon, real TLS, real SQLite.

Few and fast on purpose: each daemon start costs about a second. Nothing sleeps; every
wait is on a log line, a reply or the process ending, each with a timeout.
"""

from __future__ import annotations

import os
import stat
from typing import Any

import pytest
import pytest_twisted
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.task import deferLater

from securechat import wire
from securechat.config import load_config
from securechat.tls import issue_client_certificate, load_ca
from tests.conftest import ConfigWriter
from tests.e2e.client import ServerError, WireClient, connect, public_key_bytes
from tests.e2e.daemon import Exit, run_to_exit, start_daemon

pytest.importorskip("securechat.server.protocol")

PASSWORD = "correct horse battery staple"
ALL_METHODS = {"auth": {"methods": ["password", "publickey", "certificate"]}}


def last_line(exit: Exit) -> str:
    return [line for line in exit.output.splitlines() if line.strip()][-1]


def assert_clean_shutdown(exit: Exit) -> None:
    """SIGTERM ends twistd through its normal shutdown: no traceback, no failed stop."""
    assert exit.signal is not None or exit.code == 0, exit
    assert "Traceback" not in exit.output, exit.output
    assert "Server Shut Down." in exit.output


def item(to: str, payload: bytes, backend: str = "ecdh") -> wire.SendItem:
    return wire.SendItem(to=to, backend=backend, mid=os.urandom(16), payload=payload)


# -- start-up failures: twistd must exit non-zero with a reason -----------------------------


@pytest_twisted.ensureDeferred
async def test_bad_config_exits_non_zero_naming_the_key(
    reactor: Any, write_config: ConfigWriter
) -> None:
    """A bad value never starts a server: status 1 and one line with the file and key."""
    config = write_config({"crypto": {"default_backend": "rot13"}})
    exit = await run_to_exit(reactor, config)
    assert exit.code == 1, exit
    [line] = exit.output.splitlines()  # no twistd usage block, no traceback
    assert line.startswith("securechat: error: "), exit.output
    assert str(config) in line and "[crypto] default_backend" in line, exit.output


@pytest_twisted.ensureDeferred
async def test_bind_failure_exits_non_zero(reactor: Any, write_config: ConfigWriter) -> None:
    """A port that is already taken stops the daemon instead of leaving it portless."""
    taken = reactor.listenTCP(0, ServerFactory.forProtocol(Protocol), interface="127.0.0.1")
    try:
        port = taken.getHost().port
        exit = await run_to_exit(reactor, write_config({"server": {"port": port}}))
    finally:
        await taken.stopListening()
    assert exit.code == 1, exit
    assert f"cannot listen on 127.0.0.1:{port}" in exit.output
    assert "listening on" not in exit.output


@pytest_twisted.ensureDeferred
async def test_unopenable_store_exits_non_zero(reactor: Any, write_config: ConfigWriter) -> None:
    """A database file that is not SQLite is reported in one line and the daemon exits 1."""
    config = write_config()
    db = load_config(config).store.path
    db.parent.mkdir(mode=0o700)
    db.write_bytes(b"this is not an SQLite database, " * 64)
    exit = await run_to_exit(reactor, config)
    assert exit.code == 1, exit
    assert "cannot open the store" in exit.output and str(db) in exit.output


# -- the relay, end to end ----------------------------------------------------------------


async def password_user(port: int, ca: bytes, reactor: Any, name: str) -> WireClient:
    client = await connect(reactor, port, ca)
    await client.hello()
    await client.register(name, password=PASSWORD)
    logged = await client.login_password(name, PASSWORD)
    assert (logged.user, logged.role) == (name, "user")
    return client


async def key_user(
    port: int, ca: bytes, reactor: Any, name: str, key: Ed25519PrivateKey, register: bool
) -> WireClient:
    client = await connect(reactor, port, ca)
    await client.hello()
    if register:
        await client.register(name, identity_key=public_key_bytes(key))
    assert (await client.login_publickey(name, key)).user == name
    return client


async def collect(client: WireClient, count: int) -> list[wire.DeliverItem]:
    """Read ``deliver`` pushes until ``count`` envelopes have arrived."""
    items: list[wire.DeliverItem] = []
    while len(items) < count:
        items.extend((await client.next_push(wire.Deliver)).items)
    return items


async def wait_offline(client: WireClient, user: str, reactor: Any) -> None:
    """Ask ``who`` until ``user`` is no longer listed (presence pushes reach only related
    users, and these two are neither contacts nor in a room together)."""
    while user in (await client.request(wire.Who(id=0), wire.Online)).users:
        await deferLater(reactor, 0.02)


@pytest_twisted.ensureDeferred
async def test_relay_survives_restart_and_crash(reactor: Any, write_config: ConfigWriter) -> None:
    """Register and log in three ways, relay online and offline, restart, kill -9.

    Every envelope the relay accepted and the recipient did not acknowledge comes back
    after a graceful restart and after a crash; acknowledged ones never do.
    """
    config_path = write_config(ALL_METHODS)
    config = load_config(config_path)
    daemon = await start_daemon(reactor, config_path)
    clients: list[WireClient] = []
    try:
        # TLS material made on first start: private keys owner-only, CA named in the log.
        for key_file in (config.tls.key, config.tls.ca_key):
            assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert f"--ca {config.tls.ca}" in daemon.output
        ca = config.tls.ca.read_bytes()
        port = daemon.port
        assert port is not None and port == await daemon.wait_listening()

        alice = await password_user(port, ca, reactor, "alice")
        assert alice.transport.getHandle().get_protocol_version_name() == "TLSv1.3"  # type: ignore[union-attr]
        bob_key = Ed25519PrivateKey.generate()
        bob = await key_user(port, ca, reactor, "bob", bob_key, register=True)
        clients += [alice, bob]

        # Online: delivered at once, acknowledged, gone.
        reply = await alice.send(item("bob", b"online-1"))
        assert [r.status for r in reply.results] == [wire.STATUS_DELIVERED]
        [online] = await collect(bob, 1)
        assert (online.sender, online.payload) == ("alice", b"online-1")
        bob.ack(online.seq)

        # Certificate login: an operator-issued certificate for an existing account.
        carol_plain = await password_user(port, ca, reactor, "carol")
        await carol_plain.close()
        cert_pem, key_pem = issue_client_certificate(*load_ca(config.tls), "carol")
        carol = await connect(reactor, port, ca, cert_pem + key_pem)
        clients.append(carol)
        assert (await carol.login_certificate()).user == "carol"
        reply = await carol.send(item("alice", b"from-carol"))
        [from_carol] = await collect(alice, 1)
        assert (from_carol.sender, from_carol.payload) == ("carol", b"from-carol")

        # Without a certificate, certificate login is refused on the same port.
        anonymous = await connect(reactor, port, ca)
        clients.append(anonymous)
        with pytest.raises(ServerError, match="auth-failed"):
            await anonymous.login_certificate()

        # Offline: bob leaves, alice's envelopes are queued (accepted means durable).
        await bob.close()
        await wait_offline(alice, "bob", reactor)  # the relay saw bob leave
        offline = [b"offline-%d" % i for i in range(3)]
        reply = await alice.send(*(item("bob", p) for p in offline))
        assert [r.status for r in reply.results] == [wire.STATUS_QUEUED] * 3
        for c in clients:
            await c.close()
        clients.clear()

        # Graceful restart on the same database.
        assert_clean_shutdown(await daemon.stop())
        daemon = await start_daemon(reactor, config_path)
        assert daemon.port is not None
        bob = await key_user(daemon.port, ca, reactor, "bob", bob_key, register=False)
        clients.append(bob)
        backlog = await collect(bob, 3)
        assert [(d.sender, d.payload) for d in backlog] == [("alice", p) for p in offline]
        assert online.seq not in {d.seq for d in backlog}

        # Crash: kill -9 before bob acknowledges; nothing accepted may be lost.
        exit = await daemon.kill()
        assert exit.signal == 9
        await bob.wait_lost()
        clients.clear()
        daemon = await start_daemon(reactor, config_path)
        assert daemon.port is not None
        bob = await key_user(daemon.port, ca, reactor, "bob", bob_key, register=False)
        clients.append(bob)
        again = await collect(bob, 3)
        assert [d.payload for d in again] == offline
        bob.ack(again[-1].seq)
        await bob.request(wire.Ping(id=0), wire.Pong)  # the ack was read before this
        await bob.close()
        clients.clear()

        # After the acknowledgement a restart delivers only what is new.
        assert_clean_shutdown(await daemon.stop())
        daemon = await start_daemon(reactor, config_path)
        assert daemon.port is not None
        bob = await key_user(daemon.port, ca, reactor, "bob", bob_key, register=False)
        alice = await connect(reactor, daemon.port, ca)
        clients += [bob, alice]
        await alice.login_password("alice", PASSWORD)
        await alice.send(item("bob", b"after-ack"))
        [fresh] = await collect(bob, 1)
        assert fresh.payload == b"after-ack" and fresh.seq > again[-1].seq
    finally:
        for c in clients:
            if c.lost_reason is None:
                await c.close()
        if daemon.running:
            await daemon.stop()
