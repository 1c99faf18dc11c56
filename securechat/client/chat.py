"""The client's controller: what happens on each connection, each command, each delivery.

Reliability rules this module keeps:

- An envelope is encrypted, the keystore (session state and outbox) saved, and only then
  sent; a crash can therefore never reuse a message key, and whatever the server has not
  accepted is sent again (same bytes, same message id) after a reconnect or a restart.
- A delivery is acknowledged only after the keystore recording it was saved, and message
  ids are remembered, so nothing is lost and nothing is shown twice.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet.defer import Deferred, DeferredLock, ensureDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from securechat import wire
from securechat.client.console import IChatController, Renderer
from securechat.client.keystore import Keystore
from securechat.client.network import (
    ConnectionGone,
    LoginFailed,
    RemoteError,
    WireClientProtocol,
    describe_failure,
)
from securechat.client.outbox import plan_batches
from securechat.client.sessions import DEFAULT_BACKEND, SessionManager, TrustError
from securechat.crypto.errors import CryptoError

AGENT = "securechat-client/0.1"
FATAL_BYE = {wire.E_REPLACED, wire.E_KICKED, wire.E_REMOVED}


@implementer(IChatController)
class ChatClient:
    """Glue between console, network and end-to-end state."""

    log = Logger()

    def __init__(
        self,
        sessions: SessionManager,
        *,
        password: str | None,
        register: bool,
        backend: str | None,
        clock: Callable[[], float],
        stop: Callable[[int], None],
        call_later: Callable[[float, Callable[[], None]], object] | None = None,
    ) -> None:
        self.sessions = sessions
        self.keystore: Keystore = sessions.keystore
        self.user = sessions.user
        self.password = password
        self.register = register
        self.chosen_backend = backend
        self.clock = clock
        self._stop = stop
        if call_later is None:
            from twisted.internet import reactor

            call_later = reactor.callLater
        self._call_later = call_later
        self.renderer: Renderer | None = None
        self.proto: WireClientProtocol | None = None
        self.welcome: wire.Welcome | None = None
        self.role = "user"
        self.logged_in_once = False
        #: Logged in on the current connection (False while a reconnect is logging in).
        self.ready = False
        self.quitting = False
        self.rooms: dict[str, set[str]] = {}
        self._in_flight: set[bytes] = set()
        self._in_setup = False
        self._lock = DeferredLock()
        self.first_login: Deferred[None] = Deferred()
        self.outbox: list[dict[str, Any]] = self.keystore.state.extra.setdefault("outbox", [])

    # -- output --------------------------------------------------------------------
    def emit(self, type_: str, **fields: Any) -> None:
        if self.renderer is not None:
            self.renderer.event(type_, **fields)

    def _report(self, failure: Failure) -> None:
        err = failure.value
        if isinstance(err, RemoteError):
            self.emit("error", text=f"server refused: {err}", code=err.code)
        elif isinstance(err, ConnectionGone):
            self.emit("error", text="not connected: will retry when the server is back")
        elif isinstance(err, TrustError | CryptoError | KeyError | ValueError):
            self.emit("error", text=str(err).strip("'"))
        else:
            self.log.failure("unexpected error", failure)
            self.emit("error", text=f"internal error: {err!r}")

    def _run(self, coro: Any) -> None:
        ensureDeferred(coro).addErrback(self._report)

    def _serial(self, make: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run a command after every earlier one finished, so commands act in typed order
        (``/msg bob hi`` then ``/trust bob`` trusts the key that message pinned) and quitting
        waits for their replies."""
        self._run(self._lock.run(lambda: ensureDeferred(make())))

    # -- connection life cycle -----------------------------------------------------
    def connected(self, proto: WireClientProtocol) -> None:
        self.proto = proto
        d = ensureDeferred(self._setup(proto))
        d.addErrback(self._setup_failed, proto)

    def _setup_failed(self, failure: Failure, proto: WireClientProtocol) -> None:
        text = describe_failure(failure)
        if not self.logged_in_once:
            if not self.first_login.called:
                self.first_login.errback(LoginFailed(text))
            return
        self.emit("warning", text=f"reconnect failed: {text}")
        if proto.transport is not None:
            proto.transport.loseConnection()

    def lost(self, proto: WireClientProtocol, reason: Failure) -> None:
        if proto is not self.proto:
            return
        self.proto = None
        self.ready = False
        self._in_flight.clear()
        self.rooms.clear()  # membership may change while we are away: ask again
        bye = proto.bye
        if bye is not None and bye.code in FATAL_BYE:
            self.emit("error", text=f"disconnected by the server: {bye.message}", code=bye.code)
            self._stop(1)
        elif self.logged_in_once and not self.quitting:
            self.emit("status", text="disconnected; reconnecting", state="disconnected")
        elif not self.logged_in_once and not self.first_login.called:
            self.first_login.errback(LoginFailed(describe_failure(reason)))

    async def _setup(self, proto: WireClientProtocol) -> None:
        self._in_setup = True
        try:
            await self._setup_steps(proto)
        finally:
            self._in_setup = False

    async def _setup_steps(self, proto: WireClientProtocol) -> None:
        welcome = await proto.request(wire.Hello, version=wire.PROTOCOL_VERSION, agent=AGENT)
        assert isinstance(welcome, wire.Welcome)
        self.welcome = welcome
        if self.register and not self.keystore.state.extra.get("registered"):
            await self._register(proto, welcome)
        await self._login(proto, welcome)
        if self.register and not self.keystore.state.extra.get("registered"):
            self.keystore.state.extra["registered"] = True
            self.keystore.save()
        for backend in welcome.backends:
            await self._publish(proto, backend, None)
        if self.chosen_backend is not None and self.chosen_backend not in welcome.backends:
            raise LoginFailed(f"the server does not allow backend {self.chosen_backend!r}")
        self.logged_in_once = True
        self.ready = True
        self.emit("status", text=f"logged in as {self.user} ({self.role})", state="connected",
                  user=self.user, role=self.role)  # fmt: skip
        if not self.first_login.called:
            self.first_login.callback(None)
        self._pump()

    async def _register(self, proto: WireClientProtocol, welcome: wire.Welcome) -> None:
        challenge = solution = None
        if welcome.pow_bits:
            reply = await proto.request(wire.PowChallenge)
            assert isinstance(reply, wire.PowChallengeReply)
            challenge = reply.challenge
            solution = wire.pow_solve(challenge, self.user, reply.bits)
        try:
            await proto.request(
                wire.Register, user=self.user, password=self.password,
                identity_key=self.sessions.identity.public_bytes(),
                pow_challenge=challenge, pow_solution=solution,
            )  # fmt: skip
        except RemoteError as e:
            if e.code != "name-taken" or self.password is None:
                raise
            # An account an admin created (securechat-admin user add): logging in with its
            # password proves it is ours; the identity key goes up with the prekeys.
            self.emit("info", text=f"account {self.user} exists; logging in to set it up")

    async def _login(self, proto: WireClientProtocol, welcome: wire.Welcome) -> None:
        methods = welcome.auth_methods
        if self.password is not None and "password" in methods:
            reply = await proto.request(wire.LoginPassword, user=self.user, password=self.password)
        elif "publickey" in methods:
            nonce = await proto.request(wire.LoginChallenge)
            assert isinstance(nonce, wire.LoginNonce)
            payload = wire.login_signature_payload(self.user, nonce.nonce, proto.exporter())
            reply = await proto.request(
                wire.LoginPublicKey, user=self.user, nonce=nonce.nonce,
                signature=self.sessions.identity.sign(payload),
            )  # fmt: skip
        elif "certificate" in methods:
            reply = await proto.request(wire.LoginCertificate)
        else:
            raise LoginFailed("the server offers no login method this client can use")
        assert isinstance(reply, wire.LoggedIn)
        self.role = reply.role

    async def _publish(self, proto: WireClientProtocol, backend: str, have: int | None) -> None:
        """Upload a signed prekey when needed, then top up one-time prekeys."""
        signed, one_time = self.sessions.prekeys_to_publish(backend, have if have is not None
                                                            else 1 << 30)  # fmt: skip
        self.keystore.save()  # private halves are durable before anyone can use them
        reply = await proto.request(
            wire.PublishPrekeys, backend=backend, signed_prekey=signed,
            one_time=tuple(wire.OneTimePrekey(i, k) for i, k in one_time),
            identity_key=self.sessions.identity.public_bytes(),
        )  # fmt: skip
        assert isinstance(reply, wire.PrekeysStored)
        _, one_time = self.sessions.prekeys_to_publish(backend, reply.one_time_count)
        if one_time:
            self.keystore.save()
            await proto.request(
                wire.PublishPrekeys, backend=backend,
                one_time=tuple(wire.OneTimePrekey(i, k) for i, k in one_time),
            )  # fmt: skip

    # -- pushes --------------------------------------------------------------------
    def push(self, msg: wire.Message) -> None:
        if isinstance(msg, wire.Deliver):
            self._deliver(msg)
        elif isinstance(msg, wire.Presence):
            self.emit("presence", user=msg.user, online=msg.online)
        elif isinstance(msg, wire.PrekeysLow) and self.proto is not None and not self._in_setup:
            # (During set-up the login itself tops up every backend from a fresh count.)
            self._run(self._publish(self.proto, msg.backend, msg.remaining))
        elif isinstance(msg, wire.ContactUpdate):
            self.emit("contact", user=msg.user, state=msg.state,
                      text=f"{msg.user}: contact {msg.state}")  # fmt: skip
        elif isinstance(msg, wire.RoomUpdate):
            members = self.rooms.get(msg.room)
            if members is not None:  # otherwise the next room send asks the server
                (members.add if msg.joined else members.discard)(msg.user)
            verb = "joined" if msg.joined else "left"
            self.emit("room", room=msg.room, user=msg.user, joined=msg.joined,
                      text=f"{msg.user} {verb} {msg.room}")  # fmt: skip
        elif isinstance(msg, wire.Bye):
            self.emit("warning", text=f"server closes the connection: {msg.message}",
                      code=msg.code)  # fmt: skip

    def _deliver(self, msg: wire.Deliver) -> None:
        shown: list[tuple[str, dict[str, Any]]] = []
        for item in msg.items:
            try:
                received, warnings = self.sessions.decrypt(
                    item.sender, item.backend, item.mid, item.room, item.payload
                )
            except (CryptoError, ValueError) as e:
                shown.append(("warning", {"text": f"dropped a message from {item.sender}: {e}",
                                          "from": item.sender}))  # fmt: skip
                continue
            shown.extend(("warning", {"text": w, "from": item.sender}) for w in warnings)
            if received is None:
                continue
            if received.missing:
                shown.append(("warning", {
                    "text": f"{received.missing} messages from {item.sender} are missing",
                    "from": item.sender, "missing": received.missing}))  # fmt: skip
            shown.append(("message", {
                "from": received.sender, "to": self.user, "room": received.room,
                "text": received.text, "time": received.timestamp, "id": received.message_id.hex(),
                "verified": received.verified}))  # fmt: skip
        self.keystore.save()
        if self.proto is not None and msg.items:
            self.proto.send(wire.Ack(up_to=msg.items[-1].seq))
        for type_, fields in shown:
            self.emit(type_, **fields)

    # -- sending -------------------------------------------------------------------
    def backend_name(self) -> str:
        if self.chosen_backend is not None:
            return self.chosen_backend
        return self.welcome.default_backend if self.welcome is not None else DEFAULT_BACKEND

    def send_text(self, target: str, text: str) -> None:
        self._serial(lambda: self._send_text(target, text))

    async def _send_text(self, target: str, text: str) -> None:
        if target.startswith("#"):
            members = await self._members(target)
            peers = sorted(m for m in members if m != self.user)
            if not peers:
                self.emit("info", text=f"nobody else is in {target}", room=target)
                return
            for peer in peers:
                self.sessions.check_can_send(peer)  # all or none: refuse before encrypting
            try:
                for peer in peers:
                    await self._queue(peer, text, target)
            finally:
                # Saved before sent: no message key is ever reused after a crash.
                self.keystore.save()
                self._pump()
        else:
            await self._queue(target, text, None)
            self.keystore.save()
            self._pump()

    async def _members(self, room: str) -> set[str]:
        if room not in self.rooms:
            reply = await self._need_proto().request(wire.RoomMembers, room=room)
            assert isinstance(reply, wire.Room)
            self.rooms[room] = set(reply.members)
        return self.rooms[room]

    async def _queue(self, peer: str, text: str, room: str | None) -> None:
        self.sessions.check_can_send(peer)
        backend = self.backend_name()
        session = self.sessions.active_session(peer, backend)
        if session is None:
            bundle = await self._need_proto().request(wire.FetchBundle, user=peer, backend=backend)
            assert isinstance(bundle, wire.Bundle)
            try:
                session, warning = self.sessions.start_session(
                    peer, bundle.identity_key, bundle.signed_prekey, bundle.one_time_key
                )
            except TrustError as e:
                if e.warning:
                    self.emit("warning", text=e.warning, to=peer)
                self.keystore.save()  # the new pin and the block
                raise
            if warning:
                self.emit("warning", text=warning, to=peer)
        mid, envelope = self.sessions.encrypt(session, text, room)
        self.outbox.append({"to": peer, "backend": backend, "mid": mid, "payload": envelope,
                            "room": room})  # fmt: skip

    def _need_proto(self) -> WireClientProtocol:
        if self.proto is None or not self.ready:
            raise ConnectionGone(None)
        return self.proto

    def _pump(self) -> None:
        """Send every outbox entry not already in flight, in batches."""
        proto = self.proto
        if proto is None or not self.ready:
            self._maybe_finish()
            return
        todo = [e for e in self.outbox if e["mid"] not in self._in_flight]
        assert self.welcome is not None
        limits = (self.welcome.max_batch, self.welcome.max_frame_bytes)
        for batch in plan_batches(todo, *limits):
            items = tuple(wire.SendItem(e["to"], e["backend"], e["mid"], e["payload"], e["room"])
                          for e in batch)  # fmt: skip
            self._in_flight.update(e["mid"] for e in batch)
            d = proto.request(wire.Send, items=items)
            d.addCallback(self._sent, batch)
            d.addErrback(self._send_failed, batch)
        self._maybe_finish()

    def _sent(self, reply: wire.Message, batch: list[dict[str, Any]]) -> None:
        assert isinstance(reply, wire.SendReply)
        self._in_flight.difference_update(e["mid"] for e in batch)
        done: set[bytes] = set()
        retry_after = 0.0
        for entry, result in zip(batch, reply.results, strict=True):
            if result.code == wire.E_RATE_LIMITED:  # stays in the outbox, goes again later
                retry_after = max(retry_after, result.retry_after or 1.0)
                continue
            done.add(entry["mid"])
            fields = {"to": entry["room"] or entry["to"], "id": entry["mid"].hex(),
                      "room": entry["room"], "peer": entry["to"]}  # fmt: skip
            if result.status == wire.STATUS_ERROR:
                self.emit("error", text=f"message to {entry['to']} refused: {result.code}",
                          code=result.code, status="refused", **fields)  # fmt: skip
            else:
                self.emit("sent", status=result.status, **fields)
        self.outbox[:] = [e for e in self.outbox if e["mid"] not in done]
        self.keystore.save()
        if retry_after:
            self._call_later(retry_after, self._pump)
        self._maybe_finish()

    def _send_failed(self, failure: Failure, batch: list[dict[str, Any]]) -> None:
        self._in_flight.difference_update(e["mid"] for e in batch)
        err = failure.value
        if isinstance(err, RemoteError) and err.retry_after is not None:
            # The server accepted none of the batch (store unavailable, rate limit):
            # the entries stay in the outbox and go again after the hint.
            self.emit("warning", text=f"server busy ({err.code}); retrying", code=err.code)
            self._call_later(err.retry_after, self._pump)
        elif not isinstance(err, ConnectionGone):
            self._report(failure)

    def _maybe_finish(self) -> None:
        if self.quitting and not self.outbox and not self._lock.locked:
            self._stop(0)

    # -- IChatController -------------------------------------------------------------
    def _ask(self, cls: type[wire.Message], render: Callable[[Any], None], **f: Any) -> None:
        async def go() -> None:
            render(await self._need_proto().request(cls, **f))

        self._serial(go)

    def who(self) -> None:
        self._ask(wire.Who, lambda r: self.emit("who", users=list(r.users),
                  text="online: " + (", ".join(r.users) or "nobody")))  # fmt: skip

    def contacts(self) -> None:
        def show(r: wire.Contacts) -> None:
            items = [{"user": c.user, "state": c.state} for c in r.contacts]
            text = ", ".join(f"{c.user} ({c.state})" for c in r.contacts) or "no contacts"
            self.emit("contacts", contacts=items, text=text)

        self._ask(wire.ContactList, show)

    def contact(self, action: str, user: str) -> None:
        cls = {"add": wire.ContactRequest, "accept": wire.ContactAccept,
               "remove": wire.ContactRemove}[action]  # fmt: skip
        self._ask(cls, lambda r: self.emit("contact", user=r.user, state=r.state,
                  text=f"{r.user}: contact {r.state}"), user=user)  # fmt: skip

    def join(self, room: str) -> None:
        def joined(r: wire.Room) -> None:
            self.rooms[r.room] = set(r.members)
            self.emit("room", room=r.room, members=sorted(r.members), joined=True,
                      text=f"joined {r.room}: {', '.join(sorted(r.members))}")  # fmt: skip

        self._ask(wire.RoomJoin, joined, room=room)

    def leave(self, room: str) -> None:
        def left(_: wire.Message) -> None:
            self.rooms.pop(room, None)
            self.emit("room", room=room, joined=False, text=f"left {room}")

        self._ask(wire.RoomLeave, left, room=room)

    def verify(self, user: str) -> None:
        async def go() -> None:
            if user not in self.keystore.state.pins:
                bundle = await self._need_proto().request(
                    wire.FetchBundle, user=user, backend=self.backend_name()
                )
                assert isinstance(bundle, wire.Bundle)
                self.sessions.start_session(
                    user, bundle.identity_key, bundle.signed_prekey, bundle.one_time_key
                )
                self.keystore.save()
            self.emit("verify", **self.sessions.verify_info(user))

        self._serial(go)

    def trust(self, user: str) -> None:
        async def go() -> None:
            try:
                self.sessions.trust(user)
            except KeyError:
                self.emit("error", text=f"no key pinned for {user}: /verify {user} first")
                return
            except TrustError as e:
                self.emit("error", text=str(e))
                return
            self.keystore.save()
            self.emit("info", text=f"{user} is now verified", user=user, verified=True)

        self._serial(go)

    def backend(self, name: str | None) -> None:
        async def go() -> None:
            allowed = self.welcome.backends if self.welcome is not None else ()
            current = self.backend_name()
            if name is None:
                self.emit("info", text=f"backend {current} (allowed: {', '.join(allowed)})",
                          backend=current, allowed=list(allowed))  # fmt: skip
            elif name not in allowed:
                self.emit("error", text=f"backend {name!r} is not allowed: {', '.join(allowed)}")
            else:
                self.chosen_backend = name
                self.emit("info", text=f"new sessions use {name}", backend=name)

        self._serial(go)

    def admin_users(self) -> None:
        def show(r: wire.AdminUsers) -> None:
            users = [{"user": u.user, "role": u.role, "online": u.online} for u in r.users]
            text = ", ".join(f"{u.user}{'*' if u.online else ''}" for u in r.users)
            self.emit("users", users=users, text=f"users (* online): {text}")

        self._ask(wire.AdminList, show)

    def admin_kick(self, user: str) -> None:
        self._ask(wire.AdminKick, lambda _: self.emit("info", text=f"kicked {user}"), user=user)

    def quit(self) -> None:
        """Stop after sends already typed are encrypted and accepted by the server."""
        self.quitting = True
        self._lock.run(succeed, None).addBoth(lambda _: self._maybe_finish())
