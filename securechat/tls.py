"""TLS material and connection options for the relay and its clients.

Everything TLS-related lives here so that one module decides the security profile
(Mozilla "modern": TLS 1.3 only, the post-quantum X25519MLKEM768 group first, then
X25519/P-256/P-384, an ECDSA P-256 certificate that lives at most 90 days, issued by a CA
with proper SKI/AKI, KeyUsage and EKU) and both ``securechat.server`` and
``securechat.client`` import it instead of building contexts.

Keys and certificates are handled as ``cryptography`` objects: pyOpenSSL 26 deprecates its
own ``PKey``/``X509`` wrappers, and ``CertificateOptions`` accepts the ``cryptography`` types
at runtime even though Twisted's annotations still name the old ones (hence the narrow
``cast`` calls below).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from pathlib import Path
from typing import cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto
from OpenSSL._util import lib as _openssl_lib
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from securechat.config import TLSSection
from securechat.errors import ConfigError, SecureChatError

#: The key-exchange groups, most preferred first: the post-quantum hybrid X25519MLKEM768
#: (ML-KEM-768 + X25519, draft-ietf-tls-ecdhe-mlkem; cryptography's bundled OpenSSL 4
#: negotiates it, and so does the securechat client by default), then the Mozilla "modern"
#: profile's groups for every other client.
GROUPS = b"X25519MLKEM768:X25519:P-256:P-384"
#: Leaf lifetime: Mozilla "modern" allows at most 90 days.
LEAF_DAYS = 90
#: A private CA outlives many leaves; clients pin it with ``--ca``.
CA_DAYS = 3650
#: Client certificates are re-issued by an admin, not automatically, so they live longer.
CLIENT_DAYS = 365
#: On start, a leaf that expires sooner than this is re-issued from the CA.
RENEW_WITHIN_DAYS = 30

_BACKDATE = datetime.timedelta(minutes=5)  # tolerate clients whose clock is a little behind


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _san_names(hostnames: tuple[str, ...]) -> list[x509.GeneralName]:
    """DNS names and IP addresses for the SAN: clients check IPs as IPs, not as names."""
    names: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    days: int,
    now: datetime.datetime | None = None,
) -> x509.CertificateBuilder:
    start = (now or _now()) - _BACKDATE
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _usage(*, signature: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    # Positional: digital_signature, content_commitment, key_encipherment, data_encipherment,
    # key_agreement, key_cert_sign, crl_sign, encipher_only, decipher_only.
    return x509.KeyUsage(signature, False, False, False, False, cert_sign, cert_sign, False, False)


def _make_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A fresh private CA; the random suffix keeps two deployments' CAs distinguishable."""
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "securechat"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"securechat CA {secrets.token_hex(4)}"),
        ]
    )
    cert = (
        _builder(name, name, key.public_key(), CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _issue(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    purpose: x509.ObjectIdentifier,
    days: int,
    san: list[x509.GeneralName] | None = None,
    now: datetime.datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        _builder(subject, ca_cert.subject, key.public_key(), days, now)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def issue_client_certificate(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    cn: str,
    days: int = CLIENT_DAYS,
) -> tuple[bytes, bytes]:
    """Issue a mutual-TLS client certificate whose common name is the user name ``cn``.

    The server maps the verified certificate's CN to the account, so the CA key is
    the authority for certificate logins: keep it on the server machine.

    :returns: ``(cert_pem, key_pem)``; give both to the user, the key over a safe channel.
    """
    if not cn or len(cn) > 64:
        raise ValueError("the common name must be 1 to 64 characters")
    cert, key = _issue(ca_cert, ca_key, cn, ExtendedKeyUsageOID.CLIENT_AUTH, days)
    return _cert_pem(cert), _key_pem(key)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` atomically, the new file created with ``mode`` from the start.

    ``O_EXCL`` on a fresh temporary name means no other process can have the file open
    before its permissions are set, and ``os.replace`` means a reader never sees half a key.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read(path: Path, key: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(str(path), key, f"cannot read: {e.strerror or e}") from None


def _load_chain(path: Path, key: str) -> list[x509.Certificate]:
    try:
        chain = x509.load_pem_x509_certificates(_read(path, key))
    except ValueError as e:
        raise ConfigError(str(path), key, f"not a PEM certificate: {e}") from None
    return chain


def _load_key(path: Path, key: str) -> ec.EllipticCurvePrivateKey:
    try:
        loaded = serialization.load_pem_private_key(_read(path, key), password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(str(path), key, f"not an unencrypted PEM private key: {e}") from None
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise ConfigError(str(path), key, "must be an ECDSA key")
    return loaded


def load_ca(tls: TLSSection) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The private CA's certificate and key, for issuing leaves and client certificates.

    :raises ConfigError: naming ``[tls] ca`` or ``[tls] ca_key`` if a file is missing or bad.
    """
    return _load_chain(tls.ca, "[tls] ca")[0], _load_key(tls.ca_key, "[tls] ca_key")


def _covered_names(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    dns = san.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return set(dns) | set(ips)


def _leaf_is_stale(
    cert: x509.Certificate, tls: TLSSection, renew_within_days: int, now: datetime.datetime
) -> bool:
    """True when the leaf expires soon or no longer names exactly the configured hosts."""
    deadline = now + datetime.timedelta(days=renew_within_days)
    if cert.not_valid_after_utc <= deadline:
        return True
    return _covered_names(cert) != {str(name.value) for name in _san_names(tls.hostnames)}


def _issue_leaf(
    tls: TLSSection,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    log: Logger,
    now: datetime.datetime | None = None,
) -> None:
    cert, key = _issue(
        ca_cert,
        ca_key,
        tls.hostnames[0][:64],
        ExtendedKeyUsageOID.SERVER_AUTH,
        LEAF_DAYS,
        _san_names(tls.hostnames),
        now,
    )
    _write(tls.key, _key_pem(key), 0o600)
    _write(tls.cert, _cert_pem(cert), 0o644)
    log.info(
        "TLS: issued server certificate {cert} for {hosts}, valid until {until}",
        cert=str(tls.cert),
        hosts=", ".join(tls.hostnames),
        until=cert.not_valid_after_utc.isoformat(),
    )


def ensure_tls_material(
    tls: TLSSection,
    log: Logger,
    renew_within_days: int = RENEW_WITHIN_DAYS,
    *,
    now: datetime.datetime | None = None,
    quiet: bool = False,
) -> None:
    """Make sure the server certificate and key exist, generating them when allowed.

    With ``auto_generate`` a missing private CA is created, a missing server leaf is issued
    from it, and a leaf that expires within ``renew_within_days`` (or whose SAN no longer
    matches ``hostnames``) is re-issued; the CA itself is never replaced, because clients
    pin it. Without ``auto_generate``, existing files are used as they are.

    :param now: the time renewal is judged against (the renewal timer passes its clock's).
    :param quiet: no log line when nothing changes (the periodic check).
    :raises ConfigError: naming the ``[tls]`` key of a missing or unreadable file.
    """
    have_leaf = tls.cert.exists() and tls.key.exists()
    if not tls.auto_generate:
        for path, key in ((tls.cert, "[tls] cert"), (tls.key, "[tls] key")):
            if not path.exists():
                raise ConfigError(
                    str(path), key, "file is missing and [tls] auto_generate is false"
                )
        return
    if tls.ca.exists() != tls.ca_key.exists():
        missing, key = (tls.ca_key, "[tls] ca_key") if tls.ca.exists() else (tls.ca, "[tls] ca")
        if not have_leaf:
            raise ConfigError(str(missing), key, "file is missing; the CA cannot be recreated")
        if not quiet:
            log.warn(
                "TLS: {missing} is missing, so the server certificate cannot be renewed",
                missing=str(missing),
            )
        return
    if not tls.ca.exists():
        if have_leaf:
            return  # an operator-supplied certificate without a private CA: use it as is
        ca_cert, ca_key = _make_ca()
        _write(tls.ca_key, _key_pem(ca_key), 0o600)
        _write(tls.ca, _cert_pem(ca_cert), 0o644)
        log.info(
            "TLS: created a private CA in {ca} (SHA-256 {fingerprint})",
            ca=str(tls.ca),
            fingerprint=ca_cert.fingerprint(hashes.SHA256()).hex(":"),
        )
    else:
        ca_cert, ca_key = load_ca(tls)
    current = _load_chain(tls.cert, "[tls] cert")[0] if have_leaf else None
    # Only leaves this CA issued are renewed; an operator's own certificate is left alone.
    if current is not None and (
        current.issuer != ca_cert.subject
        or not _leaf_is_stale(current, tls, renew_within_days, now or _now())
    ):
        cert, ca = str(tls.cert), str(tls.ca)  # strings, so JSON log observers keep them
        if not quiet:
            log.info("TLS: using {cert}; clients verify with --ca {ca}", cert=cert, ca=ca)
        return
    _issue_leaf(tls, ca_cert, ca_key, log, now)
    log.info("TLS: give clients --ca {ca}", ca=str(tls.ca))


class _ModernCertificateOptions(ssl.CertificateOptions):
    """``CertificateOptions`` that also restricts the key-exchange groups.

    Twisted and pyOpenSSL have no public way to set the groups, and OpenSSL's default
    list offers X448 and secp521r1, which fails the Mozilla "modern" profile. pyOpenSSL's
    bundled binding exposes ``SSL_CTX_set1_curves_list``, so the list is set once on the
    context that ``CertificateOptions`` builds and caches.
    """

    groups: bytes = GROUPS
    _groups_set_on: SSL.Context | None = None

    def getContext(self) -> SSL.Context:
        """Return the shared context, with the group list applied the first time."""
        ctx = super().getContext()
        if self._groups_set_on is not ctx:
            if _openssl_lib.SSL_CTX_set1_curves_list(ctx._context, self.groups) != 1:
                raise SSL.Error(f"OpenSSL refused the TLS group list {self.groups!r}")
            self._groups_set_on = ctx
        return ctx


#: TLS 1.2 suites allowed when ``[tls] min_version = "1.2"``: Mozilla "intermediate" for an
#: ECDSA certificate (ECDHE with AEAD only; no CBC, no CCM). TLS 1.3 suites are unaffected.
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305"
)


def _minimum_version(tls: TLSSection) -> dict[str, ssl.TLSVersion]:
    if tls.min_version == "1.2":
        return {"insecurelyLowerMinimumTo": ssl.TLSVersion.TLSv1_2}
    return {"raiseMinimumTo": ssl.TLSVersion.TLSv1_3}


def server_tls_options(tls: TLSSection, client_certs: bool) -> ssl.CertificateOptions:
    """Server-side options: the configured certificate chain, TLS 1.3, modern groups.

    With ``client_certs`` the server asks for a client certificate issued by the private
    CA but does not require one, so password and public-key users share the same port with
    certificate users; a presented certificate that does not verify fails the handshake.

    :raises ConfigError: naming the ``[tls]`` key of a missing or malformed file.
    """
    chain = _load_chain(tls.cert, "[tls] cert")
    key = _load_key(tls.key, "[tls] key")
    if key.public_key() != chain[0].public_key():
        raise ConfigError(str(tls.key), "[tls] key", f"does not match the certificate {tls.cert}")
    verify: dict[str, object] = {}
    if client_certs:
        ca_cert = _load_chain(tls.ca, "[tls] ca")[0]
        verify = {
            "verify": True,
            "requireCertificate": False,
            # The trust store only takes pyOpenSSL X509; from_cryptography does not warn.
            "caCerts": [crypto.X509.from_cryptography(ca_cert)],
        }
    return _ModernCertificateOptions(
        privateKey=cast(crypto.PKey, key),
        certificate=cast(crypto.X509, chain[0]),
        extraCertChain=cast(list[crypto.X509], chain[1:]) or None,
        acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(  # type: ignore[no-untyped-call]
            TLS12_CIPHERS
        ),
        **_minimum_version(tls),
        **verify,  # type: ignore[arg-type]
    )


def client_tls_options(
    hostname: str, ca_pem: bytes | None, client_cert_pem: bytes | None = None
) -> IOpenSSLClientConnectionCreator:
    """Client-side options: verify ``hostname`` against ``ca_pem`` (or the platform trust).

    :param ca_pem: the server's CA (the file the server logs as ``--ca``); ``None`` uses the
        system trust store, for servers with a publicly trusted certificate.
    :param client_cert_pem: a PEM bundle holding the client certificate and its private key
        (as :func:`issue_client_certificate` returns them, concatenated), for certificate login.
    """
    # OpenSSLDefaultPaths is what ssl.platformTrust() returns, without its missing annotations.
    trust = ssl.Certificate.loadPEM(ca_pem) if ca_pem is not None else ssl.OpenSSLDefaultPaths()
    extra: dict[str, object] = {"raiseMinimumTo": ssl.TLSVersion.TLSv1_3}
    if client_cert_pem is not None:
        try:
            extra["certificate"] = x509.load_pem_x509_certificate(client_cert_pem)
            extra["privateKey"] = serialization.load_pem_private_key(client_cert_pem, None)
        except ValueError as e:
            raise ValueError(f"the client certificate bundle is not usable: {e}") from None
    inner = ssl.optionsForClientTLS(hostname, trustRoot=trust, extraCertificateOptions=extra)
    return _StrictServerName(inner, hostname)


class ServerNameMismatch(SecureChatError):
    """The server's certificate chains to the trusted CA but does not name the host dialled
    (no subjectAltName at all, or none matching); the text is the one line users see."""


def server_name_problem(cert: x509.Certificate, hostname: str) -> str | None:
    """Why ``cert`` is not valid for ``hostname`` (RFC 6125: subjectAltName only, never the
    CN), or ``None`` when it is."""
    try:
        try:
            ipaddress.ip_address(hostname)
        except ValueError:
            verify_certificate_hostname(cert, hostname)
        else:
            verify_certificate_ip_address(cert, hostname)
    except CertificateError:
        cn = ", ".join(
            str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        )
        try:
            cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            what = "an unusable subjectAltName"
        except x509.ExtensionNotFound:
            what = "no subjectAltName"
        return (
            f"the server certificate (CN {cn or '-'}) has {what}, so it does not name "
            f"{hostname}: refused"
        )
    except VerificationError:
        names = ", ".join(sorted(_covered_names(cert))) or "nothing"
        return f"the server certificate names {names}, not {hostname}: refused"
    return None


@implementer(IOpenSSLClientConnectionCreator)
class _StrictServerName:
    """Twisted's client options with a verify callback that fails closed.

    ``optionsForClientTLS`` checks the name with service_identity inside an OpenSSL verify
    callback that only treats ``VerificationError`` as a failure: since service_identity
    24.1 a certificate without any subjectAltName raises ``CertificateError`` instead, which
    Twisted logs and then *accepts*. This callback replaces Twisted's: the chain result from
    OpenSSL must be good and the leaf must name the host, or the handshake is aborted with a
    :class:`ServerNameMismatch`.
    """

    def __init__(self, inner: IOpenSSLClientConnectionCreator, hostname: str) -> None:
        self._inner = inner
        self._hostname = hostname

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        """IOpenSSLClientConnectionCreator API."""
        conn = self._inner.clientConnectionForTLS(tlsProtocol)  # type: ignore[arg-type]
        protocol: object | None = tlsProtocol
        hostname = self._hostname

        def verify(_c: SSL.Connection, cert: crypto.X509, _e: int, depth: int, ok: int) -> bool:
            nonlocal protocol
            if depth != 0 or not ok:
                return bool(ok)  # OpenSSL's own chain verdict; only the leaf names a host
            try:
                problem = server_name_problem(cert.to_cryptography(), hostname)
            except Exception as e:  # an exception in an OpenSSL callback is lost: fail closed
                problem = f"cannot check the server certificate's names: {e!r}"
            if problem is not None and protocol is not None:
                failure = Failure(ServerNameMismatch(problem))  # type: ignore[no-untyped-call]
                protocol.failVerification(failure)  # type: ignore[attr-defined]
            protocol = None  # no reference cycle through the connection
            return problem is None

        conn.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)
        return conn
