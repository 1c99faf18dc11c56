# -*- test-case-name: tests.server.test_hashgate -*-
"""A global bound on the memory of password hashes in flight.

Each Argon2id hash holds ``memory_kib`` (64 MiB by default) while it runs on a thread; the
reactor's pool has ten threads, so a burst of registrations or logins could hold 640 MiB
at once (issue 10: 40 registrations took the relay from 58 MB to 713 MB). :class:`HashGate`
is a semaphore counted in KiB: hashes start while the memory in flight stays within
``[auth] hash_memory_mib`` (at most K x ``memory_kib``), the others wait in FIFO order,
each for at most ``hash_queue_timeout`` seconds, at most ``hash_queue_limit`` of them.
One that cannot start in time fails with :class:`~securechat.server.autherrors.Busy`
(``unavailable`` with ``retry_after``): the client retries later, and nothing was done.

Verifications (logins) wait in a queue of their own that goes first: a registration burst
delays other registrations, not the logins of existing users.

It is itself a :data:`~securechat.server.passwords.ThreadRunner`, so the password checker
and registration use it where they used ``deferToThread``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from securechat.config import AuthSection
from securechat.server.autherrors import Busy
from securechat.server.passwords import (
    HashParams,
    ThreadRunner,
    UnsupportedHash,
    hash_memory_kib,
    params_memory_kib,
    verify_password,
)


class _Waiting:
    __slots__ = ("args", "cost", "d", "f", "timer")

    def __init__(self, cost: int, f: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.cost, self.f, self.args = cost, f, args
        self.d: Deferred[Any] = Deferred()
        self.timer: IDelayedCall | None = None


class HashGate:
    """ThreadRunner that admits hashes while their memory fits in ``budget_kib``.

    :param budget_kib: memory of the hashes in flight at most (one larger hash still runs,
        alone).
    :param run_in_thread: where hashes run (``deferToThread``).
    :param clock: for the queue deadline.
    :param default_cost_kib: what a new hash costs (the configured parameters).
    """

    def __init__(
        self,
        budget_kib: int,
        run_in_thread: ThreadRunner,
        clock: IReactorTime,
        default_cost_kib: int,
        queue_timeout: float = 5.0,
        max_queued: int = 64,
    ) -> None:
        self.budget_kib = max(1, budget_kib)
        self._run = run_in_thread
        self._clock = clock
        self._default_cost = default_cost_kib
        self._timeout = queue_timeout
        self._max_queued = max_queued
        self.in_flight_kib = 0
        self.running = 0
        self.peak_running = 0
        #: Waiting verifications (logins) first, then new hashes (registrations).
        self._queues: tuple[deque[_Waiting], deque[_Waiting]] = (deque(), deque())

    @classmethod
    def from_config(
        cls, auth: AuthSection, params: HashParams, run_in_thread: ThreadRunner,
        clock: IReactorTime,
    ) -> HashGate:
        """From ``[auth] hash_memory_mib``, ``hash_queue_timeout``, ``hash_queue_limit``;
        a new hash costs what ``password_hash`` with ``params`` needs."""
        cost = params_memory_kib(auth.password_hash, params)
        return cls(auth.hash_memory_mib * 1024, run_in_thread, clock, cost,
                   auth.hash_queue_timeout, auth.hash_queue_limit)  # fmt: skip

    def __len__(self) -> int:
        """Hashes waiting."""
        return sum(map(len, self._queues))

    def cost_of(self, f: Callable[..., Any], args: tuple[Any, ...]) -> int:
        """Memory a call will hold: a verification costs what its stored hash says."""
        if f is verify_password and args and isinstance(args[0], str):
            try:
                return min(hash_memory_kib(args[0]), self.budget_kib)
            except UnsupportedHash:
                return 0  # refused before any hashing
        return min(self._default_cost, self.budget_kib)

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """ThreadRunner API: run ``f(*args)`` on a thread once its memory fits."""
        cost = self.cost_of(f, args)
        queue = self._queues[0 if f is verify_password else 1]
        if not len(self) and self.in_flight_kib + cost <= self.budget_kib:
            return self._start(cost, f, args)
        if len(queue) >= self._max_queued:
            return fail(Busy(self._timeout))
        waiting = _Waiting(cost, f, args)
        waiting.timer = self._clock.callLater(self._timeout, self._expire, queue, waiting)
        queue.append(waiting)
        return waiting.d

    def _start(self, cost: int, f: Callable[..., Any], args: tuple[Any, ...]) -> Deferred[Any]:
        self.in_flight_kib += cost
        self.running += 1
        self.peak_running = max(self.peak_running, self.running)
        d: Deferred[Any] = self._run(f, *args)

        def done(result: Any) -> Any:
            self.in_flight_kib -= cost
            self.running -= 1
            self._drain()
            return result

        return d.addBoth(done)

    def _drain(self) -> None:
        while True:
            queue = self._queues[0] or self._queues[1]
            if not queue or self.in_flight_kib + queue[0].cost > self.budget_kib:
                return
            waiting = queue.popleft()
            if waiting.timer is not None and waiting.timer.active():
                waiting.timer.cancel()
            self._start(waiting.cost, waiting.f, waiting.args).chainDeferred(waiting.d)

    def _expire(self, queue: deque[_Waiting], waiting: _Waiting) -> None:
        queue.remove(waiting)
        waiting.d.errback(Busy(self._timeout))
