"""The end-to-end envelope: header encoding, padding and AEAD of one message.

Envelope bytes (all integers big-endian)::

    0x01 (format) || u16 len(header) || header || AES-256-GCM(padded plaintext) (tag included)

The header (deterministic CBOR, every field listed in :mod:`securechat.crypto.header`) is
sent in clear and authenticated as associated data.

Why these choices:

* AES-256-GCM with key *and* nonce derived through HKDF-Expand (RFC 5869) from the message
  key **and the message's random 16-byte id** (the ``id`` header field, authenticated as
  associated data). The Double Ratchet spec (section 5.2) allows an AEAD in place of CBC+HMAC
  only if a message key is never reused; that holds for one process, but two processes on
  copies of one keystore (a forked or restored backup) derive the same message key for the
  same counter. With the id mixed in they still get different AES keys and nonces (two ids
  collide with probability 2^-128), so they never encrypt two plaintexts under one key and
  nonce (which would give ``c1 xor c2 = m1 xor m2`` and leak the GHASH key).
* Associated data ``u16 len || IK_sender || u16 len || IK_recipient || header``: X3DH section
  3.3 binds both identity keys, and the length prefixes make the concatenation unambiguous
  (Double Ratchet section 3.4, ``CONCAT``).
* Padding to buckets (256, 1024, 4096, 16384, then multiples of 16384) with the ISO/IEC 7816-4
  scheme (``0x80`` then zeros), which can be removed unambiguously; the relay only learns the
  bucket, never the exact length.
"""

from __future__ import annotations

import hmac
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from securechat.crypto.errors import AuthenticationFailed, MalformedEnvelope
from securechat.crypto.header import (
    MAX_HEADER,
    MESSAGE_ID_SIZE,
    PROTOCOL_VERSION,
    Header,
    HeaderEncoder,
    backend_id,
    check_fields,
    decode_header,
    encode_header,
    encode_header_fields,
)

__all__ = [
    "ENVELOPE_FORMAT",
    "MAX_HEADER",
    "MAX_PLAINTEXT",
    "MESSAGE_ID_SIZE",
    "PROTOCOL_VERSION",
    "Header",
    "HeaderEncoder",
    "associated_data",
    "backend_id",
    "bucket_size",
    "check_fields",
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

ENVELOPE_FORMAT: Final = 0x01
BUCKETS: Final = (256, 1024, 4096, 16384)
LARGE_STEP: Final = 16384
MAX_PADDED: Final = 64 * LARGE_STEP
#: The largest plaintext: one byte of every bucket is taken by the 0x80 marker.
MAX_PLAINTEXT: Final = MAX_PADDED - 1
TAG_SIZE: Final = 16
_ENVELOPE_INFO: Final = b"securechat-v2 envelope\x00"
_SHA256 = hashes.SHA256()


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


def message_key_material(message_key: bytes, message_id: bytes) -> tuple[bytes, bytes]:
    """``(aes_key, nonce)`` = HKDF-Expand-SHA256(PRK = mk, info = label || id, 44) split 32/12.

    The Double Ratchet spec (section 5.2) requires both key and nonce to come from mk when an
    AEAD replaces its CBC+HMAC recommendation; the message id makes them differ for two
    messages that share a message key (see the module docstring). mk is an HMAC-SHA256 output
    under a secret chain key, i.e. already a uniformly random pseudorandom key, so HKDF's
    Extract step is skipped as RFC 5869 section 3.3 allows (HKDF-Expand is a PRF of ``info``).

    :raises ValueError: ``message_id`` is not :data:`MESSAGE_ID_SIZE` bytes.
    """
    if len(message_id) != MESSAGE_ID_SIZE:
        raise ValueError(f"message id must be {MESSAGE_ID_SIZE} bytes")
    okm = HKDFExpand(_SHA256, 44, _ENVELOPE_INFO + message_id).derive(message_key)
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


def seal(
    message_key: bytes, message_id: bytes, header_bytes: bytes, plaintext: bytes, ad_prefix: bytes
) -> bytes:
    """Pad, encrypt and frame one message: returns the envelope bytes.

    :param message_id: the ``id`` field of ``header_bytes``.
    :param ad_prefix: :func:`identity_prefix` of (sender, recipient).
    """
    key, nonce = message_key_material(message_key, message_id)
    ciphertext = AESGCM(key).encrypt(nonce, pad(plaintext), ad_prefix + header_bytes)
    return encode_envelope(header_bytes, ciphertext)


def open_envelope(
    message_key: bytes, message_id: bytes, header_bytes: bytes, ciphertext: bytes,
    ad_prefix: bytes,
) -> bytes:
    """Authenticate and decrypt; return the unpadded plaintext.

    :param message_id: the ``id`` field of the (not yet authenticated) ``header_bytes``; a
        changed id gives another key, so the tag fails.
    :param ad_prefix: :func:`identity_prefix` of (sender, recipient).
    :raises AuthenticationFailed: if the tag does not verify (any altered bit, wrong key).
    """
    key, nonce = message_key_material(message_key, message_id)
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
        raise MalformedEnvelope("not a securechat envelope (unknown framing byte)")
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
