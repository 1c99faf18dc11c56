# -*- test-case-name: tests.server.test_prekeycheck -*-
"""Type and size checks of what a client publishes to the key directory.

The relay stores prekey records and identity keys for others to fetch, and must not become
a place to park arbitrary data (16 KiB of junk under "identity key" used to be accepted,
then served to everyone who fetched that user's bundle). It cannot verify signatures or
keys (that needs the crypto package, which the server does not load, and clients verify
anyway), but it can insist on the shape the clients produce
(:mod:`securechat.crypto.prekeys`):

* an identity key is a raw Ed25519 public key, 32 bytes;
* a signed prekey is the deterministic CBOR map ``{"id", "be", "pub", "exp", "sig"}`` plus
  ``"ikem"`` (handshake v2), a one-time prekey ``{"id", "be", "pub"}`` whose ``id`` is the
  id it is published under;
* ``be`` names the backend it is published for (``name:params``), and ``pub`` and
  ``ikem`` have a size this backend's public keys can have
  (:data:`securechat.config.PUBLIC_KEY_BYTES`), ``sig`` is a 64-byte Ed25519 signature.
"""

from __future__ import annotations

from typing import Any

import cbor2

from securechat.config import PUBLIC_KEY_BYTES
from securechat.server.registration import IDENTITY_KEY_BYTES

SIGNATURE_BYTES = 64
MAX_RECORD = 4096
MAX_KEY_ID = 2**32 - 1
_SIGNED = (frozenset({"id", "be", "pub", "exp", "sig"}), frozenset({"id", "be", "pub", "ikem",
                                                                    "exp", "sig"}))
_ONE_TIME = (frozenset({"id", "be", "pub"}),)


class BadKeyRecord(ValueError):
    """A published key or prekey record has the wrong type, shape or size."""


def check_identity_key(key: bytes) -> None:
    """:raises BadKeyRecord: unless ``key`` is 32 bytes."""
    if len(key) != IDENTITY_KEY_BYTES:
        raise BadKeyRecord(f"an identity key is {IDENTITY_KEY_BYTES} bytes, not {len(key)}")


def check_signed_prekey(backend: str, record: bytes) -> None:
    """:raises BadKeyRecord: unless ``record`` is a signed prekey record for ``backend``."""
    obj = _record(backend, record, _SIGNED)
    exp, sig = obj["exp"], obj["sig"]
    if type(exp) is not int or not 0 <= exp < 2**63:
        raise BadKeyRecord("a signed prekey's expiry is an unsigned integer")
    if type(sig) is not bytes or len(sig) != SIGNATURE_BYTES:
        raise BadKeyRecord(f"a signed prekey's signature is {SIGNATURE_BYTES} bytes")
    if "ikem" in obj:
        _public(backend, obj["ikem"], "identity KEM key")


def check_one_time_prekey(backend: str, key_id: int, record: bytes) -> None:
    """:raises BadKeyRecord: unless ``record`` is one-time prekey ``key_id`` for ``backend``."""
    obj = _record(backend, record, _ONE_TIME)
    if obj["id"] != key_id:
        raise BadKeyRecord(f"one-time prekey {key_id} carries id {obj['id']}")


def _record(backend: str, record: bytes, shapes: tuple[frozenset[str], ...]) -> dict[str, Any]:
    if len(record) > MAX_RECORD:
        raise BadKeyRecord(f"a prekey record is at most {MAX_RECORD} bytes")
    try:
        obj = cbor2.loads(record)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError, OverflowError):
        raise BadKeyRecord("a prekey record is a CBOR map") from None
    if not isinstance(obj, dict) or frozenset(obj) not in shapes:
        raise BadKeyRecord("a prekey record has missing or unknown fields")
    key_id, be = obj["id"], obj["be"]
    if type(key_id) is not int or not 0 <= key_id <= MAX_KEY_ID:
        raise BadKeyRecord("a prekey id is a 32-bit unsigned integer")
    if type(be) is not str or be.partition(":")[0] != backend or len(be) > 64:
        raise BadKeyRecord(f"a prekey published for {backend} names that backend")
    _public(backend, obj["pub"], "public key")
    if bytes(cbor2.dumps(obj, canonical=True)) != record:
        raise BadKeyRecord("a prekey record is in deterministic CBOR")
    return obj


def _public(backend: str, value: Any, what: str) -> None:
    low, high = PUBLIC_KEY_BYTES.get(backend, (1, 2048))
    if type(value) is not bytes or not low <= len(value) <= high:
        raise BadKeyRecord(f"a {backend} {what} is {low} to {high} bytes")
