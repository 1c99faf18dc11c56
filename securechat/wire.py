"""The wire protocol shared by the server and the client.

Frames are length-prefixed (4-byte big-endian) CBOR maps; see ``docs/protocol.md``.
This is the only module that both ``securechat.server`` and ``securechat.client`` import.
"""

from __future__ import annotations

import hashlib
import hmac

PROTOCOL_VERSION = 1

#: TLS exporter label (RFC 8446 section 7.5) bound into public-key login signatures, so a
#: signature made on one TLS connection is worthless on any other.
EXPORTER_LABEL = b"EXPORTER-securechat-login"
EXPORTER_LENGTH = 32
LOGIN_NONCE_BYTES = 32


def login_signature_payload(user: str, nonce: bytes, exporter: bytes) -> bytes:
    """The bytes a client signs with its Ed25519 identity key to log in.

    Length-prefixing every field keeps the encoding unambiguous; the exporter value ties
    the signature to this TLS connection and the server's nonce makes it single-use.
    """
    name = user.encode("utf-8")
    parts = [b"securechat-login-v1", name, nonce, exporter]
    return b"".join(len(p).to_bytes(2, "big") + p for p in parts)


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
