"""Tests for securechat.tap: Options, and the service tree started against fake reactors.

``MemoryReactorClock`` records the SSL listen request instead of binding, so these tests
check the wiring (host, port, TLS options, start/stop order, the expiry timer) without
sockets; the real bind failure test uses the global reactor on 127.0.0.1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, ssl
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.testing import MemoryReactorClock, RaisingMemoryReactor
from twisted.logger import capturedLogs

from securechat import tap
from securechat.config import ServerConfig, StoreSection, load_config
from securechat.server.store.interface import IStore
from securechat.server.store.memory import MemoryStore
from tests.conftest import ConfigWriter


class RecordingStore(MemoryStore):
    """A MemoryStore that records lifecycle calls and can fail on demand."""

    def __init__(self, clock: Any) -> None:
        super().__init__(StoreSection(), clock=clock)
        self.events: list[str] = []
        self.start_error: Exception | None = None
        self.expire_error: Exception | None = None
        self.expire_raises = False

    def start(self) -> defer.Deferred[None]:
        self.events.append("start")
        return defer.fail(self.start_error) if self.start_error else defer.succeed(None)

    def stop(self) -> defer.Deferred[None]:
        self.events.append("stop")
        return defer.succeed(None)

    def expire(self, now: float) -> defer.Deferred[int]:
        self.events.append(f"expire@{now:g}")
        if self.expire_raises:
            raise RuntimeError("synchronous expire bug")
        if self.expire_error is not None:
            return defer.fail(self.expire_error)
        return super().expire(now)


class Built:
    """What the fake factory builder saw."""

    def __init__(self) -> None:
        self.calls: list[tuple[ServerConfig, IStore, Any]] = []
        self.factory = ServerFactory.forProtocol(Protocol)

    def __call__(self, config: ServerConfig, store: IStore, reactor: Any) -> ServerFactory:
        self.calls.append((config, store, reactor))
        return self.factory


def make(
    config: ServerConfig, reactor: Any = None
) -> tuple[tap.RelayService, RecordingStore, Built, list[int], Any]:
    reactor = reactor if reactor is not None else MemoryReactorClock()
    store, built, exits = RecordingStore(MemoryReactorClock()), Built(), []
    svc = tap.RelayService(config, reactor, store, built)
    svc.exit_process = exits.append  # type: ignore[method-assign]  # not this test process
    return svc, store, built, exits, reactor


@pytest.fixture
def config(write_config: ConfigWriter) -> ServerConfig:
    return load_config(write_config({"server": {"port": 8555}}))


def messages(events: list[dict[str, Any]]) -> list[str]:
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in events]


# -- Options --------------------------------------------------------------------------


def test_options_default_path() -> None:
    """Without --config the shipped development file is used."""
    assert tap.Options()["config"] == "etc/server.toml"


def test_options_load_the_file(write_config: ConfigWriter) -> None:
    """postOptions leaves a validated, frozen config on the Options object."""
    path = write_config({"server": {"port": 9999}})
    options = tap.Options()
    options.parseOptions(["--config", str(path)])
    assert options.server_config.server.port == 9999


@pytest.mark.parametrize(
    "text",
    ["[server]\nport = 70000\n", "[server\n", "[nonsense]\n", "[auth]\nmethods = ['magic']\n"],
)
def test_options_bad_config_is_one_line(
    write_config: ConfigWriter, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad file: exit status 1 and one line on stderr naming the file, no usage block."""
    path = write_config(text=text)
    with pytest.raises(SystemExit) as info:
        tap.Options().parseOptions(["-c", str(path)])
    assert info.value.code == 1
    out, err = capsys.readouterr()
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith("securechat: error: ") and str(path) in line


def test_options_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A typo in the path is reported, not a traceback."""
    with pytest.raises(SystemExit):
        tap.Options().parseOptions(["--config", str(tmp_path / "nope.toml")])
    assert "cannot read" in capsys.readouterr().err


# -- the service tree ---------------------------------------------------------------------


def test_start_requests_tls_listener_on_configured_address(config: ServerConfig) -> None:
    """startService asks for an SSL port on host:port with the TLS 1.3 server options."""
    svc, store, built, exits, reactor = make(config)
    with capturedLogs() as events:
        svc.startService()
    [(port, factory, context, backlog, interface)] = reactor.sslServers
    assert backlog == tap.LISTEN_BACKLOG
    assert (port, interface) == (8555, "127.0.0.1")
    assert factory is built.factory
    # The listener asks the reloader's current options per connection (SIGHUP, renewal).
    assert context is svc.tls.options and isinstance(context.current, ssl.CertificateOptions)
    assert built.calls == [(config, store, reactor)]
    assert config.tls.cert.exists() and config.tls.key.exists()
    assert store.events[0] == "start" and exits == []
    assert any(m.startswith("listening on ") and m.endswith(":8555") for m in messages(events))
    assert svc.port is not None


def test_privileged_start_binds_once(config: ServerConfig) -> None:
    """twistd calls privilegedStartService then startService: one listen, not two."""
    svc, _store, _built, _exits, reactor = make(config)
    svc.privilegedStartService()
    svc.startService()
    assert len(reactor.sslServers) == 1


def test_client_certificates_requested_when_enabled(write_config: ConfigWriter) -> None:
    """With the "certificate" method the server verifies client certificates (optional)."""
    cfg = load_config(write_config({"auth": {"methods": ["password", "certificate"]}}))
    svc, *_rest, reactor = make(cfg)
    svc.startService()
    context = reactor.sslServers[0][2].current
    assert context.verify and not context.requireCertificate


def test_bind_failure_exits(config: ServerConfig) -> None:
    """An address in use stops start-up with one line instead of running without a port."""
    reactor = RaisingMemoryReactor(listenException=CannotListenError("127.0.0.1", 8555, "busy"))
    svc, *_ = make(config, reactor)
    with capturedLogs() as events, pytest.raises(SystemExit) as info:
        svc.privilegedStartService()
    assert info.value.code == 1
    assert messages(events)[-1] == "cannot listen on 127.0.0.1:8555: busy"


@pytest_twisted.ensureDeferred
async def test_real_bind_failure_exits(write_config: ConfigWriter, reactor: Any) -> None:
    """Against the real reactor, a port that is taken raises SystemExit (twistd exits 1)."""
    taken = reactor.listenTCP(0, ServerFactory.forProtocol(Protocol), interface="127.0.0.1")
    try:
        cfg = load_config(write_config({"server": {"port": taken.getHost().port}}))
        svc, store, *_ = make(cfg, reactor)
        with capturedLogs() as events, pytest.raises(SystemExit, match="1"):
            svc.privilegedStartService()
        assert store.events == []
        assert f"127.0.0.1:{taken.getHost().port}" in messages(events)[-1]
    finally:
        await taken.stopListening()


def test_missing_tls_files_exit_naming_the_key(write_config: ConfigWriter) -> None:
    """With auto_generate off and no certificate, start-up stops with the config key."""
    cfg = load_config(write_config({"tls": {"auto_generate": False}}))
    svc, *_rest, reactor = make(cfg)
    with capturedLogs() as events, pytest.raises(SystemExit, match="1"):
        svc.startService()
    assert reactor.sslServers == []
    [critical] = [e for e in events if e["log_level"].name == "critical"]
    assert "[tls] cert" in messages([critical])[0]


def test_store_failure_exits_non_zero(config: ServerConfig) -> None:
    """A store that cannot open logs one critical line and asks for exit status 1."""
    svc, store, _built, exits, _reactor = make(config)
    store.start_error = OSError("disk on fire")
    with capturedLogs() as events:
        svc.startService()
    assert exits == [1]
    [line] = [m for m in messages(events) if m.startswith("cannot open the store")]
    assert "disk on fire" in line and str(config.store.path) in line


def test_expiry_timer_runs_after_store_opens(config: ServerConfig) -> None:
    """The store is swept at once and then every EXPIRE_INTERVAL seconds of reactor time."""
    svc, store, _built, _exits, reactor = make(config)
    svc.startService()
    reactor.advance(tap.EXPIRE_INTERVAL)
    reactor.advance(tap.EXPIRE_INTERVAL)
    assert [e for e in store.events if e.startswith("expire")] == [
        "expire@0",
        f"expire@{tap.EXPIRE_INTERVAL:g}",
        f"expire@{2 * tap.EXPIRE_INTERVAL:g}",
    ]


@pytest.mark.parametrize("sync", [True, False])
def test_failing_expire_does_not_kill_the_timer(config: ServerConfig, sync: bool) -> None:
    """A sweep that raises or errbacks is logged and the next sweep still happens."""
    svc, store, _built, _exits, reactor = make(config)
    store.expire_raises = sync
    store.expire_error = None if sync else RuntimeError("database is locked")
    with capturedLogs() as events:
        svc.startService()
        reactor.advance(tap.EXPIRE_INTERVAL)
        reactor.advance(tap.EXPIRE_INTERVAL)
    assert len([e for e in store.events if e.startswith("expire")]) == 3
    failures = [e for e in events if "log_failure" in e]
    assert len(failures) == 3
    assert all(f["log_failure"].check(RuntimeError) for f in failures)


class CheckingFactory(ServerFactory):
    """A factory with the relay's periodic hooks, recording calls and failing on demand."""

    protocol = Protocol

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.calls: list[str] = []
        self.fail: str | None = None

    def _hook(self, name: str) -> defer.Deferred[int]:
        self.calls.append(f"{name}@{self.clock.seconds():g}")
        if self.fail == "raise":
            raise RuntimeError(f"{name} bug")
        if self.fail == "errback":
            return defer.fail(RuntimeError(f"{name}: database is locked"))
        return defer.succeed(0)

    def housekeeping(self) -> defer.Deferred[int]:
        return self._hook("housekeeping")

    def check_accounts(self) -> defer.Deferred[int]:
        return self._hook("check_accounts")


@pytest.mark.parametrize("fail", [None, "raise", "errback"])
def test_account_check_timer(config: ServerConfig, fail: str | None) -> None:
    """Accounts are checked every ACCOUNT_CHECK_INTERVAL, housekeeping with each expiry
    sweep; a check that raises or errbacks is logged and the timers keep running."""
    svc, _store, built, _exits, reactor = make(config)
    factory = built.factory = CheckingFactory(reactor)
    factory.fail = fail
    with capturedLogs() as events:
        svc.startService()
        for _ in range(int(tap.EXPIRE_INTERVAL / tap.ACCOUNT_CHECK_INTERVAL)):
            reactor.advance(tap.ACCOUNT_CHECK_INTERVAL)
    checks = [c for c in factory.calls if c.startswith("check_accounts")]
    assert len(checks) == tap.EXPIRE_INTERVAL / tap.ACCOUNT_CHECK_INTERVAL + 1
    assert checks[1] == f"check_accounts@{tap.ACCOUNT_CHECK_INTERVAL:g}"
    assert [c for c in factory.calls if c.startswith("housekeeping")] == [
        "housekeeping@0", f"housekeeping@{tap.EXPIRE_INTERVAL:g}"
    ]
    failures = [e for e in events if "log_failure" in e]
    assert len(failures) == (0 if fail is None else len(factory.calls))
    assert all(f["log_failure"].check(RuntimeError) for f in failures)


def test_stop_closes_listener_then_store(config: ServerConfig) -> None:
    """stopService stops the port and the timers, then closes (flushes) the store."""
    svc, store, _built, _exits, reactor = make(config)
    svc.startService()
    children = list(svc)  # listener, certificate check, expiry, account check
    assert len(children) == 4 and all(child.running for child in children)
    d = svc.stopService()
    assert d.called
    assert store.events[-1] == "stop"
    assert not any(child.running for child in children)
    before = len(store.events)
    reactor.advance(10 * tap.EXPIRE_INTERVAL)
    assert len(store.events) == before


def test_make_service_uses_the_options_config(write_config: ConfigWriter) -> None:
    """makeService builds a RelayService from the parsed options (production wiring)."""
    pytest.importorskip("securechat.server.protocol")
    options = tap.Options()
    options.parseOptions(["--config", str(write_config())])
    reactor = MemoryReactorClock()
    svc = tap.makeService(options, reactor)
    assert isinstance(svc, tap.RelayService)
    try:
        svc.privilegedStartService()
        assert reactor.sslServers[0][0] == 0
    finally:
        svc._store.stop()  # the adbapi pool started its threads on the global reactor
