"""The wire protocol shared by the server and the client.

Frames are length-prefixed (4-byte big-endian) CBOR maps; see ``docs/protocol.md``.
This is the only module that both ``securechat.server`` and ``securechat.client`` import.

Every message type is one frozen dataclass registered under its ``type`` string; requests
carry an ``id`` that their reply (or ``error``) echoes, pushes carry none. :func:`encode`
and :func:`decode` convert between those classes and CBOR, and :func:`decode` is strict
(see :mod:`securechat.wirecodec`), so the server can answer any malformed frame with a
typed error instead of failing somewhere inside the relay.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import struct
from collections.abc import Callable
from typing import Any

import cbor2

from securechat.wirecodec import *  # noqa: F403  (re-export: limits, codes, items, ProtocolError)
from securechat.wirecodec import (
    E_BAD_FRAME,
    E_BAD_REQUEST,
    E_NOT_A_MAP,
    E_UNKNOWN_TYPE,
    MAX_ID,
    SEND_ITEMS,
    ProtocolError,
    SendResult,
    _decode_fields,
    _deliver_item_map,
    _result_map,
)
from securechat.wiremessages import *  # noqa: F403  (re-export: every message class)
from securechat.wiremessages import _DECODERS, _ENCODERS, Ack, Deliver, Message, Send, SendReply
from securechat.wireroom import *  # noqa: F403  (re-export: room events and their rules)

PROTOCOL_VERSION = 1

#: TLS exporter label (RFC 8446 section 7.5) bound into public-key login signatures, so a
#: signature made on one TLS connection is worthless on any other.
EXPORTER_LABEL = b"EXPORTER-securechat-login"
EXPORTER_LENGTH = 32


def login_signature_payload(user: str, nonce: bytes, exporter: bytes) -> bytes:
    """The bytes a client signs with its Ed25519 identity key to log in.

    Length-prefixing every field keeps the encoding unambiguous; the exporter value ties
    the signature to this TLS connection and the server's nonce makes it single-use.
    """
    name = user.encode("utf-8")
    parts = [b"securechat-login-v1", name, nonce, exporter]
    return b"".join(len(p).to_bytes(2, "big") + p for p in parts)


def identity_digest(identity_key: bytes) -> bytes:
    """SHA-256 of a user's identity key as registered: what a ``send`` item names as the
    key it was encrypted to, so the relay can refuse items for a stale identity."""
    return hashlib.sha256(b"securechat-identity-v1\x00" + identity_key).digest()


def pow_digest(challenge: bytes, user: str, solution: bytes) -> bytes:
    """SHA-256 over the registration challenge, the user name and the client's solution."""
    return hashlib.sha256(
        b"securechat-pow-v1" + challenge + user.encode("utf-8") + b"\0" + solution
    ).digest()


def pow_valid(challenge: bytes, user: str, solution: bytes, bits: int) -> bool:
    """True when the digest starts with ``bits`` zero bits (hashcash-style)."""
    if bits <= 0:
        return True
    value = int.from_bytes(pow_digest(challenge, user, solution), "big")
    return value >> (256 - bits) == 0


def pow_solve(challenge: bytes, user: str, bits: int) -> bytes:
    """Find a solution by counting; about ``2**bits`` hashes on average."""
    counter = 0
    while True:
        solution = counter.to_bytes(8, "big")
        if pow_valid(challenge, user, solution, bits):
            return solution
        counter += 1


def constant_time_equal(a: bytes, b: bytes) -> bool:
    """Compare secrets without leaking where they differ."""
    return hmac.compare_digest(a, b)


# -- codec -----------------------------------------------------------------------------------
def _reject_tag(*_: object) -> Any:
    raise cbor2.CBORDecodeError("CBOR tags are not used by this protocol")


_REJECT_TAGS = {tag: _reject_tag for tag in (*range(0, 300), 55799)}
_HEADER = struct.Struct(">I")


def encode(msg: Message) -> bytes:
    """The CBOR body of ``msg`` (without the length prefix the framing adds)."""
    fast = _FAST_ENCODERS.get(type(msg))
    if fast is not None:
        return fast(msg)
    return _encode_generic(msg)


def _encode_generic(msg: Message) -> bytes:
    m: dict[str, Any] = {"type": msg.TYPE}
    for name, enc in _ENCODERS[type(msg)]:
        v = getattr(msg, name)
        if v is not None:
            m[name] = v if enc is None else enc(v)
    return cbor2.dumps(m)


# -- hot-path encoders: the same bytes as _encode_generic, built with fewer containers -----
def _array_head(n: int) -> bytes:
    if n < 24:
        return bytes((0x80 + n,))
    if n < 256:
        return bytes((0x98, n))
    return b"\x99" + n.to_bytes(2, "big")  # MAX_BATCH keeps arrays below 65536


_SEND_REPLY_HEAD = b"\xa3" + b"".join(map(cbor2.dumps, ("type", "send_reply", "id")))
_RESULTS_KEY = cbor2.dumps("results")
_DELIVER_HEAD = b"\xa2" + b"".join(map(cbor2.dumps, ("type", "deliver", "items")))
#: Encoded results without ``retry_after`` (a handful of status/code pairs).
_RESULT_BYTES: dict[SendResult, bytes] = {}


def _encode_send_reply(msg: SendReply) -> bytes:
    parts = [_SEND_REPLY_HEAD, cbor2.dumps(msg.id), _RESULTS_KEY, _array_head(len(msg.results))]
    for r in msg.results:
        b = _RESULT_BYTES.get(r)
        if b is None:
            b = cbor2.dumps(_result_map(r))
            if r.retry_after is None and len(_RESULT_BYTES) < 64:
                _RESULT_BYTES[r] = b
        parts.append(b)
    return b"".join(parts)


def _encode_deliver(msg: Deliver) -> bytes:
    return _DELIVER_HEAD + cbor2.dumps([_deliver_item_map(i) for i in msg.items])


_FAST_ENCODERS: dict[type[Any], Callable[[Any], bytes]] = {
    SendReply: _encode_send_reply,
    Deliver: _encode_deliver,
}


def encode_frame(msg: Message) -> bytes:
    """``msg`` with its 4-byte big-endian length prefix, as it travels on the wire."""
    body = encode(msg)
    return _HEADER.pack(len(body)) + body


def decode(frame: bytes) -> Message:
    """Parse one frame body strictly.

    :raises ProtocolError: ``bad-frame`` when the bytes are not exactly one CBOR item
        (the connection should then be closed), otherwise a code naming what is wrong,
        with the request id when it could be read.
    """
    fp = io.BytesIO(frame)
    try:
        m = cbor2.CBORDecoder(
            fp,
            max_depth=8,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            strict_hashable_types=True,
            tag_hook=_reject_tag,
            semantic_decoders=_REJECT_TAGS,
        ).decode()
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, LookupError) as e:
        raise ProtocolError(E_BAD_FRAME, f"frame is not valid CBOR ({type(e).__name__})") from None
    if fp.tell() != len(frame):
        raise ProtocolError(E_BAD_FRAME, "trailing bytes after the CBOR item")
    if type(m) is not dict:
        raise ProtocolError(E_NOT_A_MAP, "a frame must be a CBOR map")
    rid = m.get("id")
    if type(rid) is not int or not 0 <= rid <= MAX_ID:
        rid = None
    t = m.get("type")
    if type(t) is not str:
        raise ProtocolError(E_BAD_REQUEST, "field 'type' must be a text string", rid)
    entry = _DECODERS.get(t)
    if entry is None:
        raise ProtocolError(E_UNKNOWN_TYPE, f"unknown message type {t[:64]!r}", rid)
    if len(m) == 3 and t == "send" and rid is not None:
        items = m.get("items")
        if items is not None:  # exactly type, id, items: the hot path
            return Send(id=rid, items=SEND_ITEMS(items, "items", rid))
    elif len(m) == 2 and t == "ack":
        up_to = m.get("up_to")
        if type(up_to) is int and 0 <= up_to <= MAX_ID:
            return Ack(up_to=up_to)
    cls, spec = entry
    return cls(**_decode_fields(spec, m, rid, 1))
