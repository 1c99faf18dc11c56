"""The envelope header: deterministic CBOR encoding and strict decoding.

``header`` is a CBOR map in RFC 8949 section 4.2.1 deterministic encoding (``cbor2`` with
``canonical=True``), and decoding refuses any other encoding of the same map: one message has
exactly one valid byte string, so the bytes the AEAD authenticates are the bytes the code reads.
Keys and meaning:

====== ======= ===========================================================================
key    type    meaning
====== ======= ===========================================================================
v      uint    protocol version (2: handshake v2, message-id-keyed AEAD)
be     text    backend, ``name:params`` of the KEM (e.g. ``ecdh:x25519``)
from   text    sender user name
to     text    recipient user name
rp     bytes   sender's current ratchet public key (Double Ratchet ``HEADER.dh``)
ct     bytes   KEM encapsulation that opened this sending chain (empty for chain 0)
pn     uint    length of the sender's previous sending chain (``PN``)
n      uint    message number in this chain (``N``)
id     bytes   16 random bytes, the message id used for de-duplication and acks
ts     uint    sender's clock, milliseconds since the Unix epoch
room   text    optional: the room the message was posted to
hs     bytes   optional: the handshake message, repeated until the peer has answered
====== ======= ===========================================================================

Decoding checks presence, key order, types and bounds of every field, then re-encodes to
reject non-minimal integers, indefinite lengths, duplicate keys and trailing bytes.
:class:`HeaderEncoder` is the sending path's fast encoder (cached per chain).
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

import cbor2

from securechat.crypto.errors import MalformedEnvelope
from securechat.crypto.kem import IKem

__all__ = [
    "MAX_HEADER",
    "MESSAGE_ID_SIZE",
    "PROTOCOL_VERSION",
    "Header",
    "HeaderDecoder",
    "HeaderEncoder",
    "backend_id",
    "check_fields",
    "decode_header",
    "encode_header",
    "encode_header_fields",
]

PROTOCOL_VERSION: Final = 2
MESSAGE_ID_SIZE: Final = 16
MAX_HEADER: Final = 16384
_MAX_NAME: Final = 256
_MAX_KEY: Final = 2048
_MAX_HANDSHAKE: Final = 8192
_MAX_COUNTER: Final = 2**32 - 1
_MAX_TIMESTAMP: Final = 2**63 - 1
#: The key orders a header may have: RFC 8949 section 4.2.1 order (length, then bytewise),
#: with and without the optional ``hs`` and ``room``.
_KEY_ORDERS: Final = frozenset(
    tuple(
        k
        for k in ("n", "v", "be", "ct", "hs", "id", "pn", "rp", "to", "ts", "from", "room")
        if k not in omit
    )
    for omit in ((), ("hs",), ("room",), ("hs", "room"))
)


def backend_id(kem: IKem) -> str:
    """The ``be`` value naming a KEM and its parameters, e.g. ``"ecdh:x25519"``."""
    return f"{kem.name}:{kem.params}"


class Header(NamedTuple):
    """The authenticated, cleartext header of one envelope (see the module docstring).

    A named tuple rather than a frozen dataclass: equally immutable, and several times cheaper
    to build, which matters on the per-message path.
    """

    backend: str
    sender: str
    recipient: str
    ratchet_pub: bytes
    kem_ct: bytes
    pn: int
    n: int
    message_id: bytes
    timestamp: int
    room: str | None = None
    handshake: bytes | None = None
    version: int = PROTOCOL_VERSION


def encode_header(header: Header) -> bytes:
    """Deterministic CBOR (RFC 8949 section 4.2.1) of ``header``, validated first."""
    return encode_header_fields(*header)


def encode_header_fields(
    backend: str,
    sender: str,
    recipient: str,
    ratchet_pub: bytes,
    kem_ct: bytes,
    pn: int,
    n: int,
    message_id: bytes,
    timestamp: int,
    room: str | None = None,
    handshake: bytes | None = None,
    version: int = PROTOCOL_VERSION,
) -> bytes:
    """:func:`encode_header` without building a :class:`Header` first (the sending path).

    The map is built in deterministic key order (shorter keys first, then bytewise), and
    ``cbor2`` always writes minimal-length integers and definite lengths, so the plain encoder
    produces exactly what ``canonical=True`` would, without its sorting cost (a test checks
    the two agree).
    """
    fields: dict[str, Any] = {"n": n, "v": version, "be": backend, "ct": kem_ct}
    if handshake is not None:
        fields["hs"] = handshake
    fields["id"] = message_id
    fields["pn"] = pn
    fields["rp"] = ratchet_pub
    fields["to"] = recipient
    fields["ts"] = timestamp
    fields["from"] = sender
    if room is not None:
        fields["room"] = room
    check_fields(fields)
    data: bytes = cbor2.dumps(fields)
    if len(data) > MAX_HEADER:
        raise MalformedEnvelope("header too large")
    return data


def _head(major: int, value: int) -> bytes:
    """A CBOR initial byte and argument in its shortest form (RFC 8949 sections 3 and 4.2.1)."""
    if value < 24:
        return bytes((major << 5 | value,))
    if value < 0x100:
        return bytes((major << 5 | 24, value))
    if value < 0x10000:
        return bytes((major << 5 | 25,)) + value.to_bytes(2, "big")
    if value < 0x100000000:
        return bytes((major << 5 | 26,)) + value.to_bytes(4, "big")
    return bytes((major << 5 | 27,)) + value.to_bytes(8, "big")


def _text(value: str) -> bytes:
    raw = value.encode("utf-8")
    return _head(3, len(raw)) + raw


class HeaderEncoder:
    """Encodes the headers of one sending chain by splicing per-message fields into cached bytes.

    Within a chain only ``n``, ``id``, ``ts`` and ``room`` change, yet the ratchet key, the
    encapsulation and the handshake (hundreds of bytes for RSA and DH) make up most of the
    header. Deterministic CBOR of a map is the concatenation of its key/value encodings in a
    fixed order, so those fields are encoded and validated once per chain. The output is byte
    for byte that of :func:`encode_header` (a test checks it).
    """

    __slots__ = ("_after_id", "_after_n", "_after_ts", "key")

    def __init__(
        self,
        backend: str,
        sender: str,
        recipient: str,
        ratchet_pub: bytes,
        kem_ct: bytes,
        pn: int,
        handshake: bytes | None,
    ) -> None:
        #: The arguments, so a caller can tell whether this encoder still fits its chain.
        self.key = (backend, sender, recipient, ratchet_pub, kem_ct, pn, handshake)
        # Validate the constant fields once, with placeholders for the variable ones.
        encode_header_fields(
            backend, sender, recipient, ratchet_pub, kem_ct, pn, 0, bytes(16), 0, None, handshake
        )
        hs = b"" if handshake is None else b"\x62hs" + _head(2, len(handshake)) + handshake
        self._after_n = b"".join(
            (b"\x61v", bytes((PROTOCOL_VERSION,)), b"\x62be", _text(backend), b"\x62ct",
             _head(2, len(kem_ct)), kem_ct, hs)
        )  # fmt: skip
        self._after_id = b"".join(
            (b"\x62pn", _head(0, pn), b"\x62rp", _head(2, len(ratchet_pub)), ratchet_pub,
             b"\x62to", _text(recipient))
        )  # fmt: skip
        self._after_ts = b"\x64from" + _text(sender)

    def encode(self, n: int, message_id: bytes, timestamp: int, room: str | None) -> bytes:
        """The header bytes for message ``n`` of this chain."""
        if not (
            0 <= n <= _MAX_COUNTER
            and type(message_id) is bytes
            and len(message_id) == MESSAGE_ID_SIZE
            and 0 <= timestamp <= _MAX_TIMESTAMP
        ):
            raise MalformedEnvelope("header field of the wrong type or out of range")
        count = 10 + (self.key[6] is not None)
        tail = b""
        if room is not None:
            if type(room) is not str or len(room) > _MAX_NAME:
                raise MalformedEnvelope("room must be a short string")
            count += 1
            tail = b"\x64room" + _text(room)
        data = b"".join(
            (bytes((0xA0 | count, 0x61, 0x6E)), _head(0, n), self._after_n, b"\x62id\x50",
             message_id, self._after_id, b"\x62ts", _head(0, timestamp), self._after_ts, tail)
        )  # fmt: skip
        if len(data) > MAX_HEADER:
            raise MalformedEnvelope("header too large")
        return data


#: The smallest value each multi-byte CBOR integer size may carry (shorter forms are required).
_UINT_MIN: Final = (24, 0x100, 0x10000, 0x100000000)


def _uint_at(data: bytes, pos: int) -> tuple[int, int]:
    """``(value, end)`` of the minimal-length CBOR unsigned integer at ``pos``, or ``(-1, 0)``."""
    if pos >= len(data) or data[pos] >> 5:
        return -1, 0
    info = data[pos] & 0x1F
    if info < 24:
        return info, pos + 1
    if info > 27:
        return -1, 0
    end = pos + 1 + (1 << (info - 24))
    value = int.from_bytes(data[pos + 1 : end], "big")
    if end > len(data) or value < _UINT_MIN[info - 24]:  # truncated or not minimal
        return -1, 0
    return value, end


class HeaderDecoder:
    """Decodes the headers of one receiving chain by matching them against cached bytes.

    The mirror of :class:`HeaderEncoder`: built from a header :func:`decode_header` accepted,
    it recognises the headers of the same chain (same backend, users, ratchet key,
    encapsulation, ``pn`` and handshake) without a CBOR parse and re-encode. :meth:`decode`
    accepts exactly the deterministic encodings of valid headers that differ from that one
    only in ``n``, ``id``, ``ts`` and ``room`` (integers and the room's length are checked
    for minimal encoding and range, the room for UTF-8), and returns None for anything else,
    which the caller then hands to :func:`decode_header` for the full check.
    """

    __slots__ = ("_encoder", "_header")

    def __init__(self, header: Header) -> None:
        self._header = header
        self._encoder = HeaderEncoder(*header[:6], header.handshake)

    def decode(self, data: bytes) -> Header | None:
        """The header encoded by ``data`` if it belongs to this chain, else None."""
        enc = self._encoder
        n, pos = _uint_at(data, 3)
        if n < 0 or not data.startswith(b"\x61n", 1) or n > _MAX_COUNTER:
            return None
        end = pos + len(enc._after_n)
        if not data.startswith(enc._after_n, pos) or not data.startswith(b"\x62id\x50", end):
            return None
        message_id = data[end + 4 : end + 20]
        pos = end + 20
        if not data.startswith(enc._after_id, pos):
            return None
        pos += len(enc._after_id)
        if not data.startswith(b"\x62ts", pos):
            return None
        timestamp, pos = _uint_at(data, pos + 3)
        if timestamp < 0 or timestamp > _MAX_TIMESTAMP or not data.startswith(enc._after_ts, pos):
            return None
        pos += len(enc._after_ts)
        count = 10 + (self._header.handshake is not None)
        room = None
        if pos < len(data):
            if not data.startswith(b"\x64room", pos) or pos + 5 >= len(data):
                return None
            head = data[pos + 5]
            # Read the text-string head as if it were an unsigned integer (same rules).
            length, start = _uint_at(bytes((head & 0x1F,)) + data[pos + 6 : pos + 14], 0)
            start += pos + 5
            if head >> 5 != 3 or length < 0 or start + length != len(data):
                return None
            try:
                room = data[start:].decode("utf-8")
            except UnicodeDecodeError:
                return None
            if len(room) > _MAX_NAME:
                return None
            count += 1
        if len(data) > MAX_HEADER or data[0] != 0xA0 | count:
            return None
        return self._header._replace(n=n, message_id=message_id, timestamp=timestamp, room=room)


def decode_header(data: bytes) -> Header:
    """Parse and strictly validate header bytes.

    :raises MalformedEnvelope: for anything but the one deterministic encoding of a valid map.
    """
    if len(data) > MAX_HEADER:
        raise MalformedEnvelope("header too large")
    try:
        fields = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as exc:
        raise MalformedEnvelope(f"header is not CBOR: {exc}") from None
    if not isinstance(fields, dict):
        raise MalformedEnvelope("header is not a map")
    check_fields(fields)
    # The key order was checked; re-encoding in that order catches non-minimal integers,
    # indefinite lengths, duplicate keys and trailing bytes: one valid encoding per header.
    if cbor2.dumps(fields) != data:
        raise MalformedEnvelope("header is not in deterministic CBOR encoding")
    return Header(
        fields["be"],
        fields["from"],
        fields["to"],
        fields["rp"],
        fields["ct"],
        fields["pn"],
        fields["n"],
        fields["id"],
        fields["ts"],
        fields.get("room"),
        fields.get("hs"),
        fields["v"],
    )


def check_fields(fields: dict[Any, Any]) -> None:
    """Validate presence, deterministic order, types and bounds of every header field."""
    if tuple(fields) not in _KEY_ORDERS:
        raise MalformedEnvelope("header has missing or unknown fields, or is not in key order")
    v, be, to, sender = fields["v"], fields["be"], fields["to"], fields["from"]
    rp, ct, mid, n, pn, ts = (
        fields["rp"],
        fields["ct"],
        fields["id"],
        fields["n"],
        fields["pn"],
        fields["ts"],
    )
    room, hs = fields.get("room", ""), fields.get("hs", b"x")
    if v == 1:
        raise MalformedEnvelope(
            "envelope of protocol v1, no longer accepted: the sender must upgrade securechat"
        )
    if not (
        type(v) is int
        and v == PROTOCOL_VERSION
        and type(be) is str
        and type(to) is str
        and type(sender) is str
        and type(room) is str
        and 0 < len(be) <= _MAX_NAME
        and 0 < len(to) <= _MAX_NAME
        and 0 < len(sender) <= _MAX_NAME
        and len(room) <= _MAX_NAME
        and type(rp) is bytes
        and type(ct) is bytes
        and type(hs) is bytes
        and type(mid) is bytes
        and 0 < len(rp) <= _MAX_KEY
        and len(ct) <= _MAX_KEY
        and 0 < len(hs) <= _MAX_HANDSHAKE
        and len(mid) == MESSAGE_ID_SIZE
        and type(n) is int
        and type(pn) is int
        and type(ts) is int
        and 0 <= n <= _MAX_COUNTER
        and 0 <= pn <= _MAX_COUNTER
        and 0 <= ts <= _MAX_TIMESTAMP
    ):
        raise MalformedEnvelope("header field of the wrong type or out of range")
