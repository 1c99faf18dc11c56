"""A scripted malicious relay: a man in the middle that holds the server's TLS identity.

The attacker of the threat model is the relay itself. Rather than re-implementing a relay,
:class:`MaliciousRelay` listens on 127.0.0.1 (port 0, in the test's reactor) with a
certificate issued by the CA the client trusts, and forwards every frame to a real daemon
(:mod:`tests.e2e.daemon`) over a second TLS connection. Everything the real relay does
(logins, key directory, queues) therefore works, and a test scripts only the lie it wants:

- **record**: every frame in either direction is decoded (:mod:`securechat.wire`) and kept
  in :attr:`MaliciousRelay.frames`, with the raw bytes the client wrote;
- **rewrite or drop**: :meth:`MaliciousRelay.on_client` and :meth:`MaliciousRelay.on_server`
  register rules that see each message and may replace it with others (or with nothing);
- **answer**: :meth:`MaliciousRelay.answer` replies to a client request itself;
- **inject**: :meth:`Link.push` and :meth:`Link.deliver` send frames of the relay's choice to
  one client; :meth:`Link.request` asks the daemon something on that client's logged-in
  connection (as the relay could), without the client seeing the reply.

``deliver`` sequence numbers are renumbered per connection so that injected envelopes get
acknowledged like real ones without the client's cumulative ``ack`` deleting real envelopes
it has not seen on the daemon. Waits use Deferreds with timeouts, never sleeps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto
from twisted.internet import defer, ssl
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Factory, connectionDone
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

from securechat import wire
from securechat.tls import client_tls_options

WAIT_TIMEOUT = 30.0
#: Ids of the relay's own requests on a client's connection: far above any id the client
#: uses (it counts from 1), so replies can be told apart.
OWN_ID_BASE = 1 << 62
#: Direction tags of :class:`Frame`.
FROM_CLIENT, FROM_SERVER, INJECTED = "client->relay", "relay->client", "injected->client"

_M = TypeVar("_M", bound=wire.Message)
#: A rule sees ``(link, message)`` and returns ``None`` (no opinion: later rules and then the
#: normal path handle it) or the messages to pass on instead (an empty list drops it).
Rule = Callable[["Link", wire.Message], "Sequence[wire.Message] | None"]


@dataclass(frozen=True)
class Frame:
    """One recorded frame: its direction, the user of the connection (once known), the
    decoded message (``None`` if it did not decode) and the exact bytes."""

    direction: str
    user: str | None
    msg: wire.Message | None
    raw: bytes


class RuleHandle:
    """What :meth:`MaliciousRelay.on_client` and friends return: ``remove()`` undoes it."""

    def __init__(self, rules: list[Rule], rule: Rule) -> None:
        self._rules, self._rule = rules, rule

    def remove(self) -> None:
        if self._rule in self._rules:
            self._rules.remove(self._rule)


class _Side(Int32StringReceiver):
    """One TLS connection of a link (to the client, or to the daemon)."""

    MAX_LENGTH = 64 << 20

    def __init__(self, on_frame: Callable[[bytes], None], on_lost: Callable[[], None]) -> None:
        self._on_frame, self._on_lost = on_frame, on_lost

    def stringReceived(self, data: bytes) -> None:
        self._on_frame(data)

    def write_msg(self, msg: wire.Message) -> None:
        self.write_raw(wire.encode(msg))

    def write_raw(self, body: bytes) -> None:
        if self.transport is not None:
            self.sendString(body)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._on_lost()


class Link:
    """One client connection through the relay, and the relay's own connection to the daemon.

    :ivar user: the account this connection logged in as (``None`` until ``logged_in``).
    """

    def __init__(self, relay: MaliciousRelay) -> None:
        self.relay = relay
        self.user: str | None = None
        self.closed = False
        self.client: _Side = _Side(self._from_client, self.close)
        self.upstream: _Side | None = None
        self._backlog: list[bytes] = []  # client frames that arrived before the upstream
        self._next_seq = 1
        self._seq_map: list[tuple[int, int | None]] = []  # (seq the client sees, daemon's)
        self._acked_upstream = 0
        self._next_own_id = OWN_ID_BASE
        self._own: dict[int, defer.Deferred[wire.Message]] = {}
        #: The frames of this connection only (the relay keeps all in ``frames`` too).
        self.frames: list[Frame] = []

    # -- scripting API -----------------------------------------------------------------------
    def push(self, *msgs: wire.Message) -> None:
        """Send ``msgs`` to the client as if the daemon had (``deliver`` items renumbered)."""
        for msg in msgs:
            if isinstance(msg, wire.Deliver):
                msg = dataclasses.replace(msg, items=tuple(
                    item._replace(seq=self._client_seq(None)) for item in msg.items))  # fmt: skip
            self._to_client(msg, INJECTED)

    def deliver(self, *items: wire.DeliverItem) -> None:
        """Push envelopes of the relay's making (their ``seq`` is replaced)."""
        self.push(wire.Deliver(items=tuple(items)))

    async def request(self, cls: Callable[..., _M], **fields: Any) -> wire.Message:
        """Send a request to the daemon on this client's connection; the reply comes back
        here and never reaches the client.

        :raises AssertionError: the daemon answered with an ``error``.
        """
        assert self.upstream is not None, "the daemon connection is not up yet"
        rid = self._next_own_id
        self._next_own_id += 1
        d: defer.Deferred[wire.Message] = defer.Deferred()
        self._own[rid] = d
        self.upstream.write_msg(cls(id=rid, **fields))
        reply = await d.addTimeout(WAIT_TIMEOUT, self.relay.reactor)
        assert not isinstance(reply, wire.Error), f"daemon refused {cls}: {reply}"
        return reply

    def close(self) -> None:
        """Drop both connections (the client will reconnect through the relay)."""
        if self.closed:
            return
        self.closed = True
        for side in (self.client, self.upstream):
            if side is not None and side.transport is not None:
                side.transport.loseConnection()
        for d in self._own.values():
            if not d.called:
                d.errback(ConnectionError("link closed"))
        self.relay._link_closed(self)

    # -- plumbing --------------------------------------------------------------------------
    def _client_seq(self, upstream_seq: int | None) -> int:
        seq = self._next_seq
        self._next_seq += 1
        self._seq_map.append((seq, upstream_seq))
        return seq

    def _to_client(self, msg: wire.Message, direction: str) -> None:
        raw = wire.encode(msg)
        self._record(Frame(direction, self.user, msg, raw))
        self.client.write_raw(raw)

    def _record(self, frame: Frame) -> None:
        self.frames.append(frame)
        self.relay._record(frame)

    def _upstream_up(self, side: _Side) -> None:
        self.upstream = side
        backlog, self._backlog = self._backlog, []
        for raw in backlog:
            side.write_raw(raw)

    def _from_client(self, raw: bytes) -> None:
        try:
            msg: wire.Message | None = wire.decode(raw)
        except wire.ProtocolError:
            msg = None
        self._record(Frame(FROM_CLIENT, self.user, msg, raw))
        if msg is None:
            self._forward_raw(raw)
            return
        out = self.relay._apply(self.relay.client_rules, self, msg)
        if out is None:
            out = [msg]
        for m in out:
            if isinstance(m, wire.Ack):
                self._forward_ack(m)
            elif m is msg:
                self._forward_raw(raw)  # unchanged: the exact bytes the client wrote
            else:
                self._forward_raw(wire.encode(m))

    def _forward_raw(self, raw: bytes) -> None:
        if self.upstream is None:
            self._backlog.append(raw)
        else:
            self.upstream.write_raw(raw)

    def _forward_ack(self, ack: wire.Ack) -> None:
        """Translate the client's cumulative ack into the daemon's sequence numbers."""
        done = [up for seq, up in self._seq_map if seq <= ack.up_to and up is not None]
        self._seq_map = [(seq, up) for seq, up in self._seq_map if seq > ack.up_to]
        if done and max(done) > self._acked_upstream:
            self._acked_upstream = max(done)
            self._forward_raw(wire.encode(wire.Ack(up_to=self._acked_upstream)))

    def _from_server(self, raw: bytes) -> None:
        try:
            msg = wire.decode(raw)
        except wire.ProtocolError:
            self._record(Frame(FROM_SERVER, self.user, None, raw))
            self.client.write_raw(raw)
            return
        rid = getattr(msg, "id", None)
        if rid is not None and rid in self._own:
            self._own.pop(rid).callback(msg)
            return
        if isinstance(msg, wire.LoggedIn):
            self.user = msg.user
            self.relay._logged_in(self)
        out = self.relay._apply(self.relay.server_rules, self, msg)
        for m in [msg] if out is None else out:
            if isinstance(m, wire.Deliver):
                m = dataclasses.replace(m, items=tuple(
                    item._replace(seq=self._client_seq(item.seq)) for item in m.items))  # fmt: skip
            self._to_client(m, FROM_SERVER)


class MaliciousRelay:
    """The relay the client connects to, forwarding to a real daemon unless told otherwise.

    :param reactor: the test's reactor.
    :param daemon_port: the real daemon's port on 127.0.0.1.
    :param ca_pem: the CA the client trusts (the daemon's, from ``tls/ca.pem``).
    :param cert_pem: the certificate the relay presents (by default the daemon's own).
    :param key_pem: its private key.
    """

    def __init__(
        self, reactor: Any, daemon_port: int, ca_pem: bytes, cert_pem: bytes, key_pem: bytes
    ) -> None:
        self.reactor = reactor
        self.daemon_port = daemon_port
        self.ca_pem = ca_pem
        self.cert_pem, self.key_pem = cert_pem, key_pem
        self.client_rules: list[Rule] = []
        self.server_rules: list[Rule] = []
        self.frames: list[Frame] = []
        self.links: list[Link] = []
        self._port: Any = None
        self._waiters: list[defer.Deferred[None]] = []

    @property
    def port(self) -> int:
        """The port clients connect to."""
        assert self._port is not None
        return int(self._port.getHost().port)

    def start(self) -> None:
        """Listen on 127.0.0.1, port 0."""
        cert = x509.load_pem_x509_certificate(self.cert_pem)
        key = serialization.load_pem_private_key(self.key_pem, None)
        options = ssl.CertificateOptions(
            privateKey=crypto.PKey.from_cryptography_key(key),  # type: ignore[arg-type]
            certificate=crypto.X509.from_cryptography(cert),
            raiseMinimumTo=ssl.TLSVersion.TLSv1_3,
        )
        factory = Factory.forProtocol(lambda: self._new_link().client)
        self._port = self.reactor.listenSSL(0, factory, options, interface="127.0.0.1")

    async def stop(self) -> None:
        """Stop listening and drop every connection."""
        for link in list(self.links):
            link.close()
        if self._port is not None:
            await self._port.stopListening()
            self._port = None

    # -- rules -----------------------------------------------------------------------------
    def on_client(self, rule: Rule) -> RuleHandle:
        """Run ``rule`` on every message a client sends (before the daemon sees it)."""
        self.client_rules.append(rule)
        return RuleHandle(self.client_rules, rule)

    def on_server(self, rule: Rule) -> RuleHandle:
        """Run ``rule`` on every message the daemon sends to a client."""
        self.server_rules.append(rule)
        return RuleHandle(self.server_rules, rule)

    def answer(
        self, cls: type[_M], reply: Callable[[Link, _M], wire.Message | None]
    ) -> RuleHandle:
        """Answer client requests of type ``cls`` with ``reply(link, request)`` (give the
        reply ``id=request.id``) instead of forwarding them; ``None`` forwards as usual."""

        def rule(link: Link, msg: wire.Message) -> Sequence[wire.Message] | None:
            if not isinstance(msg, cls):
                return None
            answer = reply(link, msg)
            if answer is None:
                return None
            link._to_client(answer, INJECTED)
            return []

        return self.on_client(rule)

    def rewrite(
        self, cls: type[_M], change: Callable[[Link, _M], wire.Message | None]
    ) -> RuleHandle:
        """Replace each daemon message of type ``cls`` by ``change(link, msg)`` (``None``
        drops it); e.g. ``rewrite(wire.Room, ...)`` to lie about a member list."""

        def rule(link: Link, msg: wire.Message) -> Sequence[wire.Message] | None:
            if not isinstance(msg, cls):
                return None
            new = change(link, msg)
            return [] if new is None else [new]

        return self.on_server(rule)

    def withhold_one_time_prekeys(self) -> RuleHandle:
        """Serve every bundle without its one-time prekey (X3DH's "server withholds OPKs")."""
        return self.rewrite(
            wire.Bundle, lambda _, b: dataclasses.replace(b, one_time_id=None, one_time_key=None)
        )

    # -- what the relay saw, and waiting for it ------------------------------------------------
    def sent_by_clients(self, cls: type[_M], user: str | None = None) -> list[_M]:
        """Every message of type ``cls`` a client sent (on ``user``'s connections)."""
        return [
            f.msg for f in self.frames
            if f.direction == FROM_CLIENT and isinstance(f.msg, cls)
            and (user is None or f.user == user)
        ]  # fmt: skip

    def client_bytes(self) -> bytes:
        """Every byte clients sent inside TLS, concatenated (for "never saw X" checks)."""
        return b"".join(f.raw for f in self.frames if f.direction == FROM_CLIENT)

    def link_for(self, user: str) -> Link | None:
        """The newest open connection logged in as ``user``."""
        for link in reversed(self.links):
            if link.user == user and not link.closed:
                return link
        return None

    async def link(
        self, user: str, newer_than: Link | None = None, timeout: float = WAIT_TIMEOUT
    ) -> Link:
        """Wait until ``user`` is logged in through the relay; returns that connection.

        :param newer_than: wait for a connection opened after this one (a reconnect).
        """

        def found() -> Link | None:
            link = self.link_for(user)
            if link is None or newer_than is None:
                return link
            return link if self.links.index(link) > self.links.index(newer_than) else None

        await self.wait_until(lambda: found() is not None, f"{user} logged in", timeout)
        link = found()
        assert link is not None
        return link

    async def sent(
        self, cls: type[_M], user: str | None = None, count: int = 1,
        timeout: float = WAIT_TIMEOUT,
    ) -> list[_M]:  # fmt: skip
        """Wait until clients sent at least ``count`` messages of type ``cls``."""
        what = f"{count} x {cls.TYPE} from {user or 'any client'}"
        await self.wait_until(lambda: len(self.sent_by_clients(cls, user)) >= count, what, timeout)
        return self.sent_by_clients(cls, user)

    async def wait_until(
        self, condition: Callable[[], bool], what: str, timeout: float = WAIT_TIMEOUT
    ) -> None:
        """Wait (re-checking on every frame) until ``condition()`` holds."""
        deadline = self.reactor.seconds() + timeout
        while not condition():
            left = deadline - self.reactor.seconds()
            if left <= 0:
                raise AssertionError(f"relay: no {what} within {timeout}s")
            d: defer.Deferred[None] = defer.Deferred()
            self._waiters.append(d)
            try:
                await d.addTimeout(left, self.reactor)
            except defer.TimeoutError:
                continue

    # -- plumbing ----------------------------------------------------------------------------
    def _new_link(self) -> Link:
        link = Link(self)
        self.links.append(link)
        upstream = _Side(link._from_server, link.close)
        endpoint = wrapClientTLS(
            client_tls_options("127.0.0.1", self.ca_pem),
            TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.daemon_port, timeout=10),
        )
        d = connectProtocol(endpoint, upstream)
        d.addCallback(lambda _: link._upstream_up(upstream))
        d.addErrback(lambda _: link.close())
        return link

    def _apply(self, rules: list[Rule], link: Link, msg: wire.Message
               ) -> Sequence[wire.Message] | None:  # fmt: skip
        for rule in list(rules):
            out = rule(link, msg)
            if out is not None:
                return out
        return None

    def _record(self, frame: Frame) -> None:
        self.frames.append(frame)
        self._wake()

    def _logged_in(self, link: Link) -> None:
        self._wake()

    def _link_closed(self, link: Link) -> None:
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if not d.called:
                d.callback(None)
