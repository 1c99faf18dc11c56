# -*- test-case-name: tests.server.test_protocol -*-
"""One client connection: CBOR frames in, relay calls out, replies and pushes back.

Kept thin on purpose (``twisted-style`` section 3): the protocol decodes frames, enforces
the connection's state (logged in or not, timeouts, output backlog) and maps outcomes to
typed ``error`` replies; policy and routing live in :mod:`securechat.server.relay`.

Every bad input ends in a typed error or in closing *this* connection, with one log line
that names the connection and the error code but never a payload, password or key.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from importlib import metadata
from itertools import count
from typing import cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IPushProducer, IReactorTime, ITransport
from twisted.internet.protocol import ServerFactory, connectionDone
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from securechat import wire
from securechat.config import ServerConfig
from securechat.errors import StoreError, StoreUnavailable
from securechat.server import admin
from securechat.server.admission import Admission
from securechat.server.auth import AuthError, AuthService, BadCredentials, Throttled, make_portal
from securechat.server.connection import ConnectionInfo, TLSConnectionInfo, Transport
from securechat.server.deadlines import Deadlines
from securechat.server.handlers import FAST_HANDLERS, HANDLERS
from securechat.server.hashgate import HashGate
from securechat.server.login import PRE_LOGIN_HANDLERS
from securechat.server.loginthrottle import LoginThrottle
from securechat.server.loglimit import RepeatLimiter
from securechat.server.metrics import NULL_METRICS, IMetrics, RelayMetrics
from securechat.server.passwords import DEFAULT_PARAMS, HashParams, ThreadRunner
from securechat.server.ratelimit import SendLimiter
from securechat.server.registrationlimits import RegistrationLimits
from securechat.server.relay import ISessionSink, Relay, RelayError, Session
from securechat.server.store.interface import IStore

#: Requests handled concurrently per connection before reading from it pauses.
MAX_IN_FLIGHT = 32
#: Seconds a closing connection may take to flush before it is aborted.
CLOSE_GRACE = 2.0
#: Seconds a client is told to wait after the store failed (``unavailable``).
STORE_RETRY_AFTER = 1.0
_HEADER = struct.Struct(">I")
#: Refusals counted as ``rate_limited`` by request type.
_LIMIT_CODES = frozenset({wire.E_RATE_LIMITED, wire.E_THROTTLED})


def _server_version() -> str:
    try:
        return f"securechat/{metadata.version('securechat')}"
    except metadata.PackageNotFoundError:
        return "securechat/dev"


@implementer(ISessionSink, IPushProducer)
class RelayProtocol(Int32StringReceiver):
    """The server side of one client connection.

    One deadline serves the login deadline, the idle limit and the close grace period.
    It lives in the factory's shared :class:`Deadlines` (no timer per connection: 10,000
    may be idle) and is not moved per frame: input only records its time, and a
    deadline that passes early is filed again for the remainder.

    Per-connection state is kept small: rarely used attributes (login challenges, the
    output held while paused) are class-level defaults until a connection needs them.
    """

    log = Logger()
    #: Login state, see :mod:`securechat.server.login`.
    logging_in = False
    login_nonce: bytes | None = None
    login_pow: bytes | None = None
    pow_challenge: bytes | None = None
    pow_bits = 0
    #: Output held while the transport is paused (lists only then: most never are).
    _held: list[bytes] | None = None
    _held_bytes = 0
    _waiters: list[Deferred[None]] | None = None
    _in_flight = 0
    _reading_paused = False
    _paused = False
    _closing = False
    _closed = False
    #: The bucket of the factory's :class:`Deadlines` this connection is filed in.
    _deadline: set[RelayProtocol] | None = None
    session: Session | None = None
    #: Its key in the factory's :class:`Admission` (None until admitted, or if refused).
    _admitted: str | None = None

    def __init__(self, factory: RelayFactory):
        self.server = factory
        self.cid = next(factory.ids)
        self._last_input = 0.0

    def _set_timeout(self, period: float | None) -> None:
        """Close the connection after ``period`` seconds without input (None: never).

        The period in force is implied by the state: ``handshake_timeout`` before login,
        ``idle_timeout`` after, :data:`CLOSE_GRACE` once closing.
        """
        deadlines = self.server.deadlines
        if self._deadline is not None:
            deadlines.cancel(self, self._deadline)
            self._deadline = None
        if period is not None:
            self._last_input = now = self.server.clock.seconds()
            self._deadline = deadlines.add(self, now + period)

    def deadline_passed(self) -> None:
        """Deadlines API: close, or file the deadline again if there was input since."""
        self._deadline = None
        if not self._closing:
            config = self.server.config.server
            limit = config.idle_timeout if self.session else config.handshake_timeout
            now = self.server.clock.seconds()
            left = self._last_input + limit - now
            if left > 0:
                self._deadline = self.server.deadlines.add(self, now + left)
                return
        self.timeoutConnection()

    # -- connection lifecycle -------------------------------------------------------------
    def connectionMade(self) -> None:
        """Protocol API: refuse a connection over the per-address limits, or start the
        login deadline and learn about slow readers."""
        self._tx = cast(Transport, self.transport)
        self._admitted = self.server.admission.admit(self.address)
        if self._admitted is None:
            self._closing = True
            self._tx.abortConnection()
            return
        self.server.metrics.connection_opened()
        self._tx.registerProducer(self, True)
        self._set_timeout(self.server.config.server.handshake_timeout)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Protocol API: leave the relay; un-acknowledged envelopes stay stored."""
        self._closed = True
        self._unprocessed, self._held = b"", None  # free buffered input and output now
        if self._admitted is None:
            return
        self.server.admission.closed(self._admitted, self.session is None)
        self._set_timeout(None)
        self.server.metrics.connection_closed(self._handshake_done())
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
        return self.server.connection_info(cast(ITransport, self.transport))

    def _handshake_done(self) -> bool:
        try:
            return self.info.handshake_done()
        except Exception:  # a transport without TLS state: nothing to report
            return True

    @property
    def gone(self) -> bool:
        """The connection is closing or closed: a login finishing now is dropped."""
        return self._closing or self._closed

    def start_session(self, session: Session) -> None:
        """A login succeeded: from now on requests run as ``session``."""
        self.session = session
        if self._admitted is not None:
            self.server.admission.logged_in(self._admitted)
        self._set_timeout(self.server.config.server.idle_timeout)

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
    def dataReceived(self, data: bytes) -> None:
        """Protocol API: split length-prefixed frames and hand each to ``stringReceived``.

        Twisted's loop, less its check for the legacy ``recvd`` attribute: that check
        reads ``self.__dict__``, which costs every connection a dict of its own.

        Input after :meth:`close` is dropped, never buffered: a peer that keeps sending
        to a closing connection must not grow its memory.
        """
        if self._closing or self._closed:
            return
        buf = self._unprocessed + data if self._unprocessed else data
        f = self.server
        limit = f.max_frame_bytes if self.session is not None else f.admission.frame_bytes
        end, size = 0, len(buf)
        while size - end >= 4:
            (length,) = _HEADER.unpack_from(buf, end)
            if length > limit:
                self._unprocessed = b""
                self.lengthLimitExceeded(length)
                return
            start, end = end + 4, end + 4 + length
            if end > size:
                end = start - 4
                break
            self.stringReceived(buf[start:end])
        self._unprocessed = buf[end:]

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
        pre_login = PRE_LOGIN_HANDLERS.get(kind)
        if pre_login is not None:
            coro = pre_login(self, msg)
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
            if e.code in _LIMIT_CODES:
                self.server.metrics.rate_limited(kind, 1)
            self._error(rid, e.code, e.message, e.retry_after)
        elif isinstance(e, Throttled):  # logged with the user name by the login handler
            self.server.metrics.rate_limited("login", 1)
            self._error(rid, wire.E_THROTTLED, "too many attempts", e.retry_after)
        elif isinstance(e, BadCredentials):  # likewise
            self._error(rid, wire.E_AUTH_FAILED, "login failed")
        elif isinstance(e, AuthError):
            self.log.info("conn {conn}: {kind} refused: {code}", conn=self.cid, kind=kind,
                          code=e.code)  # fmt: skip
            text = " ".join(str(type(e).__doc__ or e.code).split())
            self._error(rid, e.code, text, getattr(e, "retry_after", None))
        elif type(e) is StoreError or isinstance(e, StoreUnavailable):
            # Locked database, full disk, I/O error: nothing was accepted; say so plainly
            # and let the client retry, without a traceback per request in the log, and
            # one line per interval however many requests fail.
            skipped = self.server.log_limit.allow("store unavailable")
            if skipped is not None:
                self.log.warn("conn {conn}: {kind} failed: store unavailable: {error} "
                              "({skipped} similar failures not logged)", conn=self.cid,
                              kind=kind, error=str(e), skipped=skipped)  # fmt: skip
            retry = e.retry_after if isinstance(e, StoreUnavailable) else STORE_RETRY_AFTER
            self._error(rid, wire.E_UNAVAILABLE, "storage unavailable; nothing was accepted",
                        retry)  # fmt: skip
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
        self.max_frame_bytes = config.server.max_frame_bytes
        self.admission = Admission.from_config(config.server, clock.seconds)
        self.registrations = RegistrationLimits.from_config(config.auth, clock.seconds)
        self.metrics: IMetrics = relay.metrics
        self.ids = count(1)
        #: Failures that repeat per request (a full disk) are logged once per interval.
        self.log_limit = RepeatLimiter(clock.seconds)
        #: The login deadlines, idle limits and close grace periods of all connections.
        self.deadlines: Deadlines[RelayProtocol] = Deadlines(clock)
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

    def housekeeping(self) -> Deferred[int]:
        """Drop idle rate-limit and login-throttle buckets so their tables stay small, and
        check live sessions' accounts (:meth:`check_accounts`)."""
        self.relay.limiter.prune()
        self.relay.handouts.prune()
        self.auth.prune()
        self.registrations.prune()
        return self.check_accounts()

    def check_accounts(self) -> Deferred[int]:
        """Close sessions of accounts removed behind the server's back (``securechat-admin``)
        and return closed connections' memory; fires with how many sessions were closed."""
        self.admission.trimmer.flush()
        return Deferred.fromCoroutine(admin.drop_removed_sessions(self.relay))

    def buildProtocol(self, addr: IAddress | None) -> RelayProtocol:
        """Factory API."""
        return RelayProtocol(self)


def build_factory(
    config: ServerConfig,
    store: IStore,
    reactor: IReactorTime,
    *,
    run_in_thread: ThreadRunner = deferToThread,
    auth_service: AuthService | None = None,
    hash_params: HashParams = DEFAULT_PARAMS,
    connection_info: Callable[[ITransport], ConnectionInfo] = TLSConnectionInfo,
    metrics: IMetrics = NULL_METRICS,
) -> RelayFactory:
    """The server factory the daemon wraps in TLS.

    :param reactor: used only as a clock (timeouts, coalescing, rate buckets).
    :param run_in_thread: where password hashing runs (``deferToThread`` in production),
        behind a :class:`HashGate` bounding their memory.
    :param auth_service: defaults to a portal over ``store`` with login throttling.
    :param hash_params: password-hash cost for registration and admin-created users.
    :param connection_info: reads the TLS exporter and client CN from a transport.
    :param metrics: the sink the relay, the protocol and the logins report to.
    """
    now = reactor.seconds
    run_in_thread = HashGate.from_config(config.auth, hash_params, run_in_thread, reactor)
    if auth_service is None:
        portal = make_portal(config, store, run_in_thread, params=hash_params)
        auth_service = AuthService(portal, LoginThrottle.from_config(config.auth, now), reactor)
    relay = Relay(config, store, reactor, SendLimiter.from_config(config.policy, now))
    relay.metrics = metrics
    if isinstance(metrics, RelayMetrics):
        metrics.sessions = lambda: len(relay.sessions)
    return RelayFactory(config, store, reactor, relay, auth_service, run_in_thread, hash_params,
                        connection_info)  # fmt: skip
