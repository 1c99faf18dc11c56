"""The message classes of the wire protocol, one frozen dataclass per ``type``.

Import them from :mod:`securechat.wire`; they live here only to keep modules small.
``docs/protocol.md`` documents every class; the field annotations carry the decoder's
checks (``Annotated[type, check]``), so the documentation of limits and the code that
enforces them cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Annotated, Any, ClassVar, TypeVar, dataclass_transform

from securechat.wirecodec import (
    BOOL,
    CHALLENGE,
    CONTACTS,
    COUNT,
    DELIVER_ITEMS,
    FIELD_ENCODERS,
    FLOAT,
    ID,
    KEY,
    NAME,
    NAMES,
    NONCE,
    ONE_TIME,
    RESULTS,
    SECRET,
    SEND_ITEMS,
    TEXT,
    USERS,
    Contact,
    DeliverItem,
    OneTimePrekey,
    SendItem,
    SendResult,
    UserInfo,
    _Spec,
    _spec_of,
)


# -- message classes -------------------------------------------------------------------------
class Message:
    """Base of every message; ``TYPE`` is the value of the frame's ``type`` key."""

    __slots__ = ()
    TYPE: ClassVar[str] = ""


_M = TypeVar("_M", bound=Message)
_DECODERS: dict[str, tuple[type[Message], _Spec]] = {}
_ENCODERS: dict[type[Message], tuple[tuple[str, Callable[[Any], Any] | None], ...]] = {}
#: Every message class in registration order (docs and tests enumerate it).
MESSAGE_TYPES: list[type[Message]] = []


@dataclass_transform(frozen_default=True, kw_only_default=True)
def _message(name: str) -> Callable[[type[_M]], type[_M]]:
    """Make ``cls`` a frozen, keyword-only dataclass registered as the type ``name``.

    The field checks are compiled here, once, so decoding does no reflection.
    """

    def register(plain: type[_M]) -> type[_M]:
        cls = dataclass(frozen=True, slots=True, kw_only=True)(plain)
        cls.TYPE = name
        optional = {f.name for f in fields(cls) if f.default is None}  # type: ignore[arg-type]
        spec = _spec_of(cls, optional)
        _DECODERS[name] = (cls, spec)
        _ENCODERS[cls] = tuple((n, FIELD_ENCODERS.get(check)) for n, check, _ in spec)
        MESSAGE_TYPES.append(cls)
        return cls

    return register


I = Annotated[int, ID]  # noqa: E741
Name = Annotated[str, NAME]
OptName = Annotated[str | None, NAME]
Key = Annotated[bytes, KEY]
OptKey = Annotated[bytes | None, KEY]
Names = Annotated[tuple[str, ...], NAMES]


# connection
@_message("hello")
class Hello(Message):
    """Client's first request: its protocol version; answered by :class:`Welcome`."""

    id: I
    version: Annotated[int, COUNT]
    agent: Annotated[str | None, TEXT] = None


@_message("welcome")
class Welcome(Message):
    """The server's policy, so the client can adapt before it sends anything else."""

    id: I
    version: Annotated[int, COUNT]
    server: Annotated[str, TEXT]
    backends: Names
    default_backend: Name
    auth_methods: Names
    registration: Annotated[bool, BOOL]
    pow_bits: Annotated[int, COUNT]
    messaging: Name
    max_frame_bytes: Annotated[int, COUNT]
    max_envelope_bytes: Annotated[int, COUNT]
    max_batch: Annotated[int, COUNT]
    max_room_members: Annotated[int, COUNT]


@_message("ping")
class Ping(Message):
    """Keep-alive request; also resets the idle timer."""

    id: I


@_message("pong")
class Pong(Message):
    """Reply to :class:`Ping`."""

    id: I


@_message("ok")
class Ok(Message):
    """Success reply for requests that return nothing else."""

    id: I


@_message("error")
class Error(Message):
    """Typed failure; ``id`` is the failed request's, absent when it could not be read."""

    code: Name
    message: Annotated[str, TEXT]
    id: Annotated[int | None, ID] = None
    retry_after: Annotated[float | None, FLOAT] = None


@_message("bye")
class Bye(Message):
    """Push sent just before the server closes the connection, saying why."""

    code: Name
    message: Annotated[str, TEXT]


# registration and login
@_message("pow_challenge")
class PowChallenge(Message):
    """Ask for a registration proof-of-work challenge."""

    id: I


@_message("pow_challenge_reply")
class PowChallengeReply(Message):
    """A fresh challenge and the number of leading zero bits the solution needs."""

    id: I
    challenge: Annotated[bytes, CHALLENGE]
    bits: Annotated[int, COUNT]


@_message("register")
class Register(Message):
    """Create an account; the proof of work is needed when ``pow_bits`` > 0."""

    id: I
    user: Name
    password: Annotated[str | None, SECRET] = None
    identity_key: OptKey = None
    pow_challenge: Annotated[bytes | None, CHALLENGE] = None
    pow_solution: Annotated[bytes | None, KEY] = None


@_message("registered")
class Registered(Message):
    """Reply to :class:`Register`; the client logs in next."""

    id: I
    user: Name


@_message("login_password")
class LoginPassword(Message):
    """Log in with a password; after :class:`PowRequired`, again with the solved challenge."""

    id: I
    user: Name
    password: Annotated[str, SECRET]
    pow_challenge: Annotated[bytes | None, CHALLENGE] = None
    pow_solution: Annotated[bytes | None, KEY] = None


@_message("pow_required")
class PowRequired(Message):
    """Reply to :class:`LoginPassword`: first solve ``challenge`` (``bits``, with the user)."""

    id: I
    challenge: Annotated[bytes, CHALLENGE]
    bits: Annotated[int, COUNT]


@_message("login_challenge")
class LoginChallenge(Message):
    """Ask for a single-use nonce for :class:`LoginPublicKey`."""

    id: I


@_message("login_nonce")
class LoginNonce(Message):
    """A fresh random nonce, valid once, on this connection only."""

    id: I
    nonce: Annotated[bytes, NONCE]


@_message("login_publickey")
class LoginPublicKey(Message):
    """Ed25519 signature over :func:`login_signature_payload` (user, nonce, TLS exporter)."""

    id: I
    user: Name
    nonce: Annotated[bytes, NONCE]
    signature: Key


@_message("login_certificate")
class LoginCertificate(Message):
    """Log in as the CN of the verified TLS client certificate."""

    id: I


@_message("logged_in")
class LoggedIn(Message):
    """Successful login; ``role`` is ``admin`` or ``user``."""

    id: I
    user: Name
    role: Name


@_message("change_password")
class ChangePassword(Message):
    """Replace the logged-in account's password with ``new`` (answered by :class:`Ok`);
    ``old`` must be the current one. Clients send derived login secrets in both fields
    except once, when a legacy account moves from its password to the derived secret."""

    id: I
    old: Annotated[str, SECRET]
    new: Annotated[str, SECRET]


# key directory
@_message("publish_prekeys")
class PublishPrekeys(Message):
    """Upload a signed prekey and/or one-time prekeys for one backend."""

    id: I
    backend: Name
    one_time: Annotated[tuple[OneTimePrekey, ...], ONE_TIME]
    signed_prekey: OptKey = None
    identity_key: OptKey = None


@_message("prekeys_stored")
class PrekeysStored(Message):
    """Reply to :class:`PublishPrekeys` with the number of one-time prekeys left."""

    id: I
    backend: Name
    one_time_count: Annotated[int, COUNT]


@_message("prekeys_low")
class PrekeysLow(Message):
    """Push: few one-time prekeys are left for ``backend``; please publish more."""

    backend: Name
    remaining: Annotated[int, COUNT]


@_message("fetch_bundle")
class FetchBundle(Message):
    """Ask for ``user``'s prekey bundle to start a session over ``backend``."""

    id: I
    user: Name
    backend: Name


@_message("bundle")
class Bundle(Message):
    """A prekey bundle; the one-time prekey, if any, is never handed out again."""

    id: I
    user: Name
    backend: Name
    identity_key: Key
    signed_prekey: Key
    one_time_id: Annotated[int | None, COUNT] = None
    one_time_key: OptKey = None


# envelopes
@_message("send")
class Send(Message):
    """A batch of envelopes; answered by :class:`SendReply` once they are durable."""

    id: I
    items: Annotated[tuple[SendItem, ...], SEND_ITEMS]


@_message("send_reply")
class SendReply(Message):
    """One :class:`SendResult` per item of the :class:`Send`, in the same order."""

    id: I
    results: Annotated[tuple[SendResult, ...], RESULTS]


@_message("deliver")
class Deliver(Message):
    """Push: envelopes for this user, in ``seq`` order."""

    items: Annotated[tuple[DeliverItem, ...], DELIVER_ITEMS]


@_message("ack")
class Ack(Message):
    """Cumulative acknowledgement: everything up to ``up_to`` may be deleted. No reply."""

    up_to: I


# presence and contacts
@_message("presence")
class Presence(Message):
    """Push: ``user`` came online or went offline."""

    user: Name
    online: Annotated[bool, BOOL]


@_message("who")
class Who(Message):
    """Ask who is online (only contacts under the ``contacts`` policy)."""

    id: I


@_message("online")
class Online(Message):
    """Reply to :class:`Who`."""

    id: I
    users: Names


@_message("contact_request")
class ContactRequest(Message):
    """Ask ``user`` to become a contact (accepts at once if they asked first)."""

    id: I
    user: Name


@_message("contact_accept")
class ContactAccept(Message):
    """Accept ``user``'s pending request."""

    id: I
    user: Name


@_message("contact_remove")
class ContactRemove(Message):
    """Remove a contact or a request, in both directions."""

    id: I
    user: Name


@_message("contact_state")
class ContactState(Message):
    """Reply to a contact change: the new state (``none`` after a removal)."""

    id: I
    user: Name
    state: Name


@_message("contact_update")
class ContactUpdate(Message):
    """Push: another user changed the contact relation with you."""

    user: Name
    state: Name


@_message("contact_list")
class ContactList(Message):
    """Ask for your contacts and pending requests."""

    id: I


@_message("contacts")
class Contacts(Message):
    """Reply to :class:`ContactList`."""

    id: I
    contacts: Annotated[tuple[Contact, ...], CONTACTS]


# rooms
@_message("room_members")
class RoomMembers(Message):
    """Ask for the members of a room you are in."""

    id: I
    room: Name


@_message("room")
class Room(Message):
    """A room and its members as the relay sees them (clients encrypt only to the
    members they verified from signed events, and warn when this list differs)."""

    id: I
    room: Name
    members: Names


@_message("room_update")
class RoomUpdate(Message):
    """Push to members: ``user`` joined or left ``room``."""

    room: Name
    user: Name
    joined: Annotated[bool, BOOL]


# administration (role admin only)
@_message("admin_list")
class AdminList(Message):
    """List every registered user with role and whether they are connected."""

    id: I


@_message("admin_users")
class AdminUsers(Message):
    """Reply to :class:`AdminList`."""

    id: I
    users: Annotated[tuple[UserInfo, ...], USERS]


@_message("admin_add_user")
class AdminAddUser(Message):
    """Create an account (role ``user`` or ``admin``)."""

    id: I
    user: Name
    role: Name
    password: Annotated[str | None, SECRET] = None


@_message("admin_remove_user")
class AdminRemoveUser(Message):
    """Delete an account, disconnecting it if online."""

    id: I
    user: Name


@_message("admin_kick")
class AdminKick(Message):
    """Disconnect a user's live session."""

    id: I
    user: Name
