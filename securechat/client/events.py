"""What the client core tells the user: typed events, rendered by each front end on its own.

The core (:mod:`securechat.client.chat` and its helpers) never formats text for a terminal:
it emits one of these frozen dataclasses. The JSON renderer turns an event into the object
scripts rely on (:meth:`Event.to_json`: the same keys as before events were typed, ``text``
included, so ``--json`` stays backward compatible); the line console and the terminal
console draw the same event their own way (:mod:`securechat.client.render`).

Field names are Python names; the JSON name differs only where noted in ``metadata``
(``sender`` is ``"from"``). ``None`` fields are left out of the JSON object.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Protocol


def _json_name(name: str) -> dict[str, str]:
    return {"json": name}


@dataclass(frozen=True)
class Event:
    """Base class: ``kind`` is the JSON ``type``."""

    kind: ClassVar[str] = "info"

    @property
    def text(self) -> str:
        """A one-line summary for people; also the JSON ``text`` field."""
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        """The JSON object for this event, without ``type`` and ``time`` unless set."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.metadata.get("json", f.name)] = value
        if "text" not in out:
            out["text"] = self.text
        return out


class EventSink(Protocol):
    """Where the core sends its events (a renderer)."""

    def show(self, event: Event) -> None:
        """Render one event."""


# -- generic notices -------------------------------------------------------------------
@dataclass(frozen=True)
class Info(Event):
    """A plain notice (``/chat`` target, ``/backend`` answer, a trust change...)."""

    kind: ClassVar[str] = "info"
    message: str = field(default="", metadata=_json_name("text"))
    user: str | None = None
    to: str | None = None
    room: str | None = None
    backend: str | None = None
    allowed: list[str] | None = None
    verified: bool | None = None
    #: Only for ``/user add``: the new account's one-time password, for the admin.
    password: str | None = None

    @property
    def text(self) -> str:
        return self.message


@dataclass(frozen=True)
class Warning(Event):  # the JSON type is "warning" (shadows the builtin here only)
    """Something the user should notice; nothing was refused."""

    kind: ClassVar[str] = "warning"
    message: str = field(default="", metadata=_json_name("text"))
    code: str | None = None
    sender: str | None = field(default=None, metadata=_json_name("from"))
    to: str | None = None
    missing: int | None = None

    @property
    def text(self) -> str:
        return self.message


@dataclass(frozen=True)
class Error(Event):
    """A command, a line or a message was refused; ``command`` names what it answers."""

    kind: ClassVar[str] = "error"
    message: str = field(default="", metadata=_json_name("text"))
    code: str | None = None
    command: str | None = None
    status: str | None = None
    to: str | None = None
    id: str | None = None
    room: str | None = None
    peer: str | None = None

    @property
    def text(self) -> str:
        return self.message


# -- connection ------------------------------------------------------------------------
@dataclass(frozen=True)
class Status(Event):
    """Connection state: ``connected`` (with user and role) or ``disconnected``."""

    kind: ClassVar[str] = "status"
    state: str = "connected"
    user: str | None = None
    role: str | None = None

    @property
    def text(self) -> str:
        if self.state == "connected":
            return f"logged in as {self.user} ({self.role})"
        return "disconnected; reconnecting"


# -- messages ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Message(Event):
    """A decrypted message from ``sender`` (to us, or to ``room``)."""

    kind: ClassVar[str] = "message"
    sender: str = field(default="", metadata=_json_name("from"))
    to: str | None = None
    body: str = field(default="", metadata=_json_name("text"))
    time: float | None = None
    id: str | None = None
    room: str | None = None
    verified: bool = False
    #: ``verified``, ``pinned`` or ``changed`` (see :mod:`securechat.client.trustmark`).
    trust: str | None = None

    @property
    def text(self) -> str:
        return self.body


@dataclass(frozen=True)
class Sent(Event):
    """A message's progress: ``queued`` (kept in the outbox), ``delivered`` (the relay handed
    it over), ``stored`` (the relay keeps it for an offline peer)."""

    kind: ClassVar[str] = "sent"
    to: str = ""
    id: str = ""
    status: str = ""
    peer: str | None = None
    room: str | None = None
    #: A room message (one event for all its envelopes): who it was encrypted to, and each
    #: one's status (``status`` is ``mixed`` when they differ).
    recipients: list[str] | None = None
    statuses: dict[str, str] | None = None

    @property
    def text(self) -> str:
        if self.recipients is None:
            return f"-> {self.to}: {self.status}"
        if self.status == "mixed" and self.statuses:
            each = ", ".join(f"{u}: {s}" for u, s in sorted(self.statuses.items()))
            return f"-> {self.to} ({each})"
        return f"-> {self.to} ({', '.join(self.recipients)}): {self.status}"

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        del out["text"]  # the --json "sent" event never had one
        return out


@dataclass(frozen=True)
class Receipt(Event):
    """The peer's client answered for a message: ``received`` (decrypted and stored) or
    ``failed`` (could not decrypt; ``reason`` says what happens next)."""

    kind: ClassVar[str] = "receipt"
    to: str = ""
    id: str = ""
    status: str = ""
    peer: str | None = field(default=None, metadata=_json_name("from"))
    room: str | None = None
    reason: str | None = None

    @property
    def text(self) -> str:
        if self.status == "received":
            return f"-> {self.to}: received by {self.peer}"
        return f"-> {self.to}: {self.peer} could not decrypt it ({self.reason})"


@dataclass(frozen=True)
class Presence(Event):
    kind: ClassVar[str] = "presence"
    user: str = ""
    online: bool = False

    @property
    def text(self) -> str:
        return f"{self.user} is {'online' if self.online else 'offline'}"

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        del out["text"]
        return out


@dataclass(frozen=True)
class Verify(Event):
    """``/verify``: the safety number for the key to compare, and the pinned key if the
    relay now serves another one."""

    kind: ClassVar[str] = "verify"
    user: str = ""
    safety_number: str = ""
    fingerprint: str = ""
    own_fingerprint: str = ""
    verified: bool = False
    pinned_fingerprint: str | None = None
    served_fingerprint: str | None = None

    @property
    def text(self) -> str:
        return f"safety number with {self.user}: {self.safety_number}"

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        del out["text"]
        return out


# -- directory answers -----------------------------------------------------------------
@dataclass(frozen=True)
class Who(Event):
    kind: ClassVar[str] = "who"
    users: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "online: " + (", ".join(self.users) or "nobody")


@dataclass(frozen=True)
class Contact(Event):
    kind: ClassVar[str] = "contact"
    user: str = ""
    state: str = ""

    @property
    def text(self) -> str:
        return f"{self.user}: contact {self.state}"


@dataclass(frozen=True)
class Contacts(Event):
    kind: ClassVar[str] = "contacts"
    contacts: list[dict[str, str]] = field(default_factory=list)

    @property
    def text(self) -> str:
        return ", ".join(f"{c['user']} ({c['state']})" for c in self.contacts) or "no contacts"


@dataclass(frozen=True)
class Room(Event):
    """A verified room event (``action``: create, invite, join, leave, remove, promote,
    demote) by ``by`` about ``user``, with the verified members after it."""

    kind: ClassVar[str] = "room"
    room: str = ""
    action: str = ""
    message: str = field(default="", metadata=_json_name("text"))
    by: str | None = None
    user: str | None = None
    seq: int | None = None
    members: list[str] | None = None

    @property
    def text(self) -> str:
        return self.message


@dataclass(frozen=True)
class Members(Event):
    """``/members``: the roster verified from signed events."""

    kind: ClassVar[str] = "members"
    room: str = ""
    members: list[str] = field(default_factory=list)
    admins: list[str] = field(default_factory=list)
    invited: list[str] = field(default_factory=list)
    owner: str | None = None
    open: bool = False

    @property
    def text(self) -> str:
        names = ", ".join(f"{u}{'*' if u in self.admins else ''}" for u in self.members)
        more = f"; invited: {', '.join(self.invited)}" if self.invited else ""
        return f"{self.room} (verified; * admin): {names}{more}"


@dataclass(frozen=True)
class RoomWarning(Event):
    """Something about a room the user should notice: the relay's member list differs from
    the verified one (``extra``, ``missing``), or a room event was refused."""

    kind: ClassVar[str] = "warning"
    message: str = field(default="", metadata=_json_name("text"))
    room: str = ""
    extra: list[str] | None = None
    missing: list[str] | None = None
    to: str | None = None
    sender: str | None = field(default=None, metadata=_json_name("from"))

    @property
    def text(self) -> str:
        return self.message


@dataclass(frozen=True)
class Users(Event):
    kind: ClassVar[str] = "users"
    users: list[dict[str, Any]] = field(default_factory=list)

    @property
    def text(self) -> str:
        names = ", ".join(f"{u['user']}{'*' if u['online'] else ''}" for u in self.users)
        return f"users (* online): {names}"


@dataclass(frozen=True)
class History(Event):
    """``/history``: the last messages of a conversation kept in the keystore, oldest
    first (each ``{time, direction, from, text, id}``), and how many are kept in all."""

    kind: ClassVar[str] = "history"
    conversation: str = field(default="", metadata=_json_name("with"))
    messages: list[dict[str, Any]] = field(default_factory=list)
    kept: int = 0

    @property
    def text(self) -> str:
        if not self.messages:
            return f"no history with {self.conversation}"
        return f"history with {self.conversation} (last {len(self.messages)} of {self.kept}):"
