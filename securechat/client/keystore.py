"""The client's local secrets: identity key, prekeys, pins, sessions — encrypted at rest.

Everything lives in one file sealed with AES-256-GCM under a key derived from the user's
passphrase with Argon2id (RFC 9106; OWASP parameters or stronger), so a stolen device
without the passphrase yields nothing but sizes. The KDF header (salt and parameters) is
the AEAD's associated data: tampering with it fails decryption instead of weakening it.
Writes are atomic (temporary file, fsync, rename) so a crash never leaves half a keystore.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from securechat.crypto.password_kdf import KEYSTORE_LABEL
from securechat.errors import SecureChatError

MAGIC = b"SCKS1\n"
FILE_NAME = "keystore.bin"
MAX_FILE_BYTES = 64 << 20
#: Set in ``extra`` of keystores whose account logs in with the derived login secret
#: (every keystore this version makes, and older ones once migrated): the raw password is
#: then never sent, whatever the relay answers.
DERIVED_LOGIN = "derived_login"


class KeystoreError(SecureChatError):
    """The local keystore could not be opened."""


class WrongPassphrase(KeystoreError):
    """The passphrase does not open the keystore (or the file was altered)."""


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost: 64 MiB and t=3 as RFC 9106's second profile, with one lane (OpenSSL
    4 starts threads for more lanes, and concurrent multi-lane derivations can hang)."""

    memory_kib: int = 65536
    iterations: int = 3
    lanes: int = 1

    def check(self) -> None:
        """Refuse parameters that a tampered file could use to exhaust memory or time."""
        if not (8192 <= self.memory_kib <= 1 << 21 and 1 <= self.iterations <= 16):
            raise KeystoreError("keystore has unacceptable key-derivation parameters")
        if not 1 <= self.lanes <= 16:
            raise KeystoreError("keystore has unacceptable key-derivation parameters")


#: Cheap parameters for tests only; production code never selects them implicitly.
TEST_KDF = KdfParams(memory_kib=8192, iterations=1, lanes=1)


def derive_key(passphrase: str, salt: bytes, params: KdfParams, labelled: bool = True) -> bytes:
    """Argon2id(passphrase, salt, ad = KEYSTORE_LABEL) -> 32-byte key-encryption key.

    :param labelled: False only to open keystores written before the label existed.
    :raises KeystoreError: the passphrase is empty.
    """
    if not passphrase:
        raise KeystoreError("an empty passphrase is not allowed")
    return Argon2id(
        salt=salt,
        length=32,
        iterations=params.iterations,
        lanes=params.lanes,
        memory_cost=params.memory_kib,
        ad=KEYSTORE_LABEL if labelled else None,
    ).derive(passphrase.encode("utf-8"))


def _header(salt: bytes, params: KdfParams) -> bytes:
    return bytes(
        cbor2.dumps(
            {
                "kdf": "argon2id",
                "label": KEYSTORE_LABEL,
                "salt": salt,
                "m": params.memory_kib,
                "t": params.iterations,
                "p": params.lanes,
            },
            canonical=True,
        )
    )


@dataclass
class Pin:
    """A peer's identity key as first seen (TOFU), and whether the user verified it."""

    identity_key: bytes
    verified: bool = False
    changed_from: bytes | None = None


@dataclass
class KeystoreState:
    """The decrypted contents; plain data so it serialises to CBOR as-is."""

    user: str
    identity_private: bytes
    prekeys: dict[str, bytes] = field(default_factory=dict)
    pins: dict[str, Pin] = field(default_factory=dict)
    sessions: dict[str, bytes] = field(default_factory=dict)
    seen: dict[str, list[bytes]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_cbor(self) -> bytes:
        pins = {
            k: {"key": p.identity_key, "verified": p.verified, "changed_from": p.changed_from}
            for k, p in self.pins.items()
        }
        return bytes(
            cbor2.dumps(
                {
                    "user": self.user,
                    "identity_private": self.identity_private,
                    "prekeys": self.prekeys,
                    "pins": pins,
                    "sessions": self.sessions,
                    "seen": self.seen,
                    "counters": self.counters,
                    "extra": self.extra,
                },
                canonical=True,
            )
        )

    @classmethod
    def from_cbor(cls, data: bytes) -> KeystoreState:
        raw = cbor2.loads(data)
        if not isinstance(raw, dict):
            raise KeystoreError("keystore contents are malformed")
        try:
            pins = {
                str(k): Pin(bytes(v["key"]), bool(v["verified"]), v.get("changed_from"))
                for k, v in raw["pins"].items()
            }
            return cls(
                user=str(raw["user"]),
                identity_private=bytes(raw["identity_private"]),
                prekeys={str(k): bytes(v) for k, v in raw["prekeys"].items()},
                pins=pins,
                sessions={str(k): bytes(v) for k, v in raw["sessions"].items()},
                seen={str(k): [bytes(x) for x in v] for k, v in raw["seen"].items()},
                counters={str(k): int(v) for k, v in raw["counters"].items()},
                extra=dict(raw.get("extra", {})),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise KeystoreError("keystore contents are malformed") from e


class Keystore:
    """An open keystore: the state in memory and the key to write it back.

    The derived key stays in memory for the process's life so that saving after every
    message does not pay the Argon2id cost again; the passphrase itself is not kept.
    """

    #: Remembered message ids per peer, for dropping duplicates and replays.
    SEEN_LIMIT = 4096

    def __init__(self, path: Path, state: KeystoreState, key: bytes, header: bytes) -> None:
        self.path = path
        self.state = state
        self._key = key
        self._header = header

    # -- opening --------------------------------------------------------------
    @staticmethod
    def file_for(home: Path) -> Path:
        return home / FILE_NAME

    @classmethod
    def exists(cls, home: Path) -> bool:
        return cls.file_for(home).exists()

    @classmethod
    def create(
        cls,
        home: Path,
        passphrase: str,
        user: str,
        identity_private: bytes,
        params: KdfParams | None = None,
    ) -> Keystore:
        """Make a new keystore; refuses to overwrite an existing one (it holds the identity)."""
        params = params or KdfParams()
        path = cls.file_for(home)
        if path.exists():
            raise KeystoreError(f"a keystore already exists at {path}")
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        salt = os.urandom(16)
        key = derive_key(passphrase, salt, params)
        state = KeystoreState(user, identity_private, extra={DERIVED_LOGIN: True})
        store = cls(path, state, key, _header(salt, params))
        store.save()
        return store

    @classmethod
    def open(cls, home: Path, passphrase: str) -> Keystore:
        """Decrypt the keystore; a wrong passphrase is a clear :class:`KeystoreError`."""
        path = cls.file_for(home)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            raise KeystoreError(f"no keystore at {path} (use --register first)") from None
        except OSError as e:
            raise KeystoreError(f"cannot read keystore {path}: {e.strerror}") from None
        if len(blob) > MAX_FILE_BYTES or not blob.startswith(MAGIC):
            raise KeystoreError(f"{path} is not a securechat keystore")
        body = blob[len(MAGIC) :]
        if len(body) < 4:
            raise KeystoreError(f"{path} is truncated")
        hlen = int.from_bytes(body[:4], "big")
        header, rest = body[4 : 4 + hlen], body[4 + hlen :]
        if len(header) != hlen or len(rest) < 12 + 16:
            raise KeystoreError(f"{path} is truncated")
        try:
            meta = cbor2.loads(header)
            params = KdfParams(int(meta["m"]), int(meta["t"]), int(meta["p"]))
            salt = bytes(meta["salt"])
            labelled = "label" in meta
            if meta["kdf"] != "argon2id" or len(salt) < 16:
                raise ValueError("kdf")
            if labelled and meta["label"] != KEYSTORE_LABEL:
                raise ValueError("label")
        except (KeyError, TypeError, ValueError, cbor2.CBORDecodeError):
            raise KeystoreError(f"{path} has a malformed header") from None
        params.check()
        key = derive_key(passphrase, salt, params, labelled)
        try:
            plain = AESGCM(key).decrypt(rest[:12], rest[12:], MAGIC + header)
        except InvalidTag:
            raise WrongPassphrase(
                f"wrong passphrase for the keystore {path} (or the file was altered)"
            ) from None
        store = cls(path, KeystoreState.from_cbor(plain), key, header)
        if not labelled:
            # Written before keystore keys had their own label: sealed again, under a
            # fresh salt, with the labelled derivation (same passphrase, same parameters).
            new_salt = os.urandom(16)
            store._key = derive_key(passphrase, new_salt, params)
            store._header = _header(new_salt, params)
            store.save()
        return store

    # -- writing --------------------------------------------------------------
    def save(self) -> None:
        """Seal and atomically replace the file (mode 0600)."""
        nonce = os.urandom(12)
        sealed = AESGCM(self._key).encrypt(nonce, self.state.to_cbor(), MAGIC + self._header)
        data = MAGIC + len(self._header).to_bytes(4, "big") + self._header + nonce + sealed
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        # The rename itself must reach the disk too, or a power cut could bring back the
        # previous keystore (and with it message keys already used).
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    # -- conveniences used by the client ------------------------------------
    def seen_before(self, peer: str, message_id: bytes) -> bool:
        """True if ``message_id`` from ``peer`` was already shown."""
        return message_id in self.state.seen.get(peer, ())

    def remember(self, peer: str, message_id: bytes) -> bool:
        """Record ``message_id`` from ``peer``; False if it was seen before (a duplicate)."""
        seen = self.state.seen.setdefault(peer, [])
        if message_id in seen:
            return False
        seen.append(message_id)
        if len(seen) > self.SEEN_LIMIT:
            del seen[: len(seen) - self.SEEN_LIMIT]
        return True
