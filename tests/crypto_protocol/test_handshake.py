"""Prekeys and the KEM handshake: success on every backend, and each failure distinct."""

from __future__ import annotations

import dataclasses

import pytest

from securechat.crypto import prekeys
from securechat.crypto.errors import (
    BackendMismatch,
    BadPrekeySignature,
    BadTranscriptSignature,
    ExpiredPrekey,
    MalformedHandshake,
    MalformedPrekey,
    SessionMismatch,
    UnknownPrekey,
)
from securechat.crypto.handshake import v2 as handshake
from securechat.crypto.identity import IdentityKeyPair
from securechat.crypto.session import Session
from tests.crypto_protocol.helpers import BACKENDS, NOW, Responder, kem_for, start


@pytest.mark.parametrize("label", sorted(BACKENDS))
@pytest.mark.parametrize("use_otk", [True, False])
def test_handshake_succeeds_on_every_backend(label: str, use_otk: bool) -> None:
    kem = kem_for(label)
    alice, bob = start(kem, use_otk=use_otk)
    envelope = alice.encrypt(b"first", room="#general")
    header = Session.peek(envelope)
    assert header.handshake is not None and header.backend == f"{kem.name}:{kem.params}"
    otks_before = set(bob.otks)
    bob_session, plaintext = bob.respond(envelope)
    assert plaintext == b"first"
    assert bob_session.peer_identity == alice.local_identity
    assert bob_session.ratchet.root_key == alice.ratchet.root_key
    # The one-time prekey is reported for deletion exactly when it was used.
    assert len(otks_before - set(bob.otks)) == (1 if use_otk else 0)
    reply = bob_session.encrypt(b"reply")
    assert Session.peek(reply).handshake is None
    assert alice.decrypt(reply)[1] == b"reply"
    # After the reply the initiator stops repeating the handshake.
    assert Session.peek(alice.encrypt(b"next")).handshake is None


def test_initiator_and_responder_derive_the_same_root_key() -> None:
    kem = kem_for("ecdh-x25519")
    bob = Responder(kem)
    alice = IdentityKeyPair.generate()
    result = handshake.initiate(
        kem, alice, bob.identity.public_bytes(), bob.spk.to_bytes(), bob.otk_blob(), NOW
    )
    answer = _respond(bob, result.message_bytes)
    assert answer.root_key == result.root_key and len(result.root_key) == 32
    assert answer.consumed_one_time_prekey == result.message.one_time_prekey_id == 100
    assert answer.initiator_identity == alice.public_bytes()


def _respond(bob: Responder, message: bytes, **overrides: object) -> handshake.ResponderResult:
    args: dict[str, object] = {
        "kem": bob.kem,
        "identity": bob.identity,
        "identity_kem": bob.ikem,
        "message_bytes": message,
        "find_signed_prekey": bob.find_signed,
        "find_one_time_prekey": bob.find_one_time,
        "replayed": bob.replayed,
        "now": NOW,
    }
    args.update(overrides)
    return handshake.respond(**args)  # type: ignore[arg-type]


def _initiate(bob: Responder, **overrides: object) -> handshake.InitiatorResult:
    args: dict[str, object] = {
        "kem": bob.kem,
        "identity": IdentityKeyPair.generate(),
        "peer_identity": bob.identity.public_bytes(),
        "signed_prekey": bob.spk.to_bytes(),
        "one_time_prekey": bob.otk_blob(),
        "now": NOW,
    }
    args.update(overrides)
    return handshake.initiate(**args)  # type: ignore[arg-type]


def test_prekey_signed_by_another_key_is_refused() -> None:
    bob = Responder(kem_for("ecdh-x25519"))
    with pytest.raises(BadPrekeySignature):
        _initiate(bob, peer_identity=IdentityKeyPair.generate().public_bytes())


def test_tampered_prekey_expiry_is_a_signature_failure() -> None:
    bob = Responder(kem_for("ecdh-x25519"))
    forged = dataclasses.replace(bob.spk, expires=bob.spk.expires + 10**6)
    with pytest.raises(BadPrekeySignature):
        _initiate(bob, signed_prekey=forged.to_bytes())


def test_expired_prekey_is_refused_by_the_initiator() -> None:
    bob = Responder(kem_for("ecdh-x25519"))
    with pytest.raises(ExpiredPrekey):
        _initiate(bob, now=bob.spk.expires)


def test_prekey_of_another_backend_is_refused() -> None:
    bob = Responder(kem_for("ecdh-p256"))
    with pytest.raises(BackendMismatch):
        _initiate(bob, kem=kem_for("ecdh-x25519"))


def test_one_time_prekey_of_another_backend_is_refused() -> None:
    bob = Responder(kem_for("ecdh-x25519"))
    other = Responder(kem_for("ecdh-p256"))
    with pytest.raises(BackendMismatch):
        _initiate(bob, one_time_prekey=other.otk_blob())


def test_malformed_prekey_blobs_are_refused() -> None:
    bob = Responder(kem_for("ecdh-x25519"))
    blob = bob.spk.to_bytes()
    for bad in (b"", b"\xa0", blob + b"\x00", blob[:-1], b"\x80" * 10):
        with pytest.raises(MalformedPrekey):
            prekeys.SignedPrekey.from_bytes(bad)
    bad_key = prekeys.sign_prekey(
        bob.identity, bob.kem, 2, bytes(32), int(NOW) + 100, bob.ikem.public
    )
    with pytest.raises(MalformedPrekey):  # the all-zero X25519 point has low order
        _initiate(bob, signed_prekey=bad_key.to_bytes())
    bad_ikem = prekeys.sign_prekey(
        bob.identity, bob.kem, 2, bob.spk.public, int(NOW) + 100, bytes(32)
    )
    with pytest.raises(MalformedPrekey):  # the same for the identity KEM key
        _initiate(bob, signed_prekey=bad_ikem.to_bytes())


def test_replayed_handshake_with_used_one_time_prekey_is_unknown() -> None:
    alice, bob = start(kem_for("ecdh-x25519"))
    envelope = alice.encrypt(b"hi")
    bob.respond(envelope)
    with pytest.raises(UnknownPrekey):
        bob.respond(envelope)


def test_unknown_signed_prekey_id() -> None:
    bob = Responder(kem_for("ecdh-x25519"))
    result = _initiate(bob)
    with pytest.raises(UnknownPrekey):
        _respond(bob, result.message_bytes, find_signed_prekey=lambda _i: None)


def test_forged_transcript_signature_is_refused() -> None:
    bob = Responder(kem_for("ecdh-x25519"))
    result = _initiate(bob)
    # Claim another identity for the same transcript: the signature no longer verifies.
    forged = dataclasses.replace(
        result.message, initiator_identity=IdentityKeyPair.generate().public_bytes()
    )
    with pytest.raises(BadTranscriptSignature):
        _respond(bob, forged.to_bytes())


def test_handshake_meant_for_another_responder_is_refused() -> None:
    kem = kem_for("ecdh-x25519")
    bob = Responder(kem)
    result = _initiate(bob)
    # Same prekeys held by a different identity: the signed transcript names Bob's key.
    with pytest.raises(BadTranscriptSignature):
        _respond(bob, result.message_bytes, identity=IdentityKeyPair.generate())


def test_responder_refuses_its_own_long_expired_prekey() -> None:
    bob = Responder(kem_for("ecdh-x25519"))
    result = _initiate(bob)
    late = bob.spk.expires + handshake.DEFAULT_GRACE
    with pytest.raises(ExpiredPrekey):
        _respond(bob, result.message_bytes, now=late)
    # Within the grace period a queued first message is still accepted.
    _respond(bob, result.message_bytes, now=late - 1)


def test_responder_with_another_backend_reports_mismatch() -> None:
    bob = Responder(kem_for("ecdh-x25519"))
    result = _initiate(bob)
    with pytest.raises(BackendMismatch):
        _respond(bob, result.message_bytes, kem=kem_for("ecdh-p256"))


def test_malformed_handshake_messages() -> None:
    bob = Responder(kem_for("ecdh-x25519"))
    good = _initiate(bob).message_bytes
    for bad in (b"", good + b"\x00", good[:-3], b"\xa1\x61v\x02", b"\xa1\x61v\x03"):
        with pytest.raises(MalformedHandshake):
            handshake.HandshakeMessage.from_bytes(bad)
    assert handshake.HandshakeMessage.from_bytes(good).to_bytes() == good


def test_envelope_without_handshake_cannot_start_a_session() -> None:
    alice = start(kem_for("ecdh-x25519"))[0]  # a session to another "bob"
    bob = Responder(kem_for("ecdh-x25519"))
    alice2, _ = start(bob.kem, bob)
    bob_session, _ = bob.respond(alice2.encrypt(b"a"))
    alice2.decrypt(bob_session.encrypt(b"b"))
    with pytest.raises(SessionMismatch):
        bob.respond(alice2.encrypt(b"no handshake any more"))
    # And an existing session refuses a handshake that is not its own.
    with pytest.raises(SessionMismatch):
        bob_session.decrypt(alice.encrypt(b"other session"))
