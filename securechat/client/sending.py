"""The send pump: typed messages into the outbox, the outbox into ``send`` frames.

Reliability rules this module keeps:

- An envelope is encrypted, the keystore (session state and outbox) saved, and only then
  sent; a crash can therefore never reuse a message key, and whatever the server has not
  accepted is sent again (same bytes, same message id) after a reconnect or a restart.
- An entry leaves the outbox only when the server answered for it: accepted (``sent``
  event) or refused for good (``error`` event naming the message).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace

from twisted.internet.defer import DeferredLock, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from securechat import wire
from securechat.client import events as ev
from securechat.client.network import ConnectionGone, RemoteError, WireClientProtocol
from securechat.client.outbox import Outbox, OutboxEntry, new_message_id, plan_batches
from securechat.client.sessions import (
    MAX_RECEIPT_IDS,
    RECEIPT_FAILED,
    RECEIPT_RECEIVED,
    SessionManager,
    TrustError,
    encode_receipt,
)
from securechat.crypto.errors import CryptoError
from securechat.wireroom import RoomEventError


class Sender:
    """Owns the outbox and what is in flight on the current connection."""

    log = Logger()

    def __init__(
        self,
        sessions: SessionManager,
        *,
        emit: Callable[[ev.Event], None],
        report: Callable[[Failure, str], None],
        call_later: Callable[[float, Callable[[], None]], object],
        on_idle: Callable[[], None],
        members: Callable[[str], Awaitable[dict[str, bytes]]],
    ) -> None:
        self.sessions = sessions
        self.keystore = sessions.keystore
        self.outbox = Outbox(self.keystore.state.extra)
        self._emit = emit
        self._report = report
        self._call_later = call_later
        self._on_idle = on_idle
        self._members = members
        self._in_flight: set[bytes] = set()
        #: Peers whose identity the relay called stale: fetch their bundle again.
        self._stale: set[str] = set()
        #: Per message id, the identity digest the relay last refused as stale.
        self._refused: dict[bytes, bytes | None] = {}
        self._held: set[bytes] = set()
        self._prepare_lock = DeferredLock()
        #: Room messages waiting for their results: group -> (room, recipient -> status).
        self._groups: dict[str, tuple[str, dict[str, str]]] = {}
        self.proto: WireClientProtocol | None = None
        self.limits: tuple[int, int] = (64, 1 << 20)
        self.quitting = False

    # -- connection ----------------------------------------------------------------------
    def connected(self, proto: WireClientProtocol, welcome: wire.Welcome) -> None:
        self.proto = proto
        self.limits = (welcome.max_batch, welcome.max_frame_bytes)
        self.pump()

    def disconnected(self) -> None:
        self.proto = None
        self._in_flight.clear()

    def _need_proto(self) -> WireClientProtocol:
        if self.proto is None:
            raise ConnectionGone(None)
        return self.proto

    @property
    def idle(self) -> bool:
        """Nothing left that the server has not answered for."""
        return not self.outbox

    # -- queueing: durable first ---------------------------------------------------------
    def add(self, target: str, text: str, backend: str) -> list[OutboxEntry]:
        """Put a typed message into the outbox and save the keystore, before any network
        step. A room message is one entry per member; a room whose members are not known
        yet (typed while disconnected) is one entry for the room, split when connected."""
        entry = OutboxEntry(mid=new_message_id(), to=target, backend=backend,
                            room=target if target.startswith("#") else None, text=text)  # fmt: skip
        self.outbox.add(entry)
        self.keystore.save()
        if self.proto is None:
            self._emit(ev.Info("not connected: the message is kept in the outbox and sent "
                               "when the server is back", to=target))  # fmt: skip
        return [entry]

    async def prepare(self) -> None:
        """Encrypt every outbox entry that waits for a session (one run at a time): fetch
        bundles, run handshakes, save; entries refused for good leave with an ``error``."""
        await self._prepare_lock.run(lambda: ensureDeferred(self._prepare()))

    async def _prepare(self) -> None:
        tried: set[bytes] = set()  # held or failed in this run: not again until the next
        while self.proto is not None:
            entry = next((e for e in self.outbox if not e.encrypted and e.mid not in tried),
                         None)  # fmt: skip
            if entry is None:
                return
            tried.add(entry.mid)
            try:
                if entry.to.startswith("#"):
                    await self._split_room(entry)
                else:
                    await self._encrypt(entry)
            except ConnectionGone:
                return  # the entry stays; the next connection goes on
            except RemoteError as e:
                if e.retry_after is not None:
                    self._call_later(e.retry_after, self.pump)
                    return
                self._drop(entry, f"server refused: {e}", e.code)
            except TrustError as e:
                if e.warning:
                    self._emit(ev.Warning(e.warning, to=entry.to))
                self._hold(entry, str(e))
            except CryptoError as e:
                self._drop(entry, f"cannot start a session with {entry.to}: {e}", "crypto")
            except RoomEventError as e:
                self._drop(entry, str(e), "not-a-member")
            finally:
                self.keystore.save()  # encrypted entries before they leave; pins; blocks

    def _hold(self, entry: OutboxEntry, why: str) -> None:
        """A verified peer's key changed: keep the message until ``/verify`` + ``/trust``
        (then it goes under the new session); on quit it is dropped with an error."""
        if entry.is_receipt:  # a receipt to a peer we may not send to: quietly not sent
            self.outbox.remove([entry.mid])
            return
        if self.quitting:
            self._drop(entry, why, "blocked")
            return
        if entry.mid in self._held:
            return  # said once
        self._held.add(entry.mid)
        self._emit(ev.Error(
            f"message to {entry.room or entry.to} held: {why}", code="blocked", status="held",
            command=f"/msg {entry.room or entry.to}", to=entry.room or entry.to,
            id=entry.mid.hex(), room=entry.room, peer=entry.to,
        ))  # fmt: skip

    def _drop(self, entry: OutboxEntry, why: str, code: str) -> None:
        self.outbox.remove([entry.mid])
        if entry.is_receipt:
            self.log.info("receipt to {peer} not sent: {why}", peer=entry.to, why=why)
            return
        self._emit(ev.Error(
            f"message to {entry.room or entry.to} not sent: {why}", code=code, status="failed",
            command=f"/msg {entry.room or entry.to}", to=entry.room or entry.to,
            id=entry.mid.hex(), room=entry.room, peer=entry.to,
        ))  # fmt: skip

    async def _split_room(self, entry: OutboxEntry) -> None:
        """Replace a room entry by one entry per member the signed room events admitted
        (all or none: a member whose verified key changed blocks the whole message, as
        when typed while connected); each is encrypted to the key the room admitted."""
        assert entry.text is not None
        members = await self._members(entry.to)
        for peer in members:
            self.sessions.check_can_send(peer)
        if not members:
            self.outbox.remove([entry.mid])
            self._emit(ev.Info(f"nobody else is in {entry.to}", room=entry.to))
            return
        group = entry.mid.hex()
        parts = [OutboxEntry(mid=new_message_id(), to=peer, backend=entry.backend,
                             room=entry.to, text=entry.text, group=group, admitted=key)
                 for peer, key in sorted(members.items())]  # fmt: skip
        self.outbox.replace(entry.mid, parts)  # each part is encrypted next, in order

    async def _encrypt(self, entry: OutboxEntry) -> None:
        """Encrypt ``entry`` under the peer's session (started from a fetched bundle if
        there is none); the same message id whatever session it ends up under."""
        peer = entry.to
        self.sessions.check_can_send(peer)
        session = self.sessions.active_session(peer, entry.backend)
        if session is None or peer in self._stale:
            bundle = await self._need_proto().request(
                wire.FetchBundle, user=peer, backend=entry.backend
            )
            assert isinstance(bundle, wire.Bundle)
            session, warning = self.sessions.start_session(
                peer, bundle.identity_key, bundle.signed_prekey, bundle.one_time_key
            )
            self._stale.discard(peer)
            if warning:
                self._emit(ev.Warning(warning, to=peer))
        self._held.discard(entry.mid)
        if entry.admitted is not None and not wire.constant_time_equal(
            session.peer_identity, entry.admitted
        ):
            self._drop(entry, f"the key {entry.room} admitted {peer} with is not {peer}'s "
                       f"current one (/verify {peer})", "not-admitted")  # fmt: skip
            return
        content = None
        if entry.receipt is not None:
            content = encode_receipt(entry.receipt, entry.ids)
        _, envelope = self.sessions.encrypt(session, entry.text or "", entry.room,
                                            message_id=entry.mid, content=content)  # fmt: skip
        digest = wire.identity_digest(session.peer_identity)
        self.outbox.update(replace(entry, payload=envelope, identity=digest))

    # -- the pump ------------------------------------------------------------------------
    def pump(self) -> None:
        """Encrypt what waits for a session, then send every encrypted entry not already
        in flight, in batches."""
        d = ensureDeferred(self.prepare())
        d.addCallback(lambda _: self._send_batches())
        d.addErrback(self._report, "/msg")

    def _send_batches(self) -> None:
        proto = self.proto
        if proto is None:
            self._on_idle()
            return
        todo = [e for e in self.outbox if e.encrypted and e.mid not in self._in_flight]
        for batch in plan_batches(todo, *self.limits):
            items = tuple(wire.SendItem(e.to, e.backend, e.mid, e.payload or b"", e.room,
                                        e.identity) for e in batch)  # fmt: skip
            self._in_flight.update(e.mid for e in batch)
            d = proto.request(wire.Send, items=items)
            d.addCallback(self._sent, batch)
            d.addErrback(self._send_failed, batch)
        self._on_idle()

    def _sent(self, reply: wire.Message, batch: list[OutboxEntry]) -> None:
        assert isinstance(reply, wire.SendReply)
        self._in_flight.difference_update(e.mid for e in batch)
        done: set[bytes] = set()
        retry_after = 0.0
        stale = False
        for entry, result in zip(batch, reply.results, strict=True):
            if result.code == wire.E_RATE_LIMITED:  # stays in the outbox, goes again later
                retry_after = max(retry_after, result.retry_after or 1.0)
                continue
            if result.code == wire.E_STALE_IDENTITY and self._resend_stale(entry):
                stale = True
                continue
            done.add(entry.mid)
            if entry.group is not None and result.status != wire.STATUS_ERROR:
                self.outbox.accepted(entry)  # kept until the member's receipt
                room = entry.room or entry.to
                self._groups.setdefault(entry.group, (room, {}))[1][entry.to] = result.status
                continue
            to, mid = entry.room or entry.to, entry.mid.hex()
            if entry.is_receipt:
                if result.status == wire.STATUS_ERROR:
                    self.log.info("receipt to {peer} refused: {code}", peer=entry.to,
                                  code=result.code)  # fmt: skip
                continue
            if result.status == wire.STATUS_ERROR:
                self._emit(ev.Error(
                    f"message to {entry.to} refused: {result.code}", code=result.code,
                    command=f"/msg {to}", status="refused", to=to, id=mid, room=entry.room,
                    peer=entry.to,
                ))  # fmt: skip
            else:
                self.outbox.accepted(entry)  # kept until the peer's receipt
                self._emit(ev.Sent(to=to, id=mid, status=result.status, peer=entry.to,
                                   room=entry.room))  # fmt: skip
        self.outbox.remove(done)
        for gone in done:
            self._refused.pop(gone, None)
        self._groups_done({e.group for e in batch if e.group is not None})
        self.keystore.save()
        if retry_after:
            self._call_later(retry_after, self.pump)
        if stale:
            self.pump()
        self._on_idle()

    def _resend_stale(self, entry: OutboxEntry) -> bool:
        """The relay refused ``entry`` for a stale identity (nothing stored): fetch the
        peer's new bundle and encrypt the same message id again under a new session —
        after the key-change warning, and for a verified peer only after ``/trust``.

        :returns: False when it cannot be resent (no plaintext, or refused again for the
            very key the relay serves: it would loop), and the refusal stands.
        """
        if entry.text is None or (
            entry.mid in self._refused and self._refused[entry.mid] == entry.identity
        ):
            return False
        self._refused[entry.mid] = entry.identity
        self._stale.add(entry.to)
        self.outbox.reset(entry.mid)
        return True

    def _groups_done(self, groups: set[str]) -> None:
        """One ``sent`` event per room message once every recipient has a result:
        ``-> #ops (alice, dave): delivered``."""
        waiting = {e.group for e in self.outbox}
        for group in sorted(groups - waiting):
            room, results = self._groups.pop(group, ("", {}))
            if not results:
                continue  # every recipient refused it: each got its own error event
            statuses = set(results.values())
            status = statuses.pop() if len(statuses) == 1 else "mixed"
            self._emit(ev.Sent(to=room, id=group, status=status, room=room,
                               recipients=sorted(results), statuses=results))  # fmt: skip

    # -- end-to-end receipts ---------------------------------------------------------------
    def owe_receipt(self, peer: str, backend: str, status: str, ids: list[bytes]) -> None:
        """Queue one receipt (batched: every id from one delivery) for ``peer``; the caller
        saves the keystore before acknowledging the delivery. A could-not-decrypt receipt
        goes under a new session from the peer's bundle (ours no longer matches theirs),
        which is also the session their resend will use."""
        for start in range(0, len(ids), MAX_RECEIPT_IDS):
            chunk = tuple(ids[start : start + MAX_RECEIPT_IDS])
            self.outbox.add(OutboxEntry(mid=new_message_id(), to=peer, backend=backend,
                                        receipt=status, ids=chunk))  # fmt: skip
        if status == RECEIPT_FAILED:
            self._stale.add(peer)

    def receipt_from(self, peer: str, status: str, ids: tuple[bytes, ...]) -> None:
        """``peer``'s client answered for messages we sent it. ``failed``: resend each once,
        same id, under the current session (the one the peer's receipt started), unless
        the peer may not be sent to any more; the caller saves and pumps."""
        for mid in ids:
            entry = self.outbox.answered(peer, mid)
            if entry is None:
                continue  # not ours to, or not to this peer, or answered already
            to = entry.room or entry.to
            shown = entry.group or mid.hex()  # a room message is known by its sent id
            if status == RECEIPT_RECEIVED:
                self._emit(ev.Receipt(to=to, id=shown, status="received", peer=peer,
                                      room=entry.room))  # fmt: skip
                continue
            why = "resent under a new session"
            if entry.resent:
                why = "not resent again: it already failed once after a resend"
            else:
                try:
                    self.sessions.check_can_send(peer)
                except TrustError as e:
                    why = f"not resent: {e}"
                else:
                    self.outbox.add(replace(entry, resent=True, payload=None, identity=None))
            self._emit(ev.Receipt(to=to, id=shown, status="failed", peer=peer,
                                  room=entry.room, reason=why))  # fmt: skip

    def _send_failed(self, failure: Failure, batch: list[OutboxEntry]) -> None:
        self._in_flight.difference_update(e.mid for e in batch)
        err = failure.value
        if isinstance(err, RemoteError) and err.retry_after is not None:
            # The server accepted none of the batch (store unavailable, rate limit):
            # the entries stay in the outbox and go again after the hint.
            self._emit(ev.Warning(f"server busy ({err.code}); retrying", code=err.code))
            self._call_later(err.retry_after, self.pump)
        elif not isinstance(err, ConnectionGone):
            targets = sorted({e.room or e.to for e in batch})
            self._report(failure, "/msg " + ",".join(targets))
