"""The client's side of the wire protocol: requests with Deferred replies, and pushes.

One :class:`WireClientProtocol` is one TLS connection. Requests get fresh ids and return a
Deferred that fires with the reply or fails with :class:`RemoteError` (a typed ``error``
from the server) or :class:`ConnectionGone`; frames without a pending id are pushes and go
to a callback. Reconnecting is the caller's business (``ClientService``), so this class
stays small and testable over a ``StringTransport``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

from twisted.internet.defer import Deferred, fail
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

from securechat import wire
from securechat.errors import SecureChatError

_M = TypeVar("_M", bound=wire.Message)


class RemoteError(SecureChatError):
    """The server refused a request."""

    def __init__(self, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.retry_after = retry_after


class ConnectionGone(SecureChatError):
    """The connection closed before the reply arrived."""

    def __init__(self, reason: Failure | None) -> None:
        super().__init__("connection lost")
        self.reason = reason


class WireClientProtocol(Int32StringReceiver):
    """Frames in and out; correlates replies with requests by id."""

    log = Logger()
    #: Deliver batches can be large; the server caps them, this only bounds memory.
    MAX_LENGTH = 64 << 20

    def __init__(
        self,
        on_push: Callable[[wire.Message], None],
        on_lost: Callable[[WireClientProtocol, Failure], None],
    ) -> None:
        self._on_push = on_push
        self._on_lost = on_lost
        self._next_id = 1
        self._pending: dict[int, Deferred[Any]] = {}
        self.closed = False
        self.bye: wire.Bye | None = None

    def request(self, cls: Callable[..., _M], **fields: Any) -> Deferred[wire.Message]:
        """Send a request of type ``cls`` and wait for its reply."""
        if self.closed:
            return fail(ConnectionGone(None))
        rid = self._next_id
        self._next_id += 1
        d: Deferred[wire.Message] = Deferred()
        self._pending[rid] = d
        self._write(cls(id=rid, **fields))
        return d

    def send(self, msg: wire.Message) -> None:
        """Send a message that gets no reply (``ack``)."""
        if not self.closed:
            self._write(msg)

    def _write(self, msg: wire.Message) -> None:
        assert self.transport is not None
        self.transport.write(wire.encode_frame(msg))

    def exporter(self) -> bytes:
        """The TLS exporter value the server binds public-key logins to (RFC 8446 7.5)."""
        assert self.transport is not None
        handle = cast(Any, self.transport).getHandle()
        return bytes(handle.export_keying_material(wire.EXPORTER_LABEL, wire.EXPORTER_LENGTH, None))

    def stringReceived(self, data: bytes) -> None:
        """Int32StringReceiver API: one frame from the server."""
        try:
            msg = wire.decode(data)
        except wire.ProtocolError as e:
            self.log.warn("server sent a bad frame ({code})", code=e.code)
            assert self.transport is not None
            self.transport.loseConnection()
            return
        rid = getattr(msg, "id", None)
        if rid is not None and rid in self._pending:
            d = self._pending.pop(rid)
            if isinstance(msg, wire.Error):
                d.errback(RemoteError(msg.code, msg.message, msg.retry_after))
            else:
                d.callback(msg)
            return
        if isinstance(msg, wire.Bye):
            self.bye = msg
        self._on_push(msg)

    def lengthLimitExceeded(self, length: int) -> None:
        self.log.warn("server frame of {length} bytes is over the limit", length=length)
        assert self.transport is not None
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Protocol API: fail every outstanding request, then tell the owner."""
        self.closed = True
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(ConnectionGone(reason))
        self._on_lost(self, reason)


async def login_password(proto: WireClientProtocol, user: str, password: str) -> wire.Message:
    """``login_password``; when the server answers ``pow_required`` (the account had too
    many failed logins from addresses we never used), solve the proof of work and send the
    login again, once. The solution costs about ``2**bits`` SHA-256 computations."""
    reply = await proto.request(wire.LoginPassword, user=user, password=password)
    if isinstance(reply, wire.PowRequired):
        solution = wire.pow_solve(reply.challenge, user, reply.bits)
        reply = await proto.request(
            wire.LoginPassword, user=user, password=password,
            pow_challenge=reply.challenge, pow_solution=solution,
        )  # fmt: skip
    return reply


class WireClientFactory(Factory):
    """Builds a protocol per (re)connection and hands it to ``on_connect``."""

    noisy = False

    def __init__(
        self,
        on_connect: Callable[[WireClientProtocol], None],
        on_push: Callable[[wire.Message], None],
        on_lost: Callable[[WireClientProtocol, Failure], None],
    ) -> None:
        self._on_connect = on_connect
        self._on_push = on_push
        self._on_lost = on_lost

    def buildProtocol(self, addr: Any) -> WireClientProtocol:
        proto = _ConnectedProtocol(self._on_push, self._on_lost)
        proto.on_made = self._on_connect
        return proto


class _ConnectedProtocol(WireClientProtocol):
    on_made: Callable[[WireClientProtocol], None]

    def connectionMade(self) -> None:
        """Protocol API: the TCP connection exists; TLS finishes with the first exchange."""
        self.on_made(self)


class LoginFailed(Exception):
    """The first login did not succeed; the message is the one line the user sees."""


def describe_failure(failure: Failure) -> str:
    """One line for a failed connection or login, never a traceback."""
    err = failure.value
    if isinstance(err, RemoteError):
        if err.code in (wire.E_AUTH_FAILED, "bad-credentials"):
            return "login refused: wrong user name or password"
        return f"server refused: {err}"
    if isinstance(err, LoginFailed):
        return str(err)
    if isinstance(err, ConnectionGone) and err.reason is not None:
        return describe_failure(err.reason)
    text = str(err) or type(err).__name__
    if (
        "certificate verify failed" in text
        or "VerificationError" in repr(err)
        or "SSL" in repr(type(err))
    ):
        return f"TLS verification of the server failed: {text}"
    return text
