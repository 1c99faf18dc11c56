"""The typed outbox: its keystore format, and the migration of version-1 keystores."""

from __future__ import annotations

from pathlib import Path

import pytest

from securechat.client.keystore import TEST_KDF, Keystore, KeystoreError
from securechat.client.outbox import Outbox, OutboxEntry
from securechat.crypto.identity import IdentityKeyPair


def test_a_version_1_outbox_is_migrated_and_survives_a_save(tmp_path: Path) -> None:
    ks = Keystore.create(tmp_path, "pw", "alice", IdentityKeyPair.generate().private_bytes(),
                         TEST_KDF)  # fmt: skip
    old = {"to": "bob", "backend": "ecdh", "mid": b"m" * 16, "payload": b"env", "room": None}
    ks.state.extra["outbox"] = [old]  # as written by clients before the typed outbox
    ks.save()
    outbox = Outbox(Keystore.open(tmp_path, "pw").state.extra)
    assert list(outbox) == [OutboxEntry(mid=b"m" * 16, to="bob", backend="ecdh",
                                        payload=b"env")]  # fmt: skip
    assert outbox.get(b"m" * 16) is not None and len(outbox) == 1


def test_changes_are_written_through_to_the_keystore_state(tmp_path: Path) -> None:
    ks = Keystore.create(tmp_path, "pw", "alice", IdentityKeyPair.generate().private_bytes(),
                         TEST_KDF)  # fmt: skip
    outbox = Outbox(ks.state.extra)
    outbox.add(OutboxEntry(mid=b"a" * 16, to="bob", backend="ecdh", text="typed offline"))
    ks.save()  # whoever saves next saves the outbox as it is in memory
    [entry] = Outbox(Keystore.open(tmp_path, "pw").state.extra)
    assert entry.text == "typed offline" and not entry.encrypted
    outbox.remove([entry.mid])
    ks.save()
    assert not Outbox(Keystore.open(tmp_path, "pw").state.extra)


def test_an_unknown_outbox_format_is_refused() -> None:
    with pytest.raises(KeystoreError):
        Outbox({"outbox": {"version": 99}})
    with pytest.raises(KeystoreError):
        Outbox({"outbox": [{"mid": b"x", "to": "bob", "backend": "ecdh"}]})
