# -*- test-case-name: tests.server.test_relay -*-
"""What the relay and its directories share about one logged-in connection.

Split from :mod:`securechat.server.relay` so that the directories that own parts of a
session's state (:class:`~securechat.server.contacts.ContactGraph` owns
:attr:`Session.contacts`, :class:`~securechat.server.roomdir.RoomDirectory` owns
:attr:`Session.rooms`) can name these types without importing the relay.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import Interface

from securechat import wire
from securechat.server.store.interface import QueuedEnvelope

NO_NAMES: frozenset[str] = frozenset()
#: Never appended to: a session gets a list of its own when its first envelope waits.
NO_ENVELOPES: list[QueuedEnvelope] = []


class RelayError(Exception):
    """A request was refused; ``code`` is an ``E_*`` string of :mod:`securechat.wire`."""

    def __init__(self, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after


class ISessionSink(Interface):
    """What the relay needs from one authenticated connection."""

    def push(message: wire.Message) -> None:
        """Send ``message`` to the peer (buffered by the connection, never blocking)."""

    def close(code: str, reason: str) -> None:
        """Tell the peer why (a ``bye``) and drop the connection."""

    def when_writable() -> Deferred[None]:
        """Fire once the connection accepts more output (at once if it does now)."""


class Session:
    """Relay-side state of one logged-in connection; small, since 10,000 may be idle."""

    __slots__ = (
        "closed",
        "contacts",
        "cursor",
        "dirty",
        "outbox",
        "pumping",
        "role",
        "rooms",
        "sink",
        "user",
    )

    def __init__(self, user: str, role: str, sink: Any) -> None:
        self.user = user
        self.role = role
        self.sink = sink
        self.cursor = 0
        self.pumping = True
        self.dirty = False
        self.closed = False
        #: Envelopes waiting for the relay's next flush (the shared empty list when none).
        self.outbox: list[QueuedEnvelope] = NO_ENVELOPES
        #: Accepted contacts, written only by the relay's ContactGraph. Immutable and
        #: shared while empty: most of 10,000 idle sessions need no set of their own.
        self.contacts: frozenset[str] = NO_NAMES
        #: Rooms the user is a member of (for presence), written only by the RoomDirectory.
        self.rooms: frozenset[str] = NO_NAMES
