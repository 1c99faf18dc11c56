# -*- test-case-name: tests.server.test_protocol -*-
"""One client connection: CBOR frames in, relay calls out, replies and pushes back.

Kept thin on purpose (``twisted-style`` section 3): the protocol decodes frames, enforces
the connection's state (logged in or not, timeouts, output backlog) and maps outcomes to
typed ``error`` replies; policy and routing live in :mod:`securechat.server.relay`.

Every bad input ends in a typed error or in closing *this* connection, with one log line
that names the connection and the error code but never a payload, password or key.
"""

from __future__ import annotations

import dataclasses
import secrets
import struct
from collections.abc import Callable, Coroutine
from importlib import metadata
from itertools import count
from typing import Any, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IPushProducer,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import ServerFactory, connectionDone
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from securechat import wire
from securechat.config import ServerConfig
from securechat.errors import StoreError
from securechat.server.auth import (
    Account,
    AuthError,
    AuthService,
    BadCredentials,
    Throttled,
    make_portal,
    register_user,
)
from securechat.server.connection import ConnectionInfo, TLSConnectionInfo, Transport
from securechat.server.handlers import FAST_HANDLERS, HANDLERS
from securechat.server.passwords import DEFAULT_PARAMS, HashParams, ThreadRunner
from securechat.server.ratelimit import LoginThrottle, SendLimiter
from securechat.server.relay import ISessionSink, Relay, RelayError, Session
from securechat.server.store.interface import IStore

#: Requests handled concurrently per connection before reading from it pauses.
MAX_IN_FLIGHT = 32
#: Seconds a closing connection may take to flush before it is aborted.
CLOSE_GRACE = 2.0
#: Seconds a client is told to wait after the store failed (``unavailable``).
STORE_RETRY_AFTER = 1.0
_HEADER = struct.Struct(">I")
_PRE_LOGIN = frozenset(
    {"hello", "ping", "pow_challenge", "register", "login_password", "login_challenge",
     "login_publickey", "login_certificate"}
)  # fmt: skip


def _server_version() -> str:
    try:
        return f"securechat/{metadata.version('securechat')}"
    except metadata.PackageNotFoundError:
        return "securechat/dev"


@implementer(ISessionSink, IPushProducer)
class RelayProtocol(Int32StringReceiver):
    """The server side of one client connection.

    One timer serves the login deadline, the idle limit and the close grace period: it
    is not reset per frame (that would reorder the reactor's timer heap on the hot path)
    but re-armed for the remainder when it fires early.
    """

    log = Logger()

    def __init__(self, factory: RelayFactory, info: Callable[[ITransport], ConnectionInfo]):
        self.factory = factory
        self.server = factory
        self._info_factory = info
        self.MAX_LENGTH = factory.config.server.max_frame_bytes
        self.session: Session | None = None
        self.cid = next(factory.ids)
        self._closing = False
        self._closed = False
        self._logging_in = False
        self._nonce: bytes | None = None
        self._pow: bytes | None = None
        self._in_flight = 0
        self._reading_paused = False
        self._paused = False
        self._held: list[bytes] | None = None  # lists only while paused: most never are
        self._held_bytes = 0
        self._waiters: list[Deferred[None]] | None = None
        self._timer: IDelayedCall | None = None
        self._limit = 0.0
        self._last_input = 0.0

    def _set_timeout(self, period: float | None) -> None:
        """Close the connection after ``period`` seconds without input (None: never)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if period is not None:
            self._limit = period
            self._last_input = self.server.clock.seconds()
            self._timer = self.server.clock.callLater(period, self._timer_fired)

    def _timer_fired(self) -> None:
        left = self._last_input + self._limit - self.server.clock.seconds()
        if left > 0 and not self._closing:
            self._timer = self.server.clock.callLater(left, self._timer_fired)
            return
        self._timer = None
        self.timeoutConnection()

    # -- connection lifecycle -------------------------------------------------------------
    def connectionMade(self) -> None:
        """Protocol API: start the login deadline and learn about slow readers."""
        self._tx = cast(Transport, self.transport)
        self._tx.registerProducer(self, True)
        self._set_timeout(self.server.config.server.handshake_timeout)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Protocol API: leave the relay; un-acknowledged envelopes stay stored."""
        self._closed = True
        self._set_timeout(None)
        if self.session is not None:
            self.server.relay.logout(self.session)
            self.log.info(
                "{user} disconnected (conn {conn})", user=self.session.user, conn=self.cid
            )
        waiters, self._waiters = self._waiters, None
        for d in waiters or ():
            d.callback(None)

    @property
    def info(self) -> ConnectionInfo:
        """The TLS facts of this connection, read when a login needs them (no object is
        kept per connection)."""
        return self._info_factory(cast(ITransport, self.transport))

    @property
    def address(self) -> str:
        """The peer's IP address, for login throttling."""
        return str(getattr(self._tx.getPeer(), "host", "unknown"))

    def timeoutConnection(self) -> None:
        """The login deadline or idle limit passed, or a close did not finish in time."""
        if self._closing:
            self._tx.abortConnection()
            return
        code = wire.E_IDLE_TIMEOUT if self.session else wire.E_HANDSHAKE_TIMEOUT
        self.log.info("conn {conn} timed out: {code}", conn=self.cid, code=code)
        self.close(code, "no activity" if self.session else "not logged in in time")

    # -- ISessionSink and IPushProducer -----------------------------------------------------
    def push(self, message: wire.Message) -> None:
        """ISessionSink API: frames wait in a bounded queue while the transport is full."""
        if self._closing or self._closed:
            return
        body = wire.encode(message)
        frame = _HEADER.pack(len(body)) + body
        if not self._paused:
            self._tx.write(frame)
            return
        if self._held is None:
            self._held = []
        self._held.append(frame)
        self._held_bytes += len(frame)
        if self._held_bytes > self.server.config.server.max_outbound_bytes:
            who = self.session.user if self.session else None
            self.log.warn("conn {conn} ({user}) reads too slowly; dropped", conn=self.cid, user=who)
            self._closing = True
            self._held, self._held_bytes = None, 0
            self._tx.abortConnection()

    def close(self, code: str, reason: str) -> None:
        """ISessionSink API: say why, then close once the output is flushed."""
        if self._closing or self._closed:
            return
        self.push(wire.Bye(code=code, message=reason))
        self._closing = True
        # TLS will not shut down while a producer is registered, and held frames would
        # wait for a resume that no longer comes: hand them to the transport and let go.
        self._tx.unregisterProducer()
        if self._held:
            held, self._held, self._held_bytes = self._held, [], 0
            self._tx.write(b"".join(held))
        if not self.info.handshake_done():
            # Before the TLS handshake finishes nothing can be sent (not even the bye) and
            # TLS cannot shut down cleanly: a slowloris costs its timeout and no more.
            self._tx.abortConnection()
            return
        self._set_timeout(CLOSE_GRACE)
        self._tx.loseConnection()

    def when_writable(self) -> Deferred[None]:
        """ISessionSink API."""
        if not self._paused or self._closed:
            return succeed(None)
        d: Deferred[None] = Deferred()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(d)
        return d

    def pauseProducing(self) -> None:
        """IPushProducer API: the transport's buffer is full; hold our output."""
        self._paused = True

    def resumeProducing(self) -> None:
        """IPushProducer API: the peer reads again; send what was held."""
        self._paused = False
        held, self._held, self._held_bytes = self._held, None, 0
        if held and not self._closed:
            self._tx.write(b"".join(held))
        waiters, self._waiters = self._waiters, None
        for d in waiters or ():
            d.callback(None)

    def stopProducing(self) -> None:
        """IPushProducer API: the connection is going away."""
        self._closing = True

    # -- input --------------------------------------------------------------------------
    def lengthLimitExceeded(self, length: int) -> None:
        """Int32StringReceiver API: an oversized frame closes this connection."""
        if not self._closing:
            self.log.warn("conn {conn} sent a {length}-byte frame", conn=self.cid, length=length)
            self._error(None, wire.E_TOO_LARGE, "frame exceeds max_frame_bytes")
            self.close(wire.E_TOO_LARGE, "frame too large")

    def stringReceived(self, string: bytes) -> None:
        """Int32StringReceiver API: decode, check state, dispatch."""
        if self._closing:
            return
        if self.session is not None:
            self._last_input = self.server.clock.seconds()
        try:
            msg = wire.decode(string)
        except wire.ProtocolError as e:
            self.log.warn("conn {conn} sent a bad frame: {code}", conn=self.cid, code=e.code)
            self._error(e.request_id, e.code, e.message)
            if e.code == wire.E_BAD_FRAME:
                self.close(e.code, "undecodable frame")
            return
        if type(msg) is wire.Ack and self.session is not None:
            # The hot path's most frequent frame: no reply, no store round trip, no Deferred.
            self.server.relay.ack(self.session, msg.up_to)
            return
        rid: int | None = getattr(msg, "id", None)
        kind = msg.TYPE
        session = self.session
        if kind in _PRE_LOGIN:
            coro = _PRE_LOGIN_HANDLERS[kind](self, msg)
        elif kind not in HANDLERS and kind not in FAST_HANDLERS:
            self.log.warn("conn {conn} sent a {type} frame", conn=self.cid, type=kind)
            self._error(rid, wire.E_UNKNOWN_TYPE, f"{kind} is not a request")
            return
        elif session is None:
            self.log.info("conn {conn}: {type} before login", conn=self.cid, type=kind)
            self._error(rid, wire.E_NOT_AUTHENTICATED, "log in first")
            return
        else:
            fast = FAST_HANDLERS.get(kind)
            if fast is not None:
                self._started()
                d = fast(self.server, session, msg)
                d.addCallbacks(self._answer, self._failed, errbackArgs=(rid, kind))
                return
            coro = HANDLERS[kind](self.server, session, msg)
        self._started()
        d2: Deferred[wire.Message | None] = Deferred.fromCoroutine(coro)
        d2.addCallbacks(self._answer, self._failed, errbackArgs=(rid, kind))

    def _started(self) -> None:
        self._in_flight += 1
        if self._in_flight >= MAX_IN_FLIGHT and not self._reading_paused:
            self._reading_paused = True
            self._tx.pauseProducing()

    def _answer(self, reply: wire.Message | None) -> None:
        self._finished()
        if reply is not None:
            self.push(reply)

    def _failed(self, failure: Failure, rid: int | None, kind: str) -> None:
        self._finished()
        e = failure.value
        if isinstance(e, RelayError):
            self._error(rid, e.code, e.message, e.retry_after)
        elif isinstance(e, Throttled):
            self.log.info("conn {conn}: login throttled", conn=self.cid)
            self._error(rid, wire.E_THROTTLED, "too many attempts", e.retry_after)
        elif isinstance(e, BadCredentials):
            self.log.info("conn {conn}: login failed", conn=self.cid)
            self._error(rid, wire.E_AUTH_FAILED, "login failed")
        elif isinstance(e, AuthError):
            self.log.info("conn {conn}: {kind} refused: {code}", conn=self.cid, kind=kind,
                          code=e.code)  # fmt: skip
            self._error(rid, e.code, str(type(e).__doc__ or e.code).strip())
        elif type(e) is StoreError:
            # Locked database, full disk, I/O error: nothing was accepted; say so plainly
            # and let the client retry, without a traceback per request in the log.
            self.log.warn("conn {conn}: {kind} failed: store unavailable: {error}",
                          conn=self.cid, kind=kind, error=str(e))  # fmt: skip
            self._error(rid, wire.E_UNAVAILABLE, "storage unavailable; nothing was accepted",
                        STORE_RETRY_AFTER)  # fmt: skip
        else:
            self.log.failure("conn {conn}: {kind} failed", failure, conn=self.cid, kind=kind)
            self._error(rid, wire.E_INTERNAL, "internal error")

    def _finished(self) -> None:
        self._in_flight -= 1
        if self._reading_paused and self._in_flight < MAX_IN_FLIGHT // 2 and not self._closed:
            self._reading_paused = False
            self._tx.resumeProducing()

    def _error(
        self, rid: int | None, code: str, message: str, retry_after: float | None = None
    ) -> None:
        self.push(wire.Error(id=rid, code=code, message=message, retry_after=retry_after))

    # -- handlers: connection and login -------------------------------------------------------
    async def on_hello(self, msg: wire.Hello) -> wire.Message:
        """Answer with the server's policy; a version we do not speak is an error."""
        if msg.version != wire.PROTOCOL_VERSION:
            raise RelayError(wire.E_UNSUPPORTED_VERSION, f"this server speaks version "
                             f"{wire.PROTOCOL_VERSION}")  # fmt: skip
        return dataclasses.replace(self.server.welcome, id=msg.id)

    async def on_ping(self, msg: wire.Ping) -> wire.Message:
        """Keep-alive."""
        return wire.Pong(id=msg.id)

    def _check_not_logged_in(self) -> None:
        if self.session is not None:
            raise RelayError(wire.E_ALREADY_AUTHENTICATED, "already logged in")
        if self._logging_in:
            raise RelayError(wire.E_BAD_REQUEST, "a login is already in progress")

    async def on_pow_challenge(self, msg: wire.PowChallenge) -> wire.Message:
        """A fresh, single-use registration challenge for this connection."""
        self._pow = secrets.token_bytes(wire.POW_CHALLENGE_BYTES)
        bits = self.server.config.auth.registration_pow_bits
        return wire.PowChallengeReply(id=msg.id, challenge=self._pow, bits=bits)

    async def on_register(self, msg: wire.Register) -> wire.Message:
        """Create an account (the client logs in afterwards)."""
        self._check_not_logged_in()
        issued, self._pow = self._pow, None
        challenge = b""
        offered = msg.pow_challenge
        if issued is not None and offered is not None and wire.constant_time_equal(issued, offered):
            challenge = issued
        f = self.server
        record = await register_user(
            f.store, f.config, msg.user, msg.password, msg.identity_key, challenge,
            msg.pow_solution or b"", f.run_in_thread, params=f.hash_params,
        )  # fmt: skip
        self.log.info("registered {user} (conn {conn})", user=record.name, conn=self.cid)
        return wire.Registered(id=msg.id, user=record.name)

    async def on_login_password(self, msg: wire.LoginPassword) -> wire.Message | None:
        """Password login."""
        self._check_not_logged_in()
        auth = self.server.auth
        return await self._login(msg.id, auth.login_password(msg.user, msg.password, self.address))

    async def on_login_challenge(self, msg: wire.LoginChallenge) -> wire.Message:
        """Issue the nonce for the next public-key login on this connection."""
        self._check_not_logged_in()
        self._nonce = secrets.token_bytes(wire.LOGIN_NONCE_BYTES)
        return wire.LoginNonce(id=msg.id, nonce=self._nonce)

    async def on_login_publickey(self, msg: wire.LoginPublicKey) -> wire.Message | None:
        """Public-key login; the nonce is consumed by any attempt, right or wrong."""
        self._check_not_logged_in()
        issued, self._nonce = self._nonce, None
        if issued is None or not wire.constant_time_equal(issued, msg.nonce):
            self.log.warn("conn {conn}: login nonce not issued or reused", conn=self.cid)
            raise RelayError(wire.E_AUTH_FAILED, "login challenge not issued or already used")
        attempt = self.server.auth.login_publickey(
            msg.user, issued, self.info.exporter(), msg.signature, self.address
        )
        return await self._login(msg.id, attempt)

    async def on_login_certificate(self, msg: wire.LoginCertificate) -> wire.Message | None:
        """Log in as the verified client certificate's CN."""
        self._check_not_logged_in()
        cn = self.info.peer_cn()
        if cn is None:
            raise RelayError(wire.E_AUTH_FAILED, "no verified client certificate")
        return await self._login(msg.id, self.server.auth.login_certificate(cn, self.address))

    async def _login(self, rid: int, attempt: Deferred[Account]) -> wire.Message | None:
        self._logging_in = True
        try:
            account = await attempt
        finally:
            self._logging_in = False
        if self._closing or self._closed:
            return None
        relay = self.server.relay
        session = await relay.login(account.name, account.role, self)
        if self._closing or self._closed:
            relay.logout(session)
            return None
        self.session = session
        self._set_timeout(self.server.config.server.idle_timeout)
        self.log.info("{user} logged in (conn {conn})", user=account.name, conn=self.cid)
        self.push(wire.LoggedIn(id=rid, user=account.name, role=account.role))
        relay.start(session)
        return None


_Handler = Callable[[RelayProtocol, Any], Coroutine[Any, Any, wire.Message | None]]
#: ``type`` -> handler for requests allowed before login (methods ``on_<type>``).
_PRE_LOGIN_HANDLERS: dict[str, _Handler] = {
    name: getattr(RelayProtocol, "on_" + name) for name in _PRE_LOGIN
}


class RelayFactory(ServerFactory[RelayProtocol]):
    """Shared state of all connections: config, store, relay, authentication."""

    noisy = False

    def __init__(
        self,
        config: ServerConfig,
        store: IStore,
        clock: IReactorTime,
        relay: Relay,
        auth: AuthService,
        run_in_thread: ThreadRunner,
        hash_params: HashParams,
        connection_info: Callable[[ITransport], ConnectionInfo],
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.relay = relay
        self.auth = auth
        self.run_in_thread = run_in_thread
        self.hash_params = hash_params
        self.connection_info = connection_info
        self.ids = count(1)
        self.welcome = wire.Welcome(
            id=0,
            version=wire.PROTOCOL_VERSION,
            server=_server_version(),
            backends=config.crypto.backends,
            default_backend=config.crypto.default_backend,
            auth_methods=config.auth.methods,
            registration=config.auth.registration,
            pow_bits=config.auth.registration_pow_bits,
            messaging=config.policy.messaging,
            max_frame_bytes=config.server.max_frame_bytes,
            max_envelope_bytes=config.policy.max_envelope_bytes,
            max_batch=wire.MAX_BATCH,
            max_room_members=config.policy.max_room_members,
        )

    def housekeeping(self) -> None:
        """Drop idle rate-limit and login-throttle buckets so their tables stay small."""
        self.relay.limiter.prune()
        self.auth.prune()

    def buildProtocol(self, addr: IAddress | None) -> RelayProtocol:
        """Factory API."""
        return RelayProtocol(self, self.connection_info)


def build_factory(
    config: ServerConfig,
    store: IStore,
    reactor: IReactorTime,
    *,
    run_in_thread: ThreadRunner = deferToThread,
    auth_service: AuthService | None = None,
    hash_params: HashParams = DEFAULT_PARAMS,
    connection_info: Callable[[ITransport], ConnectionInfo] = TLSConnectionInfo,
) -> RelayFactory:
    """The server factory the daemon wraps in TLS.

    :param reactor: used only as a clock (timeouts, coalescing, rate buckets).
    :param run_in_thread: where password hashing runs (``deferToThread`` in production).
    :param auth_service: defaults to a portal over ``store`` with login throttling.
    :param hash_params: password-hash cost for registration and admin-created users.
    :param connection_info: reads the TLS exporter and client CN from a transport.
    """
    now = reactor.seconds
    if auth_service is None:
        portal = make_portal(config, store, run_in_thread, params=hash_params)
        auth_service = AuthService(portal, LoginThrottle.from_config(config.auth, now), reactor)
    relay = Relay(config, store, reactor, SendLimiter.from_config(config.policy, now))
    return RelayFactory(
        config, store, reactor, relay, auth_service, run_in_thread, hash_params, connection_info
    )
