# -*- test-case-name: tests.server.test_relay_social -*-
"""The contact graph: who has accepted whom, as the relay's policy reads it.

:class:`ContactGraph` is the only writer of contact state on the server: the store's
contact rows (through it) and every live session's :attr:`Session.contacts` cache. Each
change goes to the store first, then to the caches, and the other party is told if they
are online, so clients never poll. Logins in flight read their contacts again when a
change touches them (:class:`~securechat.server.social.ChangeCounter`).
"""

from __future__ import annotations

from collections.abc import Mapping

from securechat import wire
from securechat.errors import NoSuchUser
from securechat.server.session import RelayError, Session
from securechat.server.social import ChangeCounter
from securechat.server.store.interface import (
    CONTACT_ACCEPTED,
    CONTACT_PENDING_IN,
    CONTACT_PENDING_OUT,
    IStore,
)

#: The state reported after a removal.
CONTACT_NONE = "none"
_MIRROR = {
    CONTACT_PENDING_OUT: CONTACT_PENDING_IN,
    CONTACT_PENDING_IN: CONTACT_PENDING_OUT,
    CONTACT_ACCEPTED: CONTACT_ACCEPTED,
    CONTACT_NONE: CONTACT_NONE,
}


class ContactGraph:
    """Contact requests, acceptances and removals, and the per-session contact caches.

    :param store: where contacts are durable.
    :param sessions: the relay's live sessions (read only here).
    :param changes: bumped on every change so that logins in flight read again.
    """

    def __init__(
        self, store: IStore, sessions: Mapping[str, Session], changes: ChangeCounter
    ) -> None:
        self._store = store
        self._sessions = sessions
        self._changes = changes

    def load(self, session: Session, contacts: list[tuple[str, str]]) -> None:
        """Fill a new session's cache from the ``(peer, state)`` pairs its login read."""
        accepted = [peer for peer, state in contacts if state == CONTACT_ACCEPTED]
        if accepted:
            session.contacts = frozenset(accepted)

    async def request(self, session: Session, peer: str) -> str:
        """Ask ``peer``; returns the new state (``accepted`` if they had asked first)."""
        if peer == session.user:
            raise RelayError(wire.E_BAD_REQUEST, "you cannot be your own contact")
        try:
            state, changed = await self._store.request_contact(session.user, peer)
        except NoSuchUser:
            raise RelayError(wire.E_NO_SUCH_USER, "no such user") from None
        if changed:  # a repeated request is answered, but nobody is told again
            self._changed(session.user, peer, state)
        return state

    async def accept(self, session: Session, peer: str) -> str:
        """Accept ``peer``'s pending request."""
        if not await self._store.accept_contact(session.user, peer):
            raise RelayError(wire.E_BAD_REQUEST, "there is no pending request from that user")
        self._changed(session.user, peer, CONTACT_ACCEPTED)
        return CONTACT_ACCEPTED

    async def remove(self, session: Session, peer: str) -> str:
        """Remove the relation in both directions (idempotent)."""
        if await self._store.remove_contact(session.user, peer):
            self._changed(session.user, peer, CONTACT_NONE)
        return CONTACT_NONE

    async def listing(self, session: Session) -> tuple[wire.Contact, ...]:
        """The session's contacts and pending requests."""
        pairs = await self._store.list_contacts(session.user)
        return tuple(wire.Contact(peer, state) for peer, state in pairs[: wire.MAX_LIST])

    async def may_contact(self, session: Session, peer: str) -> bool:
        """Accepted contacts only (the store decides on a cache miss)."""
        if peer in session.contacts:
            return True
        if await self._store.are_contacts(session.user, peer):
            session.contacts = session.contacts | {peer}
            return True
        return False

    def forget(self, user: str) -> None:
        """``user``'s account is gone: no live session keeps it as a contact."""
        self._changes.bump(user)
        for s in self._sessions.values():
            if user in s.contacts:
                s.contacts = s.contacts - {user}

    def _changed(self, user: str, peer: str, state: str) -> None:
        """Update caches after ``user``'s relation with ``peer`` became ``state``; tell
        ``peer``."""
        self._changes.bump(user, peer)
        mine = self._sessions.get(user)
        theirs = self._sessions.get(peer)
        for s, other in ((mine, peer), (theirs, user)):
            if s is not None:
                if state == CONTACT_ACCEPTED:
                    s.contacts = s.contacts | {other}
                else:
                    s.contacts = s.contacts - {other}
        if theirs is not None:
            theirs.sink.push(wire.ContactUpdate(user=user, state=_MIRROR[state]))
        if state == CONTACT_ACCEPTED and mine and theirs:
            # Presence goes to related users only: they may not have seen each other yet.
            mine.sink.push(wire.Presence(user=peer, online=True))
            theirs.sink.push(wire.Presence(user=user, online=True))
