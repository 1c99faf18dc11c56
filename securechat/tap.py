"""``twistd -n securechat --config FILE``: command-line options and service wiring only.

twistd has no API for an exit status, so a failure while services start (before the reactor
runs) logs one line and raises ``SystemExit(1)``, and a later one (the store opens on a
thread) logs one line, stops the reactor and exits with 1 after twistd's own cleanup.
"""

import atexit
import os
import signal
import sys
from collections.abc import Callable
from functools import partial
from typing import Any, NoReturn, cast

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.python.failure import Failure

from securechat.config import ServerConfig, load_config
from securechat.errors import ConfigError
from securechat.logs import json_observer
from securechat.server.metrics import NULL_METRICS, IMetrics, RelayMetrics
from securechat.server.protocol import build_factory
from securechat.server.store.interface import IStore
from securechat.server.store.sqlite import SQLiteStore
from securechat.tls import ensure_tls_material
from securechat.tlsreload import CertificateReloader

#: Seconds between sweeps for envelopes past ``[store] queue_ttl`` (TTLs are days long).
EXPIRE_INTERVAL = 300.0
#: Seconds between checks that the accounts of live sessions still exist: a user removed
#: with ``securechat-admin`` (which edits the database) is disconnected within this time.
ACCOUNT_CHECK_INTERVAL = 10.0
#: listen(2) backlog; Twisted's 50 overflows when many clients (re)connect at once, and
#: each dropped SYN costs a 1 s retransmission. The kernel caps it at somaxconn.
LISTEN_BACKLOG = 1024
Reactor = Any  # IReactorSSL + IReactorTime + IReactorCore: no single Twisted type says that
FactoryBuilder = Callable[[ServerConfig, IStore, Reactor], IProtocolFactory]


class Options(usage.Options):
    """``--config FILE``: everything else is in the TOML file."""

    synopsis = "[--config FILE]"
    optParameters = [["config", "c", "etc/server.toml", "The server's TOML config file."]]
    server_config: ServerConfig

    def postOptions(self) -> None:
        """Validate now, so a bad value stops twistd before anything starts.

        A ``UsageError`` would make twistd print its whole usage block (on stdout) before
        the reason; a config mistake is the file's fault, not the command line's, so it is
        one line on stderr (naming the file and the key) and exit status 1.
        """
        try:
            self.server_config = load_config(self["config"])
        except ConfigError as err:
            sys.stderr.write(f"securechat: error: {err}\n")
            sys.stderr.flush()
            raise SystemExit(1) from None


class RelayService(MultiService):
    """TLS material, listener, then store, expiry and account-check timers; stopped in
    reverse order."""

    log = Logger()

    def __init__(
        self,
        config: ServerConfig,
        reactor: Reactor,
        store: IStore,
        build_factory: FactoryBuilder,
        metrics: IMetrics = NULL_METRICS,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._config, self._reactor, self._store = config, reactor, store
        self._build_factory = build_factory
        self._metrics = metrics
        self.monitoring: Any = None
        self.tls: CertificateReloader | None = None
        #: Install the SIGHUP handler (the daemon does; in-process tests do not).
        self.handle_sighup = False
        self._old_sighup: Any = None
        self._listener: StreamServerEndpointService | None = None
        self._factory: IProtocolFactory | None = None
        self._timer = TimerService(EXPIRE_INTERVAL, self._expire)  # type: ignore[no-untyped-call]
        self._timer.clock = reactor
        self._account_timer = TimerService(  # type: ignore[no-untyped-call]
            ACCOUNT_CHECK_INTERVAL, self._check_accounts
        )
        self._account_timer.clock = reactor
        self.port: IListeningPort | None = None

    def setServiceParent(self, parent: Any) -> None:
        """With ``[log] format = "json"``, offer twistd the JSON observer: twistd asks the
        application for an ``ILogObserver`` component before it starts logging (a
        ``--logger`` option on the command line still wins)."""
        super().setServiceParent(parent)  # type: ignore[no-untyped-call]
        if self._config.log.format == "json" and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, json_observer())

    def exit_process(self, code: int) -> None:
        """Stop the reactor; exit with ``code`` at interpreter exit, after twistd's cleanup."""
        atexit.register(os._exit, code)  # atexit runs last-in first-out: flush, then exit
        atexit.register(sys.stderr.flush)
        atexit.register(sys.stdout.flush)
        self._reactor.callWhenRunning(self._reactor.stop)

    def _fail_now(self, message: str) -> NoReturn:
        self.log.critical("{message}", message=message)
        raise SystemExit(1)  # twistd's stderr goes to the log too: one line, not two

    def _start_listener(self, start: Callable[[], None]) -> None:
        """Build the listener once (it needs the TLS files), then run ``start``."""
        cfg = self._config
        if self._listener is None:
            try:
                ensure_tls_material(cfg.tls, self.log)
                client_certs = "certificate" in cfg.auth.methods
                self.tls = CertificateReloader(cfg.tls, client_certs, self._reactor)
            except ConfigError as err:
                self._fail_now(str(err))
            endpoint = SSL4ServerEndpoint(  # type: ignore[no-untyped-call]
                self._reactor, cfg.server.port, self.tls.options, LISTEN_BACKLOG, cfg.server.host
            )
            factory = self._build_factory(cfg, self._store, self._reactor)
            self._factory = factory
            self._listener = StreamServerEndpointService(endpoint, factory)  # type: ignore[no-untyped-call]
            # Without this a failed bind is only logged and the daemon runs with no port.
            self._listener._raiseSynchronously = True
            self._listener.setServiceParent(self)  # type: ignore[no-untyped-call]
            if cfg.tls.reload_interval > 0:
                timer = TimerService(cfg.tls.reload_interval, self.tls.check)  # type: ignore[no-untyped-call]
                timer.clock = self._reactor
                timer.setServiceParent(self)  # type: ignore[no-untyped-call]
        try:
            start()
        except CannotListenError as err:
            self._fail_now(f"cannot listen on {err.interface}:{err.port}: {err.socketError}")
        if self.port is None and self._listener._waitingForPort is not None:
            # A documented ivar; it fires with the bound port (the real one for port 0).
            self._listener._waitingForPort.addCallback(self._listening)

    def _listening(self, port: IListeningPort) -> IListeningPort:
        self.port, address = port, cast(IPv4Address, port.getHost())  # or IPv6Address
        host = f"[{address.host}]" if ":" in address.host else address.host
        self.log.info("listening on {host}:{port}", host=host, port=address.port)
        return port

    def privilegedStartService(self) -> None:
        """Bind before twistd drops privileges, so a low port works with ``--uid``."""
        self._start_listener(super().privilegedStartService)

    def startService(self) -> None:
        """Open the store (on its thread); the expiry timer starts once it is open."""
        self._start_listener(super().startService)
        if self.handle_sighup:
            self._old_sighup = signal.signal(signal.SIGHUP, self._sighup)
        self._store.start().addCallbacks(self._store_opened, self._store_failed)

    def _store_opened(self, _: None) -> None:
        if self.running:  # not stopped meanwhile
            if self.monitoring is not None:
                self.monitoring.store_opened()
            self._timer.setServiceParent(self)  # type: ignore[no-untyped-call]
            self._account_timer.setServiceParent(self)  # type: ignore[no-untyped-call]

    def _store_failed(self, failure: Failure) -> None:
        path, error = str(self._config.store.path), failure.getErrorMessage()
        self.log.critical("cannot open the store {path}: {error}", path=path, error=error)
        self.exit_process(1)

    def _guarded(self, what: str, name: str) -> Deferred[None]:
        """Call the factory's method ``name`` if it has one; its failure, raised or as a
        Deferred, is logged and never reaches a TimerService (which would stop for good)."""
        method = getattr(self._factory, name, None)
        if method is None:
            return succeed(None)
        d: Deferred[Any] = maybeDeferred(method)
        d.addCallback(lambda _: None)
        return d.addErrback(lambda f: self.log.failure("{what} failed", f, what=what))

    def _check_accounts(self) -> Deferred[None]:
        """Disconnect sessions of removed accounts (never fails)."""
        return self._guarded("checking the accounts of live sessions", "check_accounts")

    def _expire(self) -> Deferred[None]:
        """Never fails (nor raises): a TimerService stops for good after one failure."""
        self._guarded("housekeeping", "housekeeping")  # logs its own failures
        d: Deferred[Any] = maybeDeferred(self._store.expire, self._reactor.seconds())
        d.addCallback(self._expired)
        return d.addErrback(lambda f: self.log.failure("expiring old envelopes failed", f))

    def _expired(self, n: int) -> None:
        if n:
            self._metrics.expired(n)
            self.log.info("expired {n} old envelopes", n=n)

    def _sighup(self, signum: int, frame: object) -> None:
        # A signal handler may interrupt the reactor anywhere: hand over to the loop.
        self._reactor.callFromThread(self.reload_tls)

    def reload_tls(self) -> None:
        """SIGHUP (``systemctl reload``): load the certificate files for new connections;
        established connections keep theirs. An auto-generated leaf that is due is renewed."""
        if self.tls is not None:
            self.log.info("SIGHUP: reloading the TLS certificate")
            self.tls.check()
            self.tls.reload()

    def stopService(self) -> Deferred[None]:
        """Stop the timer and the listener, then flush pending commits and close the store."""
        if self._old_sighup is not None:
            signal.signal(signal.SIGHUP, self._old_sighup)
            self._old_sighup = None
        stopped: Deferred[Any] = super().stopService()  # type: ignore[no-untyped-call]
        return stopped.addCallback(lambda _: self._store.stop())


def makeService(options: Options, reactor: Reactor = None) -> MultiService:
    """twistd entry point: the production store and protocol factory."""
    if reactor is None:
        from twisted.internet import reactor
    cfg = options.server_config
    store = SQLiteStore(cfg.store, clock=reactor)
    if not cfg.metrics.listen:
        plain = RelayService(cfg, reactor, store, build_factory)
        plain.handle_sighup = True
        return plain
    from securechat.server.monitoring import MonitoringService  # prometheus_client only then

    metrics = RelayMetrics(reactor)
    store.metrics = metrics
    service = RelayService(cfg, reactor, store, partial(build_factory, metrics=metrics), metrics)
    service.handle_sighup = True
    service.monitoring = MonitoringService(cfg.metrics.listen, metrics, store, reactor)
    service.monitoring.setServiceParent(service)
    return service
