"""Write a keystore the way clients did before keystore keys had their own label.

Migration tests need one: the current code never writes this format any more.
"""

from __future__ import annotations

import os
from pathlib import Path

import cbor2
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from securechat.client.keystore import MAGIC, KdfParams, Keystore, KeystoreState


def write_legacy_keystore(
    home: Path, passphrase: str, state: KeystoreState, params: KdfParams
) -> Path:
    """An old-format keystore holding ``state``: Argon2id without associated data, a header
    without ``label``, and no derived-login flag unless ``state`` has one."""
    salt = os.urandom(16)
    meta = {"kdf": "argon2id", "salt": salt, "m": params.memory_kib, "t": params.iterations,
            "p": params.lanes}  # fmt: skip
    header = bytes(cbor2.dumps(meta, canonical=True))
    key = Argon2id(salt=salt, length=32, iterations=params.iterations, lanes=params.lanes,
                   memory_cost=params.memory_kib).derive(passphrase.encode())  # fmt: skip
    nonce = os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, state.to_cbor(), MAGIC + header)
    path = Keystore.file_for(home)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_bytes(MAGIC + len(header).to_bytes(4, "big") + header + nonce + sealed)
    return path
