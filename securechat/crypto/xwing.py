"""The ``hybrid`` backend: X-Wing, ML-KEM-768 + X25519 (draft-connolly-cfrg-xwing-kem).

Why X-Wing: a session key that stays secret if *either* ML-KEM-768 (FIPS 203, post-quantum)
or X25519 (RFC 7748, classical) holds, as a plain KEM that drops into the handshake and the
ratchet like every other backend. X-Wing fixes the parameters and proves its combiner, which is
cheaper than a generic one because ML-KEM's ciphertext need not be hashed:

* keys: the private key is a 32-byte seed ``sk``; ``expanded = SHAKE256(sk, 96)``; the ML-KEM
  key pair is ``ML-KEM-768.KeyGen_internal(d = expanded[0:32], z = expanded[32:64])`` and the
  X25519 private key is ``expanded[64:96]``. The public key is ``pk_M || pk_X`` (1184 + 32).
* encapsulation: ``(ss_M, ct_M) = ML-KEM-768.Encaps(pk_M)``; a fresh X25519 ephemeral ``ek_X``
  gives ``ct_X = X25519(ek_X, 9)`` and ``ss_X = X25519(ek_X, pk_X)``; the ciphertext is
  ``ct_M || ct_X`` (1088 + 32).
* combiner: ``ss = SHA3-256(ss_M || ss_X || ct_X || pk_X || "\\.//^\\")``.

ML-KEM comes from ``cryptography`` (>= 50; ``from_seed_bytes`` takes ``d || z``), whose
encapsulation draws its own randomness: the draft's derandomised encapsulation cannot be run,
so its vectors would be checked through key generation and decapsulation only.
``tests/vectors/xwing-securechat.json`` holds vectors *we* generated (see its README entry);
the draft's published vectors were not available on the machine this was written on.

Two deliberate strictnesses beyond the draft, both only on hostile input: a public or
encapsulated X25519 value that makes the X25519 output all zeros (a low-order point) is
refused with :class:`KemError`, as in the ``ecdh`` backend, and ML-KEM public keys get the
FIPS 203 modulus check when decoded (``cryptography`` refuses out-of-range coefficients).
"""

from __future__ import annotations

from typing import ClassVar

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from zope.interface import implementer

from securechat.crypto import kem
from securechat.crypto._cache import PRIVATE_SLOTS, PUBLIC_SLOTS, Lru
from securechat.crypto.kem import IKem, KemError, KeyPair

__all__ = [
    "CIPHERTEXT_SIZE",
    "PUBLIC_KEY_SIZE",
    "SEED_SIZE",
    "XWING_LABEL",
    "XWingKem",
    "combiner",
    "expand_seed",
    "make_hybrid",
]

SEED_SIZE = 32
MLKEM_PUBLIC_SIZE = 1184
MLKEM_CIPHERTEXT_SIZE = 1088
X25519_SIZE = 32
PUBLIC_KEY_SIZE = MLKEM_PUBLIC_SIZE + X25519_SIZE
CIPHERTEXT_SIZE = MLKEM_CIPHERTEXT_SIZE + X25519_SIZE
#: The draft's domain-separation label, the six ASCII bytes ``\.//^\``.
XWING_LABEL = b"\\.//^\\"

_Expanded = tuple[mlkem.MLKEM768PrivateKey, x25519.X25519PrivateKey, bytes]


def expand_seed(seed: bytes) -> _Expanded:
    """``expandDecapsulationKey``: the ML-KEM and X25519 private keys and the public key."""
    if len(seed) != SEED_SIZE:
        raise KemError(f"X-Wing private key must be a {SEED_SIZE}-byte seed")
    shake = hashes.Hash(hashes.SHAKE256(96))
    shake.update(seed)
    expanded = shake.finalize()
    sk_m = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64])
    sk_x = x25519.X25519PrivateKey.from_private_bytes(expanded[64:96])
    public = sk_m.public_key().public_bytes_raw() + sk_x.public_key().public_bytes_raw()
    return sk_m, sk_x, public


def combiner(ss_m: bytes, ss_x: bytes, ct_x: bytes, pk_x: bytes) -> bytes:
    """``SHA3-256(ss_M || ss_X || ct_X || pk_X || XWingLabel)``."""
    digest = hashes.Hash(hashes.SHA3_256())
    for part in (ss_m, ss_x, ct_x, pk_x, XWING_LABEL):
        digest.update(part)
    return digest.finalize()


def _x25519(key: x25519.X25519PrivateKey, public: bytes) -> bytes:
    try:
        return key.exchange(x25519.X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:  # all-zero output: a low-order point
        raise KemError("X-Wing X25519 value is a low-order point") from exc


@implementer(IKem)
class XWingKem:
    """X-Wing as an :class:`IKem` (keys and ciphertexts as bytes, checked on every use)."""

    name = "hybrid"
    params = "xwing"
    secret_size = 32
    rotates_every_turn = True
    _privates: ClassVar[Lru[bytes, _Expanded]] = Lru(PRIVATE_SLOTS)
    _publics: ClassVar[Lru[bytes, mlkem.MLKEM768PublicKey]] = Lru(PUBLIC_SLOTS)
    #: One throw-away X25519 key per process for the low-order check (its output is unused).
    _trial: ClassVar[list[x25519.X25519PrivateKey]] = []

    def generate_keypair(self) -> KeyPair:
        """A fresh 32-byte seed from the OS CSPRNG (through X25519 key generation)."""
        seed = x25519.X25519PrivateKey.generate().private_bytes_raw()
        expanded = expand_seed(seed)
        self._privates.put(seed, expanded)
        return KeyPair(public=expanded[2], private=seed)

    def _expanded(self, private: bytes) -> _Expanded:
        entry = self._privates.get(private)
        if entry is None:
            entry = expand_seed(private)
            self._privates.put(private, entry)
        return entry

    def _mlkem_public(self, public: bytes) -> mlkem.MLKEM768PublicKey:
        if len(public) != PUBLIC_KEY_SIZE:
            raise KemError(f"X-Wing public key must be {PUBLIC_KEY_SIZE} bytes")
        pk_m = public[:MLKEM_PUBLIC_SIZE]
        key = self._publics.get(pk_m)
        if key is None:
            try:
                key = mlkem.MLKEM768PublicKey.from_public_bytes(pk_m)
            except ValueError as exc:
                raise KemError("X-Wing ML-KEM-768 public key is not well formed") from exc
            self._publics.put(pk_m, key)
        return key

    def validate_public(self, public: bytes) -> None:
        """Length, the ML-KEM modulus check, and a non-low-order X25519 half."""
        self._mlkem_public(public)
        if not self._trial:
            self._trial.append(x25519.X25519PrivateKey.generate())
        _x25519(self._trial[0], public[MLKEM_PUBLIC_SIZE:])

    def encapsulate(self, public: bytes) -> tuple[bytes, bytes]:
        pk_m = self._mlkem_public(public)
        pk_x = public[MLKEM_PUBLIC_SIZE:]
        ss_m, ct_m = pk_m.encapsulate()
        ephemeral = x25519.X25519PrivateKey.generate()
        ct_x = ephemeral.public_key().public_bytes_raw()
        ss_x = _x25519(ephemeral, pk_x)
        return combiner(ss_m, ss_x, ct_x, pk_x), ct_m + ct_x

    def decapsulate(self, private: bytes, enc: bytes) -> bytes:
        if len(enc) != CIPHERTEXT_SIZE:
            raise KemError(f"X-Wing ciphertext must be {CIPHERTEXT_SIZE} bytes")
        sk_m, sk_x, public = self._expanded(private)
        ct_m, ct_x = enc[:MLKEM_CIPHERTEXT_SIZE], enc[MLKEM_CIPHERTEXT_SIZE:]
        try:
            ss_m = sk_m.decapsulate(ct_m)  # implicit rejection: a wrong ct gives a wrong ss
        except ValueError as exc:  # pragma: no cover - the length is checked above
            raise KemError("X-Wing ML-KEM-768 ciphertext refused") from exc
        ss_x = _x25519(sk_x, ct_x)
        return combiner(ss_m, ss_x, ct_x, public[MLKEM_PUBLIC_SIZE:])


def make_hybrid(kem: str = "xwing", **unknown: object) -> IKem:
    """Registry factory: the only parameter set is ``xwing``.

    :raises KemError: for any other name or parameter.
    """
    if unknown:
        raise KemError(f"hybrid: unknown parameter(s) {sorted(unknown)}")
    if kem != "xwing":
        raise KemError(f"hybrid: unknown KEM {kem!r}; only 'xwing'")
    return XWingKem()


kem.register("hybrid", make_hybrid)
