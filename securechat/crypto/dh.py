"""Classic finite-field Diffie-Hellman as a KEM (DHKEM style), kept as a legacy backend.

Why this exists at all: some deployments require FFDH. Why it is built like this:

* **Fixed, published groups only** -- RFC 7919 ``ffdhe2048/3072/4096`` (the named TLS groups,
  default ``ffdhe3072`` for ~128-bit strength matching X25519 and RSA-3072) and RFC 3526
  ``modp2048/modp3072``. All are safe primes ``p = 2q + 1`` with generator 2. Generating
  parameters per session is slow and invites weak or trapdoored groups, so it is never done.
* **Peer values are fully checked**: ``1 < y < p - 1`` and ``y^q mod p == 1`` (membership in
  the prime-order subgroup). OpenSSL accepts an element of order ``2q`` such as ``p - 2`` for
  these groups, which would leak one bit of our exponent per exchange, so the check is ours.
  It is evaluated with Euler's criterion: for a safe prime the order-``q`` subgroup is exactly
  the quadratic residues, so ``y^q == 1 (mod p)`` iff the Legendre symbol ``(y/p)`` is 1, which
  a Jacobi-symbol loop computes in well under a millisecond (a 3072-bit ``pow`` takes ~60 ms).
* **DHKEM** exactly as :mod:`securechat.crypto.ecdh` (RFC 9180 ``ExtractAndExpand`` with
  ``kem_context = enc || pkR``) under the private suite id ``b"KEM-securechat-" + group``, so
  the secret is bound to the group and to both public values.
* **Serialised keys**: the public key is ``y`` and the private key is the exponent ``x``, each
  a big-endian integer of exactly ``len(p)`` bytes (256/384/512). Fixed lengths mean a
  length check rejects truncated or padded encodings before any arithmetic.

``cryptography`` 50 deprecates FFDH and warns whenever one of its ``dh`` module names is
looked up, and again when a DH private key is loaded. The engine is confined to
:class:`_Engine`, which fetches those names once and loads keys inside
:func:`silence_ffdh_deprecation` (ignoring exactly that message and category, nothing else),
so swapping the engine later touches one small class.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization
from cryptography.utils import CryptographyDeprecationWarning
from zope.interface import implementer

from securechat.crypto import kem
from securechat.crypto._cache import PRIVATE_SLOTS, PUBLIC_SLOTS, Lru
from securechat.crypto.dhkem import SECRET_SIZE, dhkem_shared_secret
from securechat.crypto.kem import IKem, KemError, KeyPair

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import dh as _dh_types

__all__ = [
    "DEFAULT_GROUP",
    "FFDH_DEPRECATION_MESSAGE",
    "GROUPS",
    "DhKem",
    "make_dh",
    "silence_ffdh_deprecation",
]

#: The message ``cryptography`` 50 attaches to every FFDH name lookup (matched from the start).
FFDH_DEPRECATION_MESSAGE = re.escape("Diffie-Hellman over finite fields (FFDH) is deprecated")

GENERATOR = 2
DEFAULT_GROUP = "ffdhe3072"

#: Safe primes, hex, copied from OpenSSL's built-in groups (RFC 7919 section A, RFC 3526
#: sections 3 and 4). tests/crypto/test_published_vectors.py recomputes the RFC 7919 formula
#: and compares the RFC 3526 ones with cryptography_vectors' copy of the RFC.
_PRIMES_HEX: dict[str, str] = {
    "ffdhe2048": (
        "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695"
        "A9E13641146433FBCC939DCE249B3EF97D2FE363630C75D8F681B202AEC4617A"
        "D3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935"
        "984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797A"
        "BC0AB182B324FB61D108A94BB2C8E3FBB96ADAB760D7F4681D4F42A3DE394DF4"
        "AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61"
        "9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005"
        "C58EF1837D1683B2C6F34A26C1B2EFFA886B423861285C97FFFFFFFFFFFFFFFF"
    ),
    "ffdhe3072": (
        "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695"
        "A9E13641146433FBCC939DCE249B3EF97D2FE363630C75D8F681B202AEC4617A"
        "D3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935"
        "984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797A"
        "BC0AB182B324FB61D108A94BB2C8E3FBB96ADAB760D7F4681D4F42A3DE394DF4"
        "AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61"
        "9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005"
        "C58EF1837D1683B2C6F34A26C1B2EFFA886B4238611FCFDCDE355B3B6519035B"
        "BC34F4DEF99C023861B46FC9D6E6C9077AD91D2691F7F7EE598CB0FAC186D91C"
        "AEFE130985139270B4130C93BC437944F4FD4452E2D74DD364F2E21E71F54BFF"
        "5CAE82AB9C9DF69EE86D2BC522363A0DABC521979B0DEADA1DBF9A42D5C4484E"
        "0ABCD06BFA53DDEF3C1B20EE3FD59D7C25E41D2B66C62E37FFFFFFFFFFFFFFFF"
    ),
    "ffdhe4096": (
        "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695"
        "A9E13641146433FBCC939DCE249B3EF97D2FE363630C75D8F681B202AEC4617A"
        "D3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935"
        "984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797A"
        "BC0AB182B324FB61D108A94BB2C8E3FBB96ADAB760D7F4681D4F42A3DE394DF4"
        "AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61"
        "9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005"
        "C58EF1837D1683B2C6F34A26C1B2EFFA886B4238611FCFDCDE355B3B6519035B"
        "BC34F4DEF99C023861B46FC9D6E6C9077AD91D2691F7F7EE598CB0FAC186D91C"
        "AEFE130985139270B4130C93BC437944F4FD4452E2D74DD364F2E21E71F54BFF"
        "5CAE82AB9C9DF69EE86D2BC522363A0DABC521979B0DEADA1DBF9A42D5C4484E"
        "0ABCD06BFA53DDEF3C1B20EE3FD59D7C25E41D2B669E1EF16E6F52C3164DF4FB"
        "7930E9E4E58857B6AC7D5F42D69F6D187763CF1D5503400487F55BA57E31CC7A"
        "7135C886EFB4318AED6A1E012D9E6832A907600A918130C46DC778F971AD0038"
        "092999A333CB8B7A1A1DB93D7140003C2A4ECEA9F98D0ACC0A8291CDCEC97DCF"
        "8EC9B55A7F88A46B4DB5A851F44182E1C68A007E5E655F6AFFFFFFFFFFFFFFFF"
    ),
    "modp2048": (
        "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
        "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
        "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
        "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
        "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
        "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
        "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
        "3995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF"
    ),
    "modp3072": (
        "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
        "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
        "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
        "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
        "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
        "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
        "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
        "3995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33"
        "A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
        "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864"
        "D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
        "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF"
    ),
}

#: Group name -> prime ``p`` (``q = (p - 1) // 2``, generator :data:`GENERATOR`).
GROUPS: dict[str, int] = {name: int(value, 16) for name, value in _PRIMES_HEX.items()}


@contextmanager
def silence_ffdh_deprecation() -> Iterator[None]:
    """Ignore exactly ``cryptography``'s FFDH deprecation warning inside the block.

    A local ``catch_warnings`` rather than a module-level filter because test runners (pytest's
    ``filterwarnings = error``) install their filters in front of module-level ones; and a
    precise message and category so every other warning, including other deprecations, still
    surfaces. ``catch_warnings`` swaps the process-wide filter list, so two threads racing
    through it could at worst leave this one narrow filter installed; the relay and client run
    crypto on the reactor thread.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=FFDH_DEPRECATION_MESSAGE, category=CryptographyDeprecationWarning
        )
        yield


class _Engine:
    """The only code that touches ``cryptography``'s FFDH API (swap this to change engine).

    ``cryptography`` warns on the *lookup* of its ``dh`` names and when loading a DH key, not on
    key methods, so the names are fetched once here, at import, and keys are loaded, under
    :func:`silence_ffdh_deprecation`.
    """

    with silence_ffdh_deprecation():
        from cryptography.hazmat.primitives.asymmetric import dh as _dh

        _parameter_numbers = _dh.DHParameterNumbers
        _public_numbers = _dh.DHPublicNumbers
        _private_key_type = _dh.DHPrivateKey
        del _dh

    def __init__(self, p: int) -> None:
        self.p = p
        self.q = (p - 1) // 2
        self.size = (p.bit_length() + 7) // 8
        self._numbers = self._parameter_numbers(p, GENERATOR, self.q)
        self._parameters = self._numbers.parameters()

    def generate(self) -> _dh_types.DHPrivateKey:
        """A fresh key; OpenSSL recognises these named groups and uses RFC 7919 short exponents."""
        return self._parameters.generate_private_key()

    @staticmethod
    def dump_private(key: _dh_types.DHPrivateKey) -> bytes:
        """PKCS8 DER, so that loading it back lets OpenSSL recompute ``y`` quickly."""
        return key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @staticmethod
    def public_y(key: _dh_types.DHPrivateKey) -> int:
        return key.public_key().public_numbers().y

    def load_private(self, der: bytes) -> _dh_types.DHPrivateKey:
        """Parse a PKCS8 DH key and insist that it belongs to this very group."""
        try:
            # Unlike the other calls here, loading a DH key warns at run time as well.
            with silence_ffdh_deprecation():
                key = serialization.load_der_private_key(der, password=None)
        except (ValueError, TypeError) as exc:
            raise KemError("DH private key is not a valid PKCS8 DER key") from exc
        if not isinstance(key, self._private_key_type):
            raise KemError("private key is not a DH key")
        numbers = key.parameters().parameter_numbers()
        if numbers.p != self.p or numbers.g != GENERATOR:
            raise KemError("DH private key belongs to a different group")
        return key

    def load_public(self, y: int) -> _dh_types.DHPublicKey:
        """A key object for a public value ``y`` already checked by :meth:`DhKem.public_value`."""
        return self._public_numbers(y, self._numbers).public_key()

    def exchange(self, key: _dh_types.DHPrivateKey, peer: _dh_types.DHPublicKey) -> bytes:
        """Raw DH output ``y^x mod p`` as exactly ``len(p)`` bytes (RFC 9180 ``Ndh`` style)."""
        try:
            shared = key.exchange(peer)
        except ValueError as exc:
            raise KemError("DH key agreement failed") from exc
        return shared.rjust(self.size, b"\0")


def _jacobi(a: int, n: int) -> int:
    """Jacobi symbol ``(a/n)`` for odd ``n > 0`` (binary algorithm; inputs here are public).

    For odd ``a`` and ``n`` the reciprocity sign is ``-1`` exactly when both are ``3 mod 4``,
    i.e. when bit 1 is set in both; factors of two are stripped only when present.
    """
    a %= n
    result = 1
    while a:
        if not a & 1:
            twos = (a & -a).bit_length() - 1
            a >>= twos
            if twos & 1 and n & 7 in (3, 5):
                result = -result
        if a & 2 and n & 2:
            result = -result
        a, n = n % a, a
    return result if n == 1 else 0


@implementer(IKem)
class DhKem:
    """``DHKEM(FFDH group, HKDF-SHA256)`` for one of :data:`GROUPS`."""

    name = "dh"
    secret_size = SECRET_SIZE
    rotates_every_turn = True

    def __init__(self, group: str = DEFAULT_GROUP) -> None:
        try:
            p = GROUPS[group]
        except (KeyError, TypeError):
            raise KemError(f"dh: unknown group {group!r}; choose from {sorted(GROUPS)}") from None
        self.params = group
        self.suite_id = b"KEM-securechat-" + group.encode("ascii")
        self._engine = _Engine(p)
        #: Checked public values (exact bytes -> key object): the subgroup check and the
        #: OpenSSL key build are done once per distinct value.
        self._publics: Lru[bytes, _dh_types.DHPublicKey] = Lru(PUBLIC_SLOTS)
        #: Our parsed private keys with their encoded public values (a PKCS8 load recomputes
        #: ``y``, a modular exponentiation); filled by key generation and on first use.
        self._privates: Lru[bytes, tuple[_dh_types.DHPrivateKey, bytes]] = Lru(PRIVATE_SLOTS)

    def _encode(self, y: int) -> bytes:
        return y.to_bytes(self._engine.size, "big")

    def public_value(self, public: bytes) -> int:
        """Decode and check a peer's public value; return ``y``.

        :raises KemError: on a wrong length, ``y`` outside ``(1, p - 1)``, or ``y`` outside
            the prime-order subgroup (``y^q != 1 mod p``, tested via Euler's criterion).
        """
        if len(public) != self._engine.size:
            raise KemError(f"DH public value must be {self._engine.size} bytes, got {len(public)}")
        y = int.from_bytes(public, "big")
        p = self._engine.p
        if not 1 < y < p - 1:
            raise KemError("DH public value out of range (must satisfy 1 < y < p - 1)")
        if _jacobi(y, p) != 1:
            raise KemError("DH public value is not in the prime-order subgroup")
        return y

    def _peer(self, public: bytes) -> _dh_types.DHPublicKey:
        """The key object of a peer value that passed :meth:`public_value` (cached by bytes)."""
        key = self._publics.get(public)
        if key is None:
            key = self._engine.load_public(self.public_value(public))
            self._publics.put(public, key)
        return key

    def _private(self, private: bytes) -> tuple[_dh_types.DHPrivateKey, bytes]:
        entry = self._privates.get(private)
        if entry is None:
            key = self._engine.load_private(private)
            entry = (key, self._encode(self._engine.public_y(key)))
            self._privates.put(private, entry)
        return entry

    def validate_public(self, public: bytes) -> None:
        self._peer(public)

    def generate_keypair(self) -> KeyPair:
        key = self._engine.generate()
        public, private = self._encode(self._engine.public_y(key)), self._engine.dump_private(key)
        self._privates.put(private, (key, public))
        return KeyPair(public=public, private=private)

    def exchange(self, private: bytes, public: bytes) -> bytes:
        """Raw DH output for a PKCS8 ``private`` key and a checked peer ``public`` value."""
        peer = self._peer(public)
        return self._engine.exchange(self._private(private)[0], peer)

    def encapsulate(self, public: bytes) -> tuple[bytes, bytes]:
        peer = self._peer(public)
        ephemeral = self._engine.generate()
        enc = self._encode(self._engine.public_y(ephemeral))
        dh_output = self._engine.exchange(ephemeral, peer)
        return dhkem_shared_secret(self.suite_id, dh_output, enc, public), enc

    def decapsulate(self, private: bytes, enc: bytes) -> bytes:
        peer = self._peer(enc)
        key, pk_r = self._private(private)
        dh_output = self._engine.exchange(key, peer)
        return dhkem_shared_secret(self.suite_id, dh_output, enc, pk_r)


def make_dh(group: str = DEFAULT_GROUP, **unknown: object) -> IKem:
    """Registry factory: ``group`` is one of :data:`GROUPS` (default ``ffdhe3072``).

    :raises KemError: for an unknown group or any other parameter.
    """
    if unknown:
        raise KemError(f"dh: unknown parameter(s) {sorted(unknown)}")
    return DhKem(group)


kem.register("dh", make_dh)
