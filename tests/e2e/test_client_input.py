"""End-to-end input rules (issue 9): real client processes against the real daemon.

An over-long line is refused whole (one ``error`` event, nothing of it reaches the peer), and
nothing typed after ``/quit`` is ever sent, not by this run and not by the next one.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import pytest_twisted

from tests.e2e.test_client_e2e import HASH, Relay, _block, finish_all, marker

pytest.importorskip("securechat.server.protocol")


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    r = Relay(tmp_path_factory.mktemp("relay-input"),
              {"auth": HASH, "crypto": {"backends": ["ecdh"]}})  # fmt: skip
    _block(r.start())
    yield r
    if r.daemon is not None:
        _block(r.stop())


@pytest_twisted.ensureDeferred
async def test_an_over_long_line_sends_nothing_and_gives_one_error(relay: Relay) -> None:
    r = relay
    m = marker("long")
    alice, bob = await r.online("alice", "bob", register=True)
    alice.send("/chat bob", m + "x" * 40_000, f"{m} short")
    assert (await bob.expect("message", **{"from": "alice"}))["text"] == f"{m} short"
    alice.send("/msg bob " + "y" * (1 << 20), f"/msg bob {m} after the megabyte")
    assert (await bob.expect("message", **{"from": "alice"}))["text"] == f"{m} after the megabyte"
    await finish_all(alice, bob)
    assert [e["text"] for e in bob.all("message")] == [f"{m} short", f"{m} after the megabyte"]
    errors = alice.all("error")
    assert [e["code"] for e in errors] == ["line-too-long", "line-too-long"], errors
    assert [e["status"] for e in alice.all("sent")] == ["delivered", "delivered"]


@pytest_twisted.ensureDeferred
async def test_lines_after_quit_are_never_sent(relay: Relay) -> None:
    r = relay
    m = marker("quit")
    carol, dave = await r.online("carol", "dave", register=True)
    carol.send(f"/msg dave {m} before", "/quit", f"/msg dave {m} after quit")
    exit = await carol.wait_exit()
    assert exit.code == 0, exit
    # The next run has nothing left over to deliver.
    carol = await r.client("carol").logged_in()
    carol.send(f"/msg dave {m} next run")
    assert (await dave.expect("message", **{"from": "carol"}))["text"] == f"{m} before"
    assert (await dave.expect("message", **{"from": "carol"}))["text"] == f"{m} next run"
    await finish_all(carol, dave)
    assert [e["text"] for e in dave.all("message")] == [f"{m} before", f"{m} next run"]
