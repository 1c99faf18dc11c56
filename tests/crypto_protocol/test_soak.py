"""Long conversations over every backend with reordering, loss and duplication.

Deterministic (seeded) so that a failure reproduces. The simulated network delays each
envelope by up to ``MAX_DELAY`` steps, loses 5 % and duplicates 5 %; the active sender changes
with probability 3 % per message, so ratchet turns happen every ~30 messages. These stay well
inside the ratchet's bounds (MAX_SKIP, MAX_CHAINS), so every delivered message must decrypt
exactly once and every duplicate must be refused.
"""

from __future__ import annotations

import heapq
import random

import pytest

from securechat.crypto.errors import DuplicateMessage
from securechat.crypto.kem import IKem
from tests.crypto_protocol.helpers import BACKENDS, PooledKem, kem_for, pair

MESSAGES = 10_000
MAX_DELAY = 8


def _soak(kem: IKem, seed: int) -> tuple[int, int]:
    rnd = random.Random(seed)
    alice, bob = pair(kem)
    sessions = {"alice": alice, "bob": bob}
    other = {"alice": "bob", "bob": "alice"}
    in_flight: list[tuple[int, int, str, bytes, bytes]] = []
    opened: set[bytes] = set()
    duplicates_refused = 0
    sender = "alice"

    def deliver(until: int) -> None:
        nonlocal duplicates_refused
        while in_flight and in_flight[0][0] <= until:
            _at, _tie, to, envelope, plaintext = heapq.heappop(in_flight)
            if plaintext in opened:
                with pytest.raises(DuplicateMessage):
                    sessions[to].decrypt(envelope)
                duplicates_refused += 1
            else:
                assert sessions[to].decrypt(envelope)[1] == plaintext
                opened.add(plaintext)

    for step in range(MESSAGES):
        if rnd.random() < 0.03:
            sender = other[sender]
        plaintext = b"%s %d" % (sender.encode(), step)
        envelope = sessions[sender].encrypt(plaintext)
        if rnd.random() >= 0.05:  # not lost
            copies = 2 if rnd.random() < 0.05 else 1
            for copy in range(copies):
                at = step + rnd.randint(0, MAX_DELAY)
                heapq.heappush(in_flight, (at, 2 * step + copy, other[sender], envelope, plaintext))
        deliver(step)
    deliver(MESSAGES + MAX_DELAY)
    return len(opened), duplicates_refused


@pytest.mark.parametrize("label", sorted(BACKENDS))
def test_conversation_survives_reordering_loss_and_duplication(label: str) -> None:
    kem = kem_for(label)
    if not kem.rotates_every_turn:
        kem = PooledKem(kem)  # real RSA operations; only key generation is pre-computed
    opened, refused = _soak(kem, seed=20240)
    assert 0.9 * MESSAGES < opened < MESSAGES  # about 5 % were lost on the way
    assert refused > 0.03 * MESSAGES
