"""Attack tools shared by ``tests/abuse`` (which assert) and ``bench.abuse`` (which measures).

An attack here is what an outsider with an ordinary account (or none) can do on loopback:
a loop of attempts bounded in count *and* time, paced by an interval (load shaping, never
synchronisation: every wait for a result is on a reply or a lost connection). Attacker
connections may come from other loopback source addresses (127.0.0.2, ...) so that
per-address limits see them as the strangers they are.

The daemon's memory and CPU are read from ``/proc/PID`` (:class:`Probe`), so a test can
state a bound and a benchmark can print the figure.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from twisted.internet import defer, task

from bench._common import cpu_seconds, rss_kib
from securechat import wire
from tests.e2e.client import ServerError, WireClient
from tests.robustness.conftest import Running

#: Loopback source addresses an attacker uses; the victim connects from 127.0.0.1.
ATTACKER_ADDRESS = "127.0.0.2"
#: The outcome recorded for an attempt the server answered without an error.
OK = "ok"


@dataclass
class AttackStats:
    """What an attack loop did: attempts, their outcomes (error codes or ``ok``), duration."""

    attempts: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        """Attempts per second."""
        return self.attempts / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """``code: count`` pairs, most frequent first."""
        return ", ".join(f"{code}: {n}" for code, n in self.outcomes.most_common())


@dataclass(frozen=True)
class ProbeResult:
    """Daemon figures over a window: RSS at start, peak and end (KiB), CPU share."""

    start_kib: int
    peak_kib: int
    end_kib: int
    cpu_seconds: float
    seconds: float

    @property
    def cpu_percent(self) -> float:
        """Server CPU as a percentage of one core."""
        return 100.0 * self.cpu_seconds / self.seconds if self.seconds > 0 else 0.0


class Probe:
    """Samples a process's RSS every ``interval`` seconds and its CPU over the window."""

    def __init__(self, reactor: Any, pid: int, interval: float = 0.05) -> None:
        self._reactor = reactor
        self._pid = pid
        self._start_kib = self._peak = rss_kib(pid)
        self._cpu = cpu_seconds(pid)
        self._wall = time.monotonic()
        self._loop = task.LoopingCall(self.sample)
        self._loop.clock = reactor
        self._loop.start(interval, now=False).addErrback(lambda _: None)

    def sample(self) -> int:
        """Read the RSS now, keep the peak, return it in KiB."""
        now = rss_kib(self._pid)
        self._peak = max(self._peak, now)
        return now

    def stop(self) -> ProbeResult:
        """Stop sampling; the figures of the whole window."""
        if self._loop.running:
            self._loop.stop()
        end = self.sample()
        return ProbeResult(
            self._start_kib,
            self._peak,
            end,
            cpu_seconds(self._pid) - self._cpu,
            time.monotonic() - self._wall,
        )


async def rss_below(reactor: Any, pid: int, bound_kib: int, timeout: float = 10.0) -> int:
    """The process's RSS once it is below ``bound_kib`` (checked every 0.1 s), or after
    ``timeout`` seconds, whichever comes first (the caller asserts on the value)."""
    deadline = reactor.seconds() + timeout
    now = rss_kib(pid)
    while now >= bound_kib and reactor.seconds() < deadline:
        await pause(reactor, 0.1)
        now = rss_kib(pid)
    return now


async def pause(reactor: Any, seconds: float) -> None:
    """Let ``seconds`` pass (pacing an attacker, not waiting for a result)."""
    await task.deferLater(reactor, seconds, lambda: None)


async def paced(
    reactor: Any,
    attempt: Callable[[int], Awaitable[str]],
    *,
    interval: float,
    max_count: int,
    max_seconds: float,
    stop: defer.Deferred[None] | None = None,
) -> AttackStats:
    """Call ``attempt(n)`` every ``interval`` seconds until a bound is reached.

    ``attempt`` returns its outcome (an error code or :data:`OK`). Bounded by
    ``max_count`` attempts, ``max_seconds`` and, if given, ``stop`` firing.
    """
    stats = AttackStats()
    start = reactor.seconds()
    while stats.attempts < max_count and reactor.seconds() - start < max_seconds:
        if stop is not None and stop.called:
            break
        began = reactor.seconds()
        stats.outcomes[await attempt(stats.attempts)] += 1
        stats.attempts += 1
        left = interval - (reactor.seconds() - began)
        if left > 0:
            await pause(reactor, left)
    stats.seconds = reactor.seconds() - start
    return stats


async def outcome_of(request: Awaitable[Any]) -> str:
    """The error code a request ended with, or :data:`OK`."""
    try:
        await request
    except ServerError as e:
        return e.code
    return OK


async def timed_login(
    relay: Running, user: str, password: str, source: str | None = None
) -> tuple[float, str, WireClient]:
    """Connect (TLS), say hello and log in as the real client does; (seconds, outcome, client).

    A ``pow-required`` answer is solved and the login sent again, as the client does.
    """
    start = time.perf_counter()
    client = await relay.tls_client(source)
    await client.hello()
    outcome = await outcome_of(login_solving_pow(client, user, password))
    return time.perf_counter() - start, outcome, client


async def login_solving_pow(client: WireClient, user: str, password: str) -> wire.LoggedIn:
    """``login_password``; when the server asks for proof of work, solve it and send the
    login again, exactly as ``securechat.client.network.login_password`` does."""
    msg = wire.LoginPassword(id=0, user=user, password=password)
    reply = await client.request(msg, wire.Message)
    if isinstance(reply, wire.Error):
        raise ServerError(reply)
    if isinstance(reply, wire.PowRequired):
        solution = wire.pow_solve(reply.challenge, user, reply.bits)
        msg = replace(msg, pow_challenge=reply.challenge, pow_solution=solution)
        reply = await client.request(msg, wire.Message)
    if isinstance(reply, wire.Error):
        raise ServerError(reply)
    assert isinstance(reply, wire.LoggedIn), reply
    return reply
