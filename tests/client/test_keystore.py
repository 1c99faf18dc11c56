"""The keystore: encrypted at rest, wrong passphrase refused, tampering detected."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import cbor2
import pytest

from securechat.client.keystore import (
    DERIVED_LOGIN,
    MAGIC,
    TEST_KDF,
    KdfParams,
    Keystore,
    KeystoreError,
    KeystoreState,
    Pin,
)
from securechat.crypto.password_kdf import KEYSTORE_LABEL
from tests.legacy_keystore import write_legacy_keystore

SECRET = b"\x42" * 32


def make(tmp_path: Path) -> Keystore:
    return Keystore.create(tmp_path / "home", "correct horse", "alice", SECRET, TEST_KDF)


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    ks = make(tmp_path)
    ks.state.prekeys["ecdh:spk:1"] = b"pk"
    ks.state.pins["bob"] = Pin(b"k" * 32, verified=True)
    ks.state.sessions["bob"] = b"session-state"
    ks.state.counters["bob"] = 7
    assert ks.remember("bob", b"id1")
    ks.save()
    again = Keystore.open(tmp_path / "home", "correct horse")
    assert again.state.identity_private == SECRET
    assert again.state.user == "alice"
    assert again.state.prekeys == {"ecdh:spk:1": b"pk"}
    assert again.state.pins["bob"] == Pin(b"k" * 32, verified=True)
    assert again.state.sessions == {"bob": b"session-state"}
    assert again.state.counters == {"bob": 7}
    assert not again.remember("bob", b"id1")


def test_file_is_private_and_holds_no_plaintext_secret(tmp_path: Path) -> None:
    ks = make(tmp_path)
    mode = stat.S_IMODE(os.stat(ks.path).st_mode)
    assert mode == 0o600
    blob = ks.path.read_bytes()
    assert blob.startswith(MAGIC)
    assert SECRET not in blob
    assert b"alice" not in blob


def test_wrong_passphrase_is_a_clear_error(tmp_path: Path) -> None:
    make(tmp_path)
    with pytest.raises(KeystoreError, match="wrong passphrase"):
        Keystore.open(tmp_path / "home", "wrong")


def test_tampered_header_or_body_fails(tmp_path: Path) -> None:
    ks = make(tmp_path)
    blob = bytearray(ks.path.read_bytes())
    blob[-1] ^= 1
    ks.path.write_bytes(bytes(blob))
    with pytest.raises(KeystoreError, match=r"wrong passphrase|altered"):
        Keystore.open(tmp_path / "home", "correct horse")


def test_absurd_kdf_parameters_are_refused() -> None:
    with pytest.raises(KeystoreError):
        KdfParams(memory_kib=1 << 30, iterations=1, lanes=1).check()
    with pytest.raises(KeystoreError):
        KdfParams(memory_kib=65536, iterations=1000, lanes=1).check()
    KdfParams().check()


def test_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError, match="--register"):
        Keystore.open(tmp_path, "x")
    (tmp_path / "keystore.bin").write_bytes(b"not a keystore")
    with pytest.raises(KeystoreError, match="not a securechat keystore"):
        Keystore.open(tmp_path, "x")


def test_create_refuses_to_overwrite_an_identity(tmp_path: Path) -> None:
    make(tmp_path)
    with pytest.raises(KeystoreError, match="already exists"):
        make(tmp_path)


def test_seen_ids_are_bounded(tmp_path: Path) -> None:
    ks = make(tmp_path)
    for i in range(Keystore.SEEN_LIMIT + 10):
        assert ks.remember("bob", i.to_bytes(4, "big"))
    assert len(ks.state.seen["bob"]) == Keystore.SEEN_LIMIT


def _header_of(path: Path) -> dict[str, object]:
    blob = path.read_bytes()[len(MAGIC) :]
    header: dict[str, object] = cbor2.loads(blob[4 : 4 + int.from_bytes(blob[:4], "big")])
    return header


def test_new_keystores_use_the_keystore_label_and_derived_logins(tmp_path: Path) -> None:
    """The key is Argon2id with the keystore's own label, and the keystore is marked to log
    in with the derived secret only (it never sends the raw password)."""
    ks = make(tmp_path)
    assert _header_of(ks.path)["label"] == KEYSTORE_LABEL
    assert ks.state.extra[DERIVED_LOGIN] is True


def test_legacy_keystore_opens_and_is_sealed_again_with_the_label(tmp_path: Path) -> None:
    """Keystores from before the label open with the same passphrase and are re-sealed
    (fresh salt, labelled key) at once; they keep their (absent) derived-login flag, so the
    client still knows to move the account over."""
    home = tmp_path / "home"
    state = KeystoreState("alice", SECRET, counters={"prekey_id": 9})
    path = write_legacy_keystore(home, "correct horse", state, TEST_KDF)
    old_salt = _header_of(path)["salt"]
    ks = Keystore.open(home, "correct horse")
    assert ks.state.counters == {"prekey_id": 9} and DERIVED_LOGIN not in ks.state.extra
    header = _header_of(path)
    assert header["label"] == KEYSTORE_LABEL and header["salt"] != old_salt
    assert Keystore.open(home, "correct horse").state.identity_private == SECRET
    with pytest.raises(KeystoreError, match="wrong passphrase"):
        Keystore.open(home, "wrong")


def test_empty_passphrase_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError, match="empty passphrase"):
        Keystore.create(tmp_path / "home", "", "alice", SECRET, TEST_KDF)
    make(tmp_path)
    with pytest.raises(KeystoreError, match="empty passphrase"):
        Keystore.open(tmp_path / "home", "")
