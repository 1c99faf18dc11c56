"""Run the real relay (``twistd -n securechat``) as a child process from a test.

The daemon is started with ``reactor.spawnProcess`` and is ready when it logs its
structured ``listening on HOST:PORT`` line, so tests wait on that line (never sleep) and
learn the port the kernel chose for ``port = 0``. Every wait has a timeout, so a daemon
that hangs fails the test instead of the whole run.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

#: The readiness line written by :class:`securechat.tap.RelayService`.
LISTENING = re.compile(rb"listening on (?P<host>\[[^\]]+\]|[^\s:]+):(?P<port>\d+)")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def twistd_command() -> list[str]:
    """The ``twistd`` of this interpreter: the script next to it, else an equivalent ``-c``."""
    script = Path(sys.executable).with_name("twistd")
    if script.exists():
        return [sys.executable, str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def daemon_argv(config: Path) -> list[str]:
    """Foreground, no pid file, log to stdout: everything a test needs to see."""
    return [
        *twistd_command(),
        "-n",
        "--pidfile=",
        "--logfile=-",
        "securechat",
        "--config",
        str(config),
    ]


class DaemonExited(Exception):
    """The daemon ended before it was listening; ``output`` says why."""

    def __init__(self, code: int | None, signal_number: int | None, output: str) -> None:
        super().__init__(f"daemon exited (code {code}, signal {signal_number}):\n{output}")
        self.code = code
        self.signal = signal_number
        self.output = output


@dataclass(frozen=True)
class Exit:
    """How the process ended: exactly one of ``code`` and ``signal`` is set."""

    code: int | None
    signal: int | None
    output: str


class _Watcher(ProcessProtocol):
    """Collects stdout/stderr and hands out fresh Deferreds for "listening" and "ended".

    Fresh Deferreds per wait mean a timeout (which cancels one) never breaks a later wait.
    """

    def __init__(self) -> None:
        self.output = bytearray()
        self.port: int | None = None
        self.exit: Exit | None = None
        self._port_waiters: list[defer.Deferred[int]] = []
        self._exit_waiters: list[defer.Deferred[Exit]] = []

    def _received(self, data: bytes) -> None:
        self.output += data
        if self.port is None:
            match = LISTENING.search(self.output)
            if match:
                self.port = int(match["port"])
                for d in self._port_waiters:
                    if not d.called:
                        d.callback(self.port)

    outReceived = _received
    errReceived = _received

    def processEnded(self, reason: Failure) -> None:
        value: Any = reason.value
        code = value.exitCode if reason.check(ProcessDone, ProcessTerminated) else None
        sig = value.signal if reason.check(ProcessTerminated) else None
        self.exit = Exit(code, sig, self.text())
        for d in self._port_waiters:
            if not d.called:
                d.errback(DaemonExited(code, sig, self.exit.output))
        for e in self._exit_waiters:
            if not e.called:
                e.callback(self.exit)

    def when_listening(self) -> defer.Deferred[int]:
        if self.port is not None:
            return defer.succeed(self.port)
        if self.exit is not None:
            return defer.fail(DaemonExited(self.exit.code, self.exit.signal, self.exit.output))
        d: defer.Deferred[int] = defer.Deferred()
        self._port_waiters.append(d)
        return d

    def when_ended(self) -> defer.Deferred[Exit]:
        if self.exit is not None:
            return defer.succeed(self.exit)
        d: defer.Deferred[Exit] = defer.Deferred()
        self._exit_waiters.append(d)
        return d

    def text(self) -> str:
        return self.output.decode("utf-8", "replace")


class Daemon:
    """One running relay process."""

    def __init__(self, reactor: Any, config: Path) -> None:
        self._reactor = reactor
        self.config = config
        self._watcher = _Watcher()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        argv = daemon_argv(config)
        self._process = reactor.spawnProcess(
            self._watcher, argv[0], argv, env=env, path=str(config.parent)
        )

    @property
    def output(self) -> str:
        """Everything the daemon wrote so far (stdout and stderr, interleaved)."""
        return self._watcher.text()

    @property
    def port(self) -> int | None:
        return self._watcher.port

    @property
    def pid(self) -> int:
        """The daemon's process id (its memory and CPU are read from ``/proc/PID``)."""
        pid: int = self._process.pid
        return pid

    @property
    def running(self) -> bool:
        return self._watcher.exit is None

    async def wait_listening(self, timeout: float = START_TIMEOUT) -> int:
        """The bound port, once the readiness line appears; DaemonExited if it dies first."""
        return await self._watcher.when_listening().addTimeout(timeout, self._reactor)

    async def wait_exit(self, timeout: float = START_TIMEOUT) -> Exit:
        """Wait for the process to end (on its own, or after a signal)."""
        return await self._watcher.when_ended().addTimeout(timeout, self._reactor)

    async def _signal(self, number: int, timeout: float) -> Exit:
        if self.running:
            self._process.signalProcess(number)
        return await self.wait_exit(timeout)

    async def stop(self, timeout: float = STOP_TIMEOUT) -> Exit:
        """SIGTERM, as an init system would, then wait for the graceful shutdown."""
        return await self._signal(signal.SIGTERM, timeout)

    async def kill(self, timeout: float = STOP_TIMEOUT) -> Exit:
        """SIGKILL: no shutdown code runs (crash and durability tests)."""
        return await self._signal(signal.SIGKILL, timeout)


async def start_daemon(reactor: Any, config: Path, timeout: float = START_TIMEOUT) -> Daemon:
    """Spawn the relay and return it once it listens; kill it if it never gets there."""
    daemon = Daemon(reactor, config)
    try:
        await daemon.wait_listening(timeout)
    except defer.TimeoutError:
        await daemon.kill()
        raise AssertionError(f"daemon did not listen within {timeout}s:\n{daemon.output}") from None
    return daemon


async def run_to_exit(reactor: Any, config: Path, timeout: float = START_TIMEOUT) -> Exit:
    """Spawn the relay and wait for it to exit (it is expected to fail at start-up)."""
    daemon = Daemon(reactor, config)
    try:
        return await daemon.wait_exit(timeout)
    except defer.TimeoutError:
        await daemon.kill()
        raise AssertionError(f"daemon kept running for {timeout}s:\n{daemon.output}") from None
