"""A minimal wire-level client for end-to-end tests: real TLS, real frames, no crypto.

It speaks exactly the protocol (``Int32StringReceiver`` frames of :mod:`securechat.wire`
messages) over TLS set up by :func:`securechat.tls.client_tls_options`, correlates replies
by request id and queues pushes (``deliver``, ``presence``, ...), so a test reads like the
protocol description. Payloads are opaque bytes here; the real client encrypts them.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import connectionDone
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

from securechat import wire
from securechat.tls import client_tls_options

TIMEOUT = 15.0
_M = TypeVar("_M", bound=wire.Message)


class ServerError(Exception):
    """The server answered a request with an ``error`` message."""

    def __init__(self, error: wire.Error) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.code = error.code


class WireClient(Int32StringReceiver):
    """One connection; ``request`` returns the reply, pushes land in :meth:`next_push`."""

    MAX_LENGTH = 16 << 20

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._ids = itertools.count(1)
        self._pending: dict[int, defer.Deferred[wire.Message]] = {}
        self._pushes: list[wire.Message] = []
        self._push_waiters: list[defer.Deferred[None]] = []
        self._lost_waiters: list[defer.Deferred[None]] = []
        self.lost_reason: Failure | None = None

    # -- Int32StringReceiver API ----------------------------------------------------------
    def stringReceived(self, frame: bytes) -> None:
        msg = wire.decode(frame)
        rid = getattr(msg, "id", None)
        waiter = self._pending.pop(rid, None) if rid is not None else None
        if waiter is not None:
            waiter.callback(msg)
            return
        self._pushes.append(msg)
        waiters, self._push_waiters = self._push_waiters, []
        for d in waiters:
            if not d.called:  # a timed-out wait was cancelled
                d.callback(None)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(reason)
        self.lost_reason = reason
        waiters, self._lost_waiters = self._lost_waiters, []
        for w in waiters + self._push_waiters:
            if not w.called:
                w.callback(None)

    async def wait_lost(self, timeout: float = TIMEOUT) -> Failure:
        """Wait until the server (or we) closed the connection; returns the reason."""
        if self.lost_reason is None:
            d: defer.Deferred[None] = defer.Deferred()
            self._lost_waiters.append(d)
            await d.addTimeout(timeout, self._reactor)
        assert self.lost_reason is not None
        return self.lost_reason

    # -- requests -------------------------------------------------------------------------
    async def request(self, msg: wire.Message, expect: type[_M]) -> _M:
        """Send ``msg`` with a fresh id and return its reply, which must be ``expect``
        (an ``error`` raises :class:`ServerError` unless ``expect`` admits it)."""
        rid = next(self._ids)
        d: defer.Deferred[wire.Message] = defer.Deferred()
        self._pending[rid] = d
        self.sendString(wire.encode(replace(msg, id=rid)))  # type: ignore[type-var]
        reply = await d.addTimeout(TIMEOUT, self._reactor)
        if isinstance(reply, wire.Error) and not issubclass(wire.Error, expect):
            raise ServerError(reply)
        assert isinstance(reply, expect), reply
        return reply

    def send_push(self, msg: wire.Message) -> None:
        """Send a message that has no reply (``ack``)."""
        self.sendString(wire.encode(msg))

    async def next_push(self, kind: type[_M], timeout: float = TIMEOUT) -> _M:
        """Remove and return the oldest queued push of type ``kind``, waiting for one."""
        while True:
            for i, msg in enumerate(self._pushes):
                if isinstance(msg, kind):
                    del self._pushes[i]
                    return msg
            if self.lost_reason is not None:
                raise AssertionError(f"connection lost while waiting for {kind.__name__}")
            d: defer.Deferred[None] = defer.Deferred()
            self._push_waiters.append(d)
            await d.addTimeout(timeout, self._reactor)

    def pushes(self, kind: type[_M]) -> list[_M]:
        """Queued pushes of type ``kind`` (not removed)."""
        return [m for m in self._pushes if isinstance(m, kind)]

    def exporter(self) -> bytes:
        """This connection's TLS exporter value, which public-key logins sign."""
        handle: Any = self.transport.getHandle()  # type: ignore[union-attr]
        value: bytes = handle.export_keying_material(
            wire.EXPORTER_LABEL, wire.EXPORTER_LENGTH, None
        )
        return value

    # -- the protocol in a few calls ----------------------------------------------------------
    async def hello(self) -> wire.Welcome:
        return await self.request(
            wire.Hello(id=0, version=wire.PROTOCOL_VERSION, agent="e2e-test"), wire.Welcome
        )

    async def register(
        self, user: str, password: str | None = None, identity_key: bytes | None = None
    ) -> wire.Registered:
        msg = wire.Register(id=0, user=user, password=password, identity_key=identity_key)
        return await self.request(msg, wire.Registered)

    async def login_password(self, user: str, password: str) -> wire.LoggedIn:
        msg = wire.LoginPassword(id=0, user=user, password=password)
        return await self.request(msg, wire.LoggedIn)

    async def login_publickey(self, user: str, key: Ed25519PrivateKey) -> wire.LoggedIn:
        nonce = (await self.request(wire.LoginChallenge(id=0), wire.LoginNonce)).nonce
        signature = key.sign(wire.login_signature_payload(user, nonce, self.exporter()))
        msg = wire.LoginPublicKey(id=0, user=user, nonce=nonce, signature=signature)
        return await self.request(msg, wire.LoggedIn)

    async def login_certificate(self) -> wire.LoggedIn:
        return await self.request(wire.LoginCertificate(id=0), wire.LoggedIn)

    async def send(self, *items: wire.SendItem) -> wire.SendReply:
        return await self.request(wire.Send(id=0, items=tuple(items)), wire.SendReply)

    def ack(self, up_to: int) -> None:
        self.send_push(wire.Ack(up_to=up_to))

    async def close(self) -> None:
        """Close and wait until the connection is gone (no dirty reactor)."""
        if self.lost_reason is None:
            self.transport.loseConnection()  # type: ignore[union-attr]
        await self.wait_lost()


def public_key_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


async def connect(
    reactor: Any,
    port: int,
    ca_pem: bytes,
    client_cert_pem: bytes | None = None,
    hostname: str = "localhost",
) -> WireClient:
    """Open a TLS connection to 127.0.0.1:``port``, verifying ``hostname`` against the CA."""
    tcp = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=int(TIMEOUT))
    endpoint = wrapClientTLS(client_tls_options(hostname, ca_pem, client_cert_pem), tcp)
    client = WireClient(reactor)
    await connectProtocol(endpoint, client).addTimeout(TIMEOUT, reactor)
    return client
