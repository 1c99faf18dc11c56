"""End-to-end: real ``securechat-client`` processes against the real daemon, over real TLS.

One daemon per backend (module-scoped, restarted in place by the tests that need a restart),
unique user names per test, every wait on a JSON event or a process exit with a timeout.
Each daemon allows its backend plus one other, so a test can pin a peer's key over one
backend and fetch a fresh bundle over the other (that is where a lying relay would strike).
"""

from __future__ import annotations

import socket
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from securechat import wire
from securechat.tls import _cert_pem, _make_ca
from tests.conftest import merged_sections, toml_text
from tests.e2e.clientproc import ClientExit, ClientProcess, client_argv, spawn_client
from tests.e2e.daemon import Daemon, start_daemon

pytest.importorskip("securechat.server.protocol")

BACKENDS = ("dh", "ecdh", "rsa", "hybrid")
OTHER = {"dh": "ecdh", "ecdh": "dh", "rsa": "ecdh", "hybrid": "ecdh"}


#: Test daemons use the production Argon2id parameters. Several clients log in at once
#: here, which is what once hung the relay (multi-lane Argon2id inside OpenSSL 4). Every
#: test user registers from 127.0.0.1: allow a module's worth of them from one address,
#: and let hashes wait their turn on a loaded machine instead of failing the login.
HASH = {"password_hash": "argon2id", "registration_address_burst": 50,
        "hash_queue_timeout": 120.0}  # fmt: skip


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class Relay:
    """A daemon in its own directory, restartable on the same database and TLS files."""

    def __init__(self, root: Path, overrides: dict[str, dict[str, Any]]) -> None:
        self.root = root
        self.config = root / "server.toml"
        self.config.write_text(toml_text(merged_sections(overrides)))
        self.ca = root / "tls" / "ca.pem"
        self.db = root / "data" / "securechat.sqlite3"
        self.daemon: Daemon | None = None
        self._old_logs: list[str] = []

    @property
    def port(self) -> int:
        assert self.daemon is not None and self.daemon.port is not None
        return self.daemon.port

    async def start(self) -> None:
        self.daemon = await start_daemon(_reactor(), self.config)

    async def stop(self) -> None:
        assert self.daemon is not None
        try:
            exit = await self.daemon.stop()
        except defer.TimeoutError:  # a hung shutdown must not leave a daemon behind
            await self.daemon.kill()
            self.daemon = None
            raise
        self._old_logs.append(exit.output)
        assert "Traceback" not in exit.output, exit.output
        self.daemon = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    def log(self) -> str:
        return "".join(self._old_logs) + (self.daemon.output if self.daemon else "")

    # -- users and their clients -------------------------------------------------------
    def password_file(self, user: str, password: str | None = None) -> Path:
        path = self.root / "secrets" / f"{user}-{uuid.uuid4().hex[:6]}.pw"
        path.parent.mkdir(exist_ok=True)
        path.write_text((password or f"password of {user}!") + "\n")
        return path

    def home(self, user: str) -> Path:
        return self.root / "homes" / user

    def client(
        self,
        user: str,
        *,
        register: bool = False,
        backend: str | None = None,
        password: str | None = None,
        extra: tuple[str, ...] = (),
        port: int | None = None,
        ca: Path | None = None,
    ) -> ClientProcess:
        argv = client_argv(
            port=port or self.port, ca=ca or self.ca, user=user, home=self.home(user),
            password_file=self.password_file(user, password), register=register,
            backend=backend, extra=extra,
        )  # fmt: skip
        return spawn_client(_reactor(), user, argv, self.root)

    async def online(self, *users: str, register: bool = False, backend: str | None = None
                     ) -> list[ClientProcess]:  # fmt: skip
        """Start clients for ``users`` together and wait until each is logged in."""
        return await self.wait_online(
            *(self.client(u, register=register, backend=backend) for u in users)
        )

    async def wait_online(self, *clients: ClientProcess) -> list[ClientProcess]:
        """Wait until each of ``clients`` (started together) is logged in."""
        try:
            for c in clients:
                await c.logged_in()
        except AssertionError as e:
            for c in clients:
                c.kill()
            raise AssertionError(f"{e}\n--- daemon log ---\n{self.log()}") from None
        return list(clients)

    # -- what the relay keeps ------------------------------------------------------------
    def assert_never_saw(self, *markers: str) -> None:
        """The database files and the daemon's log hold none of the plaintext markers."""
        files = [p for p in self.db.parent.iterdir() if p.name.startswith(self.db.name)]
        assert self.db in files and self.db.stat().st_size > 0
        blobs = {str(p): p.read_bytes() for p in files}
        blobs["daemon log"] = self.log().encode()
        for marker in markers:
            for where, data in blobs.items():
                assert marker.encode() not in data, f"{marker!r} found in {where}"

    def substitute_keys(self, victim: str, attacker: str, backend: str) -> None:
        """Play a malicious relay: serve ``attacker``'s keys as ``victim``'s.

        Written straight into the live database (WAL allows a second writer; the relay
        caches no keys), in one transaction.
        """
        with closing(sqlite3.connect(self.db, timeout=10)) as db, db:
            db.execute(
                "UPDATE users SET identity_key = (SELECT identity_key FROM users WHERE name = ?) "
                "WHERE name = ?",
                (attacker, victim),
            )
            for table, columns in (
                ("signed_prekeys", "backend, blob"),
                ("one_time_prekeys", "backend, key_id, blob"),
            ):
                db.execute(f"DELETE FROM {table} WHERE user = ? AND backend = ?", (victim, backend))
                changed = db.execute(
                    f"INSERT INTO {table} (user, {columns}) "
                    f"SELECT ?, {columns} FROM {table} WHERE user = ? AND backend = ?",
                    (victim, attacker, backend),
                ).rowcount
                assert changed >= 1, f"{attacker} has no {table} for {backend}"


def marker(tag: str) -> str:
    """A plaintext string that must never show up on the relay's side."""
    return f"PLAINTEXT-{tag}-{uuid.uuid4().hex[:10]}"


async def finish_all(*clients: ClientProcess) -> list[ClientExit]:
    for c in clients:
        if c.exit is None and c.transport is not None:
            c.transport.closeStdin()
    return [await c.finish() for c in clients]


def _block(coro: Any) -> Any:
    return pytest_twisted.blockon(defer.ensureDeferred(coro))


@pytest.fixture(scope="module", params=BACKENDS)
def relay(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[Relay, str]]:  # fmt: skip
    backend: str = request.param
    r = Relay(
        tmp_path_factory.mktemp(f"relay-{backend}"),
        {
            "auth": HASH,
            "crypto": {"backends": [backend, OTHER[backend]], "default_backend": backend},
        },
    )
    _block(r.start())
    yield r, backend
    if r.daemon is not None:
        _block(r.stop())


# -- per backend ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_conversation_offline_restarts(relay: tuple[Relay, str]) -> None:
    """Both ways; offline; the recipient restarted; the server restarted on the same DB."""
    r, backend = relay
    a, b = f"alice.{backend}", f"bob.{backend}"
    m = marker(f"conv-{backend}")
    alice, bob = await r.online(a, b, register=True, backend=backend)

    alice.send(f"/msg {b} {m} one")
    got = await bob.expect("message", **{"from": a})
    assert (got["text"], got["verified"], got.get("room")) == (f"{m} one", False, None)
    sent = await alice.expect("sent", to=b)
    assert sent["status"] == wire.STATUS_DELIVERED and sent["id"] == got["id"]
    bob.send(f"/chat {a}", f"{m} two")
    assert (await alice.expect("message", **{"from": b}))["text"] == f"{m} two"

    # bob goes offline; alice's message waits on the relay.
    await bob.finish()
    alice.send(f"/msg {b} {m} three")
    assert (await alice.expect("sent", to=b))["status"] in (wire.STATUS_QUEUED,
                                                            wire.STATUS_DELIVERED)  # fmt: skip
    # bob's client restarts: the stored session decrypts the queued message and goes on.
    bob = await r.client(b, backend=backend).logged_in()
    assert (await bob.expect("message", **{"from": a}))["text"] == f"{m} three"
    bob.send(f"/msg {a} {m} four")
    assert (await alice.expect("message", **{"from": b}))["text"] == f"{m} four"

    # A message accepted before the relay restarts is delivered after it.
    await bob.finish()
    alice.send(f"/msg {b} {m} five")
    await alice.expect("sent", to=b)
    await alice.finish()
    await r.restart()
    alice, bob = await r.online(a, b, backend=backend)
    assert (await bob.expect("message", **{"from": a}))["text"] == f"{m} five"
    alice.send(f"/msg {b} {m} six")
    assert (await bob.expect("message", **{"from": a}))["text"] == f"{m} six"
    bob.send(f"/msg {a} {m} seven")
    assert (await alice.expect("message", **{"from": b}))["text"] == f"{m} seven"
    await finish_all(alice, bob)

    # Each message shown exactly once, nothing lost, no warnings along the way.
    assert [e["text"] for e in bob.all("message")] == [f"{m} five", f"{m} six"]
    assert not [e for c in (alice, bob) for e in c.events if e["type"] in ("warning", "error")]
    r.assert_never_saw(m)


@pytest_twisted.ensureDeferred
async def test_relay_substituting_a_key(relay: tuple[Relay, str]) -> None:
    """A relay serving another identity's keys as bob's is caught by the pinned key.

    alice and carol pin bob's identity key through a bundle of the other backend (alice
    also marks it verified); then the relay's database is altered to serve mallory's
    identity and prekeys as bob's, and both start a fresh session over ``backend``.
    """
    r, backend = relay
    a, b, c, mal = (f"{n}.{backend}" for n in ("alice2", "bob2", "carol2", "mallory2"))
    m = marker(f"mitm-{backend}")
    bob, mallory, alice, carol = await r.wait_online(
        r.client(b, register=True, backend=backend),
        r.client(mal, register=True, backend=backend),
        r.client(a, register=True, backend=OTHER[backend]),
        r.client(c, register=True, backend=OTHER[backend]),
    )
    await finish_all(bob, mallory)  # no real bob online to republish his own keys
    alice.send(f"/verify {b}")
    carol.send(f"/verify {b}")
    first = await alice.expect("verify", user=b)
    assert first["verified"] is False
    assert (await carol.expect("verify", user=b))["fingerprint"] == first["fingerprint"]
    alice.send(f"/trust {b}")
    await alice.expect("info", user=b, verified=True)

    r.substitute_keys(b, mal, backend)

    for client in (alice, carol):
        client.send(f"/backend {backend}", f"/msg {b} {m} for bob?")
    await alice.expect_text("warning", f"the identity key of {b} has changed")
    await alice.expect_text("error", f"{b}'s verified identity key changed")
    await carol.expect_text("warning", f"the identity key of {b} has changed")
    # carol never verified bob: warned, not blocked. alice sends nothing until /trust.
    await carol.expect("sent", to=b)
    alice.send(f"/verify {b}")
    after = await alice.expect("verify", user=b)
    assert after["verified"] is False and after["fingerprint"] != first["fingerprint"]
    alice.send(f"/msg {b} {m} still blocked")
    await alice.expect_text("error", f"{b}'s verified identity key changed")
    await finish_all(alice, carol)
    assert alice.all("sent") == []
    r.assert_never_saw(m)


@pytest_twisted.ensureDeferred
async def test_room_of_three(relay: tuple[Relay, str]) -> None:
    r, backend = relay
    names = [f"{n}.{backend}" for n in ("ann", "ben", "cat")]
    room = f"#room-{backend}"
    m = marker(f"room-{backend}")
    clients = await r.online(*names, register=True, backend=backend)
    ann, ben, cat = clients
    # ann creates the room (invite-only) and invites the others, who accept: every step is
    # an event signed by its actor, verified by every client.
    ann.send(f"/join {room}")
    await ann.expect("room", room=room, action="create", members=[names[0]])
    for name, c in ((names[1], ben), (names[2], cat)):
        ann.send(f"/invite {name} {room}")
        await c.expect("room", room=room, action="invite", user=name)
        c.send(f"/join {room}")
        await ann.expect("room", room=room, action="join", by=name)
    await ben.expect("room", room=room, action="join", by=names[2], members=sorted(names))
    for name, c in zip(names, clients, strict=True):
        c.send(f"/msg {room} {m} from {name}")
    for name, c in zip(names, clients, strict=True):
        for sender in names:
            if sender != name:
                got = await c.expect("message", **{"from": sender})
                assert (got["room"], got["text"]) == (room, f"{m} from {sender}")
    sent = await ann.expect("sent", to=room)
    assert sent["recipients"] == sorted(names[1:])
    # ann (the owner) removes cat: cat is told, and gets nothing more from the room.
    ann.send(f"/remove {names[2]} {room}")
    await cat.expect("room", room=room, action="remove", user=names[2])
    await ben.expect("room", room=room, action="remove", user=names[2])
    ann.send(f"/msg {room} {m} after the removal")
    got = await ben.expect("message", text=f"{m} after the removal")
    assert got["room"] == room
    await ann.expect("sent", to=room, recipients=[names[1]])  # cat is not among them
    cat.send(f"/members {room}")
    await cat.expect("error", code="not-a-member")
    await finish_all(*clients)
    assert all("after the removal" not in e["text"] for e in cat.all("message"))
    assert [c.all("warning") for c in clients] == [[], [], []]
    r.assert_never_saw(m)


# -- policy and command-line failures (one daemon, backend-independent) -----------------------


@pytest.fixture(scope="module")
def contacts_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    r = Relay(
        tmp_path_factory.mktemp("relay-contacts"),
        {"auth": HASH, "crypto": {"backends": ["ecdh"]}, "policy": {"messaging": "contacts"}},
    )
    _block(r.start())
    yield r
    if r.daemon is not None:
        _block(r.stop())


@pytest_twisted.ensureDeferred
async def test_contacts_policy(contacts_relay: Relay) -> None:
    r = contacts_relay
    m = marker("contacts")
    alice, bob = await r.online("alice", "bob", register=True)
    alice.send(f"/msg bob {m} before")
    await alice.expect_text("error", "server refused")
    alice.send("/contact add bob")
    await bob.expect("contact", user="alice", state="pending-in")
    bob.send("/contact accept alice")
    await alice.expect("contact", user="bob", state="accepted")
    alice.send(f"/msg bob {m} after")
    assert (await bob.expect("message", **{"from": "alice"}))["text"] == f"{m} after"
    await finish_all(alice, bob)
    assert [e["text"] for e in bob.all("message")] == [f"{m} after"]
    r.assert_never_saw(m)


def _free_port() -> int:
    """A loopback port nobody listens on (bound, noted and closed again)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _one_line(exit: ClientExit) -> str:
    assert exit.code not in (0, None), exit
    assert "Traceback" not in exit.stderr, exit.stderr
    [line] = exit.stderr_lines
    assert line.startswith("securechat-client: error: "), line
    return line


@pytest_twisted.ensureDeferred
async def test_command_line_failures(contacts_relay: Relay) -> None:
    r = contacts_relay
    [dave] = await r.online("dave", register=True)
    await dave.finish()
    other_ca = r.root / "other-ca.pem"
    other_ca.write_bytes(_cert_pem(_make_ca()[0]))
    pp = r.password_file("dave")  # the keystore passphrase stays right for the second case
    # One client per keystore: dave's two cases run one after the other.
    first_line = _one_line(await r.client("dave", password="not dave's password").wait_exit())
    runs = {
        "server password": r.client(
            "dave", password="not dave's password", extra=("--passphrase-file", str(pp))
        ),
        "unreachable": r.client("erin", register=True, port=_free_port()),
        "wrong ca": r.client("fred", register=True, ca=other_ca),
        "no such user": r.client("gina", extra=()),
    }
    lines = {what: _one_line(await c.wait_exit()) for what, c in runs.items()}
    lines["keystore passphrase"] = first_line
    # The password opens the keystore too: a wrong one is the server's refusal, not the file's.
    assert "login refused: wrong user name or password" in lines["keystore passphrase"]
    assert "login refused: wrong user name or password" in lines["server password"]
    assert "cannot connect to 127.0.0.1:" in lines["unreachable"]
    assert "TLS" in lines["wrong ca"] and "certif" in lines["wrong ca"].lower()
    assert "no keystore" in lines["no such user"] and "--register" in lines["no such user"]
    for c in runs.values():
        assert c.events == [] or all(e["type"] != "status" for e in c.events)
