"""Certificates without restarts: reload for new connections, keep old ones, renew on a timer.

In memory (``iosim`` TLS loopbacks and a ``Clock``), plus one end-to-end SIGHUP test
against the real daemon.
"""

from __future__ import annotations

import datetime
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest_twisted
from cryptography import x509
from twisted.application.internet import TimerService
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient

from securechat import wire
from securechat.config import TLSSection, load_config
from securechat.tls import client_tls_options, ensure_tls_material
from securechat.tlsreload import CertificateReloader
from tests.conftest import ConfigWriter
from tests.e2e.client import connect
from tests.e2e.daemon import start_daemon

LOG = Logger(namespace="tests.ops.test_tlsreload")
DAY = 86400.0


class App(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = reason


class Link:
    """One in-memory TLS connection to the server options under test."""

    def __init__(self, server_opts: Any, ca: bytes) -> None:
        clock = Clock()
        self.server_app, self.client_app = App(), App()
        server = TLSMemoryBIOFactory(
            server_opts, False, Factory.forProtocol(lambda: self.server_app), clock=clock
        )
        client = TLSMemoryBIOFactory(
            client_tls_options("localhost", ca), True,
            Factory.forProtocol(lambda: self.client_app), clock=clock,
        )  # fmt: skip
        self.client, self.server, self.pump = connectedServerAndClient(
            lambda: server.buildProtocol(None), lambda: client.buildProtocol(None), clock=clock
        )
        self.pump.flush()

    def serial(self) -> int:
        cert = self.client.getHandle().get_peer_certificate(as_cryptography=True)
        return int(cert.serial_number)

    def works(self) -> bool:
        """Bytes still flow both ways over this connection."""
        self.client_app.transport.write(b"ping")  # type: ignore[union-attr]
        self.server_app.transport.write(b"pong")  # type: ignore[union-attr]
        self.pump.flush()
        return self.server_app.received.endswith(b"ping") and self.client_app.received.endswith(
            b"pong"
        ) and self.client_app.lost is None  # fmt: skip


def material(tmp_path: Path) -> TLSSection:
    d = tmp_path / "tls"
    tls = TLSSection(cert=d / "s.pem", key=d / "s.key", ca=d / "ca.pem", ca_key=d / "ca.key")
    ensure_tls_material(tls, LOG)
    return tls


def serial_on_disk(tls: TLSSection) -> int:
    return int(x509.load_pem_x509_certificate(tls.cert.read_bytes()).serial_number)


def reissue(tls: TLSSection) -> None:
    """A new leaf from the same CA, as a renewal (or an ACME client) would write it."""
    ensure_tls_material(tls, LOG, renew_within_days=10_000)


def test_reload_serves_the_new_leaf_to_new_connections_and_keeps_old_ones(
    tmp_path: Path,
) -> None:
    tls = material(tmp_path)
    ca = tls.ca.read_bytes()
    clock = Clock()
    clock.advance(time.time())
    reloader = CertificateReloader(tls, False, clock)
    old = Link(reloader.options, ca)
    first = serial_on_disk(tls)
    assert old.serial() == first and old.works()

    reissue(tls)
    assert reloader.reload()
    new = Link(reloader.options, ca)
    assert new.serial() == serial_on_disk(tls) != first
    assert old.works() and old.serial() == first  # the live connection is untouched


def test_a_broken_pair_is_refused_and_the_old_one_stays(tmp_path: Path) -> None:
    tls = material(tmp_path)
    clock = Clock()
    clock.advance(time.time())
    reloader = CertificateReloader(tls, False, clock)
    before = reloader.certificate().serial_number
    other = material(tmp_path / "other")
    tls.key.write_bytes(other.key.read_bytes())  # a key that does not match the certificate
    assert not reloader.reload()
    tls.cert.write_text("-----BEGIN CERTIFICATE-----\nhalf wr")
    assert not reloader.reload()
    reloader.check()  # the timer sees the change and refuses it the same way
    assert reloader.certificate().serial_number == before
    assert Link(reloader.options, tls.ca.read_bytes()).serial() == before


def test_timer_picks_up_changed_files(tmp_path: Path) -> None:
    """An ACME client replacing the files (auto_generate off) is noticed by the timer."""
    tls = replace(material(tmp_path), auto_generate=False)
    clock = Clock()
    clock.advance(time.time())
    reloader = CertificateReloader(tls, False, clock)
    timer = TimerService(300.0, reloader.check)
    timer.clock = clock
    timer.startService()
    try:
        clock.advance(300.0)
        assert reloader.reloads == 0
        reissue(replace(tls, auto_generate=True))
        clock.advance(300.0)
        assert reloader.reloads == 1
        assert reloader.certificate().serial_number == serial_on_disk(tls)
    finally:
        timer.stopService()


def test_renewal_timer_reissues_the_auto_generated_leaf_before_it_expires(
    tmp_path: Path,
) -> None:
    tls = material(tmp_path)
    clock = Clock()
    clock.advance(time.time())
    reloader = CertificateReloader(tls, False, clock)
    first = reloader.certificate()
    timer = TimerService(3600.0, reloader.check)
    timer.clock = clock
    timer.startService()
    try:
        clock.advance(3600.0)
        assert reloader.reloads == 0  # 90-day leaf, nothing due yet
        clock.advance(59 * DAY)  # 31 days left: not due (renewal starts at 30)
        assert reloader.reloads == 0
        clock.advance(2 * DAY)  # 29 days left: renewed on the next tick
        assert reloader.reloads == 1
        renewed = reloader.certificate()
        assert renewed.serial_number != first.serial_number
        assert renewed.not_valid_after_utc > first.not_valid_after_utc
        assert renewed.serial_number == serial_on_disk(tls)
        # Issued by the timer's clock (61 days on), so it lasts 90 days from then.
        expected = datetime.datetime.fromtimestamp(clock.seconds(), datetime.UTC)
        left = renewed.not_valid_after_utc - expected
        assert datetime.timedelta(days=89) < left <= datetime.timedelta(days=90)
        clock.advance(3600.0)
        assert reloader.reloads == 1  # judged by the clock, not renewed again
    finally:
        timer.stopService()
    assert first.not_valid_after_utc - datetime.datetime.now(datetime.UTC) > datetime.timedelta(
        days=80
    )


@pytest_twisted.ensureDeferred
async def test_sighup_reloads_the_certificate_in_the_daemon(
    reactor: Any, write_config: ConfigWriter
) -> None:
    """SIGHUP with a new certificate on disk: new connections see the new leaf, an
    established, logged-in connection stays up."""
    config_path = write_config()
    tls = load_config(config_path).tls
    daemon = await start_daemon(reactor, config_path)
    try:
        ca = tls.ca.read_bytes()
        assert daemon.port is not None
        old = await connect(reactor, daemon.port, ca)
        await old.register("alice", password="correct horse battery")
        await old.login_password("alice", "correct horse battery")
        first = serial_on_disk(tls)
        reissue(tls)
        daemon._process.signalProcess(signal.SIGHUP)
        for _ in range(500):
            if "TLS: loaded certificate" in daemon.output:
                break
            await deferLater(reactor, 0.02)
        assert "TLS: loaded certificate" in daemon.output, daemon.output
        new = await connect(reactor, daemon.port, ca)
        await new.hello()  # the handshake is done once a reply came back
        handle = new.transport.getHandle()  # type: ignore[union-attr]
        assert handle.get_peer_certificate(as_cryptography=True).serial_number == (
            serial_on_disk(tls)
        ) != first
        await new.close()
        assert isinstance(await old.request(wire.Who(id=0), wire.Online), wire.Online)
        handle = old.transport.getHandle()  # type: ignore[union-attr]
        assert handle.get_peer_certificate(as_cryptography=True).serial_number == first
        await old.close()
    finally:
        exit = await daemon.stop()
    assert daemon.running is False and "Traceback" not in exit.output
