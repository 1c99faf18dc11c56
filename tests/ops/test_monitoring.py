"""The metrics sink, its Prometheus export, ``/healthz`` and the config keys behind them."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from prometheus_client import generate_latest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.web.test.requesthelper import DummyRequest

from securechat.config import StoreSection, config_from_mapping
from securechat.errors import ConfigError
from securechat.server.metrics import NULL_METRICS, Histogram, RelayMetrics
from securechat.server.monitoring import HEALTH_TIMEOUT, HealthResource, build_registry, build_site
from securechat.server.store.interface import QueuedEnvelope
from securechat.server.store.sqlite import SQLiteStore


def env(accepted_at: float) -> QueuedEnvelope:
    return QueuedEnvelope(1, "bob", "alice", "ecdh", b"m" * 16, None, accepted_at, b"x")


def test_histogram_buckets_are_cumulative_with_inf() -> None:
    h = Histogram((1.0, 2.0))
    for v in (0.5, 1.0, 1.5, 7.0):
        h.observe(v)
    assert h.cumulative() == [("1.0", 2), ("2.0", 3), ("+Inf", 4)]
    assert (h.count, h.sum) == (4, 10.0)


def test_export_names_and_values() -> None:
    clock = Clock()
    clock.advance(100.0)
    m = RelayMetrics(clock)
    m.sessions = lambda: 1
    for _ in range(3):
        m.connection_opened()
    m.connection_closed(handshake_done=False)
    m.login("password", "ok")
    m.login("password", "failed")
    m.accepted(4)
    m.delivered([env(99.5), env(40.0)])
    m.acked(2)
    m.expired(1)
    m.group_commit(4, 0.003)
    m.store_error()
    m.rate_limited("send", 5)
    m.queue = (7, 700, 10.0)
    text = generate_latest(build_registry(m)).decode()
    for line in (
        'securechat_connections{state="logged_in"} 1.0',
        'securechat_connections{state="pre_login"} 1.0',
        "securechat_connections_opened_total 3.0",
        "securechat_tls_handshake_failures_total 1.0",
        'securechat_logins_total{method="password",result="ok"} 1.0',
        'securechat_logins_total{method="password",result="failed"} 1.0',
        "securechat_envelopes_accepted_total 4.0",
        "securechat_envelopes_delivered_total 2.0",
        "securechat_envelopes_acked_total 2.0",
        "securechat_envelopes_expired_total 1.0",
        "securechat_store_errors_total 1.0",
        'securechat_rate_limited_total{kind="send"} 5.0',
        'securechat_deliver_latency_seconds_bucket{le="0.5"} 1.0',
        'securechat_deliver_latency_seconds_bucket{le="10.0"} 1.0',
        'securechat_deliver_latency_seconds_bucket{le="60.0"} 2.0',
        "securechat_deliver_latency_seconds_count 2.0",
        'securechat_group_commit_size_bucket{le="4.0"} 1.0',
        'securechat_group_commit_seconds_bucket{le="0.005"} 1.0',
        "securechat_queue_envelopes 7.0",
        "securechat_queue_bytes 700.0",
        "securechat_queue_oldest_age_seconds 90.0",
    ):
        assert line in text, line
    assert "process_cpu_seconds_total" in text


def test_null_metrics_accept_every_call() -> None:
    NULL_METRICS.delivered([env(0.0)])
    NULL_METRICS.group_commit(1, 0.1)
    NULL_METRICS.rate_limited("send", 1)


class SilentStore:
    """A store that never answers (a wedged disk)."""

    def ping(self) -> defer.Deferred[None]:
        return defer.Deferred()


def test_healthz_turns_503_when_the_store_does_not_answer_in_time() -> None:
    clock = Clock()
    request = DummyRequest([b""])
    resource = HealthResource(SilentStore(), clock)  # type: ignore[arg-type]
    resource.render_GET(request)
    assert not request.finished
    clock.advance(HEALTH_TIMEOUT)
    assert request.responseCode == 503 and b"".join(request.written) == b"store unavailable\n"


def _fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=15) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest_twisted.ensureDeferred
async def test_healthz_follows_a_real_store(reactor: Any, tmp_path: Path) -> None:
    """200 while the SQLite store answers; 503 once it is unavailable (here: closed)."""
    store = SQLiteStore(StoreSection(path=tmp_path / "db.sqlite3"), clock=reactor)
    await store.start()
    port = reactor.listenTCP(0, build_site(RelayMetrics(reactor), store, reactor),
                             interface="127.0.0.1")  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port.getHost().port}/healthz"
        assert await deferToThread(_fetch, url) == (200, b"ok\n")
        await store.stop()
        assert await deferToThread(_fetch, url) == (503, b"store unavailable\n")
    finally:
        await port.stopListening()


def config(**sections: dict[str, Any]) -> Any:
    return config_from_mapping(sections, Path("/nonexistent"), "t.toml")


def test_metrics_and_log_config() -> None:
    assert config().metrics.listen == "" and config().log.format == "text"
    assert config(metrics={"listen": "[::1]:9464"}).metrics.listen == "[::1]:9464"
    assert config(log={"format": "json"}).log.format == "json"
    with pytest.raises(ConfigError, match="not a loopback address"):
        config(metrics={"listen": "0.0.0.0:9464"})
    with pytest.raises(ConfigError, match="HOST:PORT"):
        config(metrics={"listen": "9464"})
    with pytest.raises(ConfigError, match=r"\[log\] format"):
        config(log={"format": "xml"})


ROOT = Path(__file__).resolve().parents[2]


def exported_families() -> set[str]:
    """Every securechat metric family the exporter produces (queue gauges included)."""
    m = RelayMetrics(Clock())
    m.queue = (0, 0, None)
    m.login("password", "ok")
    m.rate_limited("send", 1)
    return {
        f.name for f in build_registry(m).collect() if f.name.startswith("securechat_")
    }


def test_operations_doc_lists_every_metric() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    families = exported_families()
    assert len(families) == 16
    for name in families:
        shown = name + "_total" if f"{name}_total" in doc else name
        assert f"`{shown}`" in doc, name


def test_dashboard_and_alerts_use_only_exported_metrics() -> None:
    import json
    import re

    dashboard = json.loads((ROOT / "etc" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    alerts = (ROOT / "etc" / "prometheus-alerts.yml").read_text()
    assert alerts.count("- alert: ") == 2
    used = set(re.findall(r"securechat_[a-z_]+", " ".join(exprs) + alerts))
    families = exported_families()
    suffixes = ("_total", "_bucket", "_sum", "_count")
    for name in used:
        base = next((name[: -len(s)] for s in suffixes if name.endswith(s)), name)
        assert base in families or name in families, name
    for name in families:  # and every metric has a panel
        assert any(name in e for e in exprs), name


def test_delivered_counts_every_envelope_of_runs_committed_together() -> None:
    clock = Clock()
    clock.advance(10.0)
    m = RelayMetrics(clock)
    m.delivered([env(9.99), env(9.99), env(9.99), env(4.0), env(9.99)])
    m.delivered([])
    h = m.deliver_latency
    assert m.envelopes_delivered == 5 and h.count == 5
    assert dict(h.cumulative())["0.01"] == 4 and dict(h.cumulative())["10.0"] == 5
    assert abs(h.sum - (4 * 0.01 + 6.0)) < 1e-9


def test_refusals_and_logins_are_counted_by_kind_and_result() -> None:
    """The relay counts refused envelopes as ``send``, the login handler counts results,
    and a throttled login is also a ``login`` refusal."""
    from securechat import wire
    from tests.server.harness import Harness, item, make_config

    h = Harness(make_config(policy={"send_rate": 2.0, "send_burst": 3}))
    m = RelayMetrics(h.clock)
    h.relay.metrics = h.factory.metrics = m
    a, _ = h.online("alice"), h.online("bob")
    a.reply(wire.Send(id=a.next_id(), items=tuple(item("bob", b"%d" % n) for n in range(5))),
            wire.SendReply)  # fmt: skip
    assert m.rate_limited_by_kind == {"send": 2} and m.envelopes_accepted == 3
    h.add_user("carol")
    c = h.connect()
    for _ in range(h.config.auth.pair_burst + 1):
        c.error(wire.LoginPassword(id=c.next_id(), user="carol", password="wrong-password"))
    assert m.logins == {
        ("password", "ok"): 2,
        ("password", "failed"): h.config.auth.pair_burst,
        ("password", "throttled"): 1,
    }
    assert m.rate_limited_by_kind == {"send": 2, "login": 1}
