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

* AES-256-GCM with key *and* nonce derived from the message key through HKDF (RFC 5869):
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
from dataclasses import dataclass
from typing import Any, Final

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from securechat.crypto.errors import AuthenticationFailed, MalformedEnvelope
from securechat.crypto.kem import IKem

__all__ = [
    "ENVELOPE_FORMAT",
    "MAX_PLAINTEXT",
    "PROTOCOL_VERSION",
    "Header",
    "associated_data",
    "backend_id",
    "bucket_size",
    "decode_header",
    "encode_envelope",
    "encode_header",
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
_REQUIRED: Final = frozenset({"v", "be", "from", "to", "rp", "ct", "pn", "n", "id", "ts"})
_OPTIONAL: Final = frozenset({"room", "hs"})


def backend_id(kem: IKem) -> str:
    """The ``be`` value naming a KEM and its parameters, e.g. ``"ecdh:x25519"``."""
    return f"{kem.name}:{kem.params}"


@dataclass(frozen=True, slots=True)
class Header:
    """The authenticated, cleartext header of one envelope (see the module docstring)."""

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
    fields: dict[str, Any] = {
        "v": header.version,
        "be": header.backend,
        "from": header.sender,
        "to": header.recipient,
        "rp": header.ratchet_pub,
        "ct": header.kem_ct,
        "pn": header.pn,
        "n": header.n,
        "id": header.message_id,
        "ts": header.timestamp,
    }
    if header.room is not None:
        fields["room"] = header.room
    if header.handshake is not None:
        fields["hs"] = header.handshake
    _check_fields(fields)
    data: bytes = cbor2.dumps(fields, canonical=True)
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
    # Re-encoding catches non-canonical integers, key order, indefinite lengths and trailing
    # bytes at once: only the one deterministic encoding is accepted.
    if cbor2.dumps(fields, canonical=True) != data:
        raise MalformedEnvelope("header is not in deterministic CBOR encoding")
    return Header(
        backend=fields["be"],
        sender=fields["from"],
        recipient=fields["to"],
        ratchet_pub=fields["rp"],
        kem_ct=fields["ct"],
        pn=fields["pn"],
        n=fields["n"],
        message_id=fields["id"],
        timestamp=fields["ts"],
        room=fields.get("room"),
        handshake=fields.get("hs"),
        version=fields["v"],
    )


def _check_fields(fields: dict[Any, Any]) -> None:
    keys = fields.keys()
    if not keys >= _REQUIRED or not keys <= _REQUIRED | _OPTIONAL:
        raise MalformedEnvelope("header has missing or unknown fields")
    if fields["v"] != PROTOCOL_VERSION or type(fields["v"]) is not int:
        raise MalformedEnvelope("unsupported protocol version")
    for key in ("be", "from", "to", "room"):
        value = fields.get(key, "")
        if type(value) is not str or len(value) > _MAX_NAME or (key != "room" and not value):
            raise MalformedEnvelope(f"header field {key!r} must be a non-empty short string")
    for key, limit in (("rp", _MAX_KEY), ("ct", _MAX_KEY), ("hs", _MAX_HANDSHAKE)):
        value = fields.get(key, b"")
        if type(value) is not bytes or len(value) > limit:
            raise MalformedEnvelope(f"header field {key!r} must be bytes of at most {limit}")
    if not fields["rp"] or ("hs" in fields and not fields["hs"]):
        raise MalformedEnvelope("header has an empty ratchet key or handshake")
    for key, top in (("pn", _MAX_COUNTER), ("n", _MAX_COUNTER), ("ts", _MAX_TIMESTAMP)):
        value = fields[key]
        if type(value) is not int or not 0 <= value <= top:
            raise MalformedEnvelope(f"header field {key!r} must be an integer in range")
    if type(fields["id"]) is not bytes or len(fields["id"]) != MESSAGE_ID_SIZE:
        raise MalformedEnvelope("message id must be 16 bytes")


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
    """``(aes_key, nonce)`` = HKDF-SHA256(salt = zeros, IKM = mk, info) split 32/12.

    The Double Ratchet spec (section 5.2) requires both key and nonce to come from mk when an
    AEAD replaces its CBC+HMAC recommendation.
    """
    okm = HKDF(hashes.SHA256(), 44, None, _ENVELOPE_INFO).derive(message_key)
    return okm[:32], okm[32:]


def associated_data(ik_sender: bytes, ik_recipient: bytes, header_bytes: bytes) -> bytes:
    """Length-prefixed identity keys followed by the header (X3DH section 3.3 ``AD``)."""
    return b"".join(
        (
            len(ik_sender).to_bytes(2, "big"),
            ik_sender,
            len(ik_recipient).to_bytes(2, "big"),
            ik_recipient,
            header_bytes,
        )
    )


def seal(
    message_key: bytes,
    header_bytes: bytes,
    plaintext: bytes,
    ik_sender: bytes,
    ik_recipient: bytes,
) -> bytes:
    """Pad, encrypt and frame one message: returns the envelope bytes."""
    key, nonce = message_key_material(message_key)
    ad = associated_data(ik_sender, ik_recipient, header_bytes)
    ciphertext = AESGCM(key).encrypt(nonce, pad(plaintext), ad)
    return encode_envelope(header_bytes, ciphertext)


def open_envelope(
    message_key: bytes,
    header_bytes: bytes,
    ciphertext: bytes,
    ik_sender: bytes,
    ik_recipient: bytes,
) -> bytes:
    """Authenticate and decrypt; return the unpadded plaintext.

    :raises AuthenticationFailed: if the tag does not verify (any altered bit, wrong key).
    """
    key, nonce = message_key_material(message_key)
    ad = associated_data(ik_sender, ik_recipient, header_bytes)
    try:
        padded = AESGCM(key).decrypt(nonce, ciphertext, ad)
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
