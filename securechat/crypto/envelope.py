"""The end-to-end envelope: header encoding, padding and AEAD of one message.

Envelope bytes (all integers big-endian)::

    0x01 (format) || u16 len(header) || header || AES-256-GCM(padded plaintext) (tag included)

``header`` is a CBOR map in RFC 8949 section 4.2.1 deterministic encoding (``cbor2`` with
``canonical=True``), and decoding refuses any other encoding of the same map: one message has
exactly one valid byte string, so the bytes the AEAD authenticates are the bytes the code reads.
Keys and meaning:

====== ======= ===========================================================================
key    type    meaning
====== ======= ===========================================================================
v      uint    protocol version (1)
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

Why these choices:

* AES-256-GCM with key *and* nonce derived from the message key through HKDF-Expand (RFC 5869):
  the Double Ratchet spec (section 5.2) allows an AEAD in place of CBC+HMAC only if the message
  key is never reused; each message key encrypts exactly one message, so the fixed derivation
  never repeats a (key, nonce) pair.
* Associated data ``u16 len || IK_sender || u16 len || IK_recipient || header``: X3DH section
  3.3 binds both identity keys, and the length prefixes make the concatenation unambiguous
  (Double Ratchet section 3.4, ``CONCAT``).
* Padding to buckets (256, 1024, 4096, 16384, then multiples of 16384) with the ISO/IEC 7816-4
  scheme (``0x80`` then zeros), which can be removed unambiguously; the relay only learns the
  bucket, never the exact length.
"""

from __future__ import annotations

import hmac
from typing import Any, Final, NamedTuple

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from securechat.crypto.errors import AuthenticationFailed, MalformedEnvelope
from securechat.crypto.kem import IKem

__all__ = [
    "ENVELOPE_FORMAT",
    "MAX_PLAINTEXT",
    "PROTOCOL_VERSION",
    "Header",
    "HeaderEncoder",
    "associated_data",
    "backend_id",
    "bucket_size",
    "decode_header",
    "encode_envelope",
    "encode_header",
    "encode_header_fields",
    "identity_prefix",
    "message_key_material",
    "open_envelope",
    "pad",
    "parse_envelope",
    "routing_fields",
    "seal",
    "unpad",
]

PROTOCOL_VERSION: Final = 1
ENVELOPE_FORMAT: Final = 0x01
MESSAGE_ID_SIZE: Final = 16
BUCKETS: Final = (256, 1024, 4096, 16384)
LARGE_STEP: Final = 16384
MAX_PADDED: Final = 64 * LARGE_STEP
#: The largest plaintext: one byte of every bucket is taken by the 0x80 marker.
MAX_PLAINTEXT: Final = MAX_PADDED - 1
MAX_HEADER: Final = 16384
TAG_SIZE: Final = 16
_MAX_NAME: Final = 256
_MAX_KEY: Final = 2048
_MAX_HANDSHAKE: Final = 8192
_MAX_COUNTER: Final = 2**32 - 1
_MAX_TIMESTAMP: Final = 2**63 - 1
_ENVELOPE_INFO: Final = b"securechat-v1 envelope"
_SHA256 = hashes.SHA256()
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
    _check_fields(fields)
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
            (b"\x61v\x01\x62be", _text(backend), b"\x62ct", _head(2, len(kem_ct)), kem_ct, hs)
        )
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
    _check_fields(fields)
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


def _check_fields(fields: dict[Any, Any]) -> None:
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


def bucket_size(length: int) -> int:
    """The padded size for a plaintext of ``length`` bytes (one byte goes to the marker)."""
    need = length + 1
    for bucket in BUCKETS:
        if need <= bucket:
            return bucket
    return -(-need // LARGE_STEP) * LARGE_STEP


def _valid_padded_size(size: int) -> bool:
    return size in BUCKETS or (size % LARGE_STEP == 0 and LARGE_STEP <= size <= MAX_PADDED)


def pad(plaintext: bytes) -> bytes:
    """ISO/IEC 7816-4 padding (``0x80`` then zeros) up to :func:`bucket_size`."""
    if len(plaintext) > MAX_PLAINTEXT:
        raise ValueError(f"plaintext larger than {MAX_PLAINTEXT} bytes")
    return plaintext + b"\x80" + bytes(bucket_size(len(plaintext)) - len(plaintext) - 1)


def unpad(padded: bytes) -> bytes:
    """Remove :func:`pad`'s padding; raise :class:`MalformedEnvelope` if there is none."""
    stripped = padded.rstrip(b"\x00")
    if not stripped or stripped[-1] != 0x80:
        raise MalformedEnvelope("bad padding")
    return stripped[:-1]


def message_key_material(message_key: bytes) -> tuple[bytes, bytes]:
    """``(aes_key, nonce)`` = HKDF-Expand-SHA256(PRK = mk, info, 44 bytes) split 32/12.

    The Double Ratchet spec (section 5.2) requires both key and nonce to come from mk when an
    AEAD replaces its CBC+HMAC recommendation. mk is an HMAC-SHA256 output under a secret
    chain key, i.e. already a uniformly random pseudorandom key, so HKDF's Extract step is
    skipped as RFC 5869 section 3.3 allows; that halves the cost of this per-message step.
    """
    okm = HKDFExpand(_SHA256, 44, _ENVELOPE_INFO).derive(message_key)
    return okm[:32], okm[32:]


def identity_prefix(ik_sender: bytes, ik_recipient: bytes) -> bytes:
    """``u16 len || IK_sender || u16 len || IK_recipient``: the fixed start of the AD.

    A session computes it once per direction instead of once per message.
    """
    return b"".join(
        (
            len(ik_sender).to_bytes(2, "big"),
            ik_sender,
            len(ik_recipient).to_bytes(2, "big"),
            ik_recipient,
        )
    )


def associated_data(ik_sender: bytes, ik_recipient: bytes, header_bytes: bytes) -> bytes:
    """Length-prefixed identity keys followed by the header (X3DH section 3.3 ``AD``)."""
    return identity_prefix(ik_sender, ik_recipient) + header_bytes


def seal(message_key: bytes, header_bytes: bytes, plaintext: bytes, ad_prefix: bytes) -> bytes:
    """Pad, encrypt and frame one message: returns the envelope bytes.

    :param ad_prefix: :func:`identity_prefix` of (sender, recipient).
    """
    key, nonce = message_key_material(message_key)
    ciphertext = AESGCM(key).encrypt(nonce, pad(plaintext), ad_prefix + header_bytes)
    return encode_envelope(header_bytes, ciphertext)


def open_envelope(
    message_key: bytes, header_bytes: bytes, ciphertext: bytes, ad_prefix: bytes
) -> bytes:
    """Authenticate and decrypt; return the unpadded plaintext.

    :param ad_prefix: :func:`identity_prefix` of (sender, recipient).
    :raises AuthenticationFailed: if the tag does not verify (any altered bit, wrong key).
    """
    key, nonce = message_key_material(message_key)
    try:
        padded = AESGCM(key).decrypt(nonce, ciphertext, ad_prefix + header_bytes)
    except InvalidTag:
        raise AuthenticationFailed("envelope authentication failed") from None
    return unpad(padded)


def encode_envelope(header_bytes: bytes, ciphertext: bytes) -> bytes:
    """Frame header and ciphertext (see the module docstring for the layout)."""
    if len(header_bytes) > MAX_HEADER:
        raise MalformedEnvelope("header too large")
    return b"".join(
        (
            ENVELOPE_FORMAT.to_bytes(1, "big"),
            len(header_bytes).to_bytes(2, "big"),
            header_bytes,
            ciphertext,
        )
    )


def split_envelope(data: bytes) -> tuple[bytes, bytes]:
    """``(header_bytes, ciphertext)`` after checking the framing and the ciphertext size."""
    if len(data) < 3 or data[0] != ENVELOPE_FORMAT:
        raise MalformedEnvelope("not a version-1 envelope")
    header_len = int.from_bytes(data[1:3], "big")
    if header_len > MAX_HEADER or len(data) < 3 + header_len:
        raise MalformedEnvelope("bad header length")
    ciphertext = data[3 + header_len :]
    if not _valid_padded_size(len(ciphertext) - TAG_SIZE):
        raise MalformedEnvelope("ciphertext length is not a padding bucket")
    return data[3 : 3 + header_len], ciphertext


def parse_envelope(data: bytes) -> tuple[Header, bytes, bytes]:
    """``(header, header_bytes, ciphertext)``; the header is *not yet authenticated*."""
    header_bytes, ciphertext = split_envelope(data)
    return decode_header(header_bytes), header_bytes, ciphertext


def routing_fields(envelope: bytes) -> tuple[str, str, bytes]:
    """``(recipient, backend, message_id)`` read from the header only.

    This is everything a relay would need; the receiving client compares these values with
    the routing fields of the wire message once the header has been authenticated.
    """
    header = parse_envelope(envelope)[0]
    return header.recipient, header.backend, header.message_id


def constant_time_equal(a: bytes, b: bytes) -> bool:
    """Compare secrets without a data-dependent early exit."""
    return hmac.compare_digest(a, b)
