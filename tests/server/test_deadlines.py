"""One shared timer for every connection's deadline: never early, at most one step late."""

from __future__ import annotations

from twisted.internet.task import Clock

from securechat import wire
from securechat.server.deadlines import GRANULARITY, Deadlines
from tests.server.harness import Harness

T0 = 1_700_000_000.0


class Entry:
    """Records when it was told; optionally files itself again once."""

    def __init__(self, clock: Clock, deadlines: Deadlines[Entry], again: float | None = None):
        self.clock = clock
        self.deadlines = deadlines
        self.again = again
        self.fired: list[float] = []
        self.bucket: set[Entry] | None = None

    def deadline_passed(self) -> None:
        self.fired.append(self.clock.seconds())
        self.bucket = None
        if self.again is not None:
            self.bucket = self.deadlines.add(self, self.clock.seconds() + self.again)
            self.again = None


def _setup() -> tuple[Clock, Deadlines[Entry]]:
    clock = Clock()
    clock.advance(T0)
    return clock, Deadlines(clock, granularity=1.0)


def test_never_early_at_most_one_step_late() -> None:
    """An entry is told once, in the first step at or after its deadline."""
    clock, deadlines = _setup()
    exact, between = Entry(clock, deadlines), Entry(clock, deadlines)
    deadlines.add(exact, T0 + 5)
    deadlines.add(between, T0 + 5.2)
    clock.advance(4.99)
    assert exact.fired == between.fired == []
    clock.advance(0.01)
    assert exact.fired == [T0 + 5] and between.fired == []
    clock.advance(1)
    assert between.fired == [T0 + 6]
    assert len(deadlines) == 0 and clock.getDelayedCalls() == []


def test_one_timer_for_many_entries_and_cancel() -> None:
    """Many entries share one DelayedCall; cancelling the last one stops it."""
    clock, deadlines = _setup()
    entries = [Entry(clock, deadlines) for _ in range(100)]
    buckets = [deadlines.add(e, T0 + 10 + i % 7) for i, e in enumerate(entries)]
    assert len(clock.getDelayedCalls()) == 1 and len(deadlines) == 100
    for e, b in zip(entries, buckets, strict=True):
        deadlines.cancel(e, b)
        deadlines.cancel(e, b)  # twice is harmless
    assert len(deadlines) == 0 and clock.getDelayedCalls() == []
    clock.advance(60)
    assert not any(e.fired for e in entries)


def test_refiling_later_keeps_earlier_buckets_on_time() -> None:
    """An entry that files itself again for later does not delay an earlier bucket, and an
    earlier deadline added later moves the timer forward."""
    clock, deadlines = _setup()
    bouncer, middle, early = (
        Entry(clock, deadlines, again=50),
        Entry(clock, deadlines),
        Entry(clock, deadlines),
    )
    deadlines.add(bouncer, T0 + 2)
    deadlines.add(middle, T0 + 10)
    clock.advance(1)
    deadlines.add(early, T0 + 1.5)
    clock.advance(1)
    assert early.fired == [T0 + 2] and bouncer.fired == [T0 + 2]
    clock.advance(8)
    assert middle.fired == [T0 + 10]
    clock.advance(42)
    assert bouncer.fired == [T0 + 2, T0 + 52]
    assert clock.getDelayedCalls() == []


def test_connections_share_one_timer_and_stay_small() -> None:
    """Logged-in and not-yet-logged-in connections add no DelayedCall of their own, and
    the protocol keeps few instance attributes (CPython shares the attribute-name table
    of instances only up to 30 names; past that each connection pays ~1.3 KB more)."""
    h = Harness()
    idle = [h.connect() for _ in range(20)]
    users = [h.online(f"user{i}") for i in range(20)]
    users[0].reply(wire.Ping(id=1), wire.Pong)
    h.clock.advance(0)
    assert len(h.clock.getDelayedCalls()) == 1
    assert len(h.factory.deadlines) == 40
    assert len(vars(users[0].proto)) <= 16, sorted(vars(users[0].proto))
    h.clock.advance(h.config.server.handshake_timeout + GRANULARITY)
    assert all(c.closed for c in idle) and not any(u.closed for u in users)
    for c in idle:
        c.drop()
    for u in users:
        u.drop()
    assert len(h.factory.deadlines) == 0 and h.clock.getDelayedCalls() == []
