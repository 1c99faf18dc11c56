"""Generate securechat's own protocol test vectors (``securechat-v2-x25519.json``).

Run ``python tests/vectors/generate.py`` to rewrite the file, or ``--check`` to compare.
Every random input comes from one deterministic generator, so another implementation can
reproduce the bytes exactly; ``README.md`` next to this file describes the format.

Deterministic randomness: ``Drbg(seed)`` returns, for each request of ``n`` bytes, the first
``n`` bytes of the concatenation of ``SHA-256(seed || counter_be32)`` blocks, counter
starting at 0 and increasing across requests (each request starts on a fresh block). X25519
key pairs (including the KEM's ephemeral ones) use 32 such bytes as the private key.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519

from securechat.crypto import envelope as env
from securechat.crypto import prekeys, ratchet
from securechat.crypto.ecdh import X25519Kem
from securechat.crypto.handshake import v2 as handshake
from securechat.crypto.identity import IdentityKeyPair
from securechat.crypto.kem import KeyPair
from securechat.crypto.session import Session

SEED = b"securechat-v2 test vectors"
NOW = 1_700_000_000
VECTOR_FILE = Path(__file__).with_name("securechat-v2-x25519.json")


class Drbg:
    """SHA-256 in counter mode over a seed: deterministic "randomness" for vectors only."""

    def __init__(self, seed: bytes) -> None:
        self.seed = seed
        self.counter = 0

    def __call__(self, size: int) -> bytes:
        out = b""
        while len(out) < size:
            digest = hashes.Hash(hashes.SHA256())
            digest.update(self.seed + self.counter.to_bytes(4, "big"))
            out += digest.finalize()
            self.counter += 1
        return out[:size]


class DeterministicX25519(X25519Kem):
    """The real X25519 DHKEM whose key pairs come from a :class:`Drbg`."""

    def __init__(self, rng: Drbg) -> None:
        self.rng = rng

    def generate_keypair(self) -> KeyPair:
        key = x25519.X25519PrivateKey.from_private_bytes(self.rng(32))
        return KeyPair(key.public_key().public_bytes_raw(), key.private_bytes_raw())


def _hex(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _hex(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_hex(v) for v in value]
    return value


def generate() -> dict[str, Any]:
    """Build every vector; runs both sides, so the output is also self-checked."""
    rng = Drbg(SEED)
    kem = DeterministicX25519(rng)
    clock = lambda: float(NOW)  # noqa: E731
    chain = []
    ck = rng(32)
    for _ in range(3):
        seed, next_ck = ratchet.kdf_ck(ck)
        chain.append({"chain_key": ck, "message_key_seed": seed, "next_chain_key": next_ck})
        ck = next_ck
    rk, secret, mkm_id = rng(32), rng(32), rng(16)
    aes_key, nonce = env.message_key_material(chain[0]["message_key_seed"], mkm_id)
    header = env.Header(
        "ecdh:x25519", "alice", "bob", rng(32), rng(32), 2, 5, rng(16), NOW * 1000, "#room"
    )

    alice_id = IdentityKeyPair.from_private_bytes(rng(32))
    bob_id = IdentityKeyPair.from_private_bytes(rng(32))
    ikem_pair = kem.generate_keypair()
    spk, spk_pair = prekeys.generate_signed_prekey(
        bob_id, kem, 1, NOW, prekeys.DEFAULT_LIFETIME, ikem_pair.public
    )
    [(opk, opk_pair)] = prekeys.generate_one_time_prekeys(kem, 100, 1)
    alice = Session.initiate(
        kem=kem, identity=alice_id, local_user="alice", peer_user="bob",
        peer_identity=bob_id.public_bytes(), signed_prekey=spk.to_bytes(),
        one_time_prekey=opk.to_bytes(), rng=rng, clock=clock,
    )  # fmt: skip
    script = [("alice", b"Hello Bob"), ("alice", b""), ("bob", b"Hi Alice!"), ("bob", b"x" * 300),
              ("alice", b"new turn")]  # fmt: skip
    sessions: dict[str, Session] = {"alice": alice}
    envelopes = []
    for sender, plaintext in script:
        sealed = sessions[sender].encrypt(plaintext)
        if "bob" not in sessions:
            done = Session.respond(
                sealed, kem=kem, identity=bob_id, identity_kem=ikem_pair, local_user="bob",
                find_signed_prekey=lambda i: (spk, spk_pair) if i == 1 else None,
                find_one_time_prekey=lambda i: opk_pair if i == 100 else None,
                replayed=lambda i, th: False, rng=rng, clock=clock,
            )  # fmt: skip
            sessions["bob"], opened = done.session, done.plaintext
            assert done.consumed_one_time_prekey == 100
            handshake_message = Session.peek(sealed).handshake
        else:
            opened = sessions["bob" if sender == "alice" else "alice"].decrypt(sealed)[1]
        assert opened == plaintext
        envelopes.append({"sender": sender, "plaintext": plaintext, "envelope": sealed})
    assert handshake_message is not None
    answer = handshake.respond(
        kem, bob_id, ikem_pair, handshake_message, lambda i: (spk, spk_pair),
        lambda i: opk_pair, lambda i, th: False, NOW,
    )  # fmt: skip
    return _hex(
        {
            "version": 2,
            "seed": SEED,
            "kdf_ck": chain,
            "kdf_rk": dict(
                zip(
                    ["root_key", "secret", "new_root_key", "chain_key"],
                    [rk, secret, *ratchet.kdf_rk(rk, secret)],
                    strict=True,
                )
            ),
            "message_key_material": {
                "message_key_seed": chain[0]["message_key_seed"],
                "message_id": mkm_id,
                "aes_key": aes_key,
                "nonce": nonce,
            },
            "padding": [
                {"length": n, "padded_length": env.bucket_size(n)}
                for n in (0, 255, 256, 1023, 4095, 16383, 16384, 40000)
            ],
            "padding_example": {"plaintext": b"abc", "padded": env.pad(b"abc")},
            "header": {"fields": header._asdict(), "cbor": env.encode_header(header)},
            "handshake": {
                "now": NOW,
                "alice_identity_private": alice_id.private_bytes(),
                "bob_identity_private": bob_id.private_bytes(),
                "identity_kem_private": ikem_pair.private,
                "signed_prekey": spk.to_bytes(),
                "signed_prekey_private": spk_pair.private,
                "one_time_prekey": opk.to_bytes(),
                "one_time_prekey_private": opk_pair.private,
                "message": handshake_message,
                "transcript_hash": answer.transcript_hash,
                "root_key": answer.root_key,
            },
            "envelopes": envelopes,
        }
    )


def render() -> str:
    """The JSON text of :func:`generate` (stable formatting)."""
    return json.dumps(generate(), indent=1, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        same = VECTOR_FILE.read_text() == text
        print("vectors match" if same else "vectors DIFFER")
        return 0 if same else 1
    VECTOR_FILE.write_text(text)
    print(f"wrote {VECTOR_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
