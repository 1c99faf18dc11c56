"""What the metrics hooks cost on the relay's hot path, per envelope.

Run with ``python -m bench.metrics_overhead [--envelopes N] [--batch B] [--rounds R]``.

The relay's whole in-process path (policy, ``send``, the store's commit, routing, the
coalesced ``deliver`` push, the ack) runs over the in-memory store with a fake connection,
once with metrics off (the no-op sink, the default) and once with
:class:`~securechat.server.metrics.RelayMetrics` as ``[metrics] listen`` installs it. The
sink calls themselves (what the hooks add: the relay's and the SQLite store's, per batch)
are timed in isolation too, the steadier figure on a shared machine. Sockets, TLS and
fsync are left out on purpose: they only dilute the difference, which is what this
reports. The best of ``--rounds`` interleaved rounds counts.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from securechat import wire
from securechat.config import config_from_mapping
from securechat.server.metrics import NULL_METRICS, IMetrics, RelayMetrics
from securechat.server.protocol import build_factory
from securechat.server.store.interface import QueuedEnvelope
from securechat.server.store.memory import MemoryStore


class Sink:
    """A connection that swallows frames (ISessionSink)."""

    def __init__(self) -> None:
        self.delivered = 0
        self.last_seq = 0

    def push(self, message: wire.Message) -> None:
        if isinstance(message, wire.Deliver):
            self.delivered += len(message.items)
            self.last_seq = message.items[-1].seq

    def close(self, code: str, reason: str) -> None:
        pass

    def when_writable(self) -> Deferred[None]:
        return succeed(None)


def relay_path(metrics: IMetrics, envelopes: int, batch: int) -> float:
    """Seconds per envelope for send -> commit -> deliver -> ack, in memory."""
    config = config_from_mapping(
        {"policy": {"send_rate": 1e12, "send_burst": 10**12}, "store": {"queue_limit": 10**9}},
        Path("/nonexistent"), "bench.toml",
    )  # fmt: skip
    clock = Clock()
    store = MemoryStore(config.store, clock=clock)
    factory = build_factory(config, store, clock, metrics=metrics)
    relay = factory.relay
    for name in ("alice", "bob"):
        store.add_user(name, "user", None, None)
    sinks = {name: Sink() for name in ("alice", "bob")}
    sessions: dict[str, Any] = {}
    for name, sink in sinks.items():
        d = Deferred.fromCoroutine(relay.login(name, "user", sink))
        sessions[name] = d.result  # MemoryStore answers at once
        relay.start(sessions[name])
    clock.advance(0)
    payload = os.urandom(256)
    batches = [
        tuple(wire.SendItem("bob", "ecdh", os.urandom(16), payload) for _ in range(batch))
        for _ in range(max(1, envelopes // batch))
    ]
    alice, bob = sessions["alice"], sessions["bob"]
    start = time.perf_counter()
    for items in batches:
        relay.send(alice, items)
        clock.advance(0)  # the coalesced deliver flush
        relay.ack(bob, sinks["bob"].last_seq)
    elapsed = time.perf_counter() - start
    assert sinks["bob"].delivered == len(batches) * batch
    return elapsed / (len(batches) * batch)


def hooks(metrics: IMetrics, batches: int, batch: int) -> float:
    """Seconds per envelope for exactly the sink calls one batch causes on the hot path:
    ``accepted`` (relay), ``delivered`` (relay flush), ``acked`` and ``group_commit``
    (SQLite store, once per transaction)."""
    clock = Clock()
    items = [QueuedEnvelope(i, "bob", "alice", "ecdh", b"m" * 16, None, 0.0, b"p")
             for i in range(batch)]  # fmt: skip
    start = time.perf_counter()
    for _ in range(batches):
        metrics.accepted(batch)
        clock.advance(0.001)
        metrics.delivered(items)
        metrics.acked(batch)
        metrics.group_commit(batch, 0.002)
    return (time.perf_counter() - start) / (batches * batch)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envelopes", type=int, default=40_000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    for batch in sorted({1, args.batch}):
        off, on, null_hooks, on_hooks = [], [], [], []
        for _ in range(args.rounds):
            off.append(relay_path(NULL_METRICS, args.envelopes, batch))
            on.append(relay_path(RelayMetrics(Clock()), args.envelopes, batch))
            null_hooks.append(hooks(NULL_METRICS, args.envelopes // batch, batch))
            on_hooks.append(hooks(RelayMetrics(Clock()), args.envelopes // batch, batch))
        base = min(off)
        extra = min(on_hooks) - min(null_hooks)
        print(f"batch {batch}: reference relay path, metrics off: {base * 1e6:.2f} us/envelope "
              f"(metrics on, same path: {min(on) * 1e6:.2f}; noisy on a shared machine)")
        print(f"  sink calls per envelope: off {min(null_hooks) * 1e9:.0f} ns, on "
              f"{min(on_hooks) * 1e9:.0f} ns; overhead of metrics on: {extra * 1e9:.0f} ns "
              f"per envelope = {100 * extra / base:.1f} % of the in-memory path "
              f"(less of the real one, which adds TLS, framing and fsync)")  # fmt: skip


if __name__ == "__main__":
    main()
