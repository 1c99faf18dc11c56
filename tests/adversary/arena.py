"""The stage of an adversary test: a real daemon, the malicious relay in front of it, and
real ``securechat-client`` processes that connect to the relay.

:class:`Arena` owns one daemon directory (config, TLS files from the daemon's private CA,
database). Clients get ``--ca`` of that CA and ``--server`` of the relay, so they trust the
relay exactly as they would trust the real server: the relay holds the server's identity.
:class:`Impostor` is a user the relay invents (its own identity key) to run handshakes
under somebody else's name.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from securechat import wire
from securechat.client.sessions import encode_plaintext, kem_for
from securechat.crypto.identity import IdentityKeyPair
from securechat.crypto.prekeys import SignedPrekey
from securechat.crypto.session import Session
from securechat.tls import _cert_pem, _issue, _key_pem
from tests.adversary.relay import MaliciousRelay
from tests.conftest import merged_sections, toml_text
from tests.e2e.clientproc import ClientProcess, client_argv, spawn_client
from tests.e2e.daemon import Daemon, start_daemon

#: The daemon uses the production password hash, as users' servers do.
DEFAULT_OVERRIDES: dict[str, dict[str, Any]] = {
    "auth": {"password_hash": "argon2id"},
    "crypto": {"backends": ["ecdh"], "default_backend": "ecdh"},
}


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class Arena:
    """A daemon in ``root`` and a :class:`MaliciousRelay` in front of it."""

    def __init__(self, root: Path, overrides: dict[str, dict[str, Any]] | None = None) -> None:
        self.root = root
        self.config = root / "server.toml"
        self.config.write_text(toml_text(merged_sections(overrides or DEFAULT_OVERRIDES)))
        self.tls = root / "tls"
        self.daemon: Daemon | None = None
        self.relay: MaliciousRelay | None = None

    @property
    def ca(self) -> Path:
        return self.tls / "ca.pem"

    async def start(self) -> None:
        """Start the daemon (which creates its CA and certificate), then the relay."""
        self.daemon = await start_daemon(_reactor(), self.config)
        assert self.daemon.port is not None
        self.relay = self.new_relay()

    def new_relay(self, cert_pem: bytes | None = None, key_pem: bytes | None = None
                  ) -> MaliciousRelay:  # fmt: skip
        """A relay (listening) in front of the daemon, presenting ``cert_pem`` (default: the
        daemon's own certificate and key)."""
        assert self.daemon is not None and self.daemon.port is not None
        relay = MaliciousRelay(
            _reactor(), self.daemon.port, self.ca.read_bytes(),
            cert_pem or (self.tls / "server.pem").read_bytes(),
            key_pem or (self.tls / "server.key").read_bytes(),
        )  # fmt: skip
        relay.start()
        return relay

    def issue_server_cert(
        self, common_name: str, san: list[x509.GeneralName] | None
    ) -> tuple[bytes, bytes]:
        """A server certificate from the trusted CA, with the given CN and SAN (``None``:
        no subjectAltName extension at all). Returns ``(cert_pem, key_pem)``."""
        ca_cert = x509.load_pem_x509_certificate(self.ca.read_bytes())
        ca_key: Any = serialization.load_pem_private_key((self.tls / "ca.key").read_bytes(), None)
        cert, key = _issue(ca_cert, ca_key, common_name, ExtendedKeyUsageOID.SERVER_AUTH, 30, san)
        return _cert_pem(cert), _key_pem(key)

    async def stop(self) -> None:
        if self.relay is not None:
            await self.relay.stop()
        if self.daemon is not None and self.daemon.running:
            exit = await self.daemon.stop()
            assert "Traceback" not in exit.output, exit.output

    # -- clients --------------------------------------------------------------------------------
    def password_file(self, user: str, password: str | None = None) -> Path:
        path = self.root / "secrets" / f"{user}-{uuid.uuid4().hex[:6]}.pw"
        path.parent.mkdir(exist_ok=True)
        path.write_text((password or f"password of {user}!") + "\n")
        return path

    def client(
        self,
        user: str,
        *,
        register: bool = False,
        password: str | None = None,
        host: str = "127.0.0.1",
        relay: MaliciousRelay | None = None,
        extra: tuple[str, ...] = (),
    ) -> ClientProcess:
        """Start ``user``'s client against ``relay`` (default: :attr:`relay`)."""
        through = relay or self.relay
        assert through is not None
        argv = client_argv(
            port=through.port, ca=self.ca, user=user, password_file=self.password_file(user,
            password), home=self.root / "homes" / user, register=register, host=host,
            extra=extra,
        )  # fmt: skip
        return spawn_client(_reactor(), user, argv, self.root)

    async def online(self, *users: str, register: bool = False) -> list[ClientProcess]:
        """Start clients for ``users`` together; wait until each is logged in."""
        clients = [self.client(u, register=register) for u in users]
        try:
            for c in clients:
                await c.logged_in()
        except AssertionError as e:
            for c in clients:
                c.kill()
            log = self.daemon.output if self.daemon is not None else ""
            raise AssertionError(f"{e}\n--- daemon log ---\n{log}") from None
        return clients


class Impostor:
    """A user the relay makes up: its own identity key, claiming the name ``name``.

    It runs real handshakes (:meth:`Session.initiate`) against bundles the relay fetches, so
    its envelopes are well formed and authenticated, only under the wrong identity key.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.identity = IdentityKeyPair.generate()
        self.sessions: dict[str, Session] = {}

    def start(self, peer: str, bundle: wire.Bundle) -> Session:
        """A session with ``peer`` from ``bundle`` (fetched by the relay)."""
        kem = kem_for(SignedPrekey.from_bytes(bundle.signed_prekey).backend)
        session = Session.initiate(
            kem=kem, identity=self.identity, local_user=self.name, peer_user=peer,
            peer_identity=bundle.identity_key, signed_prekey=bundle.signed_prekey,
            one_time_prekey=bundle.one_time_key,
        )  # fmt: skip
        self.sessions[peer] = session
        return session

    def envelope(self, peer: str, text: str, room: str | None = None) -> wire.DeliverItem:
        """The next message of our session with ``peer``, as a ``deliver`` item from us."""
        session = self.sessions[peer]
        mid = os.urandom(16)
        payload = session.encrypt(encode_plaintext(text), room=room, message_id=mid)
        backend = session.backend.split(":")[0]
        return wire.DeliverItem(0, self.name, backend, mid, time.time(), payload, room)
