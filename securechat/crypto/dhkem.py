"""RFC 9180 DHKEM key derivation, shared by every Diffie-Hellman-style backend.

Why one module: :mod:`securechat.crypto.ecdh` (X25519, P-256) and :mod:`securechat.crypto.dh`
(finite-field groups) turn a raw DH output into a KEM secret the same way, HPKE's
``ExtractAndExpand`` with ``kem_context = enc || pkR`` under each backend's own suite id.
Keeping it apart means neither backend imports the other.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

__all__ = ["SECRET_SIZE", "dhkem_shared_secret", "labeled_expand", "labeled_extract"]

#: Length of every DHKEM secret: Nsecret of the HKDF-SHA256 DHKEMs, and the key size of
#: AES-256-GCM used further up.
SECRET_SIZE = 32

_HPKE_VERSION = b"HPKE-v1"
_HASH_LEN = 32


def labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    """RFC 9180 ``LabeledExtract`` with HKDF-SHA256.

    The version and suite prefix give domain separation: a DH output can never yield the same
    key under two different KEMs or protocols.
    """
    mac = hmac.HMAC(salt or bytes(_HASH_LEN), hashes.SHA256())
    mac.update(_HPKE_VERSION + suite_id + label + ikm)
    return mac.finalize()


def labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    """RFC 9180 ``LabeledExpand`` with HKDF-SHA256 (the output length is bound into ``info``)."""
    labeled_info = length.to_bytes(2, "big") + _HPKE_VERSION + suite_id + label + info
    return HKDFExpand(hashes.SHA256(), length, labeled_info).derive(prk)


def dhkem_shared_secret(suite_id: bytes, dh_output: bytes, enc: bytes, pk_r: bytes) -> bytes:
    """RFC 9180 ``ExtractAndExpand`` with ``kem_context = enc || pkR``.

    The raw DH output is not uniformly random (and for FFDH is much longer than a key), so it
    is never used directly; hashing it together with both public values binds the secret to
    this exact exchange.
    """
    prk = labeled_extract(suite_id, b"", b"eae_prk", dh_output)
    return labeled_expand(suite_id, prk, b"shared_secret", enc + pk_r, SECRET_SIZE)
