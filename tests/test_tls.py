"""Tests for securechat.tls: generated material, and real TLS handshakes run in memory.

The handshakes use ``TLSMemoryBIOFactory`` on both sides joined by ``iosim`` with a
``Clock`` (the pattern of Twisted's ``test_sslverify._loopbackTLSConnection``), so the
real OpenSSL code negotiates and verifies without any socket.
"""

from __future__ import annotations

import datetime
import ipaddress
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import Logger, capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient

from securechat import tls as tlsmod
from securechat.config import TLSSection
from securechat.errors import ConfigError
from securechat.tls import (
    client_tls_options,
    ensure_tls_material,
    issue_client_certificate,
    load_ca,
    server_tls_options,
)
from securechat.wire import EXPORTER_LABEL, EXPORTER_LENGTH

LOG = Logger(namespace="tests.test_tls")


def section(tmp_path: Path, **changes: Any) -> TLSSection:
    d = tmp_path / "tls"
    base = TLSSection(
        cert=d / "server.pem", key=d / "server.key", ca=d / "ca.pem", ca_key=d / "ca.key"
    )
    return replace(base, **changes)


@pytest.fixture
def material(tmp_path: Path) -> TLSSection:
    tls = section(tmp_path)
    ensure_tls_material(tls, LOG)
    return tls


def leaf(tls: TLSSection) -> x509.Certificate:
    return x509.load_pem_x509_certificate(tls.cert.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- generated material -------------------------------------------------------------


def test_generates_ca_and_leaf_with_private_key_modes(material: TLSSection) -> None:
    """All four files appear; both private keys and the directory are owner-only."""
    assert mode(material.key) == 0o600
    assert mode(material.ca_key) == 0o600
    assert mode(material.cert.parent) == 0o700
    assert mode(material.cert) & 0o077 in (0o044, 0o004, 0o040, 0)
    assert not [p for p in material.cert.parent.iterdir() if p.name.endswith(".tmp")]


def test_leaf_has_san_eku_aki_and_short_validity(material: TLSSection) -> None:
    """The leaf passes strict path validation: SAN (DNS + IP), EKU, SKI/AKI, <= 90 days."""
    cert = leaf(material)
    ca_cert, _ = load_ca(material)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime <= datetime.timedelta(days=90)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    cert.verify_directly_issued_by(ca_cert)


def test_ca_is_a_ca(material: TLSSection) -> None:
    """The CA can sign certificates and nothing else is claimed for it."""
    ca_cert, ca_key = load_ca(material)
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = ca_cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)


def test_creation_logs_where_the_ca_is(tmp_path: Path) -> None:
    """The operator learns which file to hand to clients."""
    tls = section(tmp_path)
    with capturedLogs() as events:
        ensure_tls_material(tls, LOG)
    assert any(
        str(tls.ca) in e["log_format"].format(**e) and "--ca" in e["log_format"] for e in events
    )


def test_existing_material_is_reused(material: TLSSection) -> None:
    """A second start changes nothing: clients keep trusting the same CA and leaf."""
    before = {p: p.read_bytes() for p in (material.cert, material.key, material.ca)}
    ensure_tls_material(material, LOG)
    assert {p: p.read_bytes() for p in before} == before


def test_expiring_leaf_is_renewed_but_not_the_ca(material: TLSSection) -> None:
    """A leaf inside the renewal window is re-issued from the same CA."""
    ca_before, leaf_before = material.ca.read_bytes(), material.cert.read_bytes()
    ensure_tls_material(material, LOG, renew_within_days=100)
    assert material.ca.read_bytes() == ca_before
    assert material.cert.read_bytes() != leaf_before
    assert mode(material.key) == 0o600
    leaf(material).verify_directly_issued_by(load_ca(material)[0])


def test_changed_hostnames_reissue_the_leaf(material: TLSSection) -> None:
    """Adding a host name to the config gives a leaf that names it."""
    wider = replace(material, hostnames=("localhost", "127.0.0.1", "chat.example"))
    ensure_tls_material(wider, LOG)
    san = leaf(wider).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "chat.example" in san.get_values_for_type(x509.DNSName)


def test_foreign_leaf_is_not_replaced(material: TLSSection, tmp_path: Path) -> None:
    """An operator's certificate from another CA is used as is, never re-issued over."""
    other = section(tmp_path / "other")
    ensure_tls_material(other, LOG)
    foreign = replace(material, cert=other.cert, key=other.key, hostnames=("elsewhere",))
    before = foreign.cert.read_bytes()
    ensure_tls_material(foreign, LOG, renew_within_days=100)
    assert foreign.cert.read_bytes() == before


def test_missing_files_without_auto_generate_name_the_key(tmp_path: Path) -> None:
    """With auto_generate off, nothing is created and the error names the config key."""
    tls = section(tmp_path, auto_generate=False)
    with pytest.raises(ConfigError) as info:
        ensure_tls_material(tls, LOG)
    assert "[tls] cert" in str(info.value) and str(tls.cert) in str(info.value)
    assert not tls.cert.parent.exists()


def test_lost_ca_key_is_not_silently_replaced(material: TLSSection) -> None:
    """A CA without its key cannot issue; recreating it would break every pinned client."""
    material.ca_key.unlink()
    material.cert.unlink()
    with pytest.raises(ConfigError, match=r"\[tls\] ca_key"):
        ensure_tls_material(material, LOG)


def test_corrupt_certificate_names_the_key(material: TLSSection) -> None:
    """A damaged PEM file is a config error, not a traceback from deep inside OpenSSL."""
    material.cert.write_bytes(b"not a certificate")
    with pytest.raises(ConfigError, match=r"\[tls\] cert"):
        server_tls_options(material, client_certs=False)


def test_mismatched_key_is_rejected(material: TLSSection, tmp_path: Path) -> None:
    """A key that belongs to another certificate is caught before any client connects."""
    other = section(tmp_path / "other")
    ensure_tls_material(other, LOG)
    with pytest.raises(ConfigError, match=r"\[tls\] key"):
        server_tls_options(replace(material, key=other.key), client_certs=False)


def test_client_certificate_names_the_user(material: TLSSection) -> None:
    """issue_client_certificate gives a clientAuth certificate whose CN is the user."""
    cert_pem, key_pem = issue_client_certificate(*load_ca(material), "alice")
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert b"PRIVATE KEY" in key_pem


# -- handshakes in memory ---------------------------------------------------------------


class Recorder(Protocol):
    """Remembers whether the TLS session came up and why it ended."""

    def __init__(self) -> None:
        self.connected = False
        self.lost: Failure | None = None

    def connectionMade(self) -> None:
        self.connected = True

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = reason


class Loopback:
    """One in-memory TLS connection; ``server``/``client`` are the TLS protocols."""

    def __init__(self, server_opts: Any, client_opts: Any) -> None:
        clock = Clock()
        self.server_app, self.client_app = Recorder(), Recorder()
        server_factory = TLSMemoryBIOFactory(
            server_opts, False, Factory.forProtocol(lambda: self.server_app), clock=clock
        )
        client_factory = TLSMemoryBIOFactory(
            client_opts, True, Factory.forProtocol(lambda: self.client_app), clock=clock
        )
        self.client: TLSMemoryBIOProtocol
        self.server: TLSMemoryBIOProtocol
        self.client, self.server, pump = connectedServerAndClient(
            lambda: server_factory.buildProtocol(None),
            lambda: client_factory.buildProtocol(None),
            clock=clock,
        )
        pump.flush()

    @property
    def established(self) -> bool:
        """Both sides finished the handshake and neither side dropped the connection."""
        return (
            self.client_app.connected
            and self.server_app.connected
            and self.client_app.lost is None
            and self.server_app.lost is None
        )


def ca_pem(tls: TLSSection) -> bytes:
    return tls.ca.read_bytes()


def test_tls13_handshake_with_the_private_ca(material: TLSSection) -> None:
    """A client that pins the generated CA connects with TLS 1.3 and a modern group."""
    conn = Loopback(
        server_tls_options(material, client_certs=False),
        client_tls_options("localhost", ca_pem(material)),
    )
    assert conn.established
    handle = conn.client.getHandle()
    assert handle.get_protocol_version_name() == "TLSv1.3"
    assert conn.server.getHandle().get_protocol_version_name() == "TLSv1.3"


def test_ip_address_san_verifies(material: TLSSection) -> None:
    """Clients that connect by IP address are checked against the IP SAN."""
    conn = Loopback(
        server_tls_options(material, client_certs=False),
        client_tls_options("127.0.0.1", ca_pem(material)),
    )
    assert conn.established


def test_tls12_only_client_is_refused(material: TLSSection) -> None:
    """The default floor is TLS 1.3, so a client capped at 1.2 cannot connect."""
    old_client = ssl.optionsForClientTLS(
        "localhost",
        trustRoot=ssl.Certificate.loadPEM(ca_pem(material)),
        extraCertificateOptions={"lowerMaximumSecurityTo": ssl.TLSVersion.TLSv1_2},
    )
    conn = Loopback(server_tls_options(material, client_certs=False), old_client)
    assert not conn.established
    assert conn.client_app.lost is not None and conn.client_app.lost.check(SSL.Error)
    assert "protocol version" in str(conn.client_app.lost.value)


def test_min_version_12_accepts_tls12(material: TLSSection) -> None:
    """``min_version = "1.2"`` lowers the floor explicitly, for legacy clients only."""
    old_client = ssl.optionsForClientTLS(
        "localhost",
        trustRoot=ssl.Certificate.loadPEM(ca_pem(material)),
        extraCertificateOptions={"lowerMaximumSecurityTo": ssl.TLSVersion.TLSv1_2},
    )
    lowered = replace(material, min_version="1.2")
    conn = Loopback(server_tls_options(lowered, client_certs=False), old_client)
    assert conn.established
    assert conn.client.getHandle().get_protocol_version_name() == "TLSv1.2"


def test_hostname_mismatch_fails(material: TLSSection) -> None:
    """service_identity rejects a certificate that does not name the host dialled."""
    conn = Loopback(
        server_tls_options(material, client_certs=False),
        client_tls_options("chat.example", ca_pem(material)),
    )
    assert not conn.established
    assert conn.client_app.lost is not None
    assert conn.client_app.lost.check(tlsmod.ServerNameMismatch)
    assert "chat.example" in str(conn.client_app.lost.value)


def _leaf_from_ca(tls: TLSSection, tmp_path: Path, cn: str,
                  san: list[x509.GeneralName] | None) -> TLSSection:  # fmt: skip
    """``tls`` serving a leaf issued by its own (trusted) CA with ``cn`` and ``san``."""
    cert, key = tlsmod._issue(
        *load_ca(tls), cn, ExtendedKeyUsageOID.SERVER_AUTH, 30, san
    )  # fmt: skip
    (tmp_path / "odd.pem").write_bytes(tlsmod._cert_pem(cert))
    (tmp_path / "odd.key").write_bytes(tlsmod._key_pem(key))
    return replace(tls, cert=tmp_path / "odd.pem", key=tmp_path / "odd.key")


def test_certificate_without_san_is_refused(material: TLSSection, tmp_path: Path) -> None:
    """A trusted CA's certificate without subjectAltName (CN ``evil.example``) does not
    name ``localhost``: refused with one clear reason (Twisted alone logs service_identity's
    "no subjectAltName" error and lets the connection through)."""
    odd = _leaf_from_ca(material, tmp_path, "evil.example", None)
    for host in ("localhost", "evil.example", "127.0.0.1"):
        conn = Loopback(server_tls_options(odd, client_certs=False),
                        client_tls_options(host, ca_pem(material)))  # fmt: skip
        assert not conn.established, host
        assert conn.client_app.lost is not None
        assert conn.client_app.lost.check(tlsmod.ServerNameMismatch), conn.client_app.lost
        assert "no subjectAltName" in str(conn.client_app.lost.value)
        assert host in str(conn.client_app.lost.value)


def test_san_naming_another_host_is_refused(material: TLSSection, tmp_path: Path) -> None:
    """A SAN for another name (or another IP) is refused, naming what it does cover."""
    odd = _leaf_from_ca(material, tmp_path, "localhost",
                        [x509.DNSName("evil.example"), x509.IPAddress(
                            ipaddress.ip_address("127.0.0.2"))])  # fmt: skip
    for host in ("localhost", "127.0.0.1"):
        conn = Loopback(server_tls_options(odd, client_certs=False),
                        client_tls_options(host, ca_pem(material)))  # fmt: skip
        assert not conn.established
        assert conn.client_app.lost is not None
        assert conn.client_app.lost.check(tlsmod.ServerNameMismatch)
        assert "evil.example" in str(conn.client_app.lost.value)


def test_unknown_ca_fails(material: TLSSection, tmp_path: Path) -> None:
    """A client pinning a different CA refuses the server."""
    other = section(tmp_path / "other")
    ensure_tls_material(other, LOG)
    conn = Loopback(
        server_tls_options(material, client_certs=False),
        client_tls_options("localhost", ca_pem(other)),
    )
    assert not conn.established
    assert conn.client_app.lost is not None
    assert "certificate verify failed" in str(conn.client_app.lost.value)


def test_exporter_matches_on_both_sides(material: TLSSection) -> None:
    """The login channel binding: both ends derive the same exporter value."""
    conn = Loopback(
        server_tls_options(material, client_certs=False),
        client_tls_options("localhost", ca_pem(material)),
    )
    client_value = conn.client.getHandle().export_keying_material(
        EXPORTER_LABEL, EXPORTER_LENGTH, None
    )
    server_value = conn.server.getHandle().export_keying_material(
        EXPORTER_LABEL, EXPORTER_LENGTH, None
    )
    assert client_value == server_value
    assert len(client_value) == EXPORTER_LENGTH


class X448OnlyOptions(tlsmod._ModernCertificateOptions):
    """A client that offers only X448, which the modern profile excludes."""

    groups = b"X448"


def test_groups_are_restricted(material: TLSSection) -> None:
    """The server no longer accepts X448 (nor secp521r1): Mozilla "modern" groups only."""
    opts = server_tls_options(material, client_certs=False)
    assert opts.getContext() is opts.getContext()
    x448_client = X448OnlyOptions(trustRoot=ssl.Certificate.loadPEM(ca_pem(material)))
    assert not Loopback(opts, x448_client).established
    p256_client = ssl.CertificateOptions(trustRoot=ssl.Certificate.loadPEM(ca_pem(material)))
    assert Loopback(opts, p256_client).established


def test_optional_client_certificate_is_verified_and_readable(material: TLSSection) -> None:
    """A certificate user's CN reaches the server; the chain is checked against the CA."""
    cert_pem, key_pem = issue_client_certificate(*load_ca(material), "alice")
    conn = Loopback(
        server_tls_options(material, client_certs=True),
        client_tls_options("localhost", ca_pem(material), cert_pem + key_pem),
    )
    assert conn.established
    peer = conn.server.getHandle().get_peer_certificate(as_cryptography=True)
    assert peer is not None
    assert peer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"


def test_client_without_certificate_still_accepted(material: TLSSection) -> None:
    """Password and public-key users share the port with certificate users."""
    conn = Loopback(
        server_tls_options(material, client_certs=True),
        client_tls_options("localhost", ca_pem(material)),
    )
    assert conn.established
    assert conn.server.getHandle().get_peer_certificate() is None


def test_client_certificate_from_another_ca_is_refused(
    material: TLSSection, tmp_path: Path
) -> None:
    """A presented certificate must verify; an unknown issuer fails the handshake."""
    other = section(tmp_path / "other")
    ensure_tls_material(other, LOG)
    cert_pem, key_pem = issue_client_certificate(*load_ca(other), "mallory")
    conn = Loopback(
        server_tls_options(material, client_certs=True),
        client_tls_options("localhost", ca_pem(material), cert_pem + key_pem),
    )
    assert not conn.established
