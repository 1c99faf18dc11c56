"""Behaviour of the KEM backends: registry, round trips, and rejection of hostile inputs."""

from __future__ import annotations

import secrets
import warnings

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.utils import CryptographyDeprecationWarning
from zope.interface.verify import verifyObject

from securechat.config import KNOWN_BACKENDS
from securechat.crypto import dh, kem
from securechat.crypto.ecdh import P256Kem, X25519Kem
from securechat.crypto.kem import IKem, KemError, backend_names, get_kem
from securechat.crypto.rsa import RsaKem

# Every backend/parameter combination; RSA at 2048 here (fast), 3072 once below.
COMBINATIONS: list[tuple[str, dict[str, object]]] = [
    *(("dh", dict[str, object](group=group)) for group in sorted(dh.GROUPS)),
    ("ecdh", {"curve": "x25519"}),
    ("ecdh", {"curve": "p256"}),
    ("rsa", {"bits": 2048}),
    ("hybrid", {"kem": "xwing"}),
]
IDS = [f"{name}-{next(iter(params.values()))}" for name, params in COMBINATIONS]


@pytest.fixture(scope="module")
def rsa2048_keys() -> kem.KeyPair:
    return RsaKem(2048).generate_keypair()


def _spki(key: rsa.RSAPublicKey | ed25519.Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --- registry ---------------------------------------------------------------------------


def test_registry_names_equal_config_known_backends() -> None:
    assert backend_names() == tuple(sorted(KNOWN_BACKENDS))


def test_unknown_backend_name_is_key_error() -> None:
    with pytest.raises(KeyError, match="nope"):
        get_kem("nope")


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("dh", {"group": "ffdhe1024"}),
        ("dh", {"curve": "x25519"}),
        ("ecdh", {"curve": "p384"}),
        ("ecdh", {"group": "ffdhe3072"}),
        ("rsa", {"bits": 1024}),
        ("rsa", {"bits": "3072"}),
        ("rsa", {"size": 3072}),
    ],
)
def test_bad_params_are_kem_errors(name: str, params: dict[str, object]) -> None:
    with pytest.raises(KemError):
        get_kem(name, params)


@pytest.mark.parametrize(
    ("name", "expected_params", "rotates"),
    [("dh", "ffdhe3072", True), ("ecdh", "x25519", True), ("rsa", "rsa3072", False),
     ("hybrid", "xwing", True)],
)
def test_defaults_and_interface(name: str, expected_params: str, rotates: bool) -> None:
    backend = get_kem(name)
    assert verifyObject(IKem, backend)
    assert backend.name == name
    assert backend.params == expected_params
    assert backend.secret_size == 32
    assert backend.rotates_every_turn is rotates


# --- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "params"), COMBINATIONS, ids=IDS)
def test_round_trip(name: str, params: dict[str, object]) -> None:
    backend = get_kem(name, params)
    keys = backend.generate_keypair()
    backend.validate_public(keys.public)
    secret, enc = backend.encapsulate(keys.public)
    assert len(secret) == backend.secret_size
    assert backend.decapsulate(keys.private, enc) == secret
    # Fresh randomness per encapsulation: never the same secret or encapsulation twice.
    secret2, enc2 = backend.encapsulate(keys.public)
    assert (secret2, enc2) != (secret, enc)
    assert backend.decapsulate(keys.private, enc2) == secret2


@pytest.mark.parametrize(("name", "params"), COMBINATIONS, ids=IDS)
def test_wrong_recipient_does_not_get_the_secret(name: str, params: dict[str, object]) -> None:
    backend = get_kem(name, params)
    alice, mallory = backend.generate_keypair(), backend.generate_keypair()
    secret, enc = backend.encapsulate(alice.public)
    try:
        assert backend.decapsulate(mallory.private, enc) != secret
    except KemError:
        assert name == "rsa"  # OAEP detects the wrong key; DH-style KEMs give another secret


@pytest.mark.parametrize(("name", "params"), COMBINATIONS, ids=IDS)
def test_wrong_length_enc_and_public_rejected(name: str, params: dict[str, object]) -> None:
    backend = get_kem(name, params)
    keys = backend.generate_keypair()
    _, enc = backend.encapsulate(keys.public)
    for bad in (b"", enc[:-1], enc + b"\0"):
        with pytest.raises(KemError):
            backend.decapsulate(keys.private, bad)
    for bad in (b"", keys.public[:-1], keys.public + b"\0"):
        with pytest.raises(KemError):
            backend.validate_public(bad)
        with pytest.raises(KemError):
            backend.encapsulate(bad)


def test_rsa_3072_default_round_trip() -> None:
    backend = get_kem("rsa")
    keys = backend.generate_keypair()
    secret, enc = backend.encapsulate(keys.public)
    assert len(enc) == 384
    assert backend.decapsulate(keys.private, enc) == secret


# --- finite-field DH --------------------------------------------------------------------


@pytest.mark.parametrize("group", sorted(dh.GROUPS))
def test_dh_rejects_out_of_range_and_non_subgroup_values(group: str) -> None:
    backend = dh.DhKem(group)
    p = dh.GROUPS[group]
    q = (p - 1) // 2
    size = (p.bit_length() + 7) // 8
    # p - 2 = -2 is a quadratic non-residue (p = 7 mod 8 makes 2 a residue, p = 3 mod 4 makes
    # -1 a non-residue), hence a generator of the whole group of order 2q.
    assert pow(p - 2, q, p) != 1
    keys = backend.generate_keypair()
    for y in (0, 1, p - 1, p, p + 1, p - 2, 2 ** (8 * size) - 1):
        public = y.to_bytes(size, "big")
        with pytest.raises(KemError):
            backend.validate_public(public)
        with pytest.raises(KemError):
            backend.encapsulate(public)
        with pytest.raises(KemError):
            backend.decapsulate(keys.private, public)


def test_dh_subgroup_check_agrees_with_modular_exponentiation() -> None:
    """The Euler-criterion check must accept exactly the ``y`` with ``y^q == 1 (mod p)``."""
    p = dh.GROUPS["ffdhe2048"]
    q = (p - 1) // 2
    backend = dh.DhKem("ffdhe2048")
    results = set()
    for _ in range(6):
        z = secrets.randbelow(p - 4) + 2
        for y in (z * z % p, p - z * z % p, z):
            if not 1 < y < p - 1:
                continue
            in_subgroup = pow(y, q, p) == 1
            try:
                backend.validate_public(y.to_bytes(256, "big"))
                accepted = True
            except KemError:
                accepted = False
            assert accepted == in_subgroup
            results.add(accepted)
    assert results == {True, False}


def test_dh_private_key_of_another_group_or_garbage_rejected() -> None:
    backend = dh.DhKem("ffdhe2048")
    other = dh.DhKem("modp2048").generate_keypair()
    _, enc = backend.encapsulate(backend.generate_keypair().public)
    for private in (other.private, b"", b"\x30\x00", RsaKem(2048).generate_keypair().private):
        with pytest.raises(KemError):
            backend.decapsulate(private, enc)


def test_ffdh_deprecation_warning_does_not_leak() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backend = dh.DhKem("ffdhe2048")
        keys = backend.generate_keypair()
        secret, enc = backend.encapsulate(keys.public)
        assert backend.decapsulate(keys.private, enc) == secret
    assert [str(w.message) for w in caught] == []


def test_ffdh_filter_swallows_nothing_else() -> None:
    # Another CryptographyDeprecationWarning, and the FFDH text under another category,
    # both still surface inside the filter.
    with (
        pytest.warns(CryptographyDeprecationWarning, match="something else"),
        dh.silence_ffdh_deprecation(),
    ):
        warnings.warn("something else is deprecated", CryptographyDeprecationWarning, stacklevel=1)
    with pytest.warns(DeprecationWarning, match="FFDH"), dh.silence_ffdh_deprecation():
        warnings.warn(
            "Diffie-Hellman over finite fields (FFDH) is deprecated",
            DeprecationWarning,
            stacklevel=1,
        )
    # The filter is local: outside it, cryptography's own warning is raised again.
    with pytest.warns(CryptographyDeprecationWarning, match="FFDH"):
        from cryptography.hazmat.primitives.asymmetric import dh as crypto_dh

        assert crypto_dh.DHParameterNumbers is not None
    # And inside it, exactly that warning is silenced.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with dh.silence_ffdh_deprecation():
            assert crypto_dh.DHParameterNumbers is not None
    assert caught == []


# --- elliptic curves --------------------------------------------------------------------

# Points of order 1, 2, 4 and 8 on Curve25519 and their non-canonical twins (libsodium's list).
X25519_LOW_ORDER = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
]


@pytest.mark.parametrize("point", X25519_LOW_ORDER)
def test_x25519_low_order_points_rejected(point: str) -> None:
    backend = X25519Kem()
    keys = backend.generate_keypair()
    public = bytes.fromhex(point)
    with pytest.raises(KemError, match="low-order"):
        backend.validate_public(public)
    with pytest.raises(KemError, match="low-order"):
        backend.encapsulate(public)
    with pytest.raises(KemError, match="low-order"):
        backend.decapsulate(keys.private, public)


def test_p256_invalid_points_rejected() -> None:
    backend = P256Kem()
    keys = backend.generate_keypair()
    good = keys.public
    off_curve = good[:-1] + bytes([good[-1] ^ 1])
    compressed = bytes([2 + (good[-1] & 1)]) + good[1:33]
    bad_prefix = b"\x05" + good[1:]
    x_too_big = b"\x04" + b"\xff" * 64
    for public in (off_curve, compressed, bad_prefix, x_too_big, b"\x04" + bytes(64)):
        with pytest.raises(KemError):
            backend.validate_public(public)
        with pytest.raises(KemError):
            backend.encapsulate(public)
        with pytest.raises(KemError):
            backend.decapsulate(keys.private, public)


def test_p256_private_scalar_out_of_range_rejected() -> None:
    backend = P256Kem()
    _, enc = backend.encapsulate(backend.generate_keypair().public)
    for private in (bytes(32), b"\xff" * 32, b"\x01" * 31):
        with pytest.raises(KemError):
            backend.decapsulate(private, enc)


# --- RSA --------------------------------------------------------------------------------


def test_rsa_below_2048_refused_at_construction() -> None:
    for bits in (512, 1024, 2047):
        with pytest.raises(KemError, match="too weak"):
            RsaKem(bits)


def test_rsa_peer_key_of_wrong_size_refused(rsa2048_keys: kem.KeyPair) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(KemError, match="1024 bits"):
        RsaKem(2048).encapsulate(_spki(small.public_key()))
    with pytest.raises(KemError, match="2048 bits"):
        RsaKem(3072).validate_public(rsa2048_keys.public)


def test_rsa_exponent_3_refused() -> None:
    weak = rsa.generate_private_key(public_exponent=3, key_size=2048)
    with pytest.raises(KemError, match="exponent 3"):
        RsaKem(2048).validate_public(_spki(weak.public_key()))


def test_rsa_non_rsa_key_and_garbage_refused() -> None:
    ed_public = ed25519.Ed25519PrivateKey.generate().public_key()
    for public in (_spki(ed_public), b"\x30\x03\x02\x01\x01", secrets.token_bytes(294)):
        with pytest.raises(KemError):
            RsaKem(2048).validate_public(public)


def test_rsa_tampered_or_foreign_ciphertext_refused(rsa2048_keys: kem.KeyPair) -> None:
    backend = RsaKem(2048)
    _, enc = backend.encapsulate(rsa2048_keys.public)
    tampered = enc[:-1] + bytes([enc[-1] ^ 1])
    with pytest.raises(KemError, match="decapsulation failed"):
        backend.decapsulate(rsa2048_keys.private, tampered)
    # A valid OAEP ciphertext of anything but 32 bytes is not a KEM encapsulation.
    public = backend.load_public(rsa2048_keys.public)
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
    with pytest.raises(KemError, match="decapsulation failed"):
        backend.decapsulate(rsa2048_keys.private, public.encrypt(b"x" * 31, oaep))


# --- specs: one entry per backend is all the rest of the code reads -----------------------


@pytest.mark.parametrize("name", sorted(KNOWN_BACKENDS))
def test_spec_client_params_round_trip_through_the_backend_id(name: str) -> None:
    from securechat.client.sessions import kem_for
    from securechat.crypto.backends import parse_backend_id, spec
    from securechat.crypto.header import backend_id

    backend = spec(name)
    kem = get_kem(name, backend.client_params)
    assert parse_backend_id(backend_id(kem)) == (name, dict(backend.client_params))
    assert backend_id(kem_for(backend_id(kem))) == backend_id(kem)
    assert backend.one_time_target > 0


@pytest.mark.parametrize("bad", ["nope:x", "rsa:3072", "rsa:rsaxyz", "ecdh:", "ecdh:p384", ""])
def test_unknown_backend_ids_are_refused_by_the_client(bad: str) -> None:
    from securechat.client.sessions import kem_for
    from securechat.crypto.errors import CryptoError

    with pytest.raises(CryptoError, match="unknown backend"):
        kem_for(bad)
