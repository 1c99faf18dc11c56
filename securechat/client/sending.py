"""The send pump: typed messages into the outbox, the outbox into ``send`` frames.

Reliability rules this module keeps:

- An envelope is encrypted, the keystore (session state and outbox) saved, and only then
  sent; a crash can therefore never reuse a message key, and whatever the server has not
  accepted is sent again (same bytes, same message id) after a reconnect or a restart.
- An entry leaves the outbox only when the server answered for it: accepted (``sent``
  event) or refused for good (``error`` event naming the message).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.python.failure import Failure

from securechat import wire
from securechat.client import events as ev
from securechat.client.network import ConnectionGone, RemoteError, WireClientProtocol
from securechat.client.outbox import Outbox, OutboxEntry, new_message_id, plan_batches
from securechat.client.sessions import SessionManager, TrustError


class Sender:
    """Owns the outbox and what is in flight on the current connection."""

    def __init__(
        self,
        sessions: SessionManager,
        *,
        emit: Callable[[ev.Event], None],
        report: Callable[[Failure], None],
        call_later: Callable[[float, Callable[[], None]], object],
        on_idle: Callable[[], None],
    ) -> None:
        self.sessions = sessions
        self.keystore = sessions.keystore
        self.outbox = Outbox(self.keystore.state.extra)
        self._emit = emit
        self._report = report
        self._call_later = call_later
        self._on_idle = on_idle
        self._in_flight: set[bytes] = set()
        self.proto: WireClientProtocol | None = None
        self.limits: tuple[int, int] = (64, 1 << 20)

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

    # -- queueing ------------------------------------------------------------------------
    async def queue(self, peer: str, text: str, room: str | None, backend: str) -> None:
        """Encrypt ``text`` for ``peer`` (starting a session if needed) into the outbox.
        The caller saves the keystore and pumps (once for all members of a room)."""
        self.sessions.check_can_send(peer)
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
                    self._emit(ev.Warning(e.warning, to=peer))
                self.keystore.save()  # the new pin and the block
                raise
            if warning:
                self._emit(ev.Warning(warning, to=peer))
        mid = new_message_id()
        _, envelope = self.sessions.encrypt(session, text, room, message_id=mid)
        self.outbox.add(OutboxEntry(mid=mid, to=peer, backend=backend, room=room, text=text,
                                    payload=envelope))  # fmt: skip

    # -- the pump ------------------------------------------------------------------------
    def pump(self) -> None:
        """Send every encrypted outbox entry not already in flight, in batches."""
        proto = self.proto
        if proto is None:
            self._on_idle()
            return
        todo = [e for e in self.outbox if e.encrypted and e.mid not in self._in_flight]
        for batch in plan_batches(todo, *self.limits):
            items = tuple(wire.SendItem(e.to, e.backend, e.mid, e.payload or b"", e.room)
                          for e in batch)  # fmt: skip
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
        for entry, result in zip(batch, reply.results, strict=True):
            if result.code == wire.E_RATE_LIMITED:  # stays in the outbox, goes again later
                retry_after = max(retry_after, result.retry_after or 1.0)
                continue
            done.add(entry.mid)
            to, mid = entry.room or entry.to, entry.mid.hex()
            if result.status == wire.STATUS_ERROR:
                self._emit(ev.Error(
                    f"message to {entry.to} refused: {result.code}", code=result.code,
                    status="refused", to=to, id=mid, room=entry.room, peer=entry.to,
                ))  # fmt: skip
            else:
                self._emit(ev.Sent(to=to, id=mid, status=result.status, peer=entry.to,
                                   room=entry.room))  # fmt: skip
        self.outbox.remove(done)
        self.keystore.save()
        if retry_after:
            self._call_later(retry_after, self.pump)
        self._on_idle()

    def _send_failed(self, failure: Failure, batch: list[OutboxEntry]) -> None:
        self._in_flight.difference_update(e.mid for e in batch)
        err = failure.value
        if isinstance(err, RemoteError) and err.retry_after is not None:
            # The server accepted none of the batch (store unavailable, rate limit):
            # the entries stay in the outbox and go again after the hint.
            self._emit(ev.Warning(f"server busy ({err.code}); retrying", code=err.code))
            self._call_later(err.retry_after, self.pump)
        elif not isinstance(err, ConnectionGone):
            self._report(failure)
