"""Tests for securechat.server.admission and securechat.server.memory."""

from __future__ import annotations

from twisted.internet.task import Clock

from securechat.server.admission import Admission
from securechat.server.memory import Trimmer, trim


def test_pending_and_open_limits_per_address() -> None:
    a = Admission(max_open=3, max_pending=2, now=Clock().seconds)
    k1, k2 = a.admit("192.0.2.1"), a.admit("192.0.2.1")
    assert k1 == k2 == "192.0.2.1"
    assert a.admit("192.0.2.1") is None  # a third pending one
    assert a.admit("192.0.2.2") is not None  # another address is not affected
    a.logged_in("192.0.2.1")
    assert a.admit("192.0.2.1") == "192.0.2.1"  # 3 open, 2 pending
    a.logged_in("192.0.2.1")
    assert a.admit("192.0.2.1") is None  # the open limit
    a.closed("192.0.2.1", pending=False)
    assert a.admit("192.0.2.1") is not None
    assert a.refused == 2


def test_ipv6_neighbours_share_the_limit_and_tables_empty_out() -> None:
    a = Admission(max_open=0, max_pending=1, now=Clock().seconds)
    key = a.admit("2001:db8::1")
    assert key is not None and a.admit("2001:db8::2") is None
    a.closed(key, pending=True)
    assert a.open == {} and a.pending == {}


def test_trimmer_trims_after_enough_closes() -> None:
    clock = Clock()
    calls: list[int] = []
    t = Trimmer(clock.seconds, every=3, min_interval=1.0)
    t.flush = lambda: calls.append(1)  # type: ignore[method-assign]
    for _ in range(3):
        t.closed()
    assert calls == [1]
    trim()  # harmless whenever it is called
