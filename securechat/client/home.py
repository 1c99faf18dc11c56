"""Where a user's keystore lives when ``--home`` is not given, and reading ``--ca``.

The default location must not depend on how the user spells the server: ``localhost:8443``
and ``127.0.0.1:8443`` reach the same relay, and a keystore holds the identity key that the
relay knows the user by, so finding "no keystore" under the other spelling (and being
offered ``--register``) is a trap. With ``--ca`` the location is keyed by the CA's public
key (the identity the client verifies the server against, stable while the CA lives) and
the port; with the platform trust, by the host name in a canonical form (lower case, no
trailing dot) and the port, since a public CA says nothing about one server.

Keystores made under the older ``USER@HOST_PORT`` scheme are moved to the new place the
first time they are looked up under the spelling that made them.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from securechat.client.keystore import Keystore
from securechat.errors import SecureChatError

#: Hex digits of the CA key's SHA-256 in a directory name: 64 bits tell CAs apart.
CA_ID_CHARS = 16


class HomeError(SecureChatError):
    """``--ca`` is unusable, or the keystore cannot be moved to its place."""


def read_ca(path: Path) -> bytes:
    """The PEM bytes of ``--ca``, checked to hold a certificate (one line if not)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise HomeError(f"cannot read CA file {path}: {e.strerror}") from None
    try:
        x509.load_pem_x509_certificate(data)
    except ValueError:
        raise HomeError(
            f"--ca {path} is not a PEM certificate (give the CA file the server names, "
            "e.g. var/tls/ca.pem)"
        ) from None
    return data


def ca_identity(ca_pem: bytes) -> str:
    """A short, stable name for the CA: SHA-256 of its SubjectPublicKeyInfo, in hex.

    The key, not the certificate, so a CA re-issued with the same key keeps its name."""
    cert = x509.load_pem_x509_certificate(ca_pem)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()[:CA_ID_CHARS]


def data_dir() -> Path:
    """``$XDG_DATA_HOME/securechat`` (default ``~/.local/share/securechat``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "securechat"


def canonical_host(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


def default_home(user: str, host: str, port: int, ca_pem: bytes | None) -> Path:
    """The keystore directory for ``user`` on the server reached as ``host:port``."""
    server = f"ca-{ca_identity(ca_pem)}" if ca_pem is not None else canonical_host(host)
    return data_dir() / f"{user}@{server}_{port}"


def legacy_home(user: str, host: str, port: int) -> Path:
    """Where versions before the CA-keyed scheme kept the keystore (spelling-dependent)."""
    return data_dir() / f"{user}@{host.strip('[]')}_{port}"


@dataclass
class Location:
    """Where the keystore is, where else was looked, and whether it was just moved."""

    home: Path
    explicit: bool
    looked: list[Path] = field(default_factory=list)
    moved_from: Path | None = None

    def describe_missing(self, user: str) -> str:
        """The one line for "no keystore here", naming every place that was looked at."""
        where = ", ".join(str(Keystore.file_for(p)) for p in self.looked)
        text = f"no keystore for {user}: looked in {where}"
        if not self.explicit:
            others = sorted(p for p in data_dir().glob(f"{_glob_escape(user)}@*")
                            if Keystore.exists(p) and p not in self.looked)  # fmt: skip
            if others:
                text += (f"; other keystores of {user} (another server, or this one before its CA "
                         f"changed): {', '.join(map(str, others))} (pass --home DIR)")  # fmt: skip
        return text + "; use --register to create an account and its keystore"


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def locate(
    user: str, host: str, port: int, ca_pem: bytes | None, explicit: Path | None
) -> Location:
    """Find the keystore directory, moving one from the legacy place if that is where it is."""
    if explicit is not None:
        return Location(explicit, True, [explicit])
    home = default_home(user, host, port, ca_pem)
    legacy = legacy_home(user, host, port)
    loc = Location(home, False, [home] if legacy == home else [home, legacy])
    if legacy != home and not Keystore.exists(home) and Keystore.exists(legacy):
        if home.exists():
            raise HomeError(f"cannot move the keystore {legacy} to {home}: {home} exists")
        try:
            home.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.rename(legacy, home)
        except OSError as e:
            raise HomeError(f"cannot move the keystore {legacy} to {home}: {e.strerror}") from None
        loc.moved_from = legacy
    return loc


LOCK_NAME = "keystore.lock"


def lock_home(home: Path) -> int:
    """Hold ``home``'s keystore for this process's life (an ``flock`` on a file beside it).

    Two clients on one keystore would each save their own copy of the ratchet state, so
    one would reuse message keys the other already used and undo the other's outbox; the
    second client is refused with one line instead. The lock ends with the process.

    :returns: the open lock file descriptor (kept open on purpose).
    """
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = home / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise HomeError(
            f"the keystore in {home} is in use by another securechat-client (pid {holder}); "
            "one client per keystore"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
