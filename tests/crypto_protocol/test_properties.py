"""Property tests (hypothesis): delivery order, bit flips, serialisation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securechat.crypto.errors import CryptoError, DuplicateMessage
from securechat.crypto.session import Session
from tests.crypto_protocol.helpers import kem_for, pair

KEM = kem_for("ecdh-x25519")
SETTINGS = settings(max_examples=60, deadline=None)


@SETTINGS
@given(chunks=st.lists(st.integers(1, 8), min_size=1, max_size=4), data=st.data())
def test_any_delivery_order_decrypts_each_message_exactly_once(
    chunks: list[int], data: st.DataObject
) -> None:
    alice, bob = pair(KEM)
    held: list[tuple[bytes, bytes]] = []
    for chain, size in enumerate(chunks):
        sent = [(b"%d.%d" % (chain, i), alice.encrypt(b"%d.%d" % (chain, i))) for i in range(size)]
        # Bob sees one message of each chain and answers, so Alice's next chunk is a new turn.
        first = data.draw(st.integers(0, size - 1))
        assert bob.decrypt(sent[first][1])[1] == sent[first][0]
        held += sent[:first] + sent[first + 1 :]
        alice.decrypt(bob.encrypt(b"ack"))
    order = data.draw(st.permutations(held))
    for plaintext, envelope in order:
        assert bob.decrypt(envelope)[1] == plaintext
    if order:
        replay = data.draw(st.sampled_from(order))[1]
        with pytest.raises(DuplicateMessage):
            bob.decrypt(replay)


@SETTINGS
@given(bit=st.integers(min_value=0), new_turn=st.booleans(), size=st.integers(0, 300))
def test_any_flipped_bit_is_refused_without_state_change(
    bit: int, new_turn: bool, size: int
) -> None:
    alice, bob = pair(KEM)
    if new_turn:
        bob.decrypt(alice.encrypt(b"so that bob's next message opens a chain"))
    envelope = bob.encrypt(b"m" * size)
    bit %= len(envelope) * 8
    tampered = bytearray(envelope)
    tampered[bit // 8] ^= 1 << (bit % 8)
    saved = alice.to_bytes()
    with pytest.raises(CryptoError):
        alice.decrypt(bytes(tampered))
    assert alice.to_bytes() == saved
    assert alice.decrypt(envelope)[1] == b"m" * size


@SETTINGS
@given(actions=st.lists(st.sampled_from(["a", "b", "a-late", "reload"]), max_size=25))
def test_serialisation_round_trips_at_any_point(actions: list[str]) -> None:
    alice, bob = pair(KEM)
    late: list[tuple[bytes, bytes]] = []
    for step, action in enumerate(actions):
        text = b"%d" % step
        if action == "a":
            assert bob.decrypt(alice.encrypt(text))[1] == text
        elif action == "b":
            assert alice.decrypt(bob.encrypt(text))[1] == text
        elif action == "a-late":
            late.append((text, alice.encrypt(text)))
        else:
            for session in (alice, bob):
                data = session.to_bytes()
                assert Session.from_bytes(data, lambda name: KEM).to_bytes() == data
            alice = Session.from_bytes(alice.to_bytes(), lambda name: KEM)
            bob = Session.from_bytes(bob.to_bytes(), lambda name: KEM)
    for text, envelope in reversed(late):
        assert bob.decrypt(envelope)[1] == text
