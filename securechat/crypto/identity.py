"""Ed25519 identity keys, their fingerprints, and libsignal-style safety numbers.

Why Ed25519: deterministic signatures (no nonce to get wrong), 32-byte keys, and RFC 8032
test vectors. Each user has one identity key, made by the client at registration; it signs
prekeys and handshake transcripts, and is what users compare out of band.

Key encoding for fingerprints and safety numbers: ``IDENTITY_KEY_TYPE || raw 32 bytes`` with
type byte ``0x65`` (``'e'`` for Ed25519). libsignal prefixes its Curve25519 identity keys with
``0x05``; a different type byte keeps a securechat number from ever matching a Signal number
computed over the same 32 bytes, and leaves room for other key types later.

* :func:`fingerprint`: SHA-256 of the encoded key, as 64 lowercase hex digits in 16 groups of
  4, for people who compare one key at a time (``securechat whois``).
* :func:`safety_number`: the 60-digit number of libsignal's ``NumericFingerprintGenerator``
  (version 0, 5200 iterations of SHA-512), per pair of users; both sides compute the same
  number because the halves are sorted. :func:`numeric_safety_number` is the same construction
  over already-encoded keys and raw stable ids, which is what reproduces libsignal's vector.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519

__all__ = [
    "IDENTITY_KEY_TYPE",
    "SAFETY_NUMBER_ITERATIONS",
    "IdentityKeyPair",
    "SignatureError",
    "encode_identity_key",
    "fingerprint",
    "format_safety_number",
    "numeric_fingerprint",
    "numeric_safety_number",
    "safety_number",
    "verify",
]

IDENTITY_KEY_TYPE = 0x65
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
#: libsignal's iteration count; it makes brute-forcing a colliding key 5200 times dearer.
SAFETY_NUMBER_ITERATIONS = 5200
_FINGERPRINT_VERSION = (0).to_bytes(2, "big")


class SignatureError(ValueError):
    """A signature did not verify, or the key or signature was malformed."""


class IdentityKeyPair:
    """A user's long-term Ed25519 signing key (the private half never leaves the keystore)."""

    def __init__(self, private_key: ed25519.Ed25519PrivateKey) -> None:
        self._key = private_key
        # Deriving the public key costs a scalar multiplication; handshakes need it twice.
        self._public = private_key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> IdentityKeyPair:
        """A fresh key from the OS CSPRNG."""
        return cls(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, private: bytes) -> IdentityKeyPair:
        """Load the raw 32-byte seed written by :meth:`private_bytes`.

        :raises ValueError: if ``private`` is not 32 bytes.
        """
        if len(private) != 32:
            raise ValueError("Ed25519 private key must be 32 bytes")
        return cls(ed25519.Ed25519PrivateKey.from_private_bytes(private))

    def public_bytes(self) -> bytes:
        """The raw 32-byte public key (RFC 8032 encoding)."""
        return self._public

    def private_bytes(self) -> bytes:
        """The raw 32-byte seed; secret, for the encrypted keystore only."""
        return self._key.private_bytes_raw()

    def sign(self, data: bytes) -> bytes:
        """A 64-byte Ed25519 signature over ``data``."""
        return self._key.sign(data)

    def __repr__(self) -> str:
        # Never put the private key in logs or tracebacks.
        return f"IdentityKeyPair(public={self.public_bytes().hex()})"


def verify(public: bytes, data: bytes, signature: bytes) -> None:
    """Check an Ed25519 ``signature`` over ``data`` by the raw 32-byte ``public`` key.

    Returns nothing on success, so a forgotten check cannot be mistaken for a truthy result.
    Verification is OpenSSL's RFC 8032 (cofactorless) check.

    :raises SignatureError: if the key or signature is malformed or the signature is invalid.
    """
    if len(public) != PUBLIC_KEY_SIZE:
        raise SignatureError(f"Ed25519 public key must be {PUBLIC_KEY_SIZE} bytes")
    if len(signature) != SIGNATURE_SIZE:
        raise SignatureError(f"Ed25519 signature must be {SIGNATURE_SIZE} bytes")
    try:
        key = ed25519.Ed25519PublicKey.from_public_bytes(public)
        key.verify(signature, data)
    except (InvalidSignature, ValueError):
        raise SignatureError("Ed25519 signature verification failed") from None


def encode_identity_key(public: bytes) -> bytes:
    """``0x65 || public``: the typed encoding hashed by fingerprints and safety numbers."""
    if len(public) != PUBLIC_KEY_SIZE:
        raise ValueError(f"Ed25519 public key must be {PUBLIC_KEY_SIZE} bytes")
    return bytes([IDENTITY_KEY_TYPE]) + public


def fingerprint(public: bytes) -> str:
    """SHA-256 of the encoded key, e.g. ``"3f2a 9c01 ..."`` (16 groups of 4 hex digits)."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(encode_identity_key(public))
    hex_digits = digest.finalize().hex()
    return " ".join(hex_digits[i : i + 4] for i in range(0, len(hex_digits), 4))


def numeric_fingerprint(
    encoded_key: bytes, stable_id: bytes, iterations: int = SAFETY_NUMBER_ITERATIONS
) -> str:
    """One party's 30-digit half of a safety number (libsignal ``fingerprint.rs``).

    ``buf = SHA-512(0x0000 || key || stable_id || key)``, then ``buf = SHA-512(buf || key)``
    for the remaining iterations; the first 30 bytes, as six 5-byte big-endian integers each
    reduced mod 100000, give six 5-digit groups.
    """
    buf = _FINGERPRINT_VERSION + encoded_key + stable_id
    for _ in range(iterations):
        digest = hashes.Hash(hashes.SHA512())
        digest.update(buf)
        digest.update(encoded_key)
        buf = digest.finalize()
    return "".join(f"{int.from_bytes(buf[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5))


def numeric_safety_number(
    local_encoded_key: bytes, local_id: bytes, remote_encoded_key: bytes, remote_id: bytes
) -> str:
    """The 60-digit safety number over already-encoded keys (libsignal's exact construction).

    The two halves are sorted before concatenation so that both parties display the same
    number without agreeing on who is "local".
    """
    halves = sorted(
        (
            numeric_fingerprint(local_encoded_key, local_id),
            numeric_fingerprint(remote_encoded_key, remote_id),
        )
    )
    return halves[0] + halves[1]


def safety_number(local_key: bytes, local_id: str, remote_key: bytes, remote_id: str) -> str:
    """The safety number for two securechat users (raw Ed25519 keys, user names as ids).

    User names are the stable ids because they never change for an account; binding them
    means a key moved to another account gives another number.
    """
    return numeric_safety_number(
        encode_identity_key(local_key),
        local_id.encode("utf-8"),
        encode_identity_key(remote_key),
        remote_id.encode("utf-8"),
    )


def format_safety_number(number: str) -> str:
    """Groups of 5 digits separated by spaces, as Signal displays them."""
    return " ".join(number[i : i + 5] for i in range(0, len(number), 5))
