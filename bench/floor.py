"""The floor: the least a Twisted TLS 1.3 relay can do per message, as a yardstick.

Run with ``python -m bench.floor --port 0 --tls-dir DIR``; it prints
``listening on 127.0.0.1:PORT`` once it listens.

Why it exists: securechat's per-message cost (decode, policy, durable commit, push, ack)
is only meaningful next to what the transport alone costs in this language on this
machine. The floor uses the very same TLS options as the daemon
(:func:`securechat.tls.server_tls_options`: TLS 1.3 only, ECDSA P-256, modern groups), the
same ``Int32StringReceiver`` framing and the same reactor, and does nothing else: no
authentication, no CBOR, no crypto, no storage, no acknowledgements.

Protocol (all frames 4-byte big-endian length-prefixed):

- client -> relay, first frame: ``b"login " + NAME``; the relay answers ``b"ok"``.
- client -> relay: ``bytes([len(TO)]) + TO + PAYLOAD``.
- relay -> recipient: ``bytes([len(FROM)]) + FROM + PAYLOAD``; to an unknown name the
  frame is dropped (counted, never answered).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from OpenSSL import SSL
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.protocol import ServerFactory, connectionDone
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

from bench._common import HOST, raise_nofile, tls_material
from securechat.tls import server_tls_options

MAX_FRAME = 1 << 20
LOGIN = b"login "


class FloorRelay(Int32StringReceiver):
    """One connection: a name after the first frame, then forward-by-name."""

    MAX_LENGTH = MAX_FRAME

    def __init__(self, factory: FloorFactory) -> None:
        self.factory = factory
        self.name: bytes | None = None
        self.prefix = b""

    def stringReceived(self, frame: bytes) -> None:
        """Int32StringReceiver API: login once, then forward."""
        if self.name is None:
            if not frame.startswith(LOGIN) or len(frame) - len(LOGIN) not in range(1, 256):
                self.transport.loseConnection()  # type: ignore[union-attr]
                return
            self.name = frame[len(LOGIN) :]
            self.prefix = bytes([len(self.name)]) + self.name
            self.factory.clients[self.name] = self
            self.sendString(b"ok")
            return
        end = 1 + frame[0]
        peer = self.factory.clients.get(frame[1:end])
        if peer is None:
            self.factory.dropped += 1
            return
        peer.sendString(self.prefix + frame[end:])

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Protocol API: forget the name (unless a newer connection took it)."""
        if self.name is not None and self.factory.clients.get(self.name) is self:
            del self.factory.clients[self.name]


class FloorFactory(ServerFactory):
    """The name -> connection table; nothing else is shared."""

    noisy = False

    def __init__(self) -> None:
        self.clients: dict[bytes, FloorRelay] = {}
        self.dropped = 0

    def buildProtocol(self, addr: Any) -> FloorRelay:
        """Factory API."""
        return FloorRelay(self)


def main(argv: list[str] | None = None) -> int:
    """Listen on 127.0.0.1 until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--tls-dir",
        type=Path,
        required=True,
        help="where the CA and server certificate are (created if missing)",
    )
    parser.add_argument(
        "--backlog", type=int, default=50, help="listen backlog (50: Twisted's, as the daemon)"
    )
    parser.add_argument(
        "--release-buffers",
        action="store_true",
        help="experiment: SSL_MODE_RELEASE_BUFFERS (OpenSSL frees idle connections' buffers)",
    )
    parser.add_argument(
        "--no-session-cache",
        action="store_true",
        help="experiment: SSL_SESS_CACHE_OFF (no server-side TLS session cache entries)",
    )
    args = parser.parse_args(argv)
    raise_nofile(1 << 20)
    tls, _ = tls_material(args.tls_dir)
    from twisted.internet import reactor

    options = server_tls_options(tls, False)
    if args.release_buffers:
        options.getContext().set_mode(SSL.MODE_RELEASE_BUFFERS)
    if args.no_session_cache:
        options.getContext().set_session_cache_mode(SSL.SESS_CACHE_OFF)
    endpoint = SSL4ServerEndpoint(reactor, args.port, options, backlog=args.backlog, interface=HOST)

    def listening(port: Any) -> None:
        print(f"listening on {HOST}:{port.getHost().port}", flush=True)

    def failed(failure: Failure) -> None:
        print(f"cannot listen: {failure.getErrorMessage()}", file=sys.stderr, flush=True)
        reactor.stop()  # type: ignore[attr-defined]

    endpoint.listen(FloorFactory()).addCallbacks(listening, failed)
    reactor.run()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main())
