"""The KEM double ratchet through the Session API: ordering, replays, tampering, bounds."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from securechat.crypto import envelope as env
from securechat.crypto import ratchet
from securechat.crypto.errors import (
    AuthenticationFailed,
    DuplicateMessage,
    MalformedEnvelope,
    MalformedState,
    TooManySkipped,
)
from securechat.crypto.session import Session
from tests.crypto_protocol.helpers import BACKENDS, Clock, kem_for, pair

X25519 = "ecdh-x25519"


def test_libsignal_chain_key_vector() -> None:
    """libsignal rust/protocol/src/ratchet/keys.rs test_chain_key_derivation."""
    chain_key = bytes.fromhex("8ab72d6f4cc5ac0d387eaf463378ddb28edd07385b1cb01250c715982e7ad48f")
    seed, next_key = ratchet.kdf_ck(chain_key)
    assert next_key.hex() == "28e8f8fee54b801eef7c5cfb2f17f32c7b334485bbb70fac6ec10342a246d15d"
    keys = HKDF(hashes.SHA256(), 80, None, b"WhisperMessageKeys").derive(seed)
    assert keys[:32].hex() == "bf51e9d75e0e31031051f82a2491ffc084fa298b7793bd9db620056febf45217"
    assert keys[32:64].hex() == "c6c77d6a73a354337a56435e34607dfe48e3ace14e77314dc6abc172e7a7030b"


@pytest.mark.parametrize("label", sorted(BACKENDS))
def test_conversation_in_order_with_turns(label: str) -> None:
    alice, bob = pair(kem_for(label))
    for turn in range(3):
        for i in range(3):
            assert bob.decrypt(alice.encrypt(b"a%d.%d" % (turn, i)))[1] == b"a%d.%d" % (turn, i)
        assert alice.decrypt(bob.encrypt(b"b%d" % turn))[1] == b"b%d" % turn


def test_each_turn_brings_a_new_kem_step() -> None:
    alice, bob = pair(kem_for(X25519))
    seen = set()
    for _ in range(4):
        header = Session.peek(envelope := alice.encrypt(b"x"))
        seen.add((header.ratchet_pub, header.kem_ct))
        bob.decrypt(envelope)
        header = Session.peek(envelope := bob.encrypt(b"y"))
        seen.add((header.ratchet_pub, header.kem_ct))
        alice.decrypt(envelope)
    assert len(seen) == 8  # a fresh ratchet key and encapsulation on every turn of both sides
    assert len({rp for rp, _ in seen}) == 8


def test_out_of_order_within_and_across_chains() -> None:
    alice, bob = pair(kem_for(X25519))
    first = [alice.encrypt(b"1-%d" % i) for i in range(5)]
    assert bob.decrypt(first[3])[1] == b"1-3"
    alice.decrypt(bob.encrypt(b"turn"))
    second = [alice.encrypt(b"2-%d" % i) for i in range(3)]
    assert bob.decrypt(second[2])[1] == b"2-2"
    # Late messages of the previous chain still decrypt, once.
    for i in (4, 0, 2, 1):
        assert bob.decrypt(first[i])[1] == b"1-%d" % i
    assert [bob.decrypt(second[i])[1] for i in (1, 0)] == [b"2-1", b"2-0"]


def test_replay_is_refused_and_state_unchanged() -> None:
    alice, bob = pair(kem_for(X25519))
    envelope = alice.encrypt(b"once")
    bob.decrypt(envelope)
    saved = bob.to_bytes()
    with pytest.raises(DuplicateMessage):
        bob.decrypt(envelope)
    assert bob.to_bytes() == saved
    late = [alice.encrypt(b"%d" % i) for i in range(3)]
    bob.decrypt(late[2])
    bob.decrypt(late[0])
    with pytest.raises(DuplicateMessage):  # a skipped key is deleted once used
        bob.decrypt(late[0])


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 1]) + data[index + 1 :]


def test_tampered_header_and_ciphertext_are_refused_and_rolled_back() -> None:
    alice, bob = pair(kem_for(X25519))
    envelope = alice.encrypt(b"secret" * 10)
    header_len = int.from_bytes(envelope[1:3], "big")
    saved = bob.to_bytes()
    for index in (len(envelope) - 1, len(envelope) - 40, 3 + header_len // 2, 3 + header_len):
        with pytest.raises((AuthenticationFailed, MalformedEnvelope, DuplicateMessage)):
            bob.decrypt(_flip(envelope, index))
        assert bob.to_bytes() == saved
    assert bob.decrypt(envelope)[1] == b"secret" * 10


def test_tampered_new_chain_does_not_advance_the_root_key() -> None:
    alice, bob = pair(kem_for(X25519))
    bob.decrypt(alice.encrypt(b"x"))
    opening = bob.encrypt(b"new chain")  # opens a new chain with a fresh encapsulation
    saved = alice.to_bytes()
    with pytest.raises(AuthenticationFailed):
        alice.decrypt(_flip(opening, len(opening) - 1))
    assert alice.to_bytes() == saved
    assert alice.decrypt(opening)[1] == b"new chain"


def test_envelope_reaching_the_wrong_user_is_refused() -> None:
    alice, _bob = pair(kem_for(X25519))
    carol_alice, _carol = pair(kem_for(X25519))
    with pytest.raises((MalformedEnvelope, AuthenticationFailed)):
        alice.decrypt(carol_alice.encrypt(b"not for alice"))


def test_too_many_skipped_in_one_chain() -> None:
    alice, bob = pair(kem_for(X25519))
    for _ in range(ratchet.MAX_SKIP + 1):
        alice.ratchet.encrypt_step()
    saved = bob.to_bytes()
    with pytest.raises(TooManySkipped):
        bob.decrypt(alice.encrypt(b"too far"))
    assert bob.to_bytes() == saved


def test_exactly_max_skip_is_allowed() -> None:
    alice, bob = pair(kem_for(X25519))
    skipped = [alice.encrypt(b"%d" % i) for i in range(ratchet.MAX_SKIP)]
    assert bob.decrypt(alice.encrypt(b"last"))[1] == b"last"
    assert bob.ratchet.stored == ratchet.MAX_SKIP
    assert bob.decrypt(skipped[500])[1] == b"500"


def test_too_many_skipped_in_previous_chain() -> None:
    alice, bob = pair(kem_for(X25519))
    for _ in range(ratchet.MAX_SKIP + 1):
        alice.ratchet.encrypt_step()
    bob_chain = bob.encrypt(b"b")
    alice.decrypt(bob_chain)
    with pytest.raises(TooManySkipped):  # header.pn says 1001 messages are missing
        bob.decrypt(alice.encrypt(b"next chain"))


def test_stored_keys_are_bounded_and_oldest_evicted() -> None:
    alice, bob = pair(kem_for(X25519))
    lost_first = alice.encrypt(b"oldest")
    for _ in range(ratchet.MAX_SKIP - 1):
        alice.encrypt(b"lost")
    bob.decrypt(alice.encrypt(b"a"))
    for _ in range(2):
        alice.decrypt(bob.encrypt(b"turn"))
        for _ in range(ratchet.MAX_SKIP // 2 + 10):
            alice.encrypt(b"lost")
        bob.decrypt(alice.encrypt(b"a"))
    assert bob.ratchet.stored == ratchet.MAX_STORED
    with pytest.raises(DuplicateMessage):  # evicted: refused, never decrypted
        bob.decrypt(lost_first)


def test_old_chains_are_dropped() -> None:
    alice, bob = pair(kem_for(X25519))
    late = []
    for _ in range(ratchet.MAX_CHAINS + 2):
        late.append(alice.encrypt(b"late"))
        bob.decrypt(alice.encrypt(b"on time"))
        alice.decrypt(bob.encrypt(b"turn"))
    assert len(bob.ratchet.skipped) <= ratchet.MAX_CHAINS
    with pytest.raises(DuplicateMessage):
        bob.decrypt(late[0])
    assert bob.decrypt(late[-1])[1] == b"late"


@pytest.mark.parametrize("label", sorted(BACKENDS))
def test_serialisation_round_trip_mid_conversation(label: str) -> None:
    kem = kem_for(label)
    alice, bob = pair(kem)
    pending = [alice.encrypt(b"p%d" % i) for i in range(4)]
    bob.decrypt(pending[3])
    data = bob.to_bytes()
    restored = Session.from_bytes(data, lambda name: kem)
    assert restored.to_bytes() == data
    assert [restored.decrypt(pending[i])[1] for i in (0, 2, 1)] == [b"p0", b"p2", b"p1"]
    assert alice.decrypt(restored.encrypt(b"back"))[1] == b"back"
    alice2 = Session.from_bytes(alice.to_bytes(), lambda name: kem)
    assert restored.decrypt(alice2.encrypt(b"on"))[1] == b"on"


def test_malformed_state_is_refused() -> None:
    kem = kem_for(X25519)
    alice, _bob = pair(kem)
    data = alice.to_bytes()
    for bad in (b"", b"\xa0", data[:-5]):
        with pytest.raises(MalformedState):
            Session.from_bytes(bad, lambda name: kem)
    with pytest.raises(MalformedState):
        Session.from_bytes(data, lambda name: kem_for("ecdh-p256"))


def test_rsa_rotates_its_ratchet_key_on_a_budget() -> None:
    clock = Clock()
    alice, bob = pair(kem_for("rsa-2048"), clock)
    keys = []
    for _ in range(3):  # a turn without rotation still carries a fresh encapsulation
        header = Session.peek(envelope := bob.encrypt(b"x"))
        keys.append((header.ratchet_pub, header.kem_ct))
        alice.decrypt(envelope)
        bob.decrypt(alice.encrypt(b"y"))
    assert len({rp for rp, _ in keys}) == 1 and len({ct for _, ct in keys}) == 3
    for _ in range(ratchet.ROTATE_MESSAGES):
        alice.decrypt(bob.encrypt(b"budget"))
    bob.decrypt(alice.encrypt(b"y"))
    rotated = Session.peek(envelope := bob.encrypt(b"x")).ratchet_pub
    assert rotated != keys[0][0]
    alice.decrypt(envelope)
    bob.decrypt(alice.encrypt(b"y"))
    clock.now += ratchet.ROTATE_SECONDS
    timed = Session.peek(envelope := bob.encrypt(b"x")).ratchet_pub
    assert timed != rotated
    assert alice.decrypt(envelope)[1] == b"x"


def test_envelope_sizes_hide_length_within_a_bucket() -> None:
    alice, _bob = pair(kem_for(X25519))
    sizes = {len(env.split_envelope(alice.encrypt(b"x" * n))[1]) for n in (0, 100, 255)}
    assert sizes == {256 + env.TAG_SIZE}
