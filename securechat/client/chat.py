"""The client's controller: what happens on each connection, each command, each delivery.

Set-up and login live in :mod:`~securechat.client.account`, the outbox and send pump in
:mod:`~securechat.client.sending`; this module ties them to the connection and the console.
It emits typed events (:mod:`~securechat.client.events`) and never formats output itself.

A delivery is acknowledged only after the keystore recording it was saved, and message ids
are remembered, so nothing is lost and nothing is shown twice.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Coroutine
from dataclasses import fields, replace
from typing import Any

from twisted.internet.defer import Deferred, DeferredLock, ensureDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from securechat import wire
from securechat.client import events as ev
from securechat.client.account import Account
from securechat.client.console import IChatController
from securechat.client.history import DEFAULT_LIMIT, Entry, History
from securechat.client.keystore import Keystore
from securechat.client.network import (
    ConnectionGone,
    LoginFailed,
    RemoteError,
    WireClientProtocol,
    describe_failure,
)
from securechat.client.receipts import DeliveryReceipts
from securechat.client.rooms import RoomBook, RoomController
from securechat.client.sending import Sender
from securechat.client.sessions import DEFAULT_BACKEND, SessionManager, TrustError
from securechat.client.trustmark import trust_state
from securechat.crypto.errors import CryptoError
from securechat.crypto.identity import fingerprint

_VERIFY_FIELDS = {f.name for f in fields(ev.Verify)} - {"served_fingerprint"}
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
        history_limit: int = DEFAULT_LIMIT,
    ) -> None:
        self.sessions = sessions
        self.keystore: Keystore = sessions.keystore
        self.user = sessions.user
        self.chosen_backend = backend
        self.clock = clock
        self._stop = stop
        if call_later is None:
            from twisted.internet import reactor

            call_later = reactor.callLater
        self.renderer: ev.EventSink | None = None
        self.account = Account(sessions, password=password, register=register, emit=self.emit)
        pins = self.keystore.state.pins
        self.room_book = RoomBook(
            self.keystore.state.extra, self.user, sessions.identity,
            lambda u: pins[u].identity_key if u in pins else None, clock,
        )  # fmt: skip
        self.rooms = RoomController(
            self.room_book, lambda cls, **f: self._need_proto().request(cls, **f),
            self.emit, self.keystore.save, self._peer_key,
        )  # fmt: skip
        self.sender = Sender(sessions, emit=self.emit, report=self._report,
                             call_later=call_later, on_idle=self._maybe_finish,
                             members=self.rooms.recipients)  # fmt: skip
        self.outbox = self.sender.outbox
        self.proto: WireClientProtocol | None = None
        self.welcome: wire.Welcome | None = None
        self.role = "user"
        self.logged_in_once = False
        #: Logged in on the current connection (False while a reconnect is logging in).
        self.ready = False
        self.quitting = False
        self._in_setup = False
        #: What arrived while logging in, shown after "logged in" (offline messages).
        self._held: list[ev.Event] = []
        self.local_history = History(self.keystore.state.extra, history_limit)
        self._lock = DeferredLock()
        self.first_login: Deferred[None] = Deferred()
        self._done = False
        #: Message ids already answered with a could-not-decrypt receipt (once each).
        self._failed_told: set[bytes] = set()
        self._push_handlers: dict[type[wire.Message], Callable[[Any], None]] = {
            wire.Deliver: self._deliver,
            wire.Presence: self._presence,
            wire.PrekeysLow: self._prekeys_low,
            wire.ContactUpdate: self._contact_update,
            wire.RoomUpdate: self.rooms.server_update,
            wire.RoomEventPush: lambda m: self._serial(lambda: self.rooms.pushed(m), m.room),
            wire.Bye: self._bye,
        }

    # -- output --------------------------------------------------------------------
    def emit(self, event: ev.Event) -> None:
        if self.renderer is not None:
            self.renderer.show(event)

    def _report(self, failure: Failure, command: str | None = None) -> None:
        """One ``error`` event for a failed command; ``command`` is what it answers."""
        err = failure.value
        if isinstance(err, RemoteError):
            error = ev.Error(f"server refused: {err}", code=err.code)
        elif isinstance(err, ConnectionGone):
            error = ev.Error("not connected: will retry when the server is back",
                             code="not-connected")  # fmt: skip
        elif isinstance(err, TrustError):
            error = ev.Error(str(err), code="blocked")
        elif isinstance(err, CryptoError):
            error = ev.Error(str(err), code="crypto")
        elif isinstance(err, KeyError | ValueError):
            error = ev.Error(str(err).strip("'"), code="invalid")
        else:
            self.log.failure("unexpected error", failure)
            error = ev.Error(f"internal error: {err!r}", code="internal")
        self.emit(replace(error, command=command))

    def _run(self, coro: Any, command: str | None = None) -> None:
        ensureDeferred(coro).addErrback(self._report, command)

    def _serial(self, make: Callable[[], Coroutine[Any, Any, None]], command: str) -> None:
        """Run a command after every earlier one finished, so commands act in typed order
        (``/msg bob hi`` then ``/trust bob`` trusts the key that message pinned) and quitting
        waits for their replies. Its errors name ``command`` (``/join #room``)."""
        self._run(self._lock.run(lambda: ensureDeferred(make())), command)

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
        self.emit(ev.Warning(f"reconnect failed: {text}"))
        if proto.transport is not None:
            proto.transport.loseConnection()

    def lost(self, proto: WireClientProtocol, reason: Failure) -> None:
        if proto is not self.proto:
            return
        self.proto = None
        self.ready = False
        self.sender.disconnected()
        self.rooms.disconnected()  # the relay's lists may change while we are away
        bye = proto.bye
        if bye is not None and bye.code in FATAL_BYE:
            self.emit(ev.Error(_farewell(self.user, bye), code=bye.code))
            self._stop(1)
        elif self.logged_in_once and not self.quitting:
            self.emit(ev.Status("disconnected"))
        elif not self.logged_in_once and not self.first_login.called:
            self.first_login.errback(LoginFailed(describe_failure(reason)))

    async def _setup(self, proto: WireClientProtocol) -> None:
        self._in_setup = True
        try:
            done = await self.account.set_up(proto, self.chosen_backend)
        finally:
            self._in_setup = False
        self.welcome, self.role = done.welcome, done.role
        self.logged_in_once = True
        self.ready = True
        self.emit(ev.Status("connected", user=self.user, role=self.role))
        held, self._held = self._held, []
        waiting = sum(isinstance(e, ev.Message) for e in held)
        if waiting:
            self.emit(ev.Info(f"{waiting} message{'s' if waiting != 1 else ''} arrived while "
                              "you were away:"))  # fmt: skip
        for event in held:
            self.emit(event)
        if not self.first_login.called:
            self.first_login.callback(None)
        try:
            await self.rooms.logged_in()  # verified rosters first: queued room messages
        except (RemoteError, ConnectionGone) as e:  # need them
            self.emit(ev.Warning(f"could not bring the rooms up to date: {e}"))
        self.sender.connected(proto, done.welcome)

    # -- pushes (one handler per message type) ---------------------------------------
    def push(self, msg: wire.Message) -> None:
        handler = self._push_handlers.get(type(msg))
        if handler is not None:
            handler(msg)

    def _presence(self, msg: wire.Presence) -> None:
        self.emit(ev.Presence(user=msg.user, online=msg.online))

    def _prekeys_low(self, msg: wire.PrekeysLow) -> None:
        # (During set-up the login itself tops up every backend from a fresh count.)
        if self.proto is not None and not self._in_setup:
            self._run(self.account.publish(self.proto, msg.backend, msg.remaining),
                      "(publishing prekeys)")  # fmt: skip

    def _contact_update(self, msg: wire.ContactUpdate) -> None:
        self.emit(ev.Contact(user=msg.user, state=msg.state))

    def _bye(self, msg: wire.Bye) -> None:
        self.emit(ev.Warning(f"server closes the connection: {msg.message}", code=msg.code))

    def _deliver(self, msg: wire.Deliver) -> None:
        """Decrypt, store, then acknowledge; receipts we owe go into the outbox in the same
        save (``received`` per sender for what was stored, ``failed`` for what no session
        could open), receipts we got update what we sent."""
        shown: list[ev.Event] = []
        receipts = DeliveryReceipts(self._failed_told)
        for item in msg.items:
            try:
                received, warnings = self.sessions.decrypt(
                    item.sender, item.backend, item.mid, item.room, item.payload
                )
            except (CryptoError, ValueError) as e:
                shown.append(ev.Warning(f"dropped a message from {item.sender}: {e}",
                                        sender=item.sender))  # fmt: skip
                receipts.not_decrypted(item, e)
                continue
            shown.extend(ev.Warning(w, sender=item.sender) for w in warnings)
            if received is None:
                continue
            if receipts.decrypted(item, received):
                continue
            if received.missing:
                shown.append(ev.Warning(
                    f"{received.missing} messages from {item.sender} are missing",
                    sender=item.sender, missing=received.missing))  # fmt: skip
            self.local_history.add(received.room or received.sender, Entry(
                received.timestamp, "in", received.sender, received.text,
                received.message_id.hex()))  # fmt: skip
            if received.room is not None and not self.room_book.is_member(
                received.room, received.sender
            ):
                shown.append(ev.RoomWarning(room=received.room, sender=received.sender,
                    message=f"{received.sender} is not a verified member of {received.room}"))
            shown.append(ev.Message(
                sender=received.sender, to=self.user, room=received.room, body=received.text,
                time=received.timestamp, id=received.message_id.hex(),
                verified=received.verified,
                trust=trust_state(self.keystore.state, received.sender)))  # fmt: skip
        pump = receipts.settle(self.sender)
        self.keystore.save()
        if self.proto is not None and msg.items:
            self.proto.send(wire.Ack(up_to=msg.items[-1].seq))
        if pump:
            self.sender.pump()
        if not self.ready:  # logging in: shown after the "logged in" line
            self._held.extend(shown)
            return
        for event in shown:
            self.emit(event)

    # -- sending -------------------------------------------------------------------
    def backend_name(self) -> str:
        if self.chosen_backend is not None:
            return self.chosen_backend
        return self.welcome.default_backend if self.welcome is not None else DEFAULT_BACKEND

    def send_text(self, target: str, text: str) -> None:
        self._serial(lambda: self._send_text(target, text), f"/msg {target}")

    async def _send_text(self, target: str, text: str) -> None:
        """Durable first: the message is in the saved outbox before any network step; then
        (inside the command order, so ``/trust`` right after acts on the key this message
        pinned) bundles are fetched and the message encrypted if the server is there."""
        if not target.startswith("#"):
            # A verified peer whose key changed: refused at once, nothing is queued.
            self.sessions.check_can_send(target)
        self.local_history.add(target, Entry(self.clock(), "out", self.user, text))  # saved by add
        self.sender.add(target, text, self.backend_name())
        await self.sender.prepare()
        self.sender.pump()

    async def _peer_key(self, peer: str) -> bytes:
        """The identity key we would encrypt to for ``peer`` (fetching and pinning it)."""
        if peer not in self.keystore.state.pins:
            bundle = await self._need_proto().request(
                wire.FetchBundle, user=peer, backend=self.backend_name()
            )
            assert isinstance(bundle, wire.Bundle)
            self.sessions.start_session(
                peer, bundle.identity_key, bundle.signed_prekey, bundle.one_time_key
            )
            self.keystore.save()
        return self.keystore.state.pins[peer].identity_key

    def _need_proto(self) -> WireClientProtocol:
        if self.proto is None or not self.ready:
            raise ConnectionGone(None)
        return self.proto

    def _maybe_finish(self) -> None:
        if self.quitting and self.sender.idle and not self._lock.locked and not self._done:
            self._done = True
            self._stop(0)

    # -- IChatController -------------------------------------------------------------
    def _ask(
        self, cls: type[wire.Message], render: Callable[[Any], None], command: str, **f: Any
    ) -> None:
        async def go() -> None:
            render(await self._need_proto().request(cls, **f))

        self._serial(go, command)

    def who(self) -> None:
        self._ask(wire.Who, lambda r: self.emit(ev.Who(users=list(r.users))), "/who")

    def contacts(self) -> None:
        def show(r: wire.Contacts) -> None:
            self.emit(ev.Contacts(contacts=[{"user": c.user, "state": c.state}
                                            for c in r.contacts]))  # fmt: skip

        self._ask(wire.ContactList, show, "/contacts")

    def contact(self, action: str, user: str) -> None:
        cls = {"add": wire.ContactRequest, "accept": wire.ContactAccept,
               "remove": wire.ContactRemove}[action]  # fmt: skip
        self._ask(cls, lambda r: self.emit(ev.Contact(user=r.user, state=r.state)),
                  f"/contact {action} {user}", user=user)  # fmt: skip

    def join(self, room: str, is_open: bool = False) -> None:
        self._serial(lambda: self.rooms.join(room, is_open),
                     f"/join {room}{' open' if is_open else ''}")  # fmt: skip

    def leave(self, room: str) -> None:
        self._serial(lambda: self.rooms.leave(room), f"/leave {room}")

    def invite(self, user: str, room: str) -> None:
        self._serial(lambda: self.rooms.invite(user, room), f"/invite {user} {room}")

    def remove(self, user: str, room: str) -> None:
        self._serial(lambda: self.rooms.remove(user, room), f"/remove {user} {room}")

    def promote(self, user: str, room: str, admin: bool) -> None:
        verb = "/promote" if admin else "/demote"
        self._serial(lambda: self.rooms.promote(user, room, admin), f"{verb} {user} {room}")

    def members(self, room: str) -> None:
        self._serial(lambda: self.rooms.members(room), f"/members {room}")

    def verify(self, user: str) -> None:
        """Show the safety number to compare, with the key the relay serves *now* next to
        the pinned one (asked of the relay each time, so a key change shows up here even
        before a message is sent); offline, the pinned key alone."""

        async def go() -> None:
            pins = self.keystore.state.pins
            served: bytes | None = None
            if self.ready or user not in pins:
                backend = self.backend_name()
                bundle = await self._need_proto().request(wire.FetchBundle, user=user,
                                                          backend=backend)  # fmt: skip
                assert isinstance(bundle, wire.Bundle)
                served = bundle.identity_key
                pin = pins.get(user)
                fresh = pin is None or (
                    wire.constant_time_equal(pin.identity_key, served)
                    and self.sessions.active_session(user, backend) is None
                )
                if fresh:  # first contact: pin it (and use the one-time prekey it cost)
                    self.sessions.start_session(
                        user, served, bundle.signed_prekey, bundle.one_time_key
                    )
                else:
                    warning = self.sessions.observe_identity(user, served)
                    if warning:
                        self.emit(ev.Warning(warning, to=user))
                self.keystore.save()
            info = self.sessions.verify_info(user)  # pinned_fingerprint when it differs
            self.emit(ev.Verify(
                **{k: v for k, v in info.items() if k in _VERIFY_FIELDS},
                served_fingerprint=None if served is None else fingerprint(served),
            ))  # fmt: skip

        self._serial(go, f"/verify {user}")

    def trust(self, user: str) -> None:
        async def go() -> None:
            try:
                self.sessions.trust(user)
            except KeyError:
                self.emit(ev.Error(f"no key pinned for {user}: /verify {user} first",
                                   code="not-pinned", command=f"/trust {user}"))  # fmt: skip
                return
            except TrustError as e:
                self.emit(ev.Error(str(e), code="not-shown", command=f"/trust {user}"))
                return
            self.keystore.save()
            self.emit(ev.Info(f"{user} is now verified", user=user, verified=True))
            self.sender.pump()

        self._serial(go, f"/trust {user}")

    def backend(self, name: str | None) -> None:
        async def go() -> None:
            allowed = list(self.welcome.backends) if self.welcome is not None else []
            current = self.backend_name()
            if name is None:
                self.emit(ev.Info(f"backend {current} (allowed: {', '.join(allowed)})",
                                  backend=current, allowed=allowed))  # fmt: skip
            elif name not in allowed:
                self.emit(ev.Error(f"backend {name!r} is not allowed: {', '.join(allowed)}",
                                   code="backend-not-allowed",
                                   command=f"/backend {name}"))  # fmt: skip
            else:
                self.chosen_backend = name
                self.emit(ev.Info(f"new sessions use {name}", backend=name))

        self._serial(go, "/backend" if name is None else f"/backend {name}")

    def admin_users(self) -> None:
        def show(r: wire.AdminUsers) -> None:
            self.emit(ev.Users(users=[{"user": u.user, "role": u.role, "online": u.online}
                                      for u in r.users]))  # fmt: skip

        self._ask(wire.AdminList, show, "/users")

    def admin_kick(self, user: str) -> None:
        self._ask(wire.AdminKick, lambda _: self.emit(ev.Info(f"kicked {user}")),
                  f"/kick {user}", user=user)  # fmt: skip

    def admin_add_user(self, user: str, admin: bool) -> None:
        """Create ``user`` with a fresh random password, shown once, here only: the admin
        hands it over on a safe channel and the user logs in with it (``--register`` then
        publishes their identity key). The server applies securechat-admin's rules."""
        password = secrets.token_urlsafe(18)
        role = "admin" if admin else "user"
        text = (f"added {user} (role {role}); one-time password: {password} "
                f"(give it to {user} over a safe channel)")  # fmt: skip
        info = ev.Info(text, user=user, password=password)
        self._ask(wire.AdminAddUser, lambda _: self.emit(info), f"/user add {user}", user=user,
                  role=role, password=self.account.secret_for(user, password))  # fmt: skip

    def admin_remove_user(self, user: str) -> None:
        self._ask(wire.AdminRemoveUser, lambda _: self.emit(ev.Info(f"removed {user}", user=user)),
                  f"/user remove {user}", user=user)  # fmt: skip

    def history(self, target: str, count: int) -> None:
        async def go() -> None:
            entries, kept = self.local_history.last(target, count)
            self.emit(ev.History(conversation=target, kept=kept,
                                 messages=[e.to_json() for e in entries]))  # fmt: skip

        self._serial(go, f"/history {target}")

    def quit(self) -> None:
        """Stop after sends already typed are encrypted and accepted by the server."""
        self.quitting = self.sender.quitting = True
        self._lock.run(succeed, None).addBoth(lambda _: self.sender.pump())


def _farewell(user: str, bye: wire.Bye) -> str:
    """The one line for a session the server ended for good (the client stops, exit 1)."""
    if bye.code == wire.E_REPLACED:
        # One live session per user: the newer login wins, and the older client must not
        # reconnect (it would push the new one out in turn).
        return (f"disconnected: {user} logged in again from another client or device, which "
                "replaces this session (one connection per user); this client stops")
    return f"disconnected by the server: {bye.message}"
