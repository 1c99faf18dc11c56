"""Queue quotas and the free-space watermark, on both stores.

One sender must not be able to fill another user's mailbox: strangers get a small
first-contact allowance each and a bounded share all together, contacts a larger one
each, and bytes count as well as envelopes. A store whose disk is almost full refuses new
envelopes with ``StoreUnavailable`` but still applies acknowledgements.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from securechat.errors import QueueFull, StoreUnavailable
from securechat.server.store.diskspace import DiskSpace
from securechat.server.store.interface import ROLE_USER, NewEnvelope
from securechat.server.store.quota import QueueLimits, QueueUsage, wanted_of
from tests.server.test_store import failure_of, make_store, section

LIMITS = QueueLimits(
    queue_limit=50,
    queue_bytes=10_000,
    sender_limit=20,
    sender_bytes=5_000,
    stranger_limit=3,
    stranger_bytes=400,
    strangers_limit=8,
    strangers_bytes=2_000,
)


def env(to: str, sender: str, size: int = 10, stranger: bool = False) -> NewEnvelope:
    return NewEnvelope(to, sender, "ecdh", os.urandom(8), None, b"x" * size, stranger)


@pytest.fixture
def clock() -> Clock:
    c = Clock()
    c.advance(1000.0)
    return c


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Iterator[Any]:
    s = make_store(request.param, section(tmp_path), clock)
    s.limits = LIMITS
    pytest_twisted.blockon(s.start())
    for name in ["dave", "alice", *(f"s{i}" for i in range(6))]:
        pytest_twisted.blockon(s.add_user(name, ROLE_USER, None, None))
    yield s
    pytest_twisted.blockon(s.stop())


# -- the counters alone ------------------------------------------------------------------
def no_rows(recipient: str) -> list[tuple[str, int, int]]:
    return []


def test_a_call_that_does_not_fit_counts_nothing() -> None:
    """All or nothing: a refused call leaves every counter as it was."""
    usage = QueueUsage(LIMITS)
    ok = wanted_of([("dave", "s0", 10, True), ("dave", "s0", 10, True)])
    assert usage.admit(ok, no_rows) is None
    too_many = wanted_of([("dave", "s0", 10, True), ("dave", "alice", 10, False)] * 2)
    assert isinstance(usage.admit(too_many, no_rows), QueueFull)
    assert usage.usage("dave", no_rows) == (2, 20)


def test_loaded_counters_and_a_stranger_who_becomes_a_contact() -> None:
    """Counters start from the store's rows; a pair's share moves with its relation."""
    usage = QueueUsage(LIMITS)

    def rows(recipient: str) -> list[tuple[str, int, int]]:
        return [("alice", 4, 100)] if recipient == "dave" else []

    assert usage.usage("dave", rows) == (4, 100)
    # alice counted as a contact so far; as a stranger her 4 are over the allowance of 3.
    assert isinstance(usage.admit(wanted_of([("dave", "alice", 1, True)]), rows), QueueFull)
    assert usage.admit(wanted_of([("dave", "alice", 1, False)]), rows) is None
    assert usage.usage("dave", rows) == (5, 101)


# -- both stores -------------------------------------------------------------------------
@pytest_twisted.inlineCallbacks
def test_a_stranger_gets_a_small_first_contact_allowance(store: Any) -> Any:
    """A non-contact may queue ``stranger_limit`` envelopes for one user, no more."""
    yield store.enqueue([env("dave", "s0", stranger=True) for _ in range(3)])
    assert isinstance((yield failure_of(store.enqueue([env("dave", "s0", stranger=True)]))),
                      QueueFull)  # fmt: skip
    # The same sender still reaches someone else, and a contact still reaches dave.
    yield store.enqueue([env("alice", "s0", stranger=True)])
    yield store.enqueue([env("dave", "alice")])


@pytest_twisted.inlineCallbacks
def test_stranger_bytes_count_too(store: Any) -> Any:
    """Two large envelopes use up the byte allowance before the count does."""
    yield store.enqueue([env("dave", "s0", 300, stranger=True)])
    assert isinstance(
        (yield failure_of(store.enqueue([env("dave", "s0", 300, stranger=True)]))), QueueFull
    )


@pytest_twisted.inlineCallbacks
def test_many_strangers_cannot_fill_the_queue_for_contacts(store: Any) -> Any:
    """All strangers together get ``strangers_limit``; the rest stays for contacts."""
    refused = 0
    for i in range(6):
        for _ in range(3):
            try:
                yield store.enqueue([env("dave", f"s{i}", stranger=True)])
            except QueueFull:
                refused += 1
    assert refused == 18 - 8
    contact = [env("dave", "alice") for _ in range(20)]
    assert len((yield store.enqueue(contact))) == 20  # the whole per-contact share


@pytest_twisted.inlineCallbacks
def test_one_contact_cannot_take_the_whole_queue(store: Any) -> Any:
    """A contact's share is ``sender_limit`` envelopes and ``sender_bytes`` bytes."""
    yield store.enqueue([env("dave", "alice") for _ in range(20)])
    assert isinstance((yield failure_of(store.enqueue([env("dave", "alice")]))), QueueFull)
    yield store.enqueue([env("dave", "s1")])  # another contact still gets through
    big = env("alice", "s2", 5_001)
    assert isinstance((yield failure_of(store.enqueue([big]))), QueueFull)


@pytest_twisted.inlineCallbacks
def test_per_recipient_bytes(store: Any) -> Any:
    """The recipient's total bytes are capped next to the count."""
    for i in range(2):
        yield store.enqueue([env("dave", f"s{i}", 4_500)])
    assert isinstance((yield failure_of(store.enqueue([env("dave", "s2", 1_500)]))), QueueFull)


@pytest_twisted.inlineCallbacks
def test_acknowledging_frees_the_allowance(store: Any) -> Any:
    """What the recipient acknowledged no longer counts."""
    stored = yield store.enqueue([env("dave", "s0", stranger=True) for _ in range(3)])
    store.acknowledge_later("dave", stored[-1].seq)
    yield store.enqueue([env("dave", "s0", stranger=True) for _ in range(3)])


# -- the free-space watermark --------------------------------------------------------------
class FakeFS:
    """``os.statvfs`` of a filesystem with ``free`` bytes available."""

    def __init__(self, free: int) -> None:
        self.free = free

    def __call__(self, path: str) -> os.statvfs_result:
        return os.statvfs_result((4096, 4096, 1 << 20, 0, self.free // 4096, 0, 0, 0, 0, 255))


@pytest_twisted.inlineCallbacks
def test_low_disk_refuses_envelopes_but_applies_acks(tmp_path: Path, clock: Clock) -> Any:
    """Below the watermark a send is refused (retry later); acks still delete."""
    s = make_store("sqlite", section(tmp_path, queue_limit=100), clock)
    fs = FakeFS(1 << 30)
    s.space = DiskSpace(str(tmp_path), 100 << 20, now=clock.seconds, statvfs=fs)
    yield s.start()
    try:
        yield s.add_user("dave", ROLE_USER, None, None)
        stored = yield s.enqueue([env("dave", "alice") for _ in range(3)])
        fs.free = 10 << 20
        clock.advance(1)
        refused = yield failure_of(s.enqueue([env("dave", "alice")]))
        assert isinstance(refused, StoreUnavailable) and refused.retry_after > 0
        s.acknowledge_later("dave", stored[1].seq)
        refused = yield failure_of(s.enqueue([env("dave", "alice")]))  # carries the ack
        assert isinstance(refused, StoreUnavailable)
        rows = yield s.run(lambda c: c.execute("SELECT count(*) FROM queue").fetchone()[0])
        assert rows == 1  # the acknowledged two are deleted
        fs.free = 1 << 30
        clock.advance(1)
        assert len((yield s.enqueue([env("dave", "alice")]))) == 1
    finally:
        yield s.stop()
