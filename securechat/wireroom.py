# -*- test-case-name: tests.test_wireroom -*-
"""Room events: the signed membership changes both sides read, and the rules they obey.

Import these from :mod:`securechat.wire`. A room's membership is a chain of events, each
signed by the acting member's Ed25519 identity key (the client checks signatures; the
relay, which never imports cryptography, checks only the rules below as a second line).
An event names the previous event's hash and carries the room's next sequence number,
so a reordered, replayed or forked event does not fit the chain and is refused.

Encoding. A signed event is the CBOR map ``{"body": bytes, "sig": bytes}``; ``body`` is
the deterministic CBOR (RFC 8949 section 4.2) of the map described by
:class:`RoomEvent`. The signature is over :data:`SIGNATURE_CONTEXT` followed by
``body``; the event hash (the next event's ``prev``) is SHA-256 over
:data:`HASH_CONTEXT` followed by ``body``. See ``docs/protocol.md``, "Rooms".
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from typing import Annotated, Any

import cbor2

from securechat.wirecodec import (
    COUNT,
    MAX_NAME,
    MAX_ROOM_EVENT_BYTES,
    NAME,
    ROOM_EVENT,
    ROOM_EVENTS,
    ROOM_INFOS,
    RoomInfo,
)
from securechat.wiremessages import I, Message, _message

__all__ = [
    "ACTIONS",
    "CREATE",
    "DEMOTE",
    "GENESIS",
    "INVITE",
    "JOIN",
    "LEAVE",
    "MAX_ROOM_EVENT",
    "PROMOTE",
    "REMOVE",
    "ROOM_EVENT_VERSION",
    "RoomEvent",
    "RoomEventError",
    "RoomEventPush",
    "RoomEvents",
    "RoomList",
    "RoomPost",
    "RoomSync",
    "Rooms",
    "Roster",
    "SignedRoomEvent",
    "decode_room_event",
    "event_hash",
    "signed_payload",
]  # fmt: skip

ROOM_EVENT_VERSION = 1
SIGNATURE_CONTEXT = b"securechat-room-event-v1\0"
HASH_CONTEXT = b"securechat-room-event-hash-v1\0"
#: The ``prev`` of a room's first event.
GENESIS = bytes(32)
#: Largest signed event accepted (a body is well under 300 bytes).
MAX_ROOM_EVENT = MAX_ROOM_EVENT_BYTES
IDENTITY_KEY_BYTES = 32
SIGNATURE_BYTES = 64
MAX_SEQ = (1 << 53) - 1

CREATE = "create"  #: actor creates the room and becomes its owner and first admin
INVITE = "invite"  #: a member invites ``target`` (whose identity key is ``key``)
JOIN = "join"  #: ``actor`` accepts an invitation (or joins an open room) with ``key``
LEAVE = "leave"  #: a member leaves
REMOVE = "remove"  #: an admin removes a member or withdraws an invitation
PROMOTE = "promote"  #: the owner makes a member an admin
DEMOTE = "demote"  #: the owner takes the admin role back
ACTIONS = (CREATE, INVITE, JOIN, LEAVE, REMOVE, PROMOTE, DEMOTE)
#: Actions whose ``key`` field is required (the key they bring into the room).
_KEYED = (CREATE, INVITE, JOIN)
#: Actions about someone else (the others have ``target == actor``).
_TARGETED = (INVITE, REMOVE, PROMOTE, DEMOTE)


class RoomEventError(ValueError):
    """An event does not fit the room's chain or rules; the text says why."""


@dataclass(frozen=True, slots=True)
class RoomEvent:
    """One decoded membership change (the signed ``body``)."""

    room: str
    seq: int
    prev: bytes
    actor: str
    action: str
    target: str
    time: float
    key: bytes | None = None
    open: bool = False

    def to_body(self) -> bytes:
        """Deterministic CBOR of the fields (``key``/``open`` only where they apply)."""
        m: dict[str, Any] = {
            "v": ROOM_EVENT_VERSION,
            "room": self.room,
            "seq": self.seq,
            "prev": self.prev,
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "time": self.time,
        }
        if self.key is not None:
            m["key"] = self.key
        if self.action == CREATE:
            m["open"] = self.open
        return cbor2.dumps(m, canonical=True)


@dataclass(frozen=True, slots=True)
class SignedRoomEvent:
    """An event as it travels: the body, its signature, and the decoded fields."""

    body: bytes
    sig: bytes
    event: RoomEvent

    @property
    def blob(self) -> bytes:
        return cbor2.dumps({"body": self.body, "sig": self.sig}, canonical=True)

    @property
    def hash(self) -> bytes:
        return event_hash(self.body)


def event_hash(body: bytes) -> bytes:
    """The value the next event names as ``prev``."""
    return hashlib.sha256(HASH_CONTEXT + body).digest()


def signed_payload(body: bytes) -> bytes:
    """What the actor's identity key signs."""
    return SIGNATURE_CONTEXT + body


def _strict_load(data: bytes) -> Any:
    fp = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(
            fp, max_depth=2, allow_indefinite=False, allow_duplicate_keys=False
        ).decode()
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, LookupError) as e:
        raise RoomEventError(f"not valid CBOR ({type(e).__name__})") from None
    if fp.tell() != len(data):
        raise RoomEventError("trailing bytes")
    return value


def _name(m: dict[str, Any], key: str) -> str:
    v = m.get(key)
    if type(v) is not str or not 0 < len(v) <= MAX_NAME:
        raise RoomEventError(f"field {key!r} must be a name")
    return v


def decode_room_event(blob: bytes) -> SignedRoomEvent:
    """Parse a signed event strictly (no signature check: that needs the actor's key).

    :raises RoomEventError: malformed, oversized, or not canonically encoded.
    """
    if type(blob) is not bytes or len(blob) > MAX_ROOM_EVENT:
        raise RoomEventError(f"a room event is at most {MAX_ROOM_EVENT} bytes")
    outer = _strict_load(blob)
    if type(outer) is not dict or set(outer) != {"body", "sig"}:
        raise RoomEventError("a room event is a map of 'body' and 'sig'")
    body, sig = outer["body"], outer["sig"]
    if type(body) is not bytes or type(sig) is not bytes or len(sig) != SIGNATURE_BYTES:
        raise RoomEventError("'body' must be bytes and 'sig' 64 bytes")
    m = _strict_load(body)
    if type(m) is not dict:
        raise RoomEventError("the body must be a map")
    if m.get("v") != ROOM_EVENT_VERSION:
        raise RoomEventError("unknown room event version")
    action = m.get("action")
    if action not in ACTIONS:
        raise RoomEventError("unknown action")
    seq, prev, time = m.get("seq"), m.get("prev"), m.get("time")
    if type(seq) is not int or not 1 <= seq <= MAX_SEQ:
        raise RoomEventError("field 'seq' must be a positive integer")
    if type(prev) is not bytes or len(prev) != 32:
        raise RoomEventError("field 'prev' must be 32 bytes")
    if type(time) is not float or not time >= 0:
        raise RoomEventError("field 'time' must be a non-negative float")
    key = m.get("key")
    if action in _KEYED:
        if type(key) is not bytes or len(key) != IDENTITY_KEY_BYTES:
            raise RoomEventError(f"a {action} event names a 32-byte identity key")
    elif "key" in m:
        raise RoomEventError(f"a {action} event has no key")
    is_open = m.get("open", False)
    if type(is_open) is not bool or (action != CREATE and "open" in m):
        raise RoomEventError("only a create event says whether the room is open")
    ev = RoomEvent(
        room=_name(m, "room"), seq=seq, prev=prev, actor=_name(m, "actor"), action=action,
        target=_name(m, "target"), time=time, key=key, open=is_open,
    )  # fmt: skip
    if len(m) != 8 + ("key" in m) + ("open" in m):
        raise RoomEventError("unexpected field in a room event")
    if ev.to_body() != body:
        raise RoomEventError("the body is not canonically encoded")
    return SignedRoomEvent(body, sig, ev)


@dataclass
class Roster:
    """A room's membership as a chain of events has built it.

    Both sides apply the same :meth:`check`: clients on events whose signatures they
    verified, the relay on what its users post. ``members`` and ``invited`` map names to
    the identity key the chain admitted them with.
    """

    room: str
    seq: int = 0
    head: bytes = GENESIS
    owner: str | None = None
    open: bool = False
    members: dict[str, bytes] = field(default_factory=dict)
    invited: dict[str, bytes] = field(default_factory=dict)
    admins: set[str] = field(default_factory=set)

    def fits(self, signed: SignedRoomEvent) -> None:
        """The event is the next link of this chain.

        :raises RoomEventError: another room, a replayed or reordered event (its ``seq``
            is not the next one, or it names another previous event).
        """
        ev = signed.event
        if ev.room != self.room:
            raise RoomEventError(f"the event is for {ev.room}, not {self.room}")
        if ev.seq <= self.seq:
            raise RoomEventError(f"event {ev.seq} of {self.room} is a replay (at {self.seq})")
        if ev.seq != self.seq + 1:
            raise RoomEventError(f"event {ev.seq} of {self.room} is out of order (at {self.seq})")
        if ev.prev != self.head:
            raise RoomEventError(f"event {ev.seq} of {self.room} does not follow the chain")

    def signer_key(self, ev: RoomEvent) -> bytes | None:
        """The identity key that must have signed ``ev`` (None: nobody may act so)."""
        if ev.action == CREATE or (ev.action == JOIN and ev.actor not in self.members):
            return ev.key if ev.actor == ev.target else None
        return self.members.get(ev.actor)

    def check(self, ev: RoomEvent) -> None:
        """The rules of who may do what.

        :raises RoomEventError: the actor may not make this change.
        """
        a, t = ev.actor, ev.target
        if ev.action not in _TARGETED and t != a:
            raise RoomEventError(f"a {ev.action} event is about its actor")
        if ev.action == CREATE:
            if self.seq != 0:
                raise RoomEventError(f"{self.room} already exists")
            return
        if self.seq == 0:
            raise RoomEventError(f"{self.room} has not been created")
        if ev.action == JOIN:
            if a in self.members:
                raise RoomEventError(f"{a} is already in {self.room}")
            invited = self.invited.get(a)
            if invited is None and not self.open:
                raise RoomEventError(f"{a} was not invited to {self.room}")
            if invited is not None and invited != ev.key:
                raise RoomEventError(f"{a} joins {self.room} with another key than invited")
            return
        if a not in self.members:
            raise RoomEventError(f"{a} is not a member of {self.room}")
        if ev.action == INVITE:
            if t in self.members:
                raise RoomEventError(f"{t} is already in {self.room}")
        elif ev.action == REMOVE:
            if a not in self.admins:
                raise RoomEventError(f"{a} is not an admin of {self.room}")
            if t == self.owner or (t in self.admins and a != self.owner):
                raise RoomEventError(f"{a} may not remove {t} from {self.room}")
        elif ev.action in (PROMOTE, DEMOTE):
            if a != self.owner:
                raise RoomEventError(f"only the owner of {self.room} changes its admins")
            if t not in self.members or t == self.owner:
                raise RoomEventError(f"{t} cannot be made or unmade an admin of {self.room}")

    def apply(self, signed: SignedRoomEvent) -> None:
        """Advance the chain by one event already checked with :meth:`fits`/:meth:`check`."""
        ev = signed.event
        a, t = ev.actor, ev.target
        if ev.action == CREATE:
            assert ev.key is not None
            self.owner, self.open = a, ev.open
            self.members[a] = ev.key
            self.admins.add(a)
        elif ev.action == INVITE:
            assert ev.key is not None
            self.invited[t] = ev.key
        elif ev.action == JOIN:
            assert ev.key is not None
            self.invited.pop(a, None)
            self.members[a] = ev.key
        elif ev.action in (LEAVE, REMOVE):
            self.members.pop(t, None)
            self.invited.pop(t, None)
            self.admins.discard(t)
            if t == self.owner:
                self.owner = None
        elif ev.action == PROMOTE:
            self.admins.add(t)
        else:
            self.admins.discard(t)
        self.seq, self.head = ev.seq, signed.hash

    def to_map(self) -> dict[str, Any]:
        """A CBOR-friendly copy (the client keeps it in its encrypted keystore)."""
        return {
            "room": self.room, "seq": self.seq, "head": self.head, "owner": self.owner,
            "open": self.open, "members": dict(self.members), "invited": dict(self.invited),
            "admins": sorted(self.admins),
        }  # fmt: skip

    @classmethod
    def from_map(cls, m: dict[str, Any]) -> Roster:
        return cls(
            room=m["room"], seq=m["seq"], head=m["head"], owner=m["owner"], open=m["open"],
            members=dict(m["members"]), invited=dict(m["invited"]), admins=set(m["admins"]),
        )  # fmt: skip


# -- the wire messages that carry room events (registered with the others) -------------
@_message("room_post")
class RoomPost(Message):
    """Post a signed room event (create, invite, join, leave, remove, promote, demote);
    answered by :class:`Ok` once it is durable and forwarded, or by ``conflict`` when it
    does not follow the room's latest event."""

    id: I
    room: Annotated[str, NAME]
    event: Annotated[bytes, ROOM_EVENT]


@_message("room_sync")
class RoomSync(Message):
    """Ask for ``room``'s events after sequence number ``after`` (members, invitees, and
    anyone for an open room); answered by :class:`RoomEvents`."""

    id: I
    room: Annotated[str, NAME]
    after: Annotated[int, COUNT]


@_message("room_events")
class RoomEvents(Message):
    """Signed events in order, at most ``MAX_ROOM_EVENTS``; fewer means there are no
    more (an empty list for a room that does not exist)."""

    id: I
    room: Annotated[str, NAME]
    events: Annotated[tuple[bytes, ...], ROOM_EVENTS]


@_message("room_event")
class RoomEventPush(Message):
    """Push: a new event of a room you are in or invited to (or removed from)."""

    room: Annotated[str, NAME]
    event: Annotated[bytes, ROOM_EVENT]


@_message("room_list")
class RoomList(Message):
    """Ask which rooms you are in or invited to; answered by :class:`Rooms`."""

    id: I


@_message("rooms")
class Rooms(Message):
    """Reply to :class:`RoomList`."""

    id: I
    rooms: Annotated[tuple[RoomInfo, ...], ROOM_INFOS]
