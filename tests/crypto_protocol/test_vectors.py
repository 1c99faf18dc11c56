"""Our own protocol vectors (tests/vectors/): regenerate and compare, and check them piecewise."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

from securechat.crypto import envelope as env
from securechat.crypto import prekeys, ratchet
from securechat.crypto.ecdh import X25519Kem
from securechat.crypto.handshake import v2 as handshake
from securechat.crypto.identity import IdentityKeyPair
from securechat.crypto.kem import KeyPair
from securechat.crypto.session import Session

VECTORS = Path(__file__).parents[1] / "vectors"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("securechat_vectors", VECTORS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / "securechat-v2-x25519.json").read_text())
    return data


def test_regenerated_vectors_are_identical() -> None:
    generator = _generator()
    assert generator.render() == (VECTORS / "securechat-v2-x25519.json").read_text()


def test_chain_root_and_message_key_steps() -> None:
    data = _load()
    for step in data["kdf_ck"]:
        seed, next_ck = ratchet.kdf_ck(bytes.fromhex(step["chain_key"]))
        assert (seed.hex(), next_ck.hex()) == (step["message_key_seed"], step["next_chain_key"])
    rk = data["kdf_rk"]
    new_rk, ck = ratchet.kdf_rk(bytes.fromhex(rk["root_key"]), bytes.fromhex(rk["secret"]))
    assert (new_rk.hex(), ck.hex()) == (rk["new_root_key"], rk["chain_key"])
    mkm = data["message_key_material"]
    key, nonce = env.message_key_material(
        bytes.fromhex(mkm["message_key_seed"]), bytes.fromhex(mkm["message_id"])
    )
    assert (key.hex(), nonce.hex()) == (mkm["aes_key"], mkm["nonce"])


def test_header_and_padding_vectors() -> None:
    data = _load()
    fields = data["header"]["fields"]
    header = env.decode_header(bytes.fromhex(data["header"]["cbor"]))
    for name, value in header._asdict().items():
        assert (value.hex() if isinstance(value, bytes) else value) == fields[name]
    for case in data["padding"]:
        assert env.bucket_size(case["length"]) == case["padded_length"]
    example = data["padding_example"]
    assert env.pad(bytes.fromhex(example["plaintext"])).hex() == example["padded"]


def test_responder_opens_the_recorded_conversation_from_the_recorded_keys() -> None:
    data = _load()
    hs = data["handshake"]
    kem = X25519Kem()
    bob = IdentityKeyPair.from_private_bytes(bytes.fromhex(hs["bob_identity_private"]))
    spk = prekeys.SignedPrekey.from_bytes(bytes.fromhex(hs["signed_prekey"]))
    opk = prekeys.OneTimePrekey.from_bytes(bytes.fromhex(hs["one_time_prekey"]))
    spk_pair = KeyPair(spk.public, bytes.fromhex(hs["signed_prekey_private"]))
    assert spk.identity_kem is not None
    ikem = KeyPair(spk.identity_kem, bytes.fromhex(hs["identity_kem_private"]))
    opk_pair = KeyPair(opk.public, bytes.fromhex(hs["one_time_prekey_private"]))
    alice = IdentityKeyPair.from_private_bytes(bytes.fromhex(hs["alice_identity_private"]))
    spk.verify(bob.public_bytes(), kem, hs["now"])
    result = handshake.respond(
        kem, bob, ikem, bytes.fromhex(hs["message"]), lambda i: (spk, spk_pair),
        lambda i: opk_pair, lambda i, th: False, hs["now"],
    )  # fmt: skip
    assert result.root_key.hex() == hs["root_key"]
    assert result.transcript_hash.hex() == hs["transcript_hash"]
    assert result.initiator_identity == alice.public_bytes()
    alice_to_bob = [e for e in data["envelopes"] if e["sender"] == "alice"][:2]
    done = Session.respond(
        bytes.fromhex(alice_to_bob[0]["envelope"]), kem=kem, identity=bob, identity_kem=ikem,
        local_user="bob", find_signed_prekey=lambda i: (spk, spk_pair),
        find_one_time_prekey=lambda i: opk_pair, replayed=lambda i, th: False,
        clock=lambda: float(hs["now"]),
    )  # fmt: skip
    session, plaintext, used = done.session, done.plaintext, done.consumed_one_time_prekey
    assert (plaintext.hex(), used) == (alice_to_bob[0]["plaintext"], opk.key_id)
    second = session.decrypt(bytes.fromhex(alice_to_bob[1]["envelope"]))[1]
    assert second.hex() == alice_to_bob[1]["plaintext"]
