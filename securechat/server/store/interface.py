"""What the relay needs from storage, independent of the database behind it.

Every method returns a Deferred so that an implementation may run its queries on a
thread pool (SQLite through adbapi now, PostgreSQL later) without the relay changing.
The relay never blocks the reactor on disk.

Envelopes are opaque bytes to the store, exactly as they are to the relay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

ROLE_ADMIN = "admin"
ROLE_USER = "user"

CONTACT_PENDING_OUT = "pending-out"  # I asked them
CONTACT_PENDING_IN = "pending-in"  # they asked me
CONTACT_ACCEPTED = "accepted"
ROOM_MEMBER = "member"
ROOM_INVITED = "invited"


@dataclass(frozen=True)
class UserRecord:
    """A registered account. ``password_hash`` is a PHC-style string, never a password."""

    name: str
    role: str
    password_hash: str | None
    identity_key: bytes | None
    created: float


@dataclass(frozen=True)
class PrekeyBundle:
    """What a peer needs to start a session with ``user`` over ``backend``.

    ``signed_prekey`` is the client's opaque, signed blob; the relay does not parse it.
    ``one_time_prekey`` is ``None`` when the user has none left.
    """

    user: str
    backend: str
    identity_key: bytes
    signed_prekey: bytes
    one_time_prekey_id: int | None
    one_time_prekey: bytes | None


class ContactChange(NamedTuple):
    """The outcome of a contact request: the requester's state, and whether it changed
    (a repeated request changes nothing, and nobody is told again)."""

    state: str
    changed: bool


class QueuedEnvelope(NamedTuple):
    """An envelope waiting for its recipient.

    ``seq`` increases strictly per recipient in acceptance order; acknowledgements are
    cumulative over it.
    """

    seq: int
    recipient: str
    sender: str
    backend: str
    message_id: bytes
    room: str | None
    accepted_at: float
    payload: bytes


class NewEnvelope(NamedTuple):
    """An envelope the relay has accepted and asks the store to make durable.

    ``stranger``: the sender is not an accepted contact of the recipient (and this is
    not a room envelope), so the smaller first-contact quota applies
    (:mod:`securechat.server.store.quota`).
    """

    recipient: str
    sender: str
    backend: str
    message_id: bytes
    room: str | None
    payload: bytes
    stranger: bool = False


class IStore(Interface):
    """Durable state of the relay: users, keys, contacts, rooms and the offline queue."""

    queue_limit = Attribute("Maximum number of queued envelopes per recipient.")

    def start() -> Deferred[None]:
        """Open the database, creating or migrating the schema."""

    def stop() -> Deferred[None]:
        """Flush pending commits and close the database."""

    # -- users -----------------------------------------------------------------
    def add_user(
        name: str, role: str, password_hash: str | None, identity_key: bytes | None
    ) -> Deferred[UserRecord]:
        """Create a user; errback with ``UserExists`` if the name is taken."""

    def get_user(name: str) -> Deferred[UserRecord | None]:
        """Look up one user."""

    def list_users() -> Deferred[list[UserRecord]]:
        """All users, ordered by name."""

    def remove_user(name: str) -> Deferred[bool]:
        """Delete a user with their keys, contacts, memberships and queue."""

    def set_identity_key(name: str, identity_key: bytes) -> Deferred[None]:
        """Record the user's public identity key (publickey login, key directory)."""

    def set_password_hash(name: str, password_hash: str) -> Deferred[None]:
        """Replace the user's password hash (a password change); errback ``NoSuchUser``."""

    # -- prekeys ---------------------------------------------------------------
    def publish_prekeys(
        user: str,
        backend: str,
        signed_prekey: bytes | None,
        one_time_prekeys: list[tuple[int, bytes]],
        max_one_time: int | None = None,
    ) -> Deferred[int]:
        """Replace the signed prekey (if given) and add one-time prekeys.

        Returns how many one-time prekeys the user now has for ``backend``. If that would
        be more than ``max_one_time``, nothing is stored and it fails with
        :class:`securechat.errors.TooManyPrekeys`.
        """

    def fetch_bundle(
        user: str, backend: str, take_one_time: bool = True
    ) -> Deferred[PrekeyBundle | None]:
        """Return a bundle, removing the one-time prekey it hands out (each is given once);
        without one when ``take_one_time`` is False."""

    def count_one_time_prekeys(user: str, backend: str) -> Deferred[int]:
        """How many one-time prekeys are left."""

    # -- contacts --------------------------------------------------------------
    def request_contact(user: str, peer: str) -> Deferred[ContactChange]:
        """Record a request from ``user`` to ``peer``; returns the resulting state for
        ``user`` and whether the request changed anything.

        If ``peer`` had already asked ``user``, both become ``accepted``.
        """

    def accept_contact(user: str, peer: str) -> Deferred[bool]:
        """Accept ``peer``'s pending request; False if there was none."""

    def remove_contact(user: str, peer: str) -> Deferred[bool]:
        """Remove the contact (or request) in both directions."""

    def add_contact(a: str, b: str) -> Deferred[None]:
        """Make ``a`` and ``b`` accepted contacts at once (admin)."""

    def list_contacts(user: str) -> Deferred[list[tuple[str, str]]]:
        """``(peer, state)`` pairs for ``user``."""

    def are_contacts(a: str, b: str) -> Deferred[bool]:
        """True when ``a`` and ``b`` are accepted contacts."""

    # -- rooms -----------------------------------------------------------------
    def post_room_event(
        room: str, seq: int, event: bytes, changes: list[tuple[str, str | None]]
    ) -> Deferred[None]:
        """Append ``event`` as ``room``'s event ``seq`` and apply ``changes`` (user, then
        ``member``, ``invited`` or None for gone) in one transaction; event 1 creates the
        room, and a room left without members is deleted with its events.

        :raises RoomConflict: ``seq`` is not one more than the room's last event.
        :raises NoSuchUser: a user given a state does not exist.
        """

    def room_events(room: str, after: int, limit: int) -> Deferred[list[tuple[int, bytes]]]:
        """Up to ``limit`` (seq, event) of ``room`` after ``after``, in order."""

    def room_roster(room: str) -> Deferred[list[tuple[str, str]]]:
        """(user, ``member`` or ``invited``) of ``room`` ordered by name."""

    def room_members(room: str) -> Deferred[list[str]]:
        """Members of ``room`` ordered by name (empty if there is no such room)."""

    def user_rooms(user: str) -> Deferred[list[str]]:
        """Rooms ``user`` is a member of."""

    def user_room_states(user: str) -> Deferred[list[tuple[str, str, int]]]:
        """(room, ``member`` or ``invited``, last event seq) for ``user``, by room."""

    # -- offline queue (accepted means durable) --------------------------------
    def enqueue(envelopes: list[NewEnvelope]) -> Deferred[list[QueuedEnvelope]]:
        """Make ``envelopes`` durable; fires only after the transaction has committed.

        Concurrent calls are grouped into one transaction (group commit). The result
        lists the stored envelopes in the same order. If a recipient's queue is full
        the whole call errbacks with ``QueueFull`` and nothing of it is stored; the same
        when a quota of :mod:`securechat.server.store.quota` would be exceeded. When the
        disk is almost full it errbacks with ``StoreUnavailable`` (nothing stored).
        """

    def pending(recipient: str, after_seq: int, limit: int) -> Deferred[list[QueuedEnvelope]]:
        """Envelopes for ``recipient`` with ``seq > after_seq``, oldest first, leaving out
        those past the TTL (never delivered, even before :meth:`expire` deletes them)."""

    def acknowledge(recipient: str, up_to_seq: int) -> Deferred[int]:
        """Delete every envelope of ``recipient`` with ``seq <= up_to_seq``; returns how many."""

    def acknowledge_later(recipient: str, up_to_seq: int) -> None:
        """Like :meth:`acknowledge`, but lazily: the deletion may be coalesced with later
        writes (the SQLite store applies it in the next group-commit transaction).

        From the call on, :meth:`pending` and :meth:`queue_length` leave those envelopes
        out. A crash before the deletion is written only makes them come again at the next
        login, which clients drop as duplicates; it never loses an envelope.
        """

    def queue_length(recipient: str) -> Deferred[int]:
        """How many envelopes wait for ``recipient``."""

    def expire(now: float) -> Deferred[int]:
        """Delete envelopes older than the TTL; returns how many."""

    # -- operations --------------------------------------------------------------
    def ping() -> Deferred[None]:
        """Fire when the database answers a read; errback if it does not (``/healthz``)."""

    def queue_stats() -> Deferred[tuple[int, int, float | None]]:
        """``(envelopes, payload bytes, oldest accepted_at or None)`` of the whole queue."""
