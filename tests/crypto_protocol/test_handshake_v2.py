"""What handshake v2 adds, each shown by playing the attacker (and, where it applies, by the
same attack succeeding against handshake v1)."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import pytest

from securechat.crypto import prekeys
from securechat.crypto.errors import (
    BadPrekeySignature,
    MalformedHandshake,
    MalformedPrekey,
    ReplayedHandshake,
)
from securechat.crypto.handshake import v1, v2
from securechat.crypto.identity import IdentityKeyPair
from securechat.crypto.kem import IKem, KemError
from securechat.crypto.session import Session
from tests.crypto_protocol.helpers import NOW, Responder, kem_for, start

FAST = ["ecdh-x25519", "ecdh-p256", "dh-ffdhe2048", "rsa-2048", "hybrid-xwing"]


class _PublicOnly:
    """Bob's identity as an attacker has it: the public key only (``respond`` reads no more)."""

    def __init__(self, public: bytes) -> None:
        self._public = public

    def public_bytes(self) -> bytes:
        return self._public

    def sign(self, data: bytes) -> bytes:  # pragma: no cover - never reached
        raise AssertionError("the attacker has no identity private key")


def _steal_signed_prekey_only_v1(kem: IKem) -> tuple[bytes, bytes]:
    """Against v1: (root key Alice derived, root key the attacker derives) from a first message
    sent while the relay withheld one-time prekeys, with only Bob's signed-prekey private key."""
    bob = IdentityKeyPair.generate()
    spk, spk_pair = prekeys.generate_signed_prekey(bob, kem, 1, NOW)
    alice = v1.initiate(
        kem, IdentityKeyPair.generate(), bob.public_bytes(), spk.to_bytes(), None, NOW
    )
    stolen = v1.respond(
        kem, _PublicOnly(bob.public_bytes()), alice.message_bytes,  # type: ignore[arg-type]
        lambda i: (spk, spk_pair), lambda i: None, NOW,
    )  # fmt: skip
    return alice.root_key, stolen.root_key


def _steal_signed_prekey_only_v2(kem: IKem) -> tuple[bytes, list[bytes]]:
    """The same attack on v2: everything public plus the signed-prekey private key. The
    attacker cannot decapsulate ``ci`` (the identity KEM key), so it tries every secret it can
    make for that slot: its own decapsulation under a key of its own, and Bob's public key
    material as a guess."""
    bob = Responder(kem, otk_count=0)
    alice = v2.initiate(
        kem, IdentityKeyPair.generate(), bob.identity.public_bytes(), bob.spk.to_bytes(), None,
        NOW,
    )  # fmt: skip
    message = alice.message
    th = message.transcript(
        bob.identity.public_bytes(), bob.ikem.public, bob.spk.public, None
    ).digest()
    ss_spk = kem.decapsulate(bob.spk_pair.private, message.spk_ct)
    guesses = [bytes(32), bob.ikem.public[:32], ss_spk]
    with contextlib.suppress(KemError):  # RSA-OAEP under a wrong key fails outright
        guesses.append(kem.decapsulate(kem.generate_keypair().private, message.identity_kem_ct))
    attempts = [v2.derive_root_key(guess, ss_spk, None, th) for guess in guesses]
    # And through the real responder code with an identity KEM key of the attacker's own:
    with pytest.raises(v2.UnknownPrekey):
        v2.respond(
            kem, bob.identity, kem.generate_keypair(), alice.message_bytes, bob.find_signed,
            lambda i: None, lambda i, th: False, NOW,
        )  # fmt: skip
    return alice.root_key, attempts


@pytest.mark.parametrize("label", FAST)
def test_signed_prekey_compromise_alone_no_longer_opens_the_session(label: str) -> None:
    kem = kem_for(label)
    real, attempts = _steal_signed_prekey_only_v2(kem)
    assert real not in attempts


@pytest.mark.parametrize("label", ["ecdh-x25519", "rsa-2048"])
def test_the_same_attack_succeeds_against_handshake_v1(label: str) -> None:
    """Why v2 exists: this is the issue's attack, and it works on v1 (the test above would
    fail on v1)."""
    real, stolen = _steal_signed_prekey_only_v1(kem_for(label))
    assert stolen == real


def _transcript() -> v2.Transcript:
    return v2.Transcript(
        2, "ecdh:x25519", b"A" * 32, b"B" * 32, b"I" * 32, 1, b"S" * 32, 7, b"O" * 32,
        b"c" * 32, b"e" * 32, b"o" * 32, b"r" * 32,
    )  # fmt: skip


def _changed(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        raise AssertionError("no such transcript field")
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    return value[:-1] + bytes([value[-1] ^ 1])


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(v2.Transcript)])
def test_changing_any_transcript_field_changes_the_root_key(field: str) -> None:
    base = _transcript()
    secrets = (b"\x01" * 32, b"\x02" * 32, b"\x03" * 32)
    root = v2.derive_root_key(*secrets, base.digest())
    other = dataclasses.replace(base, **{field: _changed(getattr(base, field))})
    assert other.digest() != base.digest()
    assert v2.derive_root_key(*secrets, other.digest()) != root
    # Leaving an optional field out is a change too (no one-time prekey).
    if field.startswith("one_time_prekey"):
        dropped = dataclasses.replace(base, **{field: None})
        assert v2.derive_root_key(*secrets, dropped.digest()) != root


def test_both_sides_hash_the_same_transcript_and_bind_it_to_the_root_key() -> None:
    kem = kem_for("ecdh-x25519")
    bob = Responder(kem)
    alice = v2.initiate(
        kem, IdentityKeyPair.generate(), bob.identity.public_bytes(), bob.spk.to_bytes(),
        bob.otk_blob(), NOW,
    )  # fmt: skip
    answer = v2.respond(
        kem, bob.identity, bob.ikem, alice.message_bytes, bob.find_signed, bob.find_one_time,
        bob.replayed, NOW,
    )  # fmt: skip
    assert answer.transcript_hash == alice.transcript_hash
    assert answer.root_key == alice.root_key


@pytest.mark.parametrize("use_otk", [False, True])
def test_a_replayed_first_message_is_refused_by_the_replay_cache(use_otk: bool) -> None:
    kem = kem_for("ecdh-x25519")
    alice, bob = start(kem, use_otk=use_otk)
    first = alice.encrypt(b"wire 100 EUR")
    otks = dict(bob.otks)
    bob.respond(first)
    # With a one-time prekey, its deletion alone refuses the replay (UnknownPrekey); put it
    # back (a restored keystore) to show that the replay cache refuses it regardless.
    bob.otks = otks
    with pytest.raises(ReplayedHandshake):
        bob.respond(first)
    # A fresh first message under the same signed prekey is still accepted.
    again, _ = start(kem, bob, use_otk=False)
    assert bob.respond(again.encrypt(b"new"))[1] == b"new"


def test_handshake_v1_messages_are_refused_with_a_clear_message() -> None:
    kem = kem_for("ecdh-x25519")
    bob = IdentityKeyPair.generate()
    spk, _ = prekeys.generate_signed_prekey(bob, kem, 1, NOW)
    old = v1.initiate(
        kem, IdentityKeyPair.generate(), bob.public_bytes(), spk.to_bytes(), None, NOW
    )
    with pytest.raises(MalformedHandshake, match=r"v1 is no longer accepted.*upgrade"):
        v2.HandshakeMessage.from_bytes(old.message_bytes)


def test_a_bundle_without_identity_kem_key_says_the_peer_must_upgrade() -> None:
    kem = kem_for("ecdh-x25519")
    bob = IdentityKeyPair.generate()
    old_spk, _ = prekeys.generate_signed_prekey(bob, kem, 1, NOW)  # a v1 record
    with pytest.raises(MalformedPrekey, match="must upgrade"):
        Session.initiate(
            kem=kem, identity=IdentityKeyPair.generate(), local_user="alice", peer_user="bob",
            peer_identity=bob.public_bytes(), signed_prekey=old_spk.to_bytes(),
            clock=lambda: NOW,
        )  # fmt: skip


def test_the_relay_cannot_swap_the_identity_kem_key() -> None:
    """The identity KEM key is signed with the prekey: a relay substituting its own (to
    decapsulate ``ci`` itself) breaks the signature."""
    kem = kem_for("ecdh-x25519")
    bob = Responder(kem)
    swapped = dataclasses.replace(bob.spk, identity_kem=kem.generate_keypair().public)
    with pytest.raises(BadPrekeySignature):
        Session.initiate(
            kem=kem, identity=IdentityKeyPair.generate(), local_user="alice", peer_user="bob",
            peer_identity=bob.identity.public_bytes(), signed_prekey=swapped.to_bytes(),
            clock=lambda: NOW,
        )  # fmt: skip
