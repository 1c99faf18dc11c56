# -*- test-case-name: tests.ops.test_tlsreload -*-
"""Certificates without restarts: the listener's TLS options can be replaced while it runs.

Twisted builds one OpenSSL ``Connection`` per accepted connection from the listener's
connection creator. :class:`ReloadableServerOptions` is that creator, and it asks the
*current* :class:`~twisted.internet.ssl.CertificateOptions` each time, so replacing them
changes what new connections see while established connections keep their own session
(and the old certificate) until they end.

:class:`CertificateReloader` decides when to replace them:

- :meth:`~CertificateReloader.reload` (the daemon calls it on SIGHUP) loads the files now;
- :meth:`~CertificateReloader.check` (on a timer, ``[tls] reload_interval``) first renews
  an auto-generated leaf that is about to expire (:func:`securechat.tls.ensure_tls_material`,
  judged by the injected clock), then reloads if the files' inode, size or modification
  time changed, which is what an ACME client's renewal (certbot, lego) looks like.

A pair that does not load (missing, half written, key and certificate not matching) is
refused with one log line; the certificate in use stays in use.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from OpenSSL.SSL import Connection
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from securechat.config import TLSSection
from securechat.errors import ConfigError
from securechat.tls import ensure_tls_material, server_tls_options

_Stamp = tuple[tuple[int, int, int] | None, ...]


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableServerOptions:
    """A server connection creator whose certificate options can be swapped."""

    def __init__(self, options: ssl.CertificateOptions) -> None:
        self.current = options

    def serverConnectionForTLS(self, tlsProtocol: Any) -> Connection:
        """IOpenSSLServerConnectionCreator API: a connection on the current context."""
        return Connection(self.current.getContext(), None)


def _stamp_of(*paths: os.PathLike[str]) -> _Stamp:
    stamps: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            stamps.append(None)
        else:
            stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(stamps)


class CertificateReloader:
    """Loads, watches and renews the server certificate of one listener.

    :param tls: the ``[tls]`` config (paths, auto-generation).
    :param client_certs: whether the listener asks for client certificates.
    :param clock: judges renewal (``seconds()`` is the current Unix time).
    :param build: makes options from the files (tests may substitute it).
    """

    log = Logger()

    def __init__(
        self,
        tls: TLSSection,
        client_certs: bool,
        clock: IReactorTime,
        build: Callable[[TLSSection, bool], ssl.CertificateOptions] = server_tls_options,
    ) -> None:
        self._tls, self._client_certs, self._clock, self._build = tls, client_certs, clock, build
        self._stamp = _stamp_of(tls.cert, tls.key)
        self.options = ReloadableServerOptions(build(tls, client_certs))
        self.reloads = 0

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self._clock.seconds(), datetime.UTC)

    def check(self) -> None:
        """The timer's job: renew a leaf that is due, then reload what changed on disk.
        Never raises (a TimerService stops for good after one failure)."""
        try:
            if self._tls.auto_generate:
                ensure_tls_material(self._tls, self.log, now=self._now(), quiet=True)
        except (ConfigError, OSError, ValueError) as e:
            self.log.warn("TLS: could not renew the server certificate: {error}", error=str(e))
        if _stamp_of(self._tls.cert, self._tls.key) != self._stamp:
            self.reload()

    def reload(self) -> bool:
        """Load the certificate and key files now; True if new connections use them."""
        stamp = _stamp_of(self._tls.cert, self._tls.key)
        try:
            options = self._build(self._tls, self._client_certs)
            options.getContext()  # fail here, not on the next client's handshake
        except (ConfigError, OSError, ValueError) as e:
            self.log.warn("TLS: keeping the certificate in use; the new one does not load: "
                          "{error}", error=str(e))  # fmt: skip
            return False
        except Exception as e:  # OpenSSL errors: same outcome, never a dead listener
            self.log.warn("TLS: keeping the certificate in use: {error}", error=repr(e))
            return False
        self._stamp = stamp
        self.options.current = options
        self.reloads += 1
        cert = self.certificate()
        self.log.info(
            "TLS: loaded certificate {cert} (serial {serial:x}, valid until {until}, "
            "SHA-256 {fingerprint}) for new connections",
            cert=str(self._tls.cert),
            serial=cert.serial_number,
            until=cert.not_valid_after_utc.isoformat(),
            fingerprint=cert.fingerprint(hashes.SHA256()).hex(":")[:23],
        )
        return True

    def certificate(self) -> x509.Certificate:
        """The leaf new connections are served."""
        leaf: Any = self.options.current.certificate
        return leaf if isinstance(leaf, x509.Certificate) else leaf.to_cryptography()
