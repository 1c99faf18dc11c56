"""The Double Ratchet's key-derivation functions (Signal Double Ratchet spec, section 5.2).

``KDF_RK`` is HKDF-SHA256 (RFC 5869) with the root key as salt and the KEM secret as input,
64 bytes split into the new root key and a chain key (libsignal does the same with its own
info string). ``KDF_CK`` is libsignal's chain step, HMAC-SHA256 keyed by the chain key over the
single byte 0x01 (message-key seed) or 0x02 (next chain key); libsignal's chain-key vector
checks it. Kept apart from :mod:`securechat.crypto.ratchet` so that the test-vector generator
and other implementations can find every derivation in one short file.
"""

from __future__ import annotations

from typing import Final

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["chain_id", "kdf_ck", "kdf_rk"]

_RK_INFO: Final = b"securechat-v1 ratchet"
_CHAIN_ID_LABEL: Final = b"securechat-v1 chain"
_SHA256 = hashes.SHA256()


def kdf_rk(root_key: bytes, secret: bytes) -> tuple[bytes, bytes]:
    """``KDF_RK``: HKDF-SHA256(salt = root key, IKM = KEM secret) -> (root key, chain key)."""
    okm = HKDF(_SHA256, 64, root_key, _RK_INFO).derive(secret)
    return okm[:32], okm[32:]


def kdf_ck(chain_key: bytes) -> tuple[bytes, bytes]:
    """``KDF_CK``: (HMAC(ck, 0x01) = message-key seed, HMAC(ck, 0x02) = next chain key)."""
    mac = hmac.HMAC(chain_key, _SHA256)
    other = mac.copy()
    mac.update(b"\x01")
    other.update(b"\x02")
    return mac.finalize(), other.finalize()


def chain_id(ratchet_pub: bytes, kem_ct: bytes) -> bytes:
    """16-byte name of a receiving chain: SHA-256 over its length-prefixed header fields."""
    digest = hashes.Hash(_SHA256)
    digest.update(_CHAIN_ID_LABEL + len(ratchet_pub).to_bytes(4, "big") + ratchet_pub + kem_ct)
    return digest.finalize()[:16]
