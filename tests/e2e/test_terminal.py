"""End-to-end: the human console under a pseudo-terminal, as a person would use it.

alice's real ``securechat-client`` runs on a pty (so it picks the ``twisted.conch`` line
editor); what it writes is fed to Twisted's own terminal emulator
(``insults.ClientProtocol`` over a ``helper.TerminalBuffer``) to read the screen as the
user sees it. bob is a ``--json`` client. Every wait is on output, never a sleep.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.conch.insults import helper, insults
from twisted.internet import defer
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from tests.e2e.clientproc import client_command
from tests.e2e.test_client_e2e import HASH, Relay, _block, _reactor

pytest.importorskip("securechat.server.protocol")
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    r = Relay(
        tmp_path_factory.mktemp("relay-tty"), {"auth": HASH, "crypto": {"backends": ["ecdh"]}}
    )
    _block(r.start())
    yield r
    if r.daemon is not None:
        _block(r.stop())


class PtyClient(ProcessProtocol):
    """A client on a pty: keys in, raw terminal output collected."""

    def __init__(self) -> None:
        self.output = bytearray()
        self.code: int | None = None
        self.ended = False
        self._waiters: list[defer.Deferred[None]] = []

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.output += data
        self._wake()

    def processEnded(self, reason: Failure) -> None:
        value: Any = reason.value
        self.code = value.exitCode if reason.check(ProcessDone, ProcessTerminated) else None
        self.ended = True
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if not d.called:
                d.callback(None)

    def type(self, keys: bytes) -> None:
        assert self.transport is not None
        self.transport.write(keys)

    async def wait_for(self, text: bytes, after: int = 0) -> int:
        """Wait until ``text`` appears in the output past offset ``after``; its end offset."""
        deadline = _reactor().seconds() + TIMEOUT
        while True:
            at = self.output.find(text, after)
            if at >= 0:
                return at + len(text)
            if self.ended:
                raise AssertionError(f"client ended before {text!r}: {bytes(self.output)!r}")
            left = deadline - _reactor().seconds()
            if left <= 0:
                raise AssertionError(f"no {text!r} within {TIMEOUT}s: {bytes(self.output)!r}")
            d: defer.Deferred[None] = defer.Deferred()
            self._waiters.append(d)
            try:
                await d.addTimeout(left, _reactor())
            except defer.TimeoutError:
                continue

    async def wait_exit(self) -> int | None:
        while not self.ended:
            d: defer.Deferred[None] = defer.Deferred()
            self._waiters.append(d)
            await d.addTimeout(TIMEOUT, _reactor())
        return self.code

    def screen(self) -> tuple[list[str], tuple[int, int]]:
        """The screen's lines (trailing blanks dropped) and the cursor, as a terminal shows them."""
        buffer = helper.TerminalBuffer()
        emulator = insults.ClientProtocol(lambda: buffer)
        emulator.makeConnection(_NullTransport())
        emulator.dataReceived(bytes(self.output))
        lines = bytes(buffer).decode("utf-8", "replace").splitlines()
        return [line.rstrip() for line in lines], buffer.reportCursorPosition()


class _NullTransport:
    def write(self, data: bytes) -> None:
        """The emulator's answers (cursor reports) go nowhere."""


@pytest_twisted.ensureDeferred
async def test_half_typed_line_survives_an_incoming_message(relay: Relay) -> None:
    r = relay
    [bob] = await r.online("tty-bob", register=True)
    argv = [*client_command(), "--server", f"127.0.0.1:{r.port}", "--ca", str(r.ca),
            "--user", "tty-alice", "--password-file", str(r.password_file("tty-alice")),
            "--home", str(r.home("tty-alice")), "--register"]  # fmt: skip
    alice = PtyClient()
    env = dict(os.environ, PYTHONUNBUFFERED="1", TERM="xterm", LC_ALL="C.UTF-8")
    _reactor().spawnProcess(alice, argv[0], argv, env=env, path=str(r.root), usePTY=True)
    at = await alice.wait_for(b"logged in as tty-alice")
    alice.type(b"/chat tty-bob\r")
    at = await alice.wait_for(b"tty-bob> ", at)
    alice.type(b"hello wor")
    at = await alice.wait_for(b"hello wor", at)
    bob.send("/msg tty-alice incoming while you type")
    at = await alice.wait_for(b"incoming while you type", at)
    at = await alice.wait_for(b"tty-bob> hello wor", at)  # the line drawn again

    lines, (x, y) = alice.screen()
    typed = "tty-bob> hello wor"
    assert lines[y] == typed and x == len(typed), (lines, x, y)
    assert lines[y - 1].endswith("<tty-bob> incoming while you type"), lines
    assert sum("hello" in line for line in lines) == 1  # never printed into the message

    # The half line is intact: finishing it sends the whole sentence.
    alice.type(b"ld\r")
    got = await bob.expect("message", **{"from": "tty-alice"})
    assert got["text"] == "hello world"
    # Editing keys and history: Up recalls the line, Ctrl-U clears, Backspace edits, and
    # a UTF-8 character is one cell (one Backspace removes all of "é").
    alice.type(b"\x1b[A")  # Up
    at = await alice.wait_for(b"hello world", at)
    alice.type(b"\x15second\x7fD\r")  # Ctrl-U, "second", Backspace, "D", Enter
    got = await bob.expect("message", **{"from": "tty-alice"})
    assert got["text"] == "seconD"
    alice.type("caf\u00e9\x7fe \u00e9t\u00e9\r".encode())
    got = await bob.expect("message", **{"from": "tty-alice"})
    assert got["text"] == "cafe \u00e9t\u00e9"
    alice.type(b"\x04")  # Ctrl-D on an empty line: quit after pending sends
    assert await alice.wait_exit() == 0
    await bob.finish()
