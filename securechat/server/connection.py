# -*- test-case-name: tests.server.test_protocol -*-
"""What the protocol reads from its transport, behind a seam tests can replace.

The TLS exporter value (RFC 8446 section 7.5) and the verified client certificate live on
the pyOpenSSL connection under a ``TLSMemoryBIOProtocol``; ``StringTransport`` and
``iosim`` have neither, so the protocol asks a :class:`ConnectionInfo` instead.
"""

from __future__ import annotations

from typing import Protocol

from cryptography.x509.oid import NameOID
from twisted.internet.interfaces import IAddress, ITransport

from securechat import wire


class Transport(Protocol):
    """The transport features used here (TCP and TLS transports have them all)."""

    def write(self, data: bytes) -> None: ...
    def loseConnection(self) -> None: ...
    def abortConnection(self) -> None: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...
    def registerProducer(self, producer: object, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...
    def getPeer(self) -> IAddress: ...


class ConnectionInfo(Protocol):
    """What the protocol needs to know about its TLS connection; tests substitute it."""

    def exporter(self) -> bytes:
        """The RFC 8446 exporter value under :data:`wire.EXPORTER_LABEL`."""

    def peer_cn(self) -> str | None:
        """The CN of the client certificate TLS verified, if any."""

    def handshake_done(self) -> bool:
        """True once the TLS handshake has completed (frames can flow)."""


class TLSConnectionInfo:
    """:class:`ConnectionInfo` read from a ``TLSMemoryBIOProtocol`` transport."""

    def __init__(self, transport: ITransport) -> None:
        self._transport = transport

    def exporter(self) -> bytes:
        """ConnectionInfo API."""
        handle = self._transport.getHandle()  # type: ignore[attr-defined]
        value: bytes = handle.export_keying_material(
            wire.EXPORTER_LABEL, wire.EXPORTER_LENGTH, None
        )
        return value

    def handshake_done(self) -> bool:
        """ConnectionInfo API: the client's Finished message has been received."""
        handle = self._transport.getHandle()  # type: ignore[attr-defined]
        return handle.get_peer_finished() is not None

    def peer_cn(self) -> str | None:
        """ConnectionInfo API."""
        handle = self._transport.getHandle()  # type: ignore[attr-defined]
        cert = handle.get_peer_certificate(as_cryptography=True)
        if cert is None:
            return None
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        value = names[0].value if names else None
        return value if isinstance(value, str) else None
