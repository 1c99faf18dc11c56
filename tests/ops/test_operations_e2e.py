"""End-to-end operations: the real daemon with JSON logs and the metrics listener.

A scripted chat (registrations, a failed login, queued and online envelopes, acks) is run
against ``twistd -n securechat``; then ``/metrics`` must show exactly those counts,
``/healthz`` must say 200, and every line the daemon wrote must be one JSON object, with
the failed login's user name and address and no password or payload anywhere.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from typing import Any

import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from securechat import wire
from securechat.config import load_config
from tests.conftest import ConfigWriter
from tests.e2e.client import ServerError, connect
from tests.e2e.daemon import start_daemon

PASSWORD = "correct horse battery staple"
WRONG = "wrong-password-never-logged"
METRICS_LINE = re.compile(r"metrics and health check on http://127\.0\.0\.1:(\d+)/metrics")


def _fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=15) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


async def get(reactor: Any, port: int, path: str) -> tuple[int, bytes]:
    """A plain HTTP GET (urllib, on a thread: the scrape is served by the reactor)."""
    return await deferToThread(_fetch, f"http://127.0.0.1:{port}{path}")


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class Plain(Protocol):
    def __init__(self) -> None:
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


def item(to: str, payload: bytes) -> wire.SendItem:
    return wire.SendItem(to=to, backend="ecdh", mid=os.urandom(16), payload=payload)


@pytest_twisted.ensureDeferred
async def test_scripted_chat_moves_metrics_and_logs_json(
    reactor: Any, write_config: ConfigWriter
) -> None:
    config_path = write_config(
        {"log": {"format": "json"}, "metrics": {"listen": "127.0.0.1:0"}}
    )
    ca = b""
    daemon = await start_daemon(reactor, config_path)
    clients = []
    try:
        ca = load_config(config_path).tls.ca.read_bytes()
        match = METRICS_LINE.search(daemon.output)
        assert match, daemon.output
        mport, port = int(match[1]), daemon.port
        assert port is not None
        assert (await get(reactor, mport, "/healthz"))[0] == 200

        alice = await connect(reactor, port, ca)
        clients.append(alice)
        await alice.hello()
        await alice.register("alice", password=PASSWORD)
        await alice.login_password("alice", PASSWORD)
        eve = await connect(reactor, port, ca)
        try:
            await eve.login_password("alice", WRONG)
        except ServerError as e:
            assert e.code == wire.E_AUTH_FAILED
        else:
            raise AssertionError("a wrong password logged in")
        await eve.close()
        bob = await connect(reactor, port, ca)
        await bob.register("bob", password=PASSWORD)
        await bob.close()
        # Not TLS at all: the handshake fails and the relay drops the connection.
        plain = Plain()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), plain)
        plain.transport.write(b"GET / HTTP/1.0\r\n\r\n")  # type: ignore[union-attr]
        await plain.lost.addTimeout(15, reactor)

        # Three envelopes queued for bob while offline, then delivered at his login.
        reply = await alice.send(*(item("bob", b"secret-payload-%d" % i) for i in range(3)))
        assert {r.status for r in reply.results} == {wire.STATUS_QUEUED}
        bob = await connect(reactor, port, ca)
        clients.append(bob)
        await bob.login_password("bob", PASSWORD)
        backlog = (await bob.next_push(wire.Deliver)).items
        assert len(backlog) == 3
        bob.ack(backlog[-1].seq)
        # Two more while bob is online, acknowledged too.
        reply = await alice.send(item("bob", b"secret-payload-3"), item("bob", b"secret-payload-4"))
        assert {r.status for r in reply.results} == {wire.STATUS_DELIVERED}
        online: list[wire.DeliverItem] = []
        while len(online) < 2:
            online.extend((await bob.next_push(wire.Deliver)).items)
        bob.ack(online[-1].seq)

        # Acks are coalesced into the store's next transaction (within 50 ms).
        for _ in range(250):
            values = samples((await get(reactor, mport, "/metrics"))[1])
            if values[("securechat_envelopes_acked_total", ())] == 5:
                break
            await deferLater(reactor, 0.02)
        assert values[("securechat_envelopes_acked_total", ())] == 5
        assert values[("securechat_envelopes_accepted_total", ())] == 5
        assert values[("securechat_envelopes_delivered_total", ())] == 5
        assert values[("securechat_envelopes_expired_total", ())] == 0
        logins = {
            k[1]: v for k, v in values.items() if k[0] == "securechat_logins_total"
        }
        assert logins == {
            (("method", "password"), ("result", "ok")): 2,
            (("method", "password"), ("result", "failed")): 1,
        }
        assert values[("securechat_connections", (("state", "logged_in"),))] == 2
        assert values[("securechat_connections", (("state", "pre_login"),))] == 0
        assert values[("securechat_connections_opened_total", ())] == 5
        assert values[("securechat_deliver_latency_seconds_count", ())] == 5
        assert values[("securechat_group_commit_size_sum", ())] == 5
        assert values[("securechat_group_commit_seconds_count", ())] == (
            values[("securechat_group_commit_size_count", ())]
        )
        assert values[("securechat_store_errors_total", ())] == 0
        assert values[("securechat_tls_handshake_failures_total", ())] == 1
        assert (await get(reactor, mport, "/nothing"))[0] == 404
    finally:
        for c in clients:
            await c.close()
        exit = await daemon.stop()

    lines = [line for line in exit.output.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "namespace", "event"} <= r.keys() for r in records)
    assert all(r["time"].endswith("Z") for r in records)
    failed = [r for r in records if "login failed" in r["event"]]
    assert len(failed) == 1
    assert (failed[0]["user"], failed[0]["address"]) == ("alice", "127.0.0.1")
    assert any(r.get("user") == "bob" and "logged in" in r["event"] for r in records)
    for secret in (PASSWORD, WRONG, "secret-payload"):
        assert secret not in exit.output
