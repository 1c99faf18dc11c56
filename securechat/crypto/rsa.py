"""RSA-OAEP key transport as a KEM: encrypt a random 32-byte secret to the peer's RSA key.

Why OAEP with SHA-256 and MGF1-SHA256 (label empty): it is the padding with a security proof
and no Bleichenbacher/ROBOT history; PKCS#1 v1.5 encryption is never offered. Why 3072 bits by
default: ~128-bit strength (NIST SP 800-57), matching X25519 and ffdhe3072; 2048 (~112-bit) is
the floor and anything smaller is refused when the backend is built.

RSA transport has **no forward secrecy** on its own: whoever later obtains the RSA private key
can unwrap every secret sent to it. Key generation takes ~0.1-0.2 s at 3072 bits, too slow
for a new key on every ratchet turn, hence ``rotates_every_turn = False``; the ratchet rotates
RSA keys on a timer instead.

Serialised keys: DER ``SubjectPublicKeyInfo`` (public) and unencrypted DER PKCS8 (private),
the formats every RSA tool reads. Peer keys are checked for the configured modulus size and a
sane public exponent (odd, ``2^16 < e < 2^256`` as in NIST SP 800-56B) and must be in
canonical DER, so each key has exactly one encoding.
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric import rsa as _rsa
from zope.interface import implementer

from securechat.crypto import kem
from securechat.crypto._cache import PRIVATE_SLOTS, PUBLIC_SLOTS, Lru
from securechat.crypto.kem import IKem, KemError, KeyPair

__all__ = ["DEFAULT_BITS", "MIN_BITS", "PUBLIC_EXPONENT", "RsaKem", "make_rsa"]

DEFAULT_BITS = 3072
MIN_BITS = 2048
#: Largest modulus accepted: keeps a hostile configuration from asking for minute-long keygen.
MAX_BITS = 8192
#: The exponent we generate; peers may use any odd exponent in ``[65537, 2^256)``.
PUBLIC_EXPONENT = 65537
_SECRET_SIZE = 32


def _oaep(label: bytes | None) -> padding.OAEP:
    return padding.OAEP(
        mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=label
    )


_OAEP = _oaep(None)


@implementer(IKem)
class RsaKem:
    """RSA-OAEP-SHA256 wrapping a fresh random 32-byte secret per encapsulation."""

    name = "rsa"
    secret_size = _SECRET_SIZE
    rotates_every_turn = False

    def __init__(self, bits: int = DEFAULT_BITS) -> None:
        if isinstance(bits, bool) or not isinstance(bits, int):
            raise KemError(f"rsa: bits must be an integer, got {bits!r}")
        if bits < MIN_BITS:
            raise KemError(f"rsa: {bits}-bit keys are too weak; at least {MIN_BITS} required")
        if bits > MAX_BITS or bits % 8:
            raise KemError(f"rsa: bits must be a multiple of 8 up to {MAX_BITS}, got {bits}")
        self.bits = bits
        self.params = f"rsa{bits}"
        #: Peer keys that passed :meth:`load_public`, by their exact DER bytes.
        self._publics: Lru[bytes, _rsa.RSAPublicKey] = Lru(PUBLIC_SLOTS)
        #: Our parsed private keys, by their exact PKCS8 bytes (filled by key generation).
        self._privates: Lru[bytes, _rsa.RSAPrivateKey] = Lru(PRIVATE_SLOTS)

    def generate_keypair(self) -> KeyPair:
        key = _rsa.generate_private_key(public_exponent=PUBLIC_EXPONENT, key_size=self.bits)
        private = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self._privates.put(private, key)
        return KeyPair(
            public=key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            private=private,
        )

    def load_public(self, public: bytes) -> _rsa.RSAPublicKey:
        """Parse and check a peer key (see the module docstring for the policy).

        :raises KemError: if the key is not canonical DER RSA of the configured size or has an
            unacceptable exponent (``e = 3`` invites low-exponent attacks on bad padding).
        """
        cached = self._publics.get(public)
        if cached is not None:
            return cached
        try:
            key = serialization.load_der_public_key(public)
        except (ValueError, TypeError) as exc:
            raise KemError("RSA public key is not valid DER SubjectPublicKeyInfo") from exc
        if not isinstance(key, _rsa.RSAPublicKey):
            raise KemError("public key is not an RSA key")
        numbers = key.public_numbers()
        if numbers.n.bit_length() != self.bits:
            raise KemError(
                f"RSA modulus is {numbers.n.bit_length()} bits; this backend uses {self.bits}"
            )
        if numbers.e % 2 == 0 or not PUBLIC_EXPONENT <= numbers.e < 2**256:
            raise KemError(f"RSA public exponent {numbers.e} refused (odd, >= 65537 required)")
        canonical = key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if canonical != public:
            raise KemError("RSA public key is not in canonical DER")
        self._publics.put(public, key)
        return key

    def validate_public(self, public: bytes) -> None:
        self.load_public(public)

    def load_private(self, private: bytes) -> _rsa.RSAPrivateKey:
        """Parse our own PKCS8 key, checking it matches the configured size.

        The private key only ever comes from our own generator via the authenticated local
        keystore, so OpenSSL's full consistency check (primality of p and q: ~100 ms at 3072
        bits, on every decapsulation) is skipped, as ``cryptography`` documents for trusted
        keys. A corrupted key can only make decryption fail; OpenSSL still blinds the
        operation.
        """
        cached = self._privates.get(private)
        if cached is not None:
            return cached
        try:
            key = serialization.load_der_private_key(
                private, password=None, unsafe_skip_rsa_key_validation=True
            )
        except (ValueError, TypeError) as exc:
            raise KemError("RSA private key is not valid DER PKCS8") from exc
        if not isinstance(key, _rsa.RSAPrivateKey) or key.key_size != self.bits:
            raise KemError(f"private key is not a {self.bits}-bit RSA key")
        self._privates.put(private, key)
        return key

    def encapsulate(self, public: bytes) -> tuple[bytes, bytes]:
        """Wrap 32 bytes from the OS CSPRNG; ``enc`` is the OAEP ciphertext (``bits / 8`` bytes)."""
        key = self.load_public(public)
        secret = os.urandom(_SECRET_SIZE)
        return secret, key.encrypt(secret, _OAEP)

    def unwrap(self, private: bytes, enc: bytes, label: bytes | None = None) -> bytes:
        """OAEP-decrypt ``enc``; the plaintext may have any length (``decapsulate`` checks it).

        Every failure raises the same :class:`KemError` message so that the error itself is
        no padding oracle (Manger's attack). ``label`` exists for the published test vectors;
        securechat itself always uses no label.
        """
        key = self.load_private(private)
        if len(enc) != self.bits // 8:
            raise KemError("RSA-OAEP decapsulation failed")
        try:
            return key.decrypt(enc, _OAEP if label is None else _oaep(label))
        except ValueError:
            raise KemError("RSA-OAEP decapsulation failed") from None

    def decapsulate(self, private: bytes, enc: bytes) -> bytes:
        secret = self.unwrap(private, enc)
        if len(secret) != _SECRET_SIZE:
            raise KemError("RSA-OAEP decapsulation failed")
        return secret


def make_rsa(bits: int = DEFAULT_BITS, **unknown: object) -> IKem:
    """Registry factory: ``bits`` is the modulus size (default 3072, at least 2048).

    :raises KemError: for a weak or malformed size or any other parameter.
    """
    if unknown:
        raise KemError(f"rsa: unknown parameter(s) {sorted(unknown)}")
    return RsaKem(bits)


kem.register("rsa", make_rsa)
