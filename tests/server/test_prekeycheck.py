"""The relay's shape checks accept exactly what real clients publish, for every backend."""

from __future__ import annotations

import pytest

from securechat.crypto.backends import SPECS
from securechat.crypto.identity import IdentityKeyPair
from securechat.crypto.kem import get_kem
from securechat.crypto.prekeys import generate_one_time_prekeys, generate_signed_prekey
from securechat.server import prekeycheck
from securechat.server.prekeycheck import BadKeyRecord


@pytest.mark.parametrize("backend", sorted(SPECS))
def test_real_records_pass(backend: str) -> None:
    """A client's signed prekey (v2, with its identity KEM key), one-time prekey and
    identity key pass the checks of the backend they are published for, and no other."""
    identity = IdentityKeyPair.generate()
    kem = get_kem(backend, dict(SPECS[backend].client_params))
    ikem = kem.generate_keypair().public
    signed, _ = generate_signed_prekey(identity, kem, 7, 1_700_000_000, 3600, ikem)
    [(otk, _)] = generate_one_time_prekeys(kem, 8, 1)
    prekeycheck.check_identity_key(identity.public_bytes())
    prekeycheck.check_signed_prekey(backend, signed.to_bytes())
    prekeycheck.check_one_time_prekey(backend, 8, otk.to_bytes())
    with pytest.raises(BadKeyRecord):
        prekeycheck.check_one_time_prekey(backend, 9, otk.to_bytes())
    other = next(name for name in SPECS if name != backend)
    with pytest.raises(BadKeyRecord):
        prekeycheck.check_signed_prekey(other, signed.to_bytes())


@pytest.mark.parametrize(
    "record",
    [b"", b"\xff" * 16384, b"\xa0", b"\x80", b"\x1b" + b"\xff" * 8],
)
def test_junk_is_refused(record: bytes) -> None:
    with pytest.raises(BadKeyRecord):
        prekeycheck.check_signed_prekey("ecdh", record)
    with pytest.raises(BadKeyRecord):
        prekeycheck.check_one_time_prekey("ecdh", 1, record)
    with pytest.raises(BadKeyRecord):
        prekeycheck.check_identity_key(record)
