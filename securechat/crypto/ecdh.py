"""Elliptic-curve Diffie-Hellman backends (X25519, P-256) as KEMs, exactly as HPKE's DHKEM.

Why DHKEM (RFC 9180 section 4.1) rather than a home-made construction: ``encapsulate`` makes a
fresh ephemeral key pair, ``enc`` is its public half, and the shared secret is
``ExtractAndExpand(dh, enc || pkR)``. Binding both public values into the secret stops an
attacker from substituting an equivalent encoding of either key, and following RFC 9180 to the
byte means the published HPKE test vectors check this module (``DHKEM(X25519, HKDF-SHA256)``,
KEM id 0x0020, and ``DHKEM(P-256, HKDF-SHA256)``, KEM id 0x0010).

Serialised key formats (those of RFC 9180 section 7.1):

* X25519: public and private keys are the raw 32-byte strings of RFC 7748.
* P-256: the public key is an uncompressed SEC1 point (65 bytes, ``0x04 || x || y``); the
  private key is the 32-byte big-endian scalar. Compressed points are refused so that each key
  has exactly one encoding.

The DHKEM key derivation itself lives in :mod:`securechat.crypto.dhkem`, shared with the
finite-field backend and X-Wing's tests.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from zope.interface import implementer

from securechat.crypto import kem
from securechat.crypto._cache import PRIVATE_SLOTS, PUBLIC_SLOTS, Lru
from securechat.crypto.dhkem import SECRET_SIZE, dhkem_shared_secret
from securechat.crypto.kem import IKem, KemError, KeyPair

__all__ = ["P256Kem", "X25519Kem", "make_ecdh"]

@implementer(IKem)
class _DhKem(ABC):
    """Shared DHKEM logic; subclasses supply key (de)serialisation and the raw DH function.

    Parsed private keys live in a small per-curve LRU keyed by their bytes (filled by key
    generation and on first use), so that neither side re-derives a key it already holds:
    loading a private key computes its public key, one scalar multiplication.
    """

    name = "ecdh"
    params = ""
    secret_size = SECRET_SIZE
    rotates_every_turn = True
    suite_id = b""

    @abstractmethod
    def generate_keypair(self) -> KeyPair:
        """Make a fresh key pair in this curve's serialised form."""

    @abstractmethod
    def validate_public(self, public: bytes) -> None:
        """Raise :class:`KemError` unless ``public`` is a usable peer key."""

    @abstractmethod
    def _peer(self, public: bytes) -> Any:
        """Decode (and check) a peer public key; raise :class:`KemError` if unusable."""

    @abstractmethod
    def _private(self, private: bytes, keep: bool = True) -> tuple[Any, bytes]:
        """``(key object, serialised public key)`` of ``private``, cached unless not ``keep``."""

    @abstractmethod
    def _dh(self, key: Any, peer: Any) -> bytes:
        """Raw DH of two loaded keys; raise :class:`KemError` if unusable."""

    def exchange(self, private: bytes, public: bytes) -> bytes:
        """Raw DH: validate ``public``, return the DH output; raise :class:`KemError` if unusable.

        Public so that the Wycheproof vectors exercise the very code path ``decapsulate`` uses.
        """
        peer = self._peer(public)
        return self._dh(self._private(private)[0], peer)

    def public_from_private(self, private: bytes) -> bytes:
        """Serialised public key of ``private`` (``pkR`` in the KEM context)."""
        return self._private(private)[1]

    def encapsulate(self, public: bytes) -> tuple[bytes, bytes]:
        """Ephemeral-static DH to ``public``; the ephemeral public key is ``enc``.

        The ephemeral key object comes straight from generation (and leaves the cache at once:
        it is used exactly once), rather than being parsed back from its bytes.
        """
        peer = self._peer(public)
        ephemeral = self.generate_keypair()
        dh_output = self._dh(self._private(ephemeral.private, keep=False)[0], peer)
        enc = ephemeral.public
        return dhkem_shared_secret(self.suite_id, dh_output, enc, public), enc

    def decapsulate(self, private: bytes, enc: bytes) -> bytes:
        """Recompute the secret from our static private key and the sender's ephemeral ``enc``."""
        peer = self._peer(enc)
        key, pk_r = self._private(private)
        return dhkem_shared_secret(self.suite_id, self._dh(key, peer), enc, pk_r)


class X25519Kem(_DhKem):
    """``DHKEM(X25519, HKDF-SHA256)``: the default backend (fast, misuse-resistant curve)."""

    params = "x25519"
    suite_id = b"KEM\x00\x20"
    _privates: ClassVar[Lru[bytes, tuple[x25519.X25519PrivateKey, bytes]]] = Lru(PRIVATE_SLOTS)
    _validated: ClassVar[Lru[bytes, bool]] = Lru(PUBLIC_SLOTS)
    _trial: ClassVar[list[x25519.X25519PrivateKey]] = []

    def generate_keypair(self) -> KeyPair:
        key = x25519.X25519PrivateKey.generate()
        public, private = key.public_key().public_bytes_raw(), key.private_bytes_raw()
        self._privates.put(private, (key, public))
        return KeyPair(public=public, private=private)

    def validate_public(self, public: bytes) -> None:
        """Reject wrong lengths and the low-order points that force an all-zero DH output.

        RFC 7748 keys need no on-curve check, but a low-order point makes the shared secret a
        constant known to everyone. Clamped scalars are multiples of the cofactor 8, so a
        trial exchange with any key (one throw-away key per process: its output is discarded)
        yields zero exactly for those points. Keys that passed are remembered by their bytes.
        """
        if self._validated.get(public) is not None:
            return
        if not self._trial:
            self._trial.append(x25519.X25519PrivateKey.generate())
        self._dh(self._trial[0], self._peer(public))
        self._validated.put(public, True)

    def _peer(self, public: bytes) -> x25519.X25519PublicKey:
        return _load_x25519_public(public)

    def _private(self, private: bytes, keep: bool = True) -> tuple[x25519.X25519PrivateKey, bytes]:
        entry = self._privates.get(private) if keep else self._privates.pop(private)
        if entry is None:
            key = _load_x25519_private(private)
            entry = (key, key.public_key().public_bytes_raw())
            if keep:
                self._privates.put(private, entry)
        return entry

    def _dh(self, key: x25519.X25519PrivateKey, peer: x25519.X25519PublicKey) -> bytes:
        try:
            return key.exchange(peer)
        except ValueError as exc:
            # cryptography raises ValueError when the output is all zeros (a low-order point).
            raise KemError(
                "X25519 public key is a low-order point (all-zero shared secret)"
            ) from exc


class P256Kem(_DhKem):
    """``DHKEM(P-256, HKDF-SHA256)``: for peers that must stay within NIST curves."""

    params = "p256"
    suite_id = b"KEM\x00\x10"
    _privates: ClassVar[Lru[bytes, tuple[ec.EllipticCurvePrivateKey, bytes]]] = Lru(PRIVATE_SLOTS)
    _publics: ClassVar[Lru[bytes, ec.EllipticCurvePublicKey]] = Lru(PUBLIC_SLOTS)

    def generate_keypair(self) -> KeyPair:
        key = ec.generate_private_key(ec.SECP256R1())
        public = _p256_public_bytes(key.public_key())
        private = key.private_numbers().private_value.to_bytes(32, "big")
        self._privates.put(private, (key, public))
        return KeyPair(public=public, private=private)

    def validate_public(self, public: bytes) -> None:
        """Reject anything but an uncompressed SEC1 encoding of a point on P-256.

        Invalid-curve attacks recover a static private key from DH outputs on points of small
        order off the curve, so every peer point is decoded with a full on-curve check (and
        the decoded point is remembered by its exact bytes).
        """
        self._peer(public)

    def _peer(self, public: bytes) -> ec.EllipticCurvePublicKey:
        key = self._publics.get(public)
        if key is None:
            key = _load_p256_public(public)
            self._publics.put(public, key)
        return key

    def _private(
        self, private: bytes, keep: bool = True
    ) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
        entry = self._privates.get(private) if keep else self._privates.pop(private)
        if entry is None:
            key = _load_p256_private(private)
            entry = (key, _p256_public_bytes(key.public_key()))
            if keep:
                self._privates.put(private, entry)
        return entry

    def _dh(self, key: ec.EllipticCurvePrivateKey, peer: ec.EllipticCurvePublicKey) -> bytes:
        try:
            return key.exchange(ec.ECDH(), peer)
        except ValueError as exc:  # pragma: no cover - points are validated on decoding
            raise KemError("P-256 key agreement failed") from exc


def _load_x25519_public(public: bytes) -> x25519.X25519PublicKey:
    if len(public) != 32:
        raise KemError(f"X25519 public key must be 32 bytes, got {len(public)}")
    return x25519.X25519PublicKey.from_public_bytes(public)


def _load_x25519_private(private: bytes) -> x25519.X25519PrivateKey:
    if len(private) != 32:
        raise KemError("X25519 private key must be 32 bytes")
    return x25519.X25519PrivateKey.from_private_bytes(private)


def _p256_public_bytes(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def _load_p256_public(public: bytes) -> ec.EllipticCurvePublicKey:
    if len(public) != 65 or public[0] != 0x04:
        raise KemError("P-256 public key must be a 65-byte uncompressed SEC1 point")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), public)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KemError("P-256 public key is not a point on the curve") from exc


def _load_p256_private(private: bytes) -> ec.EllipticCurvePrivateKey:
    if len(private) != 32:
        raise KemError("P-256 private key must be a 32-byte scalar")
    try:
        return ec.derive_private_key(int.from_bytes(private, "big"), ec.SECP256R1())
    except ValueError as exc:
        raise KemError("P-256 private scalar out of range") from exc


_CURVES: dict[str, type[_DhKem]] = {"x25519": X25519Kem, "p256": P256Kem}


def make_ecdh(curve: str = "x25519", **unknown: object) -> IKem:
    """Registry factory: ``curve`` is ``"x25519"`` (default) or ``"p256"``.

    :raises KemError: for an unknown curve or any other parameter, so a typo in the
        configuration fails loudly instead of silently selecting the default.
    """
    if unknown:
        raise KemError(f"ecdh: unknown parameter(s) {sorted(unknown)}")
    try:
        cls = _CURVES[curve]
    except (KeyError, TypeError):
        raise KemError(f"ecdh: unknown curve {curve!r}; choose from {sorted(_CURVES)}") from None
    return cls()


kem.register("ecdh", make_ecdh)
