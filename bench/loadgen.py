"""Load generator for the relay benchmarks: many TLS clients in one separate process.

Run by ``bench.relay`` (or by hand)::

    python -m bench.loadgen --target floor|securechat --port P --ca CA.pem --server-pid PID \\
        --scenario throughput|idle|handshake|offline [options]

It prints one line ``RESULT {json}`` at the end.

Why a separate process: the server's CPU time is read from ``/proc/PID/stat`` around the
measured window, and that figure must not include the clients' TLS and CBOR work. The
load generator still shares the machine's two cores with the server, so it also reports
its own CPU time: when it is near 100 % of one core, the figures are client-bound.

Scenarios:

- ``throughput``: N logged-in clients send 256-byte opaque envelopes to random other
  clients. ``--mode closed`` keeps ``--window`` envelopes in flight per client (a slot is
  freed when the envelope is delivered to its recipient); ``--mode rate`` offers a fixed
  total ``--rate`` per second. The payload carries the send time (``perf_counter``, same
  process on both ends), so the receiver measures delivery latency. Against securechat
  each client speaks the real protocol: ``hello``, ``login_password``, ``send`` of one
  envelope per request (``--batch`` > 1 coalesces what one reactor turn frees into one
  ``send``), a cumulative ``ack`` per ``deliver`` frame. Against the floor: its trivial
  frames (see :mod:`bench.floor`).
- ``idle``: N clients connect and log in, then hold still; reports server RSS growth per
  connection and connection+login rate.
- ``handshake`` (securechat): fresh users log in, fetch a peer's prekey bundle, run
  :meth:`securechat.crypto.session.Session.initiate`, send the first envelope, and the peer
  decrypts it with :meth:`Session.respond`; reports completed handshakes per second.
- ``offline`` (securechat): one client sends ``--messages`` envelopes to a user who is
  offline (accepted means durable: every ``send_reply`` comes after the commit), then the
  recipient logs in and drains the queue with cumulative acks.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import cbor2
from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import connectionDone
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

from bench._common import (
    HOST,
    PAYLOAD_BYTES,
    RESULT_PREFIX,
    STAMP,
    cpu_seconds,
    payload,
    percentile,
    raise_nofile,
    rss_kib,
)
from securechat import wire
from securechat.tls import client_tls_options

#: Connection attempts in flight at once: the daemon listens with Twisted's default
#: backlog of 50, and an overflowing SYN queue costs a 1 s retransmission per client.
CONNECT_CONCURRENCY = 40
#: Logins in flight at once (each one is a few store round trips on the server).
LOGIN_CONCURRENCY = 64
REQUEST_TIMEOUT = 60.0
DRAIN_SECONDS = 5.0
BACKEND = "ecdh"


class Stats:
    """What the measured window saw; deliveries outside the window are not counted."""

    def __init__(self) -> None:
        self.measuring = False
        self.delivered = 0
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1


class Load:
    """The traffic pattern, independent of the protocol spoken to the relay.

    Clients call :meth:`delivered` for each envelope they receive; in closed-loop mode that
    frees the sender's slot and the sender sends the next envelope at once.
    """

    def __init__(self, reactor: Any, clients: list[Any], args: argparse.Namespace) -> None:
        self.reactor = reactor
        self.clients = clients
        self.rng = random.Random(args.seed)
        self.mode = args.mode
        self.window = args.window
        self.batch = args.batch
        self.rate = args.rate
        self.running = False
        self.stats = Stats()
        self.sent = 0
        self.received = 0
        self._due: dict[int, int] = {}
        self._flush_call: Any = None
        self._ticker: task.LoopingCall | None = None
        self._rr = 0

    def _peer(self, sender: int) -> int:
        n = len(self.clients)
        peer = self.rng.randrange(n - 1)
        return peer + 1 if peer >= sender else peer

    def send_from(self, sender: int, count: int = 1) -> None:
        """``count`` envelopes from client ``sender`` to random other clients."""
        if count <= 0:
            return
        client = self.clients[sender]
        if self.batch > 1:
            for start in range(0, count, self.batch):
                n = min(self.batch, count - start)
                client.send_many([(self._peer(sender), payload(sender)) for _ in range(n)])
        else:
            for _ in range(count):
                client.send_one(self._peer(sender), payload(sender))
        self.sent += count

    def delivered(self, data: bytes) -> None:
        """One envelope arrived (the slot of its sender is free again)."""
        now = time.perf_counter()
        sent_at, sender = STAMP.unpack_from(data)
        self.received += 1
        st = self.stats
        if st.measuring:
            st.delivered += 1
            st.latencies.append(now - sent_at)
        if self.running and self.mode == "closed":
            self.refill(sender)

    def refill(self, sender: int) -> None:
        """Closed loop: send the freed slot's replacement (coalesced per turn in batch mode)."""
        if self.batch <= 1:
            self.send_from(sender)
            return
        self._due[sender] = self._due.get(sender, 0) + 1
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        due, self._due = self._due, {}
        for sender, count in due.items():
            if self.running:
                self.send_from(sender, count)

    def start(self) -> None:
        """Begin sending: fill every window, or start the fixed-rate ticker."""
        self.running = True
        if self.mode == "closed":
            for i in range(len(self.clients)):
                self.send_from(i, self.window)
        else:
            self._started = time.perf_counter()
            self._ticker = task.LoopingCall(self._tick)
            self._ticker.clock = self.reactor
            self._ticker.start(0.002, now=True)

    def _tick(self) -> None:
        """Fixed rate: send what is due by now, round-robin over the clients."""
        due = int(self.rate * (time.perf_counter() - self._started)) - self.sent
        n = len(self.clients)
        per_client: dict[int, int] = {}
        for _ in range(max(0, due)):
            per_client[self._rr] = per_client.get(self._rr, 0) + 1
            self._rr = (self._rr + 1) % n
        for sender, count in per_client.items():
            self.send_from(sender, count)

    def stop(self) -> None:
        self.running = False
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()


# -- clients ---------------------------------------------------------------------------------
class _Client(Int32StringReceiver):
    """Common parts: a login Deferred and a lost-connection Deferred."""

    MAX_LENGTH = 16 << 20

    def __init__(self, gen: Generator, index: int, name: str) -> None:
        self.gen = gen
        self.index = index
        self.name = name
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Protocol API."""
        self.gen.on_lost(self, reason)
        if not self.lost.called:
            self.lost.callback(None)


class FloorClient(_Client):
    """Speaks :mod:`bench.floor`'s frames."""

    def __init__(self, gen: Generator, index: int, name: str) -> None:
        super().__init__(gen, index, name)
        self.logged_in: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        """Protocol API: the login frame goes out at once (TLS buffers it)."""
        self.sendString(b"login " + self.name.encode())

    def login(self) -> defer.Deferred[None]:
        return self.logged_in

    def stringReceived(self, frame: bytes) -> None:
        """Int32StringReceiver API."""
        if not self.logged_in.called:
            self.logged_in.callback(None)
            return
        self.gen.load.delivered(frame[1 + frame[0] :])

    def send_one(self, peer: int, data: bytes) -> None:
        self.sendString(self.gen.prefixes[peer] + data)

    def send_many(self, items: list[tuple[int, bytes]]) -> None:
        for peer, data in items:
            self.send_one(peer, data)


class ChatClient(_Client):
    """Speaks securechat's wire protocol; the hot path is encoded by hand (same bytes)."""

    def __init__(self, gen: Generator, index: int, name: str) -> None:
        super().__init__(gen, index, name)
        self._ids = itertools.count(1)
        self._pending: dict[int, defer.Deferred[Any]] = {}
        self._mids = itertools.count()
        self.deliveries = 0
        self.last_seq = 0
        self.on_deliver: Callable[[ChatClient, list[dict[str, Any]]], None] | None = None
        self._ack_call: Any = None

    def request(self, msg: wire.Message) -> defer.Deferred[Any]:
        """Send ``msg`` with a fresh id; fires with the decoded reply."""
        rid = next(self._ids)
        d: defer.Deferred[Any] = defer.Deferred()
        self._pending[rid] = d
        self.sendString(wire.encode(replace(msg, id=rid)))  # type: ignore[type-var]
        return d.addTimeout(REQUEST_TIMEOUT, self.gen.reactor)

    async def login(self) -> None:
        await self.request(wire.Hello(id=0, version=wire.PROTOCOL_VERSION, agent="bench"))
        reply = await self.request(
            wire.LoginPassword(id=0, user=self.name, password=self.gen.args.password)
        )
        if not isinstance(reply, wire.LoggedIn):
            raise RuntimeError(f"login of {self.name} failed: {reply}")

    def _mid(self) -> bytes:
        return self.index.to_bytes(6, "big") + next(self._mids).to_bytes(10, "big")

    def send_one(self, peer: int, data: bytes) -> None:
        self.send_many([(peer, data)])

    def send_many(self, items: list[tuple[int, bytes]]) -> None:
        """One ``send`` request; its reply is checked in :meth:`stringReceived`."""
        names = self.gen.names
        rid = next(self._ids)
        self.sendString(
            cbor2.dumps(
                {
                    "type": "send",
                    "id": rid,
                    "items": [
                        {"to": names[peer], "backend": BACKEND, "mid": self._mid(), "payload": data}
                        for peer, data in items
                    ],
                }
            )
        )

    def send_to_name(self, items: list[tuple[str, bytes]]) -> defer.Deferred[Any]:
        """A ``send`` whose reply is awaited (offline and handshake scenarios)."""
        rid = next(self._ids)
        d: defer.Deferred[Any] = defer.Deferred()
        self._pending[rid] = d
        self.sendString(
            cbor2.dumps(
                {
                    "type": "send",
                    "id": rid,
                    "items": [
                        {"to": to, "backend": BACKEND, "mid": self._mid(), "payload": data}
                        for to, data in items
                    ],
                }
            )
        )
        return d.addTimeout(REQUEST_TIMEOUT, self.gen.reactor)

    def stringReceived(self, frame: bytes) -> None:
        """Int32StringReceiver API: deliveries are acked per frame, cumulatively."""
        m = cbor2.loads(frame)
        kind = m["type"]
        if kind == "deliver":
            items = m["items"]
            self.deliveries += len(items)
            self.last_seq = items[-1]["seq"]
            interval = self.gen.args.ack_interval
            if interval <= 0:
                self.sendString(cbor2.dumps({"type": "ack", "up_to": self.last_seq}))
            elif self._ack_call is None:
                self._ack_call = self.gen.reactor.callLater(interval, self._send_ack)
            if self.on_deliver is not None:
                self.on_deliver(self, items)
            else:
                delivered = self.gen.load.delivered
                for item in items:
                    delivered(item["payload"])
            return
        rid = m.get("id")
        waiter = self._pending.pop(rid, None) if rid is not None else None
        if kind == "send_reply":
            for result in m["results"]:
                if result["status"] == "error":
                    self._send_error(result.get("code", "?"))
            if waiter is not None:
                waiter.callback(m)
            return
        if waiter is not None:
            waiter.callback(wire.decode(frame))
        elif kind in ("error", "bye"):
            self.gen.load.stats.error(f"{kind}:{m.get('code')}")

    def _send_ack(self) -> None:
        """Delayed cumulative ack (``--ack-interval``): one per interval, not per frame."""
        self._ack_call = None
        if self.transport is not None and self.connected:
            self.sendString(cbor2.dumps({"type": "ack", "up_to": self.last_seq}))

    def _send_error(self, code: str) -> None:
        load = self.gen.load
        load.stats.error(code)
        if load.running and load.mode == "closed":
            load.refill(self.index)  # the refused envelope's slot is free again


class Generator:
    """Connects, logs in and drives the clients of one scenario."""

    def __init__(self, reactor: Any, args: argparse.Namespace) -> None:
        self.reactor = reactor
        self.args = args
        self.tls = client_tls_options("localhost", args.ca.read_bytes())
        self.client_class = FloorClient if args.target == "floor" else ChatClient
        self.clients: list[Any] = []
        self.names: list[str] = []
        self.prefixes: list[bytes] = []
        self.load = Load(reactor, self.clients, args)
        self.unexpected_losses = 0
        self.closing = False

    def on_lost(self, client: _Client, reason: Failure) -> None:
        if not self.closing:
            self.unexpected_losses += 1

    async def connect_one(self, index: int, name: str) -> Any:
        tcp = TCP4ClientEndpoint(self.reactor, HOST, self.args.port, timeout=30)
        proto = self.client_class(self, index, name)
        await connectProtocol(wrapClientTLS(self.tls, tcp), proto)
        return proto

    async def connect_and_login(self, names: list[str]) -> float:
        """Connect and log in everyone (bounded concurrency); returns the seconds it took."""
        self.names = names
        self.prefixes = [bytes([len(n)]) + n.encode() for n in names]
        self.clients[:] = [None] * len(names)
        connect_sem = defer.DeferredSemaphore(CONNECT_CONCURRENCY)
        login_sem = defer.DeferredSemaphore(LOGIN_CONCURRENCY)

        async def one(i: int) -> None:
            client = await connect_sem.run(
                lambda: defer.ensureDeferred(self.connect_one(i, names[i]))
            )
            self.clients[i] = client
            await login_sem.run(lambda: defer.ensureDeferred(client.login()))

        start = time.perf_counter()
        await defer.gatherResults(
            [defer.ensureDeferred(one(i)) for i in range(len(names))], consumeErrors=True
        )
        return time.perf_counter() - start

    async def close_all(self) -> None:
        self.closing = True
        for c in self.clients:
            if c is None or c.transport is None:
                continue
            pending_ack = getattr(c, "_ack_call", None)
            if pending_ack is not None and pending_ack.active():
                pending_ack.cancel()
                c._send_ack()  # leave nothing un-acknowledged in the store
            c.transport.loseConnection()
        waits = [c.lost for c in self.clients if c is not None]
        await defer.DeferredList(waits).addTimeout(15, self.reactor)


def _window_start(pid: int) -> tuple[float, float, float]:
    return time.perf_counter(), cpu_seconds(pid), _own_cpu()


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


async def _sleep(reactor: Any, seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


# -- scenarios -------------------------------------------------------------------------------
async def throughput(reactor: Any, args: argparse.Namespace) -> dict[str, Any]:
    gen = Generator(reactor, args)
    names = [f"{args.prefix}{i}" for i in range(args.clients)]
    setup = await gen.connect_and_login(names)
    await _sleep(reactor, 0.5)  # let login-time pushes (presence, prekeys_low) settle
    load = gen.load
    load.start()
    await _sleep(reactor, args.warmup)
    t0, s0, c0 = _window_start(args.server_pid)
    load.stats.measuring = True
    await _sleep(reactor, args.duration)
    load.stats.measuring = False
    t1, s1, c1 = _window_start(args.server_pid)
    load.stop()
    deadline = time.perf_counter() + DRAIN_SECONDS
    while load.received < load.sent and time.perf_counter() < deadline:
        await _sleep(reactor, 0.05)
    await gen.close_all()
    st = load.stats
    elapsed = t1 - t0
    lat = sorted(st.latencies)
    return {
        "scenario": "throughput",
        "target": args.target,
        "clients": args.clients,
        "mode": args.mode,
        "window": args.window,
        "batch": args.batch,
        "ack_interval": args.ack_interval,
        "rate_offered": args.rate if args.mode == "rate" else None,
        "setup_seconds": setup,
        "seconds": elapsed,
        "delivered": st.delivered,
        "msgs_per_s": st.delivered / elapsed,
        "p50_ms": percentile(lat, 50) * 1e3,
        "p99_ms": percentile(lat, 99) * 1e3,
        "server_cpu_s": s1 - s0,
        "server_cpu_us_per_msg": (s1 - s0) / max(1, st.delivered) * 1e6,
        "server_cpu_util": (s1 - s0) / elapsed,
        "loadgen_cpu_util": (c1 - c0) / elapsed,
        "sent": load.sent,
        "received": load.received,
        "lost_after_drain": load.sent - load.received,
        "errors": st.errors,
        "unexpected_disconnects": gen.unexpected_losses,
    }


async def idle(reactor: Any, args: argparse.Namespace) -> dict[str, Any]:
    gen = Generator(reactor, args)
    names = [f"{args.prefix}{i}" for i in range(args.clients)]
    rss0 = rss_kib(args.server_pid)
    cpu0 = cpu_seconds(args.server_pid)
    setup = await gen.connect_and_login(names)
    cpu1 = cpu_seconds(args.server_pid)
    await _sleep(reactor, args.settle)
    rss1 = rss_kib(args.server_pid)
    alive = sum(1 for c in gen.clients if c is not None and not c.lost.called)
    await gen.close_all()
    return {
        "scenario": "idle",
        "target": args.target,
        "clients": args.clients,
        "held": alive,
        "setup_seconds": setup,
        "logins_per_s": args.clients / setup,
        "server_cpu_us_per_login": (cpu1 - cpu0) / args.clients * 1e6,
        "rss_before_kib": rss0,
        "rss_after_kib": rss1,
        "rss_kib_per_conn": (rss1 - rss0) / args.clients,
        "unexpected_disconnects": gen.unexpected_losses,
    }


async def offline(reactor: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Enqueue to an offline user, then let them drain the queue at login."""
    gen = Generator(reactor, args)
    sender_name, recipient_name = f"{args.prefix}a", f"{args.prefix}b"
    sender = await gen.connect_one(0, sender_name)
    await sender.login()
    total, batch, inflight = args.messages, args.batch, args.window
    body = b"\xa5" * PAYLOAD_BYTES
    statuses: dict[str, int] = {}
    sent = [0]
    cpu0 = cpu_seconds(args.server_pid)
    start = time.perf_counter()

    async def worker() -> None:
        while sent[0] < total:
            n = min(batch, total - sent[0])
            sent[0] += n
            reply = await sender.send_to_name([(recipient_name, body)] * n)
            for r in reply["results"]:
                statuses[r["status"]] = statuses.get(r["status"], 0) + 1

    await defer.gatherResults([defer.ensureDeferred(worker()) for _ in range(inflight)])
    enqueue_s = time.perf_counter() - start
    cpu1 = cpu_seconds(args.server_pid)
    recipient = await gen.connect_one(1, recipient_name)
    got = [0]
    done: defer.Deferred[None] = defer.Deferred()
    seqs: set[int] = set()

    def on_deliver(client: ChatClient, items: list[dict[str, Any]]) -> None:
        for item in items:
            seqs.add(item["seq"])
        got[0] += len(items)
        if got[0] >= statuses.get("queued", 0) and not done.called:
            done.callback(None)

    recipient.on_deliver = on_deliver
    await recipient.login()
    drain_start = time.perf_counter()
    await done.addTimeout(120, reactor)
    drain_s = time.perf_counter() - drain_start
    cpu2 = cpu_seconds(args.server_pid)
    await _sleep(reactor, 0.5)  # the last acks reach the server before we leave
    await gen.close_all()
    queued = statuses.get("queued", 0)
    return {
        "scenario": "offline",
        "messages": total,
        "statuses": statuses,
        "enqueue_seconds": enqueue_s,
        "enqueue_per_s": queued / enqueue_s,
        "enqueue_server_cpu_us_per_msg": (cpu1 - cpu0) / max(1, queued) * 1e6,
        "drain_seconds": drain_s,
        "drain_per_s": got[0] / drain_s,
        "drain_server_cpu_us_per_msg": (cpu2 - cpu1) / max(1, got[0]) * 1e6,
        "delivered": got[0],
        "distinct_seqs": len(seqs),
        "batch": batch,
        "sends_in_flight": inflight,
    }


async def handshake(reactor: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Log in fresh users and set up a first end-to-end session each, per backend."""
    from securechat.client.sessions import kem_for
    from securechat.crypto import envelope as env
    from securechat.crypto.backends import spec
    from securechat.crypto.identity import IdentityKeyPair
    from securechat.crypto.kem import KeyPair, get_kem
    from securechat.crypto.prekeys import (
        DEFAULT_LIFETIME,
        SignedPrekey,
        generate_one_time_prekeys,
        generate_signed_prekey,
    )
    from securechat.crypto.session import Session

    backend = args.backend
    pairs = args.pairs
    gen = Generator(reactor, args)
    kem = get_kem(backend, spec(backend).client_params)
    # Untimed preparation: responders' keys (RSA key generation alone is ~0.2 s per key).
    prep_start = time.perf_counter()
    r_identity = IdentityKeyPair.generate()
    ikem = kem.generate_keypair()
    spk, spk_pair = generate_signed_prekey(
        r_identity, kem, 1, time.time(), DEFAULT_LIFETIME, ikem.public
    )
    otks = generate_one_time_prekeys(kem, 2, pairs)
    otk_pairs: dict[int, KeyPair] = {otk.key_id: pair for otk, pair in otks}
    responders: list[ChatClient] = []
    for i in range(pairs):
        r = await gen.connect_one(i, f"{args.prefix}r{i}")
        await r.login()
        await r.request(
            wire.PublishPrekeys(
                id=0,
                backend=backend,
                one_time=(wire.OneTimePrekey(otks[i][0].key_id, otks[i][0].to_bytes()),),
                signed_prekey=spk.to_bytes(),
                identity_key=r_identity.public_bytes(),
            )
        )
        responders.append(r)
    prep_s = time.perf_counter() - prep_start
    done: dict[str, defer.Deferred[None]] = {}
    failures: list[str] = []

    def find_signed(key_id: int) -> tuple[SignedPrekey, KeyPair] | None:
        return (spk, spk_pair) if key_id == spk.key_id else None

    def on_deliver(client: ChatClient, items: list[dict[str, Any]]) -> None:
        for item in items:
            try:
                Session.respond(
                    item["payload"],
                    kem=kem_for(env.backend_id(kem)),
                    identity=r_identity,
                    identity_kem=ikem,
                    local_user=client.name,
                    find_signed_prekey=find_signed,
                    find_one_time_prekey=otk_pairs.get,
                    replayed=lambda spk_id, th: False,
                )
            except Exception as e:  # reported, not raised: one failure must not hang the run
                failures.append(f"{type(e).__name__}: {e}")
            d = done.get(item["from"])
            if d is not None and not d.called:
                d.callback(None)

    for r in responders:
        r.on_deliver = on_deliver

    async def one(i: int) -> None:
        name = f"{args.prefix}i{i}"
        done[name] = defer.Deferred()
        client = await gen.connect_one(pairs + i, name)
        await client.login()
        bundle = await client.request(
            wire.FetchBundle(id=0, user=f"{args.prefix}r{i}", backend=backend)
        )
        record = SignedPrekey.from_bytes(bundle.signed_prekey)
        session = Session.initiate(
            kem=kem_for(record.backend),
            identity=IdentityKeyPair.generate(),
            local_user=name,
            peer_user=bundle.user,
            peer_identity=bundle.identity_key,
            signed_prekey=bundle.signed_prekey,
            one_time_prekey=bundle.one_time_key,
        )
        envelope = session.encrypt(b"hello", message_id=os.urandom(16))
        reply = await client.send_to_name([(bundle.user, envelope)])
        if reply["results"][0]["status"] == "error":
            raise RuntimeError(f"first envelope refused: {reply['results'][0]}")
        await done[name].addTimeout(REQUEST_TIMEOUT, reactor)
        client.transport.loseConnection()

    sem = defer.DeferredSemaphore(args.concurrency)
    cpu0 = cpu_seconds(args.server_pid)
    own0 = _own_cpu()
    start = time.perf_counter()
    await defer.gatherResults(
        [sem.run(lambda i=i: defer.ensureDeferred(one(i))) for i in range(pairs)],
        consumeErrors=True,
    )
    elapsed = time.perf_counter() - start
    cpu1 = cpu_seconds(args.server_pid)
    own1 = _own_cpu()
    await gen.close_all()
    return {
        "scenario": "handshake",
        "backend": backend,
        "kem": env.backend_id(kem),
        "handshakes": pairs,
        "prep_seconds": prep_s,
        "seconds": elapsed,
        "per_s": pairs / elapsed,
        "server_cpu_ms_per_handshake": (cpu1 - cpu0) / pairs * 1e3,
        "loadgen_cpu_ms_per_handshake": (own1 - own0) / pairs * 1e3,
        "respond_failures": failures[:5],
    }


SCENARIOS = {
    "throughput": throughput,
    "idle": idle,
    "offline": offline,
    "handshake": handshake,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.loadgen",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--target", choices=("floor", "securechat"), required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca", type=lambda s: __import__("pathlib").Path(s), required=True)
    p.add_argument("--server-pid", type=int, required=True, help="read CPU and RSS of this pid")
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="throughput")
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--prefix", default="u", help="user names are PREFIX0, PREFIX1, ...")
    p.add_argument("--password", default="bench-password")
    p.add_argument("--mode", choices=("closed", "rate"), default="closed")
    p.add_argument("--window", type=int, default=8, help="closed loop: in flight per client")
    p.add_argument("--rate", type=float, default=2000.0, help="rate mode: envelopes/s in all")
    p.add_argument("--batch", type=int, default=1, help="envelopes per send at most")
    p.add_argument(
        "--ack-interval",
        type=float,
        default=0.0,
        help="securechat: ack at most once per this many seconds (0: per deliver frame)",
    )
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--settle", type=float, default=2.0, help="idle: seconds before reading RSS")
    p.add_argument("--messages", type=int, default=20000, help="offline: envelopes to queue")
    p.add_argument("--backend", default="ecdh", help="handshake: ecdh, dh or rsa")
    p.add_argument("--pairs", type=int, default=50, help="handshake: how many to set up")
    p.add_argument("--concurrency", type=int, default=8, help="handshake: in flight")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--time-limit", type=float, default=300.0, help="abort after this long")
    args = p.parse_args(argv)
    if args.scenario == "throughput" and args.clients < 2:
        p.error("throughput needs at least 2 clients")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile(args.clients * 2 + 256)
    from twisted.internet import reactor

    outcome: dict[str, Any] = {}

    async def run() -> None:
        try:
            outcome["result"] = await SCENARIOS[args.scenario](reactor, args)
        except Exception as e:
            outcome["error"] = f"{type(e).__name__}: {e}"
            import traceback

            traceback.print_exc()
        finally:
            reactor.stop()  # type: ignore[attr-defined]

    def give_up() -> None:
        outcome["error"] = f"time limit of {args.time_limit} s reached"
        if reactor.running:  # type: ignore[attr-defined]
            reactor.stop()  # type: ignore[attr-defined]

    reactor.callWhenRunning(lambda: defer.ensureDeferred(run()))  # type: ignore[attr-defined]
    reactor.callLater(args.time_limit, give_up)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    if "result" in outcome:
        print(RESULT_PREFIX + json.dumps(outcome["result"]), flush=True)
        return 0
    print(RESULT_PREFIX + json.dumps({"error": outcome.get("error", "unknown")}), flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
