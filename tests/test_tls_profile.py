"""The relay's TLS profile, checked with clients that are *not* the ones it was built with.

``tests/test_tls.py`` handshakes Twisted against Twisted, so both ends share pyOpenSSL and
the OpenSSL inside ``cryptography``. Here the server is the exact ``SSL.Context`` the daemon
uses (``server_tls_options(...).getContext()``), and the clients are:

* the standard library's ``ssl`` module, which links the *system* OpenSSL: an independent
  TLS stack, as a real client would be;
* bare pyOpenSSL contexts restricted to one key-exchange group or one TLS 1.3 suite, which
  neither Twisted nor ``ssl`` can express; that is how "X448 is refused" becomes testable.

Everything runs in memory (memory BIOs pumped by a bounded loop): no sockets, no threads,
no timing. This is the quick, always-on part of the proof; ``scripts/tls-scan`` runs sslyze
against the real daemon for the full Mozilla "modern" verdict.
"""

from __future__ import annotations

import datetime
import ssl
from dataclasses import dataclass, replace
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL
from OpenSSL._util import lib as openssl_lib
from twisted.logger import Logger

from securechat.config import TLSSection
from securechat.tls import LEAF_DAYS, ensure_tls_material, server_tls_options

LOG = Logger(namespace="tests.test_tls_profile")
#: Mozilla "modern" (sslyze 6.3.1's profile 5.7): the only suites and groups allowed.
MODERN_SUITES = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
#: A handshake needs a handful of flights; more rounds than this means something is stuck.
MAX_ROUNDS = 20


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> TLSSection:
    """One CA and leaf for the module: key generation is the slow part of these tests."""
    d = tmp_path_factory.mktemp("tls")
    tls = TLSSection(
        cert=d / "server.pem", key=d / "server.key", ca=d / "ca.pem", ca_key=d / "ca.key"
    )
    ensure_tls_material(tls, LOG)
    return tls


@pytest.fixture(scope="module")
def server_context(material: TLSSection) -> SSL.Context:
    """The context the daemon listens with (TLS 1.3 floor, modern groups)."""
    return server_tls_options(material, client_certs=False).getContext()


class _Side:
    """One end of an in-memory handshake: bytes in, bytes out, and how it ended."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.done = False
        self.error: Exception | None = None

    @property
    def settled(self) -> bool:
        return self.done or self.error is not None

    def step(self, incoming: bytes) -> bytes:
        """Feed what the peer sent, advance the handshake, return what to send back."""
        if self.settled:
            return b""
        self._write(incoming)
        try:
            self.conn.do_handshake()
            self.done = True
        except (ssl.SSLWantReadError, SSL.WantReadError):
            pass
        except (ssl.SSLError, SSL.Error) as e:
            self.error = e  # the alert it produced is still sent below
        return self._read()

    def _write(self, data: bytes) -> None:
        if data:
            self.conn.bio_write(data)

    def _read(self) -> bytes:
        out = b""
        while True:
            try:
                out += self.conn.bio_read(65536)
            except SSL.WantReadError:
                return out


class _StdlibSide(_Side):
    """A stdlib ``SSLObject`` over two ``MemoryBIO``s."""

    def __init__(self, ctx: ssl.SSLContext, host: str) -> None:
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        super().__init__(ctx.wrap_bio(self._in, self._out, server_hostname=host))

    def _write(self, data: bytes) -> None:
        self._in.write(data)

    def _read(self) -> bytes:
        return self._out.read()


@dataclass
class Outcome:
    """How one handshake ended; ``*_error`` is the exception that side raised, if any."""

    server: SSL.Connection
    client: Any
    server_error: Exception | None
    client_error: Exception | None

    @property
    def ok(self) -> bool:
        return self.server_error is None and self.client_error is None


def pump(server_ctx: SSL.Context, client: _Side) -> Outcome:
    """Shuttle bytes until both sides finished or failed (at most ``MAX_ROUNDS`` flights).

    A side that fails still sends its alert, so the peer fails too and both settle.
    """
    conn = SSL.Connection(server_ctx, None)
    conn.set_accept_state()
    server = _Side(conn)
    to_server = client.step(b"")
    for _ in range(MAX_ROUNDS):
        to_client = server.step(to_server)
        to_server = client.step(to_client)
        if (server.settled and client.settled) or not (to_client or to_server):
            break
    else:
        pytest.fail("the handshake did not settle within MAX_ROUNDS")
    return Outcome(conn, client.conn, server.error, client.error)


def handshake_stdlib(server_ctx: SSL.Context, client_ctx: ssl.SSLContext, host: str) -> Outcome:
    """One handshake between the daemon's context and a stdlib ``ssl`` client."""
    return pump(server_ctx, _StdlibSide(client_ctx, host))


def pyopenssl_client(groups: bytes | None = None, suites: bytes | None = None) -> SSL.Context:
    """A TLS 1.3 pyOpenSSL client offering only ``groups`` / ``suites`` (no verification)."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    if groups is not None:
        # The same private binding the server uses (securechat.tls): pyOpenSSL has no API.
        assert openssl_lib.SSL_CTX_set1_curves_list(ctx._context, groups) == 1, groups
    if suites is not None:
        ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=0")  # lets it offer even CCM_8
        ctx.set_tls13_ciphersuites(suites)
    return ctx


def handshake_pyopenssl(server_ctx: SSL.Context, client_ctx: SSL.Context) -> Outcome:
    """One handshake between the daemon's context and a pyOpenSSL client."""
    conn = SSL.Connection(client_ctx, None)
    conn.set_connect_state()
    return pump(server_ctx, _Side(conn))


def stdlib_client(material: TLSSection, **versions: ssl.TLSVersion) -> ssl.SSLContext:
    """A verifying stdlib client that trusts only the private CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(material.ca))
    for name, value in versions.items():
        setattr(ctx, name, value)
    return ctx


# -- protocol versions, with the system OpenSSL as client -------------------------------------


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_stdlib_client_gets_tls13_with_a_modern_suite(
    material: TLSSection, server_context: SSL.Context, host: str
) -> None:
    """An independent stack verifies the chain and name, and lands on TLS 1.3 + AEAD."""
    out = handshake_stdlib(server_context, stdlib_client(material), host)
    assert out.ok, (out.client_error, out.server_error)
    assert out.client.version() == "TLSv1.3"
    assert out.client.cipher()[0] in MODERN_SUITES
    assert out.server.get_group_name().lower() in {"x25519", "secp256r1", "secp384r1"}


# Asking the stdlib for TLS 1.0/1.1 on purpose: it warns that they are deprecated.
@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize(
    "maximum", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1]
)
def test_older_protocol_versions_are_refused_by_the_server(
    material: TLSSection, server_context: SSL.Context, maximum: ssl.TLSVersion
) -> None:
    """A client capped below 1.3 is refused, and it is the *server* that says no.

    The client is allowed down to TLS 1.0 at security level 0 so that it really sends an
    old ClientHello; otherwise the system OpenSSL might refuse by itself and the test would
    pass without the server being asked.
    """
    ctx = stdlib_client(material, minimum_version=ssl.TLSVersion.TLSv1, maximum_version=maximum)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    out = handshake_stdlib(server_context, ctx, "localhost")
    assert out.server_error is not None, "the server accepted an old protocol version"
    assert "unsupported protocol" in str(out.server_error)
    assert out.client_error is not None


def test_server_certificate_is_ecdsa_p256_and_short_lived(
    material: TLSSection, server_context: SSL.Context
) -> None:
    """What the wire carries: an ECDSA P-256 leaf that lives at most 90 days."""
    out = handshake_stdlib(server_context, stdlib_client(material), "localhost")
    assert out.ok
    der = out.client.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der)
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert isinstance(key.curve, ec.SECP256R1)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime <= datetime.timedelta(days=LEAF_DAYS)


# -- key-exchange groups and TLS 1.3 suites, with restricted pyOpenSSL clients ----------------


@pytest.mark.parametrize(
    ("offered", "negotiated"),
    [(b"X25519MLKEM768", "x25519mlkem768"), (b"X25519", "x25519"), (b"P-256", "secp256r1"),
     (b"P-384", "secp384r1")],
)  # fmt: skip
def test_modern_groups_are_accepted(
    server_context: SSL.Context, offered: bytes, negotiated: str
) -> None:
    """Each group of the modern profile works on its own."""
    out = handshake_pyopenssl(server_context, pyopenssl_client(groups=offered))
    assert out.ok, (out.client_error, out.server_error)
    assert out.server.get_group_name().lower() == negotiated
    assert out.client.get_protocol_version_name() == "TLSv1.3"


@pytest.mark.parametrize("offered", [b"X448", b"P-521", b"X448:P-521"])
def test_groups_outside_the_profile_are_refused(
    server_context: SSL.Context, offered: bytes
) -> None:
    """A client that can only do X448 or secp521r1 finds no common group: no handshake."""
    out = handshake_pyopenssl(server_context, pyopenssl_client(groups=offered))
    assert not out.ok
    assert out.server_error is not None
    assert "no suitable key share" in str(out.server_error)


def test_the_post_quantum_hybrid_group_is_preferred(server_context: SSL.Context) -> None:
    """A client with OpenSSL 4's default group list (as securechat-client: it sends key
    shares for X25519MLKEM768 and X25519) gets the post-quantum hybrid."""
    out = handshake_pyopenssl(server_context, pyopenssl_client())
    assert out.ok, (out.client_error, out.server_error)
    assert out.server.get_group_name() == "X25519MLKEM768"


def test_server_picks_a_modern_group_when_offered_a_mix(server_context: SSL.Context) -> None:
    """Offering X448 first (with its key share) still ends on a group of the profile."""
    out = handshake_pyopenssl(server_context, pyopenssl_client(groups=b"X448:P-521:P-384"))
    assert out.ok, (out.client_error, out.server_error)
    assert out.server.get_group_name().lower() == "secp384r1"


@pytest.mark.parametrize("suite", sorted(MODERN_SUITES))
def test_each_modern_suite_is_accepted(server_context: SSL.Context, suite: str) -> None:
    """The three TLS 1.3 suites of the profile all work."""
    out = handshake_pyopenssl(server_context, pyopenssl_client(suites=suite.encode()))
    assert out.ok, (out.client_error, out.server_error)
    assert out.server.get_cipher_name() == suite


@pytest.mark.parametrize("suite", [b"TLS_AES_128_CCM_SHA256", b"TLS_AES_128_CCM_8_SHA256"])
def test_ccm_suites_are_refused(server_context: SSL.Context, suite: bytes) -> None:
    """CCM suites are not in the modern profile; the server has no suite in common."""
    out = handshake_pyopenssl(server_context, pyopenssl_client(suites=suite))
    assert out.server_error is not None
    assert "no shared cipher" in str(out.server_error)


# -- the explicit TLS 1.2 opt-in ----------------------------------------------------------------


def test_tls12_opt_in_offers_only_aead_ecdhe_suites(material: TLSSection) -> None:
    """With the 1.2 floor, a CBC-only TLS 1.2 client must still be refused."""
    lowered = replace(material, min_version="1.2")
    ctx = stdlib_client(material, maximum_version=ssl.TLSVersion.TLSv1_2)
    ctx.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA")
    out = handshake_stdlib(server_tls_options(lowered, False).getContext(), ctx, "localhost")
    assert not out.ok, f"negotiated {out.client.cipher()}"
