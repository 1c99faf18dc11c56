"""Field checks and hot-path codecs behind :mod:`securechat.wire`.

Split out of ``wire.py`` only to keep modules small; import the public names from
``securechat.wire``, which re-exports them.

Decoding is strict, because the server must answer every malformed input with a typed
error rather than an exception deep inside the relay: missing, extra, ill-typed or
oversized fields all raise :class:`ProtocolError`. Per-field checks are compiled once from
``Annotated`` metadata; the hot-path items (:class:`SendItem`, :class:`DeliverItem`,
:class:`SendResult`) are NamedTuples with hand-written codecs, since a frozen dataclass
costs several times more to build and a ``send`` frame may carry hundreds of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Annotated, Any, NamedTuple, TypeVar, get_type_hints

from securechat.errors import SecureChatError

LOGIN_NONCE_BYTES = 32
POW_CHALLENGE_BYTES = 32

# -- limits the decoder enforces (policy limits such as the envelope size live in config) --
MAX_NAME = 64  #: user and room names, backend names
MAX_TEXT = 1024  #: passwords, error messages, agent strings
MAX_KEY = 16 * 1024  #: identity keys, prekey blobs, signatures
MAX_ONE_TIME = 1000  #: one-time prekeys in one publish
MAX_BATCH = 1024  #: envelopes in one send or deliver frame
MAX_LIST = 100_000  #: names in a reply list (who, members, contacts, users)
MAX_ROOM_EVENT_BYTES = 1024  #: one signed room event
MAX_ROOM_EVENTS = 256  #: room events in one ``room_events`` reply
MAX_PAYLOAD = 64 << 20  #: absolute cap; the frame limit and [policy] are tighter
MESSAGE_ID_BYTES = 16
IDENTITY_DIGEST_BYTES = 32  #: SHA-256, see :func:`securechat.wire.identity_digest`
MAX_ID = (1 << 63) - 1

# -- error codes (the ``code`` of an ``error`` reply or a ``bye`` push) --------------------
E_BAD_FRAME = "bad-frame"  # not CBOR, or trailing bytes: the connection is closed
E_NOT_A_MAP = "not-a-map"
E_UNKNOWN_TYPE = "unknown-type"
E_BAD_REQUEST = "bad-request"  # missing, extra or ill-typed field
E_TOO_LARGE = "too-large"  # a value over a wire limit, or an envelope over [policy]
E_UNSUPPORTED_VERSION = "unsupported-version"
E_NOT_AUTHENTICATED = "not-authenticated"
E_ALREADY_AUTHENTICATED = "already-authenticated"
E_AUTH_FAILED = "auth-failed"
E_THROTTLED = "throttled"
E_BAD_PROOF_OF_WORK = "bad-proof-of-work"
E_METHOD_NOT_ALLOWED = "method-not-allowed"
E_NOT_PERMITTED = "not-permitted"
E_BACKEND_NOT_ALLOWED = "backend-not-allowed"
E_NO_SUCH_USER = "no-such-user"
E_NO_BUNDLE = "no-bundle"
E_QUEUE_FULL = "queue-full"
E_RATE_LIMITED = "rate-limited"
E_NOT_A_MEMBER = "not-a-member"
E_ROOM_FULL = "room-full"
E_CONFLICT = "conflict"  # a room event does not follow the room's latest: sync, then retry
E_BAD_NAME = "bad-name"
E_USER_EXISTS = "user-exists"
E_NOT_ONLINE = "not-online"
E_STALE_IDENTITY = "stale-identity"  # the send item names a key the recipient no longer has
E_UNAVAILABLE = "unavailable"  # the store failed (locked, disk full): retry after retry_after
E_INTERNAL = "internal-error"
# bye codes
E_REPLACED = "replaced"
E_KICKED = "kicked"
E_REMOVED = "removed"
E_IDLE_TIMEOUT = "idle-timeout"
E_HANDSHAKE_TIMEOUT = "handshake-timeout"
E_SLOW_READER = "slow-reader"

STATUS_DELIVERED = "delivered"  #: pushed to the recipient's live connection (and stored)
STATUS_QUEUED = "queued"  #: stored; the recipient is offline
STATUS_ERROR = "error"  #: refused; ``code`` says why


class ProtocolError(SecureChatError):
    """The peer sent something the protocol does not allow.

    :ivar code: one of the ``E_*`` strings, sent back in the ``error`` reply.
    :ivar request_id: the ``id`` of the offending request when it could be read, so
        the peer can match the error to its request.
    """

    def __init__(self, code: str, message: str, request_id: int | None = None) -> None:
        # The message goes back in an ``error`` frame whose text field is bounded by
        # MAX_TEXT: cut it here, once, so no caller can make the reply undecodable.
        if len(message) > MAX_TEXT:
            message = message[: MAX_TEXT - 3] + "..."
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


_Check = Callable[[Any, str, "int | None"], Any]


def _bad(field: str, what: str, rid: int | None) -> ProtocolError:
    return ProtocolError(E_BAD_REQUEST, f"field {field!r} {what}", rid)


def _str(max_len: int, min_len: int = 1) -> _Check:
    def check(v: Any, f: str, rid: int | None) -> str:
        if type(v) is not str:
            raise _bad(f, "must be a text string", rid)
        if len(v) > max_len:
            raise ProtocolError(E_TOO_LARGE, f"field {f!r} longer than {max_len}", rid)
        if len(v) < min_len:
            raise _bad(f, "must not be empty", rid)
        return v

    return check


def _bytes(max_len: int, exact: int | None = None) -> _Check:
    def check(v: Any, f: str, rid: int | None) -> bytes:
        if type(v) is not bytes:
            raise _bad(f, "must be a byte string", rid)
        if len(v) > max_len:
            raise ProtocolError(E_TOO_LARGE, f"field {f!r} longer than {max_len}", rid)
        if exact is not None and len(v) != exact:
            raise _bad(f, f"must be {exact} bytes", rid)
        return v

    return check


def _int(lo: int = 0, hi: int = MAX_ID) -> _Check:
    def check(v: Any, f: str, rid: int | None) -> int:
        if type(v) is not int or not lo <= v <= hi:
            raise _bad(f, f"must be an integer in [{lo}, {hi}]", rid)
        return v

    return check


def _bool(v: Any, f: str, rid: int | None) -> bool:
    if type(v) is not bool:
        raise _bad(f, "must be a boolean", rid)
    return v


def _float(v: Any, f: str, rid: int | None) -> float:
    if type(v) not in (int, float) or v != v or v < 0:
        raise _bad(f, "must be a non-negative number", rid)
    return float(v)


def _list(item: _Check, max_items: int) -> _Check:
    def check(v: Any, f: str, rid: int | None) -> tuple[Any, ...]:
        if type(v) is not list:
            raise _bad(f, "must be an array", rid)
        if len(v) > max_items:
            raise ProtocolError(E_TOO_LARGE, f"field {f!r} has more than {max_items} items", rid)
        return tuple([item(x, f, rid) for x in v])

    return check


NAME = _str(MAX_NAME)
TEXT = _str(MAX_TEXT, 0)
SECRET = _str(MAX_TEXT)
KEY = _bytes(MAX_KEY)
ID = _int()
COUNT = _int(0, (1 << 32) - 1)
NAMES = _list(NAME, MAX_LIST)

_Spec = tuple[tuple[str, _Check, bool], ...]
_N = TypeVar("_N", bound=tuple[Any, ...])
_RECORDS: dict[type[Any], _Spec] = {}


def _spec_of(cls: type[Any], optional: set[str]) -> _Spec:
    """Compile the ``Annotated`` checks of ``cls`` once, at import time."""
    hints = get_type_hints(cls, include_extras=True)
    names = cls._fields if hasattr(cls, "_fields") else [f.name for f in fields(cls)]
    return tuple((n, hints[n].__metadata__[0], n in optional) for n in names)


def _decode_fields(spec: _Spec, m: dict[Any, Any], rid: int | None, seen: int) -> dict[str, Any]:
    """Check every field of one map against ``spec``; ``seen`` counts keys already used."""
    out: dict[str, Any] = {}
    for name, check, optional in spec:
        v = m.get(name)
        if v is None:
            if name in m:
                seen += 1
            if not optional:
                raise _bad(name, "is missing", rid)
            continue
        out[name] = check(v, name, rid)
        seen += 1
    if len(m) != seen:
        known = {n for n, _, _ in spec} | {"type"}
        # Name at most three of them, shortened: the reply must not echo the peer's bytes.
        extra = sorted(repr(k)[:64] for k in m if k not in known)
        more = f" and {len(extra) - 3} more" if len(extra) > 3 else ""
        raise ProtocolError(E_BAD_REQUEST, f"unexpected field {', '.join(extra[:3])}{more}", rid)
    return out


def _record(cls: type[_N]) -> _Check:
    """A check that decodes a map into the NamedTuple ``cls`` (optional fields default)."""
    spec = _spec_of(cls, set(cls._field_defaults))  # type: ignore[attr-defined]

    def check(v: Any, f: str, rid: int | None) -> _N:
        if type(v) is not dict:
            raise _bad(f, "must contain maps", rid)
        return cls(**_decode_fields(spec, v, rid, 0))

    _RECORDS[cls] = spec
    return check


def _record_to_map(item: tuple[Any, ...]) -> dict[str, Any]:
    spec = _RECORDS[type(item)]
    return {n: v for (n, _, _), v in zip(spec, item, strict=True) if v is not None}


# -- hot-path items --------------------------------------------------------------------------
class SendItem(NamedTuple):
    """One envelope a client hands to the relay; ``payload`` is opaque ciphertext."""

    to: str
    backend: str
    mid: bytes
    payload: bytes
    room: str | None = None
    #: :func:`securechat.wire.identity_digest` of the recipient identity key the envelope
    #: was encrypted to; the relay refuses the item (``stale-identity``) if that is no
    #: longer the recipient's key. Optional for older clients.
    identity: bytes | None = None


class DeliverItem(NamedTuple):
    """One envelope the relay pushes; ``sender`` is stamped from the authenticated session."""

    seq: int
    sender: str
    backend: str
    mid: bytes
    time: float
    payload: bytes
    room: str | None = None


class SendResult(NamedTuple):
    """The fate of one :class:`SendItem`, in the same position as the item."""

    status: str
    code: str | None = None
    retry_after: float | None = None


def _send_item(v: Any, rid: int | None) -> SendItem:
    if type(v) is not dict:
        raise _bad("items", "must contain maps", rid)
    try:
        to, backend, mid, payload = v["to"], v["backend"], v["mid"], v["payload"]
    except KeyError as e:
        raise _bad(str(e.args[0]), "is missing", rid) from None
    room = v.get("room")
    identity = v.get("identity")
    if len(v) != 4 + ("room" in v) + ("identity" in v):
        raise ProtocolError(E_BAD_REQUEST, "unexpected field in send item", rid)
    if type(to) is not str or type(backend) is not str or not 0 < len(to) <= MAX_NAME:
        raise _bad("to", "must be a user name", rid)
    if not 0 < len(backend) <= MAX_NAME:
        raise _bad("backend", "must be a backend name", rid)
    if type(mid) is not bytes or len(mid) != MESSAGE_ID_BYTES:
        raise _bad("mid", f"must be {MESSAGE_ID_BYTES} bytes", rid)
    if type(payload) is not bytes:
        raise _bad("payload", "must be a byte string", rid)
    if room is not None and (type(room) is not str or not 0 < len(room) <= MAX_NAME):
        raise _bad("room", "must be a room name", rid)
    if identity is not None and (
        type(identity) is not bytes or len(identity) != IDENTITY_DIGEST_BYTES
    ):
        raise _bad("identity", f"must be {IDENTITY_DIGEST_BYTES} bytes", rid)
    return SendItem(to, backend, mid, payload, room, identity)


def _deliver_item(v: Any, rid: int | None) -> DeliverItem:
    if type(v) is not dict:
        raise _bad("items", "must contain maps", rid)
    try:
        seq, sender, backend, mid = v["seq"], v["from"], v["backend"], v["mid"]
        t, payload = v["time"], v["payload"]
    except KeyError as e:
        raise _bad(str(e.args[0]), "is missing", rid) from None
    room = v.get("room")
    if len(v) != (7 if "room" in v else 6):
        raise ProtocolError(E_BAD_REQUEST, "unexpected field in deliver item", rid)
    if type(seq) is not int or type(sender) is not str or type(backend) is not str:
        raise _bad("seq", "or 'from' or 'backend' has the wrong type", rid)
    if type(mid) is not bytes or type(payload) is not bytes or type(t) not in (int, float):
        raise _bad("mid", "or 'payload' or 'time' has the wrong type", rid)
    if room is not None and type(room) is not str:
        raise _bad("room", "must be a text string", rid)
    return DeliverItem(seq, sender, backend, mid, float(t), payload, room)


def _send_result(v: Any, rid: int | None) -> SendResult:
    if type(v) is not dict or type(v.get("status")) is not str:
        raise _bad("results", "must contain maps with a status", rid)
    return SendResult(**_decode_fields(_RESULT_SPEC, v, rid, 0))


def _items(decode_one: Callable[[Any, int | None], _N]) -> _Check:
    def check(v: Any, f: str, rid: int | None) -> tuple[_N, ...]:
        if type(v) is not list:
            raise _bad(f, "must be an array", rid)
        if len(v) > MAX_BATCH:
            raise ProtocolError(E_TOO_LARGE, f"more than {MAX_BATCH} items", rid)
        return tuple([decode_one(x, rid) for x in v])

    return check


def _send_item_map(i: SendItem) -> dict[str, Any]:
    m = {"to": i.to, "backend": i.backend, "mid": i.mid, "payload": i.payload}
    if i.room is not None:
        m["room"] = i.room
    if i.identity is not None:
        m["identity"] = i.identity
    return m


def _deliver_item_map(i: DeliverItem) -> dict[str, Any]:
    m = {"seq": i.seq, "from": i.sender, "backend": i.backend, "mid": i.mid, "time": i.time}
    m["payload"] = i.payload
    if i.room is not None:
        m["room"] = i.room
    return m


def _result_map(r: SendResult) -> dict[str, Any]:
    if r.code is None:
        return {"status": r.status}
    m: dict[str, Any] = {"status": r.status, "code": r.code}
    if r.retry_after is not None:
        m["retry_after"] = r.retry_after
    return m


_RESULT_SPEC: _Spec = (
    ("status", NAME, False),
    ("code", NAME, True),
    ("retry_after", _float, True),
)


# -- nested records --------------------------------------------------------------------------
class OneTimePrekey(NamedTuple):
    """A one-time prekey blob with the owner's id for it."""

    key_id: Annotated[int, COUNT]
    key: Annotated[bytes, KEY]


class Contact(NamedTuple):
    """A contact and its state (``pending-out``, ``pending-in``, ``accepted``)."""

    user: Annotated[str, NAME]
    state: Annotated[str, NAME]


class UserInfo(NamedTuple):
    """A registered user as the admin sees it."""

    user: Annotated[str, NAME]
    role: Annotated[str, NAME]
    online: Annotated[bool, _bool]


class RoomInfo(NamedTuple):
    """A room the user is in (``member``) or invited to (``invited``), and its last event."""

    room: Annotated[str, NAME]
    state: Annotated[str, NAME]
    head: Annotated[int, COUNT]


# -- composite field checks and their encoders ----------------------------------------------
ROOM_EVENT = _bytes(MAX_ROOM_EVENT_BYTES)
ROOM_EVENTS = _list(ROOM_EVENT, MAX_ROOM_EVENTS)
ROOM_INFOS = _list(_record(RoomInfo), MAX_LIST)
ONE_TIME = _list(_record(OneTimePrekey), MAX_ONE_TIME)
CONTACTS = _list(_record(Contact), MAX_LIST)
USERS = _list(_record(UserInfo), MAX_LIST)
SEND_ITEMS = _items(_send_item)
DELIVER_ITEMS = _items(_deliver_item)
RESULTS = _items(_send_result)
NONCE = _bytes(LOGIN_NONCE_BYTES, LOGIN_NONCE_BYTES)
CHALLENGE = _bytes(POW_CHALLENGE_BYTES, POW_CHALLENGE_BYTES)
FLOAT = _float
BOOL = _bool

#: How to turn a decoded field value back into CBOR-ready data, for fields that hold
#: records; every other field is encoded as it is.
FIELD_ENCODERS: dict[_Check, Callable[[Any], Any]] = {
    ONE_TIME: lambda v: [_record_to_map(x) for x in v],
    CONTACTS: lambda v: [_record_to_map(x) for x in v],
    USERS: lambda v: [_record_to_map(x) for x in v],
    ROOM_INFOS: lambda v: [_record_to_map(x) for x in v],
    ROOM_EVENTS: list,
    SEND_ITEMS: lambda v: [_send_item_map(x) for x in v],
    DELIVER_ITEMS: lambda v: [_deliver_item_map(x) for x in v],
    RESULTS: lambda v: [_result_map(x) for x in v],
}
