"""Identity keys: signing, verification errors, fingerprints and safety numbers."""

from __future__ import annotations

import re

import pytest
from cryptography.hazmat.primitives import hashes

from securechat.crypto import identity
from securechat.crypto.identity import IdentityKeyPair, SignatureError


@pytest.fixture(scope="module")
def alice() -> IdentityKeyPair:
    return IdentityKeyPair.generate()


@pytest.fixture(scope="module")
def bob() -> IdentityKeyPair:
    return IdentityKeyPair.generate()


def test_sign_verify_and_private_round_trip(alice: IdentityKeyPair) -> None:
    signature = alice.sign(b"prekey bundle")
    assert len(signature) == 64
    identity.verify(alice.public_bytes(), b"prekey bundle", signature)
    raw = alice.private_bytes()
    assert len(raw) == 32
    restored = IdentityKeyPair.from_private_bytes(raw)
    assert restored.public_bytes() == alice.public_bytes()
    # Ed25519 is deterministic: the restored key signs identically.
    assert restored.sign(b"prekey bundle") == signature


def test_repr_does_not_reveal_private_key(alice: IdentityKeyPair) -> None:
    text = repr(alice)
    assert alice.private_bytes().hex() not in text
    assert alice.public_bytes().hex() in text


def test_private_bytes_of_wrong_length_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        IdentityKeyPair.from_private_bytes(b"\x01" * 31)


def test_verify_failures_raise_signature_error(
    alice: IdentityKeyPair, bob: IdentityKeyPair
) -> None:
    data = b"handshake transcript"
    signature = alice.sign(data)
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    cases = [
        (bob.public_bytes(), data, signature),  # someone else's key
        (alice.public_bytes(), data + b"!", signature),  # other data
        (alice.public_bytes(), data, flipped),  # tampered signature
        (alice.public_bytes(), data, signature[:-1]),  # truncated signature
        (alice.public_bytes()[:31], data, signature),  # malformed key
    ]
    for public, message, sig in cases:
        with pytest.raises(SignatureError):
            identity.verify(public, message, sig)
    assert issubclass(SignatureError, ValueError)


def test_fingerprint_format_and_construction(alice: IdentityKeyPair) -> None:
    text = identity.fingerprint(alice.public_bytes())
    assert re.fullmatch(r"[0-9a-f]{4}( [0-9a-f]{4}){15}", text)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(b"\x65" + alice.public_bytes())
    assert text.replace(" ", "") == digest.finalize().hex()


def test_fingerprints_differ_per_key(alice: IdentityKeyPair, bob: IdentityKeyPair) -> None:
    assert identity.fingerprint(alice.public_bytes()) != identity.fingerprint(bob.public_bytes())


def test_encode_identity_key_is_type_prefixed(alice: IdentityKeyPair) -> None:
    encoded = identity.encode_identity_key(alice.public_bytes())
    assert encoded == bytes([identity.IDENTITY_KEY_TYPE]) + alice.public_bytes()
    assert identity.IDENTITY_KEY_TYPE == 0x65
    with pytest.raises(ValueError):
        identity.encode_identity_key(b"\x00" * 33)


def test_safety_number_is_symmetric_and_60_digits(
    alice: IdentityKeyPair, bob: IdentityKeyPair
) -> None:
    a, b = alice.public_bytes(), bob.public_bytes()
    number = identity.safety_number(a, "alice", b, "bob")
    assert re.fullmatch(r"[0-9]{60}", number)
    assert identity.safety_number(b, "bob", a, "alice") == number
    # Equal to the libsignal construction over securechat's key encoding and UTF-8 names.
    assert number == identity.numeric_safety_number(b"\x65" + a, b"alice", b"\x65" + b, b"bob")


def test_safety_number_changes_with_key_or_name(
    alice: IdentityKeyPair, bob: IdentityKeyPair
) -> None:
    a, b = alice.public_bytes(), bob.public_bytes()
    number = identity.safety_number(a, "alice", b, "bob")
    mallory = IdentityKeyPair.generate().public_bytes()
    assert identity.safety_number(a, "alice", mallory, "bob") != number
    assert identity.safety_number(a, "alice", b, "bobby") != number


def test_numeric_fingerprint_half_layout() -> None:
    # Each half is 30 digits: six groups of 5; the 60-digit number sorts the two halves.
    half_a = identity.numeric_fingerprint(b"\x05" + b"\x01" * 32, b"a")
    half_b = identity.numeric_fingerprint(b"\x05" + b"\x02" * 32, b"b")
    assert re.fullmatch(r"[0-9]{30}", half_a)
    number = identity.numeric_safety_number(
        b"\x05" + b"\x01" * 32, b"a", b"\x05" + b"\x02" * 32, b"b"
    )
    assert number == min(half_a, half_b) + max(half_a, half_b)


def test_format_safety_number() -> None:
    number = "300354477692869396892869876765458257569162576843440918079131"
    assert identity.format_safety_number(number) == (
        "30035 44776 92869 39689 28698 76765 45825 75691 62576 84344 09180 79131"
    )
