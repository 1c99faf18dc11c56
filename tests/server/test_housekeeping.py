"""The daemon's periodic housekeeping keeps the rate-limit tables from growing forever."""

from __future__ import annotations

from securechat import wire
from tests.server.harness import Harness, item


def test_housekeeping_forgets_idle_send_and_login_buckets() -> None:
    h = Harness()
    alice = h.online("alice")
    h.online("bob")
    alice.send(wire.Send(id=alice.next_id(), items=(item("bob"),)))
    h.clock.advance(0)
    wrong = h.connect()
    wrong.request(wire.LoginPassword(id=wrong.next_id(), user="alice", password="not-it-at-all"))
    h.clock.advance(0)
    assert len(h.relay.limiter.table) >= 1
    assert len(h.auth._throttle.accounts) >= 1

    h.factory.housekeeping()  # buckets still draining: nothing idle yet
    assert len(h.auth._throttle.accounts) >= 1

    h.clock.advance(3600)  # every bucket refills: all idle
    h.factory.housekeeping()
    assert len(h.relay.limiter.table) == 0
    assert len(h.auth._throttle.accounts) == 0
    assert len(h.auth._throttle.addresses) == 0
