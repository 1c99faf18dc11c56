"""A forked (copied or restored) keystore never encrypts two plaintexts under one key and nonce.

Two processes on copies of one keystore hold the same ratchet state, so they derive the same
message key for their next message. Before protocol v2 the AES-GCM key and nonce came from
that message key alone: ``c1 xor c2 == m1 xor m2`` and the GHASH key leaks. Now the random
message id is mixed in (``securechat.crypto.envelope.message_key_material``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from securechat.client import prekeys as prekeys_mod
from securechat.client.keystore import Keystore
from securechat.client.sessions import SessionManager
from securechat.crypto import envelope as env
from tests.client.test_sessions import PASS, got, manager, publish, send, start


@pytest.fixture(autouse=True)
def few_one_time_prekeys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prekeys_mod, "ONE_TIME_TARGET", {"ecdh": 2, "dh": 2, "rsa": 1, "hybrid": 2})


def _v1_material(message_key: bytes) -> tuple[bytes, bytes]:
    """The version-1 derivation: key and nonce from the message key alone."""
    okm = HKDFExpand(hashes.SHA256(), 44, b"securechat-v1 envelope").derive(message_key)
    return okm[:32], okm[32:]


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def test_forked_keystore_never_reuses_key_and_nonce(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob = manager(tmp_path, "alice"), manager(tmp_path, "bob")
    start(alice, "bob", publish(bob, "ecdh"))
    got(bob, send(alice, "bob", "ecdh", "hello"))
    got(alice, send(bob, "alice", "ecdh", "hi"))
    got(bob, send(alice, "bob", "ecdh", "my turn"))  # alice's sending chain is now open
    alice.keystore.save()
    shutil.copytree(tmp_path / "alice", tmp_path / "alice-restored")  # the fork
    forks = [SessionManager(Keystore.open(tmp_path / home, PASS))
             for home in ("alice", "alice-restored")]  # fmt: skip

    used: list[tuple[bytes, bytes, bytes, bytes]] = []  # (mk, id, key, nonce) per message
    real = env.message_key_material

    def spy(message_key: bytes, message_id: bytes) -> tuple[bytes, bytes]:
        key, nonce = real(message_key, message_id)
        used.append((message_key, message_id, key, nonce))
        return key, nonce

    monkeypatch.setattr(env, "message_key_material", spy)
    plaintexts = ["transfer 10 EUR to carol", "transfer 99 EUR to mallory"]
    wires = [send(f, "bob", "ecdh", text) for f, text in zip(forks, plaintexts, strict=True)]
    (mk1, id1, key1, nonce1), (mk2, id2, key2, nonce2) = used

    # The hazard is real: both copies derived the same message key for their next message,
    # and the version-1 derivation would have given them the same AES key and nonce.
    assert mk1 == mk2
    assert _v1_material(mk1) == _v1_material(mk2)
    # With the message id mixed in, key and nonce differ.
    assert id1 != id2
    assert key1 != key2 and nonce1 != nonce2
    # So the ciphertexts do not xor to the xor of the (padded) plaintexts.
    c1 = env.split_envelope(wires[0].payload)[1][:-env.TAG_SIZE]
    c2 = env.split_envelope(wires[1].payload)[1][:-env.TAG_SIZE]
    m1, m2 = (env.pad(bytes.fromhex(_inner(t))) for t in plaintexts)
    assert _xor(c1, c2) != _xor(m1, m2)
    # Bob reads the first; the second reuses a message key he has consumed, so it is refused
    # (it cannot be decrypted with a key he no longer has), never mistaken for the first.
    assert got(bob, wires[0]).text == plaintexts[0]


def _inner(text: str) -> str:
    from securechat.client.sessions import encode_plaintext

    return encode_plaintext(text).hex()
