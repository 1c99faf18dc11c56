"""How fast the SQLite store makes envelopes durable: group commit vs one per transaction.

Run with ``python -m bench.store [--envelopes N] [--callers N] [--dir DIR]``.

With ``synchronous = full`` each commit waits for an fsync, so the number that matters is
accepted-and-committed envelopes per second when many senders are in flight at once:
that is what group commit is for. On a shared machine absolute figures are noisy, so
the same process also measures a reference, one envelope per transaction with a single
caller (bounded to about two seconds), and prints the ratio. Finally it drains the queue
the way a reconnecting client does (``pending`` pages plus cumulative ``acknowledge``).

Pass ``--dir`` on the disk you care about: a tmpfs makes fsync free.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

from securechat.config import StoreSection
from securechat.server.store.interface import ROLE_USER, NewEnvelope
from securechat.server.store.sqlite import SQLiteStore

RECIPIENTS = 50
PAYLOAD = 256
REFERENCE_SECONDS = 2.0


def envelope(rng: random.Random, n: int) -> NewEnvelope:
    recipient = f"user{rng.randrange(RECIPIENTS)}"
    return NewEnvelope(recipient, "sender", "ecdh", n.to_bytes(16, "big"), None, b"\xa5" * PAYLOAD)


@defer.inlineCallbacks
def group_commit(store: SQLiteStore, total: int, callers: int, rng: random.Random) -> Any:
    """``callers`` senders each keep one enqueue of 1-10 envelopes in flight until
    ``total`` envelopes are committed; returns (envelopes, seconds, transactions)."""
    remaining = [total]
    sent = [0]

    @defer.inlineCallbacks
    def sender() -> Any:
        while remaining[0] > 0:
            n = min(rng.randint(1, 10), remaining[0])
            remaining[0] -= n
            batch = [envelope(rng, sent[0] + i) for i in range(n)]
            sent[0] += n
            yield store.enqueue(batch)

    transactions = store.transactions
    start = time.perf_counter()
    yield defer.gatherResults([sender() for _ in range(callers)])
    elapsed = time.perf_counter() - start
    return total, elapsed, store.transactions - transactions


@defer.inlineCallbacks
def one_per_transaction(store: SQLiteStore, rng: random.Random) -> Any:
    """A single caller, one envelope per enqueue, for about two seconds."""
    count = 0
    start = time.perf_counter()
    while time.perf_counter() - start < REFERENCE_SECONDS:
        yield store.enqueue([envelope(rng, count)])
        count += 1
    return count, time.perf_counter() - start


@defer.inlineCallbacks
def drain(store: SQLiteStore, page: int) -> Any:
    """Every recipient reads its queue in pages and acknowledges each page."""

    @defer.inlineCallbacks
    def drain_one(user: str) -> Any:
        done = 0
        while True:
            envelopes = yield store.pending(user, 0, page)
            if not envelopes:
                return done
            yield store.acknowledge(user, envelopes[-1].seq)
            done += len(envelopes)

    start = time.perf_counter()
    counts = yield defer.gatherResults([drain_one(f"user{i}") for i in range(RECIPIENTS)])
    return sum(counts), time.perf_counter() - start


@defer.inlineCallbacks
def run(reactor: Any, args: argparse.Namespace) -> Any:
    workdir = Path(tempfile.mkdtemp(prefix="securechat-bench-", dir=args.dir))
    section = StoreSection(
        path=workdir / "bench.sqlite3",
        queue_limit=10**9,
        queue_bytes=10**15,
        sender_limit=10**9,
        sender_bytes=10**15,
        synchronous="full",
        max_batch=args.max_batch,
    )
    store = SQLiteStore(section)
    rng = random.Random(1234)
    try:
        yield store.start()
        for i in range(RECIPIENTS):
            yield store.add_user(f"user{i}", ROLE_USER, None, None)

        ref_count, ref_time = yield one_per_transaction(store, rng)
        ref_rate = ref_count / ref_time
        total, elapsed, txns = yield group_commit(store, args.envelopes, args.callers, rng)
        rate = total / elapsed
        drained, drain_time = yield drain(store, args.page)
    finally:
        yield store.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"SQLite store, synchronous=full, {PAYLOAD}-byte envelopes, dir {args.dir or '(tmp)'}")
    print(
        f"  {'one envelope per transaction':32}: {ref_rate:10,.0f} envelopes/s "
        f"({ref_count} in {ref_time:.2f} s)"
    )
    print(
        f"  {f'group commit, {args.callers} callers':32}: {rate:10,.0f} envelopes/s "
        f"({total} in {elapsed:.2f} s, {txns} transactions, {total / max(txns, 1):.0f}/txn)"
    )
    print(f"  {'group commit / one per txn':32}: {rate / ref_rate:10.1f} x")
    print(
        f"  {f'drain (pending {args.page} + ack)':32}: {drained / drain_time:10,.0f} envelopes/s "
        f"({drained} in {drain_time:.2f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.store", description=__doc__)
    parser.add_argument("--envelopes", type=int, default=100_000)
    parser.add_argument("--callers", type=int, default=500)
    parser.add_argument("--max-batch", type=int, default=StoreSection().max_batch)
    parser.add_argument("--page", type=int, default=1000)
    parser.add_argument("--dir", default=None, help="directory for the database file")
    args = parser.parse_args()
    task.react(run, [args])


if __name__ == "__main__":
    main()
