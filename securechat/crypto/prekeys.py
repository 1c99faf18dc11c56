"""Signed prekeys and one-time prekeys: what a client publishes so that others can reach it.

Followed: X3DH (signal.org/docs/specifications/x3dh, revision 1) section 2.2 and 3.2, with a
KEM public key in place of the Curve25519 prekey: per backend, one *signed prekey* (replaced
periodically, "e.g. once a week"), signed by the Ed25519 identity key, and a batch of
*one-time prekeys*, each handed out once by the server and deleted by the owner after use.

Encodings are deterministic CBOR maps (RFC 8949 section 4.2.1, ``cbor2`` ``canonical=True``);
the server stores and hands out these blobs without parsing them.

* signed prekey (handshake v2): ``{"id": uint, "be": text, "pub": bytes, "ikem": bytes,
  "exp": uint, "sig": bytes}``; ``ikem`` is the owner's long-term *identity KEM* public key for
  this backend (the KEM stand-in for X3DH's ``IK_B``: every v2 handshake also encapsulates to
  it, so a leaked signed-prekey private key alone opens nothing). The signature covers
  ``b"securechat-v2 signed prekey\\x00" || CBOR(the map without "sig")``. The label separates
  it from every other thing the identity key signs (logins, handshake transcripts); the
  backend, the identity KEM key and the expiry are signed so that the relay can change none.
  The identity KEM key travels inside this record, so the relay stores and serves both as one
  signed blob and can never hand out one without the other.
* the v1 record (handshake v1, no longer accepted by clients) is the same map without
  ``ikem``, signed under ``b"securechat-v1 signed prekey\\x00"``; it still parses, so that an
  initiator can say that the peer runs an old client.
* one-time prekey: ``{"id": uint, "be": text, "pub": bytes}``, unsigned as in X3DH: a relay
  that substitutes one cannot learn the session key, which also depends on the signed prekey.

Verification errors are distinct (:class:`BadPrekeySignature`, :class:`BackendMismatch`,
:class:`ExpiredPrekey`, :class:`MalformedPrekey`), checked in that order: nothing in the blob
is believed before its signature verifies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Final

import cbor2

from securechat.crypto.envelope import backend_id
from securechat.crypto.errors import (
    BackendMismatch,
    BadPrekeySignature,
    ExpiredPrekey,
    MalformedPrekey,
)
from securechat.crypto.identity import IdentityKeyPair, SignatureError, verify
from securechat.crypto.kem import IKem, KemError, KeyPair

__all__ = [
    "DEFAULT_LIFETIME",
    "SIGNED_PREKEY_GRACE",
    "OneTimePrekey",
    "SignedPrekey",
    "generate_one_time_prekeys",
    "generate_signed_prekey",
    "sign_prekey",
]

#: One week, the rotation period X3DH section 2.2 suggests.
DEFAULT_LIFETIME: Final = 7 * 24 * 3600
#: How long past its signed expiry a responder still accepts its own signed prekey: messages
#: sit in the relay's queue for up to its TTL (X3DH 4.6 leaves the period to the application).
SIGNED_PREKEY_GRACE: Final = 14 * 24 * 3600
MAX_KEY_ID: Final = 2**32 - 1
_MAX_BLOB: Final = 4096
_MAX_PUBLIC: Final = 2048
_SIGNED_PREKEY_LABELS: Final = {
    False: b"securechat-v1 signed prekey\x00",
    True: b"securechat-v2 signed prekey\x00",
}
_SPK_FIELDS: Final = frozenset({"id", "be", "pub", "exp", "sig"})


def _dumps(obj: dict[str, Any]) -> bytes:
    return bytes(cbor2.dumps(obj, canonical=True))


def _loads_map(data: bytes, *key_sets: frozenset[str]) -> dict[str, Any]:
    """Decode a blob, accepting only the deterministic encoding of a map with one of
    ``key_sets``."""
    if len(data) > _MAX_BLOB:
        raise MalformedPrekey("prekey blob too large")
    try:
        obj = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as exc:
        raise MalformedPrekey(f"prekey is not CBOR: {exc}") from None
    if not isinstance(obj, dict) or obj.keys() not in key_sets:
        raise MalformedPrekey("prekey has missing or unknown fields")
    key_id, backend, public = obj["id"], obj["be"], obj["pub"]
    if type(key_id) is not int or not 0 <= key_id <= MAX_KEY_ID:
        raise MalformedPrekey("prekey id must be a 32-bit unsigned integer")
    if type(backend) is not str or not 0 < len(backend) <= 64:
        raise MalformedPrekey("prekey backend must be a short string")
    if type(public) is not bytes or not 0 < len(public) <= _MAX_PUBLIC:
        raise MalformedPrekey("prekey public key must be non-empty bytes")
    if _dumps(obj) != data:
        raise MalformedPrekey("prekey is not in deterministic CBOR encoding")
    return obj


@dataclass(frozen=True, slots=True)
class SignedPrekey:
    """A medium-term KEM public key signed by its owner's identity key, with (from v2 on)
    the owner's long-term identity KEM public key for the same backend."""

    key_id: int
    backend: str
    public: bytes
    expires: int
    signature: bytes
    identity_kem: bytes | None = None

    def _fields(self) -> dict[str, Any]:
        fields = {"id": self.key_id, "be": self.backend, "pub": self.public, "exp": self.expires}
        if self.identity_kem is not None:
            fields["ikem"] = self.identity_kem
        return fields

    def signed_payload(self) -> bytes:
        """The exact bytes the identity key signs (label || deterministic CBOR)."""
        return _SIGNED_PREKEY_LABELS[self.identity_kem is not None] + _dumps(self._fields())

    def to_bytes(self) -> bytes:
        """The published blob."""
        return _dumps({**self._fields(), "sig": self.signature})

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedPrekey:
        """Parse a blob (structure only; call :meth:`verify` before using the key).

        :raises MalformedPrekey: for anything but a valid deterministic encoding.
        """
        obj = _loads_map(data, _SPK_FIELDS, _SPK_FIELDS | {"ikem"})
        if type(obj["exp"]) is not int or not 0 <= obj["exp"] < 2**63:
            raise MalformedPrekey("prekey expiry must be an unsigned integer")
        if type(obj["sig"]) is not bytes or len(obj["sig"]) != 64:
            raise MalformedPrekey("prekey signature must be 64 bytes")
        ikem = obj.get("ikem")
        if ikem is not None and (type(ikem) is not bytes or not 0 < len(ikem) <= _MAX_PUBLIC):
            raise MalformedPrekey("identity KEM public key must be non-empty bytes")
        return cls(obj["id"], obj["be"], obj["pub"], obj["exp"], obj["sig"], ikem)

    def verify(
        self, identity_public: bytes, kem: IKem, now: float, *, check_key: bool = True
    ) -> None:
        """Check signature, backend, expiry and key, in that order (X3DH section 3.3).

        ``check_key=False`` skips the key check for a caller that encapsulates to the key at
        once: every backend's ``encapsulate`` validates the key itself (for X25519 a separate
        check costs a whole extra exchange).

        :raises BadPrekeySignature: not signed by ``identity_public`` (the pinned key).
        :raises BackendMismatch: signed for another backend than ``kem``.
        :raises ExpiredPrekey: ``now`` (Unix seconds) is at or past the signed expiry.
        :raises MalformedPrekey: the backend refuses a public key.
        """
        try:
            verify(identity_public, self.signed_payload(), self.signature)
        except SignatureError:
            raise BadPrekeySignature(
                f"signed prekey {self.key_id} is not signed by the identity key"
            ) from None
        check_backend(self.backend, kem)
        if now >= self.expires:
            raise ExpiredPrekey(f"signed prekey {self.key_id} expired at {self.expires}")
        if check_key:
            check_public(self.public, kem)
            if self.identity_kem is not None:
                check_public(self.identity_kem, kem)


@dataclass(frozen=True, slots=True)
class OneTimePrekey:
    """A single-use KEM public key (X3DH ``OPK``)."""

    key_id: int
    backend: str
    public: bytes

    def to_bytes(self) -> bytes:
        """The published blob."""
        return _dumps({"id": self.key_id, "be": self.backend, "pub": self.public})

    @classmethod
    def from_bytes(cls, data: bytes) -> OneTimePrekey:
        """Parse a blob; :raises MalformedPrekey: for anything but a valid encoding."""
        obj = _loads_map(data, frozenset({"id", "be", "pub"}))
        return cls(obj["id"], obj["be"], obj["pub"])

    def verify(self, kem: IKem) -> None:
        """Check the backend and the key (nothing is signed: see the module docstring).

        :raises BackendMismatch: made for another backend than ``kem``.
        :raises MalformedPrekey: the backend refuses the public key.
        """
        check_backend(self.backend, kem)
        check_public(self.public, kem)


def check_backend(backend: str, kem: IKem) -> None:
    """:raises BackendMismatch: unless ``backend`` names ``kem``."""
    if backend != backend_id(kem):
        raise BackendMismatch(f"prekey is for backend {backend!r}, not {backend_id(kem)!r}")


def check_public(public: bytes, kem: IKem) -> None:
    """:raises MalformedPrekey: if the backend refuses ``public``."""
    try:
        kem.validate_public(public)
    except KemError as exc:
        raise MalformedPrekey(f"prekey public key refused: {exc}") from None


def sign_prekey(
    identity: IdentityKeyPair,
    kem: IKem,
    key_id: int,
    public: bytes,
    expires: int,
    identity_kem: bytes | None = None,
) -> SignedPrekey:
    """Sign an existing public key as signed prekey ``key_id`` valid until ``expires``,
    with the identity KEM public key ``identity_kem`` (``None`` only for v1 records)."""
    if not 0 <= key_id <= MAX_KEY_ID:
        raise ValueError("prekey id must be a 32-bit unsigned integer")
    unsigned = SignedPrekey(key_id, backend_id(kem), public, expires, b"", identity_kem)
    return replace(unsigned, signature=identity.sign(unsigned.signed_payload()))


def generate_signed_prekey(
    identity: IdentityKeyPair,
    kem: IKem,
    key_id: int,
    now: float,
    lifetime: int = DEFAULT_LIFETIME,
    identity_kem: bytes | None = None,
) -> tuple[SignedPrekey, KeyPair]:
    """A fresh signed prekey: the public record to publish and the key pair to keep secret.

    :param identity_kem: the long-term identity KEM public key to publish with it (v2).
    """
    keypair = kem.generate_keypair()
    record = sign_prekey(
        identity, kem, key_id, keypair.public, int(now) + lifetime, identity_kem
    )
    return record, keypair


def generate_one_time_prekeys(
    kem: IKem,
    first_id: int,
    count: int,
    keygen: Callable[[], KeyPair] | None = None,
) -> list[tuple[OneTimePrekey, KeyPair]]:
    """``count`` fresh one-time prekeys with consecutive ids starting at ``first_id``.

    ``keygen`` replaces ``kem.generate_keypair`` (deterministic keys for test vectors).
    """
    if first_id < 0 or first_id + count - 1 > MAX_KEY_ID:
        raise ValueError("one-time prekey ids must be 32-bit unsigned integers")
    make = keygen or kem.generate_keypair
    result = []
    for key_id in range(first_id, first_id + count):
        keypair = make()
        result.append((OneTimePrekey(key_id, backend_id(kem), keypair.public), keypair))
    return result
