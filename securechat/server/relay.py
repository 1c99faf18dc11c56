# -*- test-case-name: tests.server.test_relay -*-
"""The relay: presence, routing, durable delivery. Pure logic, no sockets.

The relay never parses an envelope. It knows who is online (one live :class:`Session`
per user), applies policy to each envelope of a ``send`` (backend, size, contacts, rooms,
rate), makes the accepted ones durable through :meth:`IStore.enqueue` and only then
answers the sender and pushes them to the recipient. Envelopes are deleted only when the
recipient acknowledges them (cumulatively, by per-recipient ``seq``).

Front-ends (the CBOR protocol now, perhaps a WebSocket one later) talk to the relay
through :class:`ISessionSink`, as magic-wormhole's transit relay does with
``ITransitClient``; that keeps this module testable without transports.

Delivery cursor. Each session has a ``cursor``: the highest ``seq`` pushed to it. At
login the session *pumps*: it reads the stored backlog after the cursor in bounded
batches. Envelopes committed meanwhile are not pushed directly but mark the session
*dirty*, so the pump reads once more before it stops; once it has stopped, newly
committed envelopes are pushed directly, skipping any ``seq`` at or below the cursor
(the pump already read those). This relies on :meth:`IStore.enqueue` calls firing in the
order of the ``seq`` they were given, which both stores guarantee (one writer, calls
fired in commit order), and it gives no loss and no duplicate on one connection.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from securechat import wire
from securechat.config import ONE_TIME_LOW, ServerConfig
from securechat.errors import NoSuchUser, QueueFull, StoreError
from securechat.server.contacts import ContactGraph
from securechat.server.identities import IdentityDirectory
from securechat.server.loglimit import RepeatLimiter
from securechat.server.metrics import NULL_METRICS, IMetrics
from securechat.server.ratelimit import BucketTable, SendLimiter
from securechat.server.roomdir import RoomDirectory
from securechat.server.session import NO_ENVELOPES as _NO_ENVELOPES
from securechat.server.session import ISessionSink, RelayError, Session
from securechat.server.social import ChangeCounter, read_social
from securechat.server.store.interface import IStore, NewEnvelope, QueuedEnvelope

__all__ = ["ISessionSink", "Relay", "RelayError", "Session", "deliver_item"]

#: Envelopes per ``deliver`` frame and per backlog read.
DELIVER_BATCH = 256
#: Push ``prekeys_low`` when fewer one-time prekeys than this are left.
PREKEY_LOW_WATERMARK = 10
#: Users whose existence the relay remembers, so a send does not hit the store per item.
KNOWN_USERS_CACHE = 100_000
#: :meth:`Relay._quick_refusal`: the policy answer needs the store.
_LOOKUP = "lookup"
_DELIVERED = wire.SendResult(wire.STATUS_DELIVERED)
_QUEUED = wire.SendResult(wire.STATUS_QUEUED)


def deliver_item(env: QueuedEnvelope) -> wire.DeliverItem:
    """The wire form of a stored envelope."""
    return wire.DeliverItem(
        env.seq, env.sender, env.backend, env.message_id, env.accepted_at, env.payload, env.room
    )


class Relay:
    """Presence registry, policy and delivery for one relay process.

    :param config: policy and limits.
    :param store: durable state; all access is through its Deferreds.
    :param clock: schedules the same-turn coalescing of ``deliver`` frames.
    :param limiter: per-user send rate.
    """

    log = Logger()
    metrics: IMetrics = NULL_METRICS  #: counts envelopes and refusals (off by default)

    def __init__(
        self, config: ServerConfig, store: IStore, clock: IReactorTime, limiter: SendLimiter
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.limiter = limiter
        #: One-time prekeys handed out per (requester, owner, backend): see keydir.
        self.handouts = BucketTable(
            config.policy.one_time_per_peer_burst, config.policy.one_time_per_peer_rate,
            clock.seconds,
        )  # fmt: skip
        self.sessions: dict[str, Session] = {}
        self.contacts_only = config.policy.messaging == "contacts"
        self._backends = frozenset(config.crypto.backends)
        self._max_envelope = config.policy.max_envelope_bytes
        self._known_users: set[str] = set()
        #: Each recipient's current identity key, for refusing stale-identity sends.
        self.identities = IdentityDirectory(store)
        self.changes = ChangeCounter()  #: bumped by every contact or room change
        #: The only writers of contact and room state (store rows and session caches).
        self.graph = ContactGraph(store, self.sessions, self.changes)
        self.directory = RoomDirectory(
            store, self.sessions, self.changes, config.policy.max_room_members,
            self.contacts_only,
        )  # fmt: skip
        #: Sessions with envelopes in their outbox, and the flush that sends them.
        self._dirty: list[Session] = []
        self._flush_call: IDelayedCall | None = None
        self._log_limit = RepeatLimiter(clock.seconds)

    # -- sessions and presence ---------------------------------------------------------
    async def login(self, user: str, role: str, sink: Any) -> Session:
        """Register ``sink`` as ``user``'s live session, replacing an older one.

        The older connection is told why and closed; delivery on the new one starts from
        the oldest un-acknowledged envelope once :meth:`start` is called.
        """
        contacts, rooms = await read_social(
            self.store, self.directory.members, self.changes, user
        )
        session = Session(user, role, sink)
        self.graph.load(session, contacts)
        self.directory.load(session, rooms)
        old = self.sessions.get(user)
        self.sessions[user] = session
        self._known_users.add(user)
        self.identities.forget(user)  # a re-created account logs in with its new key
        if old is not None:
            self.log.info("session of {user} replaced by a new login", user=user)
            self._end(old)
            old.sink.close(wire.E_REPLACED, "logged in again from another connection")
        else:
            self._announce(session, True)
        return session

    def start(self, session: Session) -> None:
        """Begin delivery (backlog first) and key-supply hints, after ``logged_in`` went out."""
        self._pump(session)
        for backend in self.config.crypto.backends:
            self.store.count_one_time_prekeys(session.user, backend).addCallbacks(
                self.maybe_low, self._log_failure, (session.user, backend), {}, ("prekey count",)
            )

    def logout(self, session: Session) -> None:
        """The connection of ``session`` is gone; it stays gone even if a pump is running."""
        if self.sessions.get(session.user) is not session:
            session.closed = True
            return
        del self.sessions[session.user]
        self._end(session)
        self._announce(session, False)

    def _end(self, session: Session) -> None:
        session.closed = True
        session.outbox = _NO_ENVELOPES  # a pending flush skips it

    def _announce(self, session: Session, online: bool) -> None:
        """Push a presence change to the online users related to ``session``'s user."""
        msg = wire.Presence(user=session.user, online=online)
        for watcher in self.related_sessions(session):
            watcher.sink.push(msg)

    def related_sessions(self, session: Session) -> list[Session]:
        """Live sessions of the accepted contacts and room co-members of ``session``'s user.

        Presence goes to these under both policies: under ``anyone`` announcing every
        login to every online user would cost O(N) pushes per login, O(N^2) in all;
        ``who`` still lists everyone online there.
        """
        names: set[str] = set(session.contacts)
        names.update(self.directory.co_members(session))
        names.discard(session.user)
        sessions = self.sessions
        return [s for name in names if (s := sessions.get(name)) is not None]

    def who(self, session: Session) -> list[str]:
        """Online users ``session`` may see (its online contacts under ``contacts``)."""
        if self.contacts_only:
            names: Iterable[str] = (c for c in session.contacts if c in self.sessions)
        else:
            names = (u for u in self.sessions if u != session.user)
        return sorted(names)[: wire.MAX_LIST]

    def kick(self, user: str, code: str, reason: str) -> bool:
        """Close ``user``'s live session, if any; True if there was one."""
        session = self.sessions.get(user)
        if session is None:
            return False
        self.logout(session)
        session.sink.close(code, reason)
        return True

    def forget_user(self, user: str) -> None:
        """Drop what the relay remembers about a removed account (its contacts and room
        memberships are already gone from the store)."""
        self._known_users.discard(user)
        self.identities.forget(user)
        self.graph.forget(user)
        self.directory.forget(user)

    def charge(self, session: Session) -> None:
        """Charge one token of the user's send rate for a request that writes to the store
        or costs a bundle; refuse with ``rate-limited`` when there is none left."""
        if not self.limiter.take(session.user, 1):
            wait = self.limiter.wait_time(session.user)
            raise RelayError(wire.E_RATE_LIMITED, "too many requests", wait)

    # -- delivery ------------------------------------------------------------------------
    def _pump(self, session: Session) -> None:
        def failed(failure: Any) -> None:
            # Without its backlog the session would wait forever: make the client reconnect.
            self._log_failure(failure, "backlog delivery")
            if not session.closed:
                self.kick(session.user, wire.E_INTERNAL, "delivery failed; please reconnect")

        Deferred.fromCoroutine(self._drain(session)).addErrback(failed)

    async def _drain(self, session: Session) -> None:
        """Push the stored backlog in bounded batches, then switch to direct pushes."""
        while not session.closed:
            session.dirty = False
            batch = await self.store.pending(session.user, session.cursor, DELIVER_BATCH)
            if session.closed:
                return
            if batch:
                session.cursor = batch[-1].seq
                session.sink.push(wire.Deliver(items=tuple(map(deliver_item, batch))))
                self.metrics.delivered(batch)
                await session.sink.when_writable()
            if len(batch) < DELIVER_BATCH and not session.dirty:
                session.pumping = False
                return

    def _route(self, stored: list[QueuedEnvelope]) -> None:
        """Hand freshly committed envelopes to their recipients' live sessions."""
        for env in stored:
            session = self.sessions.get(env.recipient)
            if session is None:
                continue
            if session.pumping:
                session.dirty = True
            elif env.seq > session.cursor:
                session.cursor = env.seq
                if session.outbox is _NO_ENVELOPES:
                    session.outbox = [env]
                    self._dirty.append(session)
                    if self._flush_call is None:  # one timer per turn for all sessions
                        self._flush_call = self.clock.callLater(0, self._flush)
                else:
                    session.outbox.append(env)

    def _flush(self) -> None:
        """Send what one reactor turn committed, per session in as few frames as possible."""
        self._flush_call = None
        dirty, self._dirty = self._dirty, []
        for session in dirty:
            out, session.outbox = session.outbox, _NO_ENVELOPES  # empty if it closed since
            for i in range(0, len(out), DELIVER_BATCH):
                items = tuple(map(deliver_item, out[i : i + DELIVER_BATCH]))
                session.sink.push(wire.Deliver(items=items))
            self.metrics.delivered(out)

    def ack(self, session: Session, up_to: int) -> None:
        """Delete ``session``'s envelopes up to ``up_to`` (never beyond what it was sent).

        Lazily: the store coalesces acknowledgements into its next group commit, so an ack
        costs no transaction of its own (see :meth:`IStore.acknowledge_later`).
        """
        self.store.acknowledge_later(session.user, min(up_to, session.cursor))

    # -- sending -------------------------------------------------------------------------
    def send(self, session: Session, items: tuple[wire.SendItem, ...]) -> Deferred[list[Any]]:
        """Check, store and route one ``send`` batch; one :class:`wire.SendResult` per item.

        Fires only after the accepted envelopes are committed: accepted means durable.
        The common case (every policy answer cached) runs without a coroutine: the checks
        are synchronous and the store's Deferred is returned with one callback added.
        """
        results: list[Any] = [None] * len(items)
        candidates: list[int] = []
        for i, item in enumerate(items):
            code = self._quick_refusal(session, item)
            if code is None:
                candidates.append(i)
            elif code is _LOOKUP:
                return Deferred.fromCoroutine(self._send_slowly(session, items))
            else:
                results[i] = wire.SendResult(wire.STATUS_ERROR, code)
        candidates = self._rate_limit(session.user, results, candidates)
        if not candidates:
            return succeed(results)
        d = self.store.enqueue(self._envelopes(session, items, candidates))
        d.addCallbacks(
            self._stored,
            self._store_refused,
            callbackArgs=(results, candidates),
            errbackArgs=(session, items, results, candidates),
        )
        return d

    async def _send_slowly(self, session: Session, items: tuple[wire.SendItem, ...]) -> list[Any]:
        """:meth:`send` when some policy answer needs the store."""
        results: list[Any] = [None] * len(items)
        candidates: list[int] = []
        for i, item in enumerate(items):
            code = self._quick_refusal(session, item)
            if code is _LOOKUP:
                code = await self._refusal(session, item)
            if code is None:
                candidates.append(i)
            else:
                results[i] = wire.SendResult(wire.STATUS_ERROR, code)
        candidates = self._rate_limit(session.user, results, candidates)
        return await self._store_rest(session, items, results, candidates)

    def _rate_limit(self, sender: str, results: list[Any], candidates: list[int]) -> list[int]:
        """The candidates the sender's rate allows; the others get ``rate-limited``."""
        if not candidates or self.limiter.take(sender, len(candidates)):
            return candidates
        granted = 0
        while granted < len(candidates) and self.limiter.take(sender, 1):
            granted += 1
        wait = self.limiter.wait_time(sender, 1)
        for i in candidates[granted:]:
            results[i] = wire.SendResult(wire.STATUS_ERROR, wire.E_RATE_LIMITED, wait)
        self.metrics.rate_limited("send", len(candidates) - granted)
        return candidates[:granted]

    @staticmethod
    def _envelopes(
        session: Session, items: tuple[wire.SendItem, ...], candidates: list[int]
    ) -> list[NewEnvelope]:
        """The store's form; a direct envelope to a non-contact is marked ``stranger``
        (the first-contact quota of :mod:`securechat.server.store.quota` applies)."""
        sender, contacts = session.user, session.contacts
        return [
            NewEnvelope(it.to, sender, it.backend, it.mid, it.room, it.payload,
                        it.room is None and it.to != sender and it.to not in contacts)
            for it in (items[i] for i in candidates)
        ]  # fmt: skip

    def _stored(
        self, stored: list[QueuedEnvelope], results: list[Any], candidates: list[int]
    ) -> list[Any]:
        """The accepted envelopes are committed: answer for them and push them."""
        online = self.sessions
        for i, env in zip(candidates, stored, strict=True):
            results[i] = _DELIVERED if env.recipient in online else _QUEUED
        self.metrics.accepted(len(stored))
        self._route(stored)
        return results

    def _store_refused(
        self,
        failure: Failure,
        session: Session,
        items: tuple[wire.SendItem, ...],
        results: list[Any],
        candidates: list[int],
    ) -> Failure | Deferred[list[Any]]:
        """A whole call was refused (queue full, user gone): mark those items, retry the rest."""
        e = failure.value
        if not isinstance(e, QueueFull | NoSuchUser):
            return failure
        rest = self._mark_refused(e, items, results, candidates)
        return Deferred.fromCoroutine(self._store_rest(session, items, results, rest))

    def _mark_refused(
        self,
        e: QueueFull | NoSuchUser,
        items: tuple[wire.SendItem, ...],
        results: list[Any],
        candidates: list[int],
    ) -> list[int]:
        name = str(e.args[0]) if e.args else ""
        code = wire.E_QUEUE_FULL if isinstance(e, QueueFull) else wire.E_NO_SUCH_USER
        if isinstance(e, NoSuchUser):
            self._known_users.discard(name)
        hit = [i for i in candidates if items[i].to == name] or candidates
        for i in hit:
            results[i] = wire.SendResult(wire.STATUS_ERROR, code)
        return [i for i in candidates if i not in hit]

    async def _store_rest(
        self,
        session: Session,
        items: tuple[wire.SendItem, ...],
        results: list[Any],
        candidates: list[int],
    ) -> list[Any]:
        while candidates:
            try:
                stored = await self.store.enqueue(self._envelopes(session, items, candidates))
            except (QueueFull, NoSuchUser) as e:
                candidates = self._mark_refused(e, items, results, candidates)
                continue
            return self._stored(stored, results, candidates)
        return results

    def _quick_refusal(self, session: Session, item: wire.SendItem) -> str | None:
        """The per-item error code, None if policy lets ``item`` through, or ``_LOOKUP``
        when the answer needs the store (unknown recipient, uncached room or contact)."""
        if item.backend not in self._backends:
            return wire.E_BACKEND_NOT_ALLOWED
        if len(item.payload) > self._max_envelope:
            return wire.E_TOO_LARGE
        to = item.to
        if to not in self._known_users:
            return _LOOKUP
        if item.identity is not None:
            current = self.identities.cached(to)
            if current == b"":
                return _LOOKUP
            stale = self.identities.refusal(item.identity, current)
            if stale is not None:
                return stale
        if item.room is not None:
            members = self.directory.cached(item.room)
            if members is None:
                return _LOOKUP
            if session.user not in members or to not in members:
                return wire.E_NOT_A_MEMBER
        elif self.contacts_only and to != session.user and to not in session.contacts:
            return _LOOKUP
        return None

    async def _refusal(self, session: Session, item: wire.SendItem) -> str | None:
        """:meth:`_quick_refusal` with the store lookups (backend and size already passed)."""
        to = item.to
        if to not in self._known_users:
            if await self.store.get_user(to) is None:
                return wire.E_NO_SUCH_USER
            if len(self._known_users) >= KNOWN_USERS_CACHE:
                self._known_users.clear()
            self._known_users.add(to)
        if item.identity is not None:
            current = self.identities.cached(to)
            if current == b"":
                current = await self.identities.lookup(to)
            stale = self.identities.refusal(item.identity, current)
            if stale is not None:
                return stale
        if item.room is not None:
            members = await self.directory.members(item.room)
            if session.user not in members or to not in members:
                return wire.E_NOT_A_MEMBER
        elif self.contacts_only and to != session.user:  # noqa: SIM102
            if not await self.graph.may_contact(session, to):
                return wire.E_NOT_PERMITTED
        return None

    def maybe_low(self, remaining: int, user: str, backend: str) -> None:
        """Ask ``user``'s client for more one-time prekeys once fewer than the backend's
        ``one_time_low`` are left (the client then tops up to its target in one batch)."""
        owner = self.sessions.get(user)
        if owner is not None and remaining < ONE_TIME_LOW.get(backend, PREKEY_LOW_WATERMARK):
            owner.sink.push(wire.PrekeysLow(backend=backend, remaining=remaining))

    def _log_failure(self, failure: Any, what: str) -> None:
        if failure.check(StoreError):
            skipped = self._log_limit.allow(what)
            if skipped is not None:
                self.log.warn("{what} failed: {error} ({skipped} similar failures not logged)",
                              what=what, error=failure.value, skipped=skipped)  # fmt: skip
        else:
            self.log.failure("{what} failed", failure, what=what)
