"""Run the real ``securechat-client`` as a child process from a test.

The client is started with ``reactor.spawnProcess`` in ``--json`` mode: a test writes
console lines to its stdin and waits for JSON events on its stdout (one object per line),
each wait with a timeout, never a sleep. Closing stdin is the client's "quit after pending
sends are accepted", so :meth:`ClientProcess.finish` is how a test ends a client cleanly.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

#: Generous: a client start pays imports, the keystore's Argon2id and (rsa) key generation.
EVENT_TIMEOUT = 30.0
EXIT_TIMEOUT = 30.0

Event = dict[str, Any]


def client_command() -> list[str]:
    """``securechat-client`` of this interpreter: the console script, else an equivalent ``-c``."""
    script = Path(sys.executable).with_name("securechat-client")
    if script.exists():
        return [sys.executable, str(script)]
    return [sys.executable, "-c", "from securechat.client.main import main; main()"]


@dataclass(frozen=True)
class ClientExit:
    """How the client ended: exit ``code`` (or the ``signal``), and everything it wrote."""

    code: int | None
    signal: int | None
    stdout: str
    stderr: str

    @property
    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


class ClientProcess(ProcessProtocol):
    """One running client; events arrive in :attr:`events` in order."""

    def __init__(self, reactor: Any, name: str) -> None:
        self.reactor = reactor
        self.name = name
        self.events: list[Event] = []
        self.raw_stdout = bytearray()
        self.stderr = bytearray()
        self.exit: ClientExit | None = None
        self._buffer = b""
        self._cursor = 0  # events before this index were consumed by expect()
        self._waiters: list[defer.Deferred[None]] = []
        self._exit_waiters: list[defer.Deferred[ClientExit]] = []

    # -- ProcessProtocol API -----------------------------------------------------------
    def outReceived(self, data: bytes) -> None:
        self.raw_stdout += data
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if line.strip():
                self.events.append(_parse(line))
        self._wake()

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason: Failure) -> None:
        value: Any = reason.value
        code = value.exitCode if reason.check(ProcessDone, ProcessTerminated) else None
        sig = value.signal if reason.check(ProcessTerminated) else None
        self.exit = ClientExit(
            code, sig, self.raw_stdout.decode("utf-8", "replace"),
            self.stderr.decode("utf-8", "replace"),
        )  # fmt: skip
        self._wake()
        waiters, self._exit_waiters = self._exit_waiters, []
        for d in waiters:
            if not d.called:
                d.callback(self.exit)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if not d.called:  # a timed-out wait was cancelled
                d.callback(None)

    # -- driving the client ------------------------------------------------------------
    def send(self, *lines: str) -> None:
        """Type ``lines`` on the client's console."""
        assert self.transport is not None and self.exit is None, f"{self.name} is not running"
        self.transport.write("".join(line + "\n" for line in lines).encode("utf-8"))

    async def wait_for(
        self, match: Callable[[Event], bool], what: str, timeout: float = EVENT_TIMEOUT
    ) -> Event:
        """The first unconsumed event that ``match`` accepts (consuming it), waiting for it."""
        deadline = self.reactor.seconds() + timeout
        while True:
            for i in range(self._cursor, len(self.events)):
                if match(self.events[i]):
                    event = self.events.pop(i)
                    self.events.insert(self._cursor, event)
                    self._cursor += 1
                    return event
            if self.exit is not None:
                raise AssertionError(f"{self.name} exited while waiting for {what}: {self.exit}")
            left = deadline - self.reactor.seconds()
            if left <= 0:
                raise AssertionError(f"{self.name}: no {what} within {timeout}s; {self.describe()}")
            d: defer.Deferred[None] = defer.Deferred()
            self._waiters.append(d)
            try:
                await d.addTimeout(left, self.reactor)
            except defer.TimeoutError:
                continue  # one more scan, then the deadline check fails with details

    async def expect(self, type_: str, timeout: float = EVENT_TIMEOUT, **fields: Any) -> Event:
        """Wait for an event of ``type_`` whose fields include ``fields`` (by equality)."""

        def match(e: Event) -> bool:
            return e.get("type") == type_ and all(e.get(k) == v for k, v in fields.items())

        return await self.wait_for(match, f"{type_} event with {fields}", timeout)

    async def expect_text(self, type_: str, part: str, timeout: float = EVENT_TIMEOUT) -> Event:
        """Wait for an event of ``type_`` whose ``text`` contains ``part``."""

        def match(e: Event) -> bool:
            return e.get("type") == type_ and part in str(e.get("text", ""))

        return await self.wait_for(match, f"{type_} event containing {part!r}", timeout)

    def all(self, type_: str, **fields: Any) -> list[Event]:
        """Every event so far (consumed or not) of ``type_`` with ``fields``."""
        return [
            e for e in self.events
            if e.get("type") == type_ and all(e.get(k) == v for k, v in fields.items())
        ]  # fmt: skip

    async def logged_in(self) -> ClientProcess:
        await self.expect("status", state="connected")
        return self

    async def wait_exit(self, timeout: float = EXIT_TIMEOUT) -> ClientExit:
        if self.exit is not None:
            return self.exit
        d: defer.Deferred[ClientExit] = defer.Deferred()
        self._exit_waiters.append(d)
        try:
            return await d.addTimeout(timeout, self.reactor)
        except defer.TimeoutError:
            self.kill()
            raise AssertionError(f"{self.name} did not exit within {timeout}s; "
                                 f"{self.describe()}") from None  # fmt: skip

    async def finish(self, timeout: float = EXIT_TIMEOUT) -> ClientExit:
        """End of stdin: the client quits once pending sends are accepted; must exit 0."""
        if self.exit is None and self.transport is not None:
            self.transport.closeStdin()
        result = await self.wait_exit(timeout)
        assert result.code == 0, f"{self.name} exited badly: {result}"
        return result

    def kill(self) -> None:
        if self.exit is None and self.transport is not None:
            self.transport.signalProcess(signal.SIGKILL)

    def describe(self) -> str:
        return f"events: {self.events!r}\nstderr: {self.stderr.decode('utf-8', 'replace')}"


def _parse(line: bytes) -> Event:
    try:
        event = json.loads(line)
    except ValueError:
        return {"type": "_not_json", "line": line.decode("utf-8", "replace")}
    return event if isinstance(event, dict) else {"type": "_not_json", "line": repr(event)}


def client_argv(
    *,
    port: int,
    ca: Path,
    user: str,
    password_file: Path,
    home: Path,
    register: bool = False,
    backend: str | None = None,
    host: str = "127.0.0.1",
    extra: tuple[str, ...] = (),
) -> list[str]:
    argv = [
        *client_command(), "--server", f"{host}:{port}", "--ca", str(ca), "--user", user,
        "--password-file", str(password_file), "--home", str(home), "--json",
    ]  # fmt: skip
    if register:
        argv.append("--register")
    if backend is not None:
        argv += ["--backend", backend]
    return [*argv, *extra]


def spawn_client(reactor: Any, name: str, argv: list[str], cwd: Path) -> ClientProcess:
    """Start one client process running ``argv``."""
    proto = ClientProcess(reactor, name)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    reactor.spawnProcess(proto, argv[0], argv, env=env, path=str(cwd))
    return proto
