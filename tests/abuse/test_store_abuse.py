"""Filling another user's mailbox, and a full disk, against the real daemon (issue 10).

* A stranger floods offline dave's queue (several accounts, bounded batches): each gets
  the small first-contact allowance, all of them together a bounded share, and dave's
  contact alice still reaches him. Before the quotas the flood took the whole queue and
  alice got ``queue-full``.
* The disk fills up (a small tmpfs holds the database; the test is root, as CI is):
  sends are refused with ``unavailable`` before it is full; something else then fills it
  completely and the refusals are logged in a few lines, not one per request; dave
  acknowledges, which still works on the full disk and frees room, so sends work again
  without a restart; nothing accepted is lost; and SIGTERM ends the process within 5 s.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from securechat import wire
from tests.abuse.harness import pause
from tests.conftest import ConfigWriter
from tests.e2e.client import ServerError, WireClient
from tests.robustness.conftest import Running, collect_until, item, running_daemon

ACCEPTED = (wire.STATUS_DELIVERED, wire.STATUS_QUEUED)


async def send_outcome(client: WireClient, *items: wire.SendItem) -> list[str]:
    """Per item: ``delivered``/``queued`` or its error code (the reply's code for all
    items when the whole request was refused)."""
    try:
        reply = await client.send(*items)
    except ServerError as e:
        return [e.code] * len(items)
    return [r.status if r.status in ACCEPTED else str(r.code) for r in reply.results]


async def befriend(relay: Running, a: WireClient, a_name: str, b: WireClient, b_name: str) -> None:
    await a.request(wire.ContactRequest(id=0, user=b_name), wire.ContactState)
    await b.request(wire.ContactAccept(id=0, user=a_name), wire.ContactState)


@pytest_twisted.ensureDeferred
async def test_strangers_cannot_lock_a_contact_out_of_daves_queue(
    reactor: Any, write_config: ConfigWriter
) -> None:
    """Five stranger accounts try to queue 60 envelopes each for offline dave; each gets
    its allowance, all of them their share; alice, dave's contact, still gets through."""
    store = {"queue_limit": 100, "stranger_limit": 10, "strangers_limit": 40}
    auth = {"registration_address_burst": 20}  # seven accounts from 127.0.0.1
    async with running_daemon(reactor, write_config, {"store": store, "auth": auth}) as relay:
        dave, alice = await relay.user("dave"), await relay.user("alice")
        await befriend(relay, alice, "alice", dave, "dave")
        await dave.close()
        strangers = [await relay.user(f"mallory{i}") for i in range(5)]
        queued = 0
        for n, mallory in enumerate(strangers):
            for batch in range(6):
                flood = [item("dave", b"spam %d.%d.%d" % (n, batch, i)) for i in range(10)]
                outcomes = await send_outcome(mallory, *flood)
                queued += sum(o in ACCEPTED for o in outcomes)
                assert set(outcomes) <= {*ACCEPTED, wire.E_QUEUE_FULL}, outcomes
        assert queued == 40  # 10 each for the first four, nothing for the fifth

        hello = item("dave", b"hi dave, it's alice")
        assert await send_outcome(alice, hello) == [wire.STATUS_QUEUED]
        dave = await relay.user("dave", register=False)
        backlog = await collect_until(dave, hello.mid)
        assert backlog[-1].sender == "alice" and len(backlog) == 41
        relay.assert_healthy()


# -- a full disk ---------------------------------------------------------------------------
@contextlib.contextmanager
def small_filesystem(path: Path, size_mib: int) -> Iterator[Path]:
    """A tmpfs of ``size_mib`` MiB mounted at ``path`` (skips when mounting is not allowed)."""
    path.mkdir(parents=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0700", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    """Write zeros into a file until the filesystem is full; returns the file."""
    filler = path / "filler"
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * (64 << 10))
    return filler


def failure_lines(output: str) -> int:
    return sum(
        "failed" in line and ("store unavailable" in line or "group commit" in line)
        for line in output.splitlines()
    )


async def until_accepted(reactor: Any, client: WireClient, sent: wire.SendItem) -> str:
    """Send again every 0.3 s (as a client retries its outbox) until it is accepted or 60
    tries passed; returns the last outcome."""
    for _ in range(60):
        [outcome] = await send_outcome(client, sent)
        if outcome in ACCEPTED:
            return outcome
        await pause(reactor, 0.3)
    return outcome


@pytest_twisted.ensureDeferred
async def test_full_disk_refuses_recovers_and_stops_promptly(
    reactor: Any, write_config: ConfigWriter, tmp_path: Path
) -> None:
    with small_filesystem(tmp_path / "disk", 48) as disk:
        store = {
            "path": str(disk / "relay.sqlite3"),
            "min_free_bytes": 16 << 20,  # well above the WAL's ~4 MiB before a checkpoint
            "queue_limit": 10_000,
        }
        policy = {"max_envelope_bytes": 200_000}  # fewer sends fill the disk
        overrides = {"store": store, "policy": policy}
        async with running_daemon(reactor, write_config, overrides) as relay:
            dave, alice = await relay.user("dave"), await relay.user("alice")
            await befriend(relay, alice, "alice", dave, "dave")

            # 1. Alice fills the disk up to the watermark: then sends are refused. Dave is
            # online and reads them as they come, but acknowledges nothing yet.
            accepted: list[bytes] = []
            for n in range(600):
                sent = item("dave", os.urandom(190_000), b"big%013d" % n)
                [outcome] = await send_outcome(alice, sent)
                if outcome not in ACCEPTED:
                    break
                accepted.append(sent.mid)
            assert outcome == wire.E_UNAVAILABLE and len(accepted) > 20, (outcome, len(accepted))
            got = await collect_until(dave, accepted[-1])
            assert [d.mid for d in got] == accepted

            # 2. Something else takes the rest of the disk; the relay keeps answering.
            filler = fill(disk)
            before = failure_lines(relay.daemon.output)
            for n in range(30):
                [outcome] = await send_outcome(alice, item("dave", b"while full %d" % n))
                assert outcome == wire.E_UNAVAILABLE, (n, relay.daemon.output[-2500:])
            logged = failure_lines(relay.daemon.output) - before
            assert logged <= 3, relay.daemon.output[-3000:]  # not one per request

            # 3. Dave acknowledges on the full disk: deleting still works and frees room
            # inside the database, so alice's send goes through again, without a restart.
            dave.ack(got[-1].seq)
            await dave.request(wire.Ping(id=0), wire.Pong)  # frames are handled in order
            after = item("dave", b"room again after dave's acknowledgement")
            outcome = await until_accepted(reactor, alice, after)
            assert outcome in ACCEPTED, relay.daemon.output[-3000:]
            got = await collect_until(dave, after.mid)
            assert [d.mid for d in got] == [after.mid]  # nothing refused was stored
            dave.ack(got[-1].seq)
            filler.unlink()

            # 4. The disk full again and an acknowledgement pending: SIGTERM ends it in 5 s
            # (it used to retry failing acknowledgements in a tight loop until SIGKILL).
            more = [item("dave", os.urandom(30_000)) for _ in range(3)]
            assert set(await send_outcome(alice, *more)) <= set(ACCEPTED)
            got = await collect_until(dave, more[-1].mid)
            filler = fill(disk)
            dave.ack(got[-1].seq)
            await dave.request(wire.Ping(id=0), wire.Pong)  # frames are handled in order
            started = time.monotonic()
            end = await relay.daemon.stop(timeout=10)
            assert time.monotonic() - started < 5.0, relay.daemon.output[-3000:]
            assert end.code == 0 or end.signal == signal.SIGTERM, end.output[-3000:]
            assert "Server Shut Down." in end.output and "Traceback" not in end.output
