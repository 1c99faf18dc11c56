"""A relay server driven without sockets: MemoryStore, a Clock and StringTransports.

Shared by ``test_protocol.py`` and the ``test_relay*.py`` modules. Everything is
synchronous: the store's Deferreds have already fired, password hashing runs inline with
cheap parameters, and time only moves when a test advances the clock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import cbor2
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from securechat import wire
from securechat.config import ServerConfig, StoreSection, config_from_mapping
from securechat.server.auth import AuthService, make_portal
from securechat.server.loginthrottle import LoginThrottle
from securechat.server.passwords import Argon2Params, HashParams, ScryptParams, hash_password
from securechat.server.protocol import RelayProtocol, build_factory
from securechat.server.store.memory import MemoryStore

CHEAP = HashParams(Argon2Params(memory_kib=64, iterations=1, lanes=1), ScryptParams(4, 8, 1))
EXPORTER = b"\xee" * wire.EXPORTER_LENGTH
M = TypeVar("M", bound=wire.Message)


def run_inline(f: Any, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
    """A ThreadRunner that runs on the calling thread, for deterministic tests."""
    return defer.maybeDeferred(f, *args, **kwargs)


def make_config(**sections: dict[str, Any]) -> ServerConfig:
    """A validated config; ``sections`` override single keys per section."""
    data: dict[str, Any] = {
        "server": {"port": 0},
        "auth": {"methods": ["password", "publickey", "certificate"]},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return config_from_mapping(data, Path("/nonexistent"), "test.toml")


class FakeInfo:
    """ConnectionInfo without TLS: a fixed exporter value and an optional client CN."""

    def __init__(self, cn: str | None) -> None:
        self.cn = cn

    def exporter(self) -> bytes:
        return EXPORTER

    def peer_cn(self) -> str | None:
        return self.cn

    def handshake_done(self) -> bool:
        return True


class Client:
    """One connection: sends frames into the protocol and parses what it wrote back."""

    def __init__(self, harness: Harness, proto: RelayProtocol, transport: StringTransport):
        self.harness = harness
        self.proto = proto
        self.transport = transport
        self._next_id = 100
        self._buffer = b""
        #: Frames seen by :meth:`reply` that were not the reply, kept for :meth:`received`.
        self.stash: list[wire.Message] = []

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def send(self, msg: wire.Message) -> None:
        self.proto.dataReceived(wire.encode_frame(msg))

    def send_raw(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    def received(self) -> list[wire.Message]:
        """Frames written since the last call, decoded."""
        data = self._buffer + self.transport.value()
        self.transport.clear()
        out = []
        while len(data) >= 4:
            n = int.from_bytes(data[:4], "big")
            if len(data) < 4 + n:
                break
            out.append(wire.decode(data[4 : 4 + n]))
            data = data[4 + n :]
        self._buffer = data
        out, self.stash = self.stash + out, []
        return out

    def request(self, msg: wire.Message) -> list[wire.Message]:
        """Send ``msg``, let coalesced pushes out, and return everything received."""
        self.send(msg)
        self.harness.clock.advance(0)
        return self.received()

    def reply(self, msg: wire.Message, kind: type[M]) -> M:
        """The single reply of type ``kind`` to ``msg`` (pushes are ignored)."""
        rid = getattr(msg, "id", -1)
        msgs = self.request(msg)
        got = [m for m in msgs if getattr(m, "id", None) == rid]
        self.stash.extend(m for m in msgs if getattr(m, "id", None) != rid)
        assert len(got) == 1, got
        assert isinstance(got[0], kind), got[0]
        return got[0]

    def error(self, msg: wire.Message) -> wire.Error:
        return self.reply(msg, wire.Error)

    def login(self, user: str, password: str | None = None) -> wire.LoggedIn:
        pw = password or self.harness.password(user)
        return self.reply(
            wire.LoginPassword(id=self.next_id(), user=user, password=pw), wire.LoggedIn
        )

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting) or self.proto._closed

    def drop(self) -> None:
        """The peer went away."""
        self.transport.loseConnection()
        self.proto.connectionLost()


class Harness:
    """A factory over a MemoryStore with a Clock, inline hashing and no TLS."""

    def __init__(
        self,
        config: ServerConfig | None = None,
        queue_limit: int = 10_000,
        store_section: StoreSection | None = None,
    ) -> None:
        self.config = config or make_config()
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        if store_section is None:
            # Strangers' quotas as large as the queue: only the quota tests want them small.
            store_section = StoreSection(
                queue_limit=queue_limit, stranger_limit=queue_limit, strangers_limit=queue_limit
            )
        self.store = MemoryStore(store_section, clock=self.clock)
        portal = make_portal(self.config, self.store, run_inline, params=CHEAP)
        throttle = LoginThrottle.from_config(self.config.auth, self.clock.seconds)
        self.auth = AuthService(portal, throttle, self.clock, failure_delay=0)
        self.cn: str | None = None
        self.factory = build_factory(
            self.config, self.store, self.clock, run_in_thread=run_inline,
            auth_service=self.auth, hash_params=CHEAP,
            connection_info=lambda transport: FakeInfo(self.cn),
        )  # fmt: skip
        self.relay = self.factory.relay

    @staticmethod
    def password(user: str) -> str:
        return f"pw-of-{user}-long"

    def add_user(
        self, name: str, role: str = "user", identity_key: bytes | None = None,
        password: str | None = None,
    ) -> None:  # fmt: skip
        """Create ``name`` with ``password`` (default :meth:`password`) as what the server
        receives at login (for the real client that is its derived login secret)."""
        stored = hash_password(password or self.password(name), self.config.auth.password_hash,
                               CHEAP)  # fmt: skip
        self.store.add_user(name, role, stored, identity_key)

    def connect(self, cn: str | None = None) -> Client:
        self.cn = cn
        proto = self.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return Client(self, proto, transport)

    def online(self, name: str, role: str = "user") -> Client:
        """A registered, logged-in user with nothing pending in its buffer."""
        if self.store._users.get(name) is None:
            self.add_user(name, role)
        client = self.connect()
        client.login(name)
        self.clock.advance(0)
        client.received()
        return client


class GatedStore:
    """Wraps a store: calls named in ``hold`` do their work at once but fire only when
    :meth:`release` is called (a query done on the database thread whose result has not
    reached the reactor yet). Install with ``h.relay.store = GatedStore(h.store)``."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.hold: set[str] = set()
        self.held: list[tuple[str, defer.Deferred[Any], list[Any]]] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in self.hold:
            return attr

        def held(*args: Any, **kwargs: Any) -> defer.Deferred[Any]:
            results: list[Any] = []
            attr(*args, **kwargs).addBoth(results.append)
            out: defer.Deferred[Any] = defer.Deferred()
            self.held.append((name, out, results))
            return out

        return held

    def release(self) -> None:
        """Fire every held call (and those held while firing), oldest first."""
        while self.held:
            _name, d, results = self.held.pop(0)
            d.callback(results[0])


def item(
    to: str,
    payload: bytes = b"ciphertext",
    room: str | None = None,
    backend: str = "ecdh",
    mid: bytes | None = None,
) -> wire.SendItem:
    """One send item with a message id derived from the payload."""
    return wire.SendItem(to, backend, mid or (payload * 16)[:16].ljust(16, b"."), payload, room)


def delivered(msgs: list[wire.Message]) -> list[wire.DeliverItem]:
    """All deliver items in ``msgs``, in order."""
    return [i for m in msgs if isinstance(m, wire.Deliver) for i in m.items]


#: A public key size each backend really has (the relay checks sizes).
PUBLIC_SIZE = {"ecdh": 32, "dh": 384, "rsa": 422, "hybrid": 1216}


def spk_record(backend: str = "ecdh", key_id: int = 1, pub: bytes | None = None) -> bytes:
    """A signed prekey record of the shape clients publish (the signature is not checked
    by the relay, so any 64 bytes do)."""
    pub = pub or b"P" * PUBLIC_SIZE[backend]
    record = {"id": key_id, "be": f"{backend}:x", "pub": pub, "ikem": pub, "exp": 2**40,
              "sig": b"S" * 64}  # fmt: skip
    return bytes(cbor2.dumps(record, canonical=True))


def otk_record(key_id: int, backend: str = "ecdh", pub: bytes | None = None) -> bytes:
    """A one-time prekey record of the shape clients publish."""
    pub = pub or key_id.to_bytes(PUBLIC_SIZE[backend], "big")
    record = {"id": key_id, "be": f"{backend}:x", "pub": pub}
    return bytes(cbor2.dumps(record, canonical=True))
