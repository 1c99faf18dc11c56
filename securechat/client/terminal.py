# twisted.conch.recvline and insults have no annotations: calls into them are untyped.
# mypy: disable-error-code="no-untyped-call"
"""The console for people at a terminal: Twisted's own line editing (``twisted.conch``).

Used when stdin and stdout are both a terminal and ``--json`` is off; pipes and scripts
keep the plain line protocol of :mod:`securechat.client.console`. The terminal runs in raw
mode behind ``insults.ServerProtocol`` (as Twisted's manhole does over ``StandardIO``), and
:class:`TerminalConsole` is a ``HistoricRecvLine``: arrow keys, Home/End, Backspace/Delete,
input history (Up/Down), and Ctrl-A/E/U/K/W/L like a shell. The prompt names the current
``/chat`` target.

Incoming events are drawn *above* the input line: the line being typed is erased, the
event printed, and the prompt with the half-typed text redrawn with the cursor where it
was, so a message arriving mid-sentence never breaks what is being typed.

Commands are parsed by the same :class:`~securechat.client.console.ConsoleProtocol` as in
line mode (it is fed whole lines, never bytes), so both modes accept exactly the same input.
"""

from __future__ import annotations

import os
import sys
import termios
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from twisted.conch.recvline import HistoricRecvLine
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from securechat.client.console import ConsoleProtocol, IChatController, Renderer

CTRL_A, CTRL_C, CTRL_D, CTRL_E = b"\x01", b"\x03", b"\x04", b"\x05"
CTRL_K, CTRL_L, CTRL_U, CTRL_W = b"\x0b", b"\x0c", b"\x15", b"\x17"


class TerminalConsole(HistoricRecvLine):
    """Line editing with history; events printed above the line being typed."""

    def __init__(self, controller: IChatController, *, clock: Callable[[], float]) -> None:
        self.controller = controller
        self.lines = ConsoleProtocol(controller, lambda write: Renderer(write, False, clock))
        self.lines.renderer = Renderer(self._print_above, False, clock)
        self._utf8 = b""  # the first bytes of a character still arriving
        self.closed = False
        self._handling = False  # inside lineReceived: the prompt is drawn once, after it

    @property
    def renderer(self) -> Renderer:
        assert self.lines.renderer is not None
        return self.lines.renderer

    # -- the prompt ---------------------------------------------------------------------
    @property  # RecvLine reads self.ps[self.pn]
    def ps(self) -> tuple[bytes, bytes]:  # type: ignore[override]
        target = self.lines.target
        prompt = f"{target}> " if target else "> "
        return prompt.encode("utf-8"), b"... "

    # -- TerminalProtocol / RecvLine API ----------------------------------------------------
    def connectionMade(self) -> None:
        """TerminalProtocol API: key bindings; the prompt (no screen reset: the scrollback
        above stays the user's)."""
        super().connectionMade()
        self.keyHandlers.update({
            CTRL_A: self.handle_HOME, CTRL_E: self.handle_END, CTRL_C: self._interrupt,
            CTRL_D: self._end_of_input, CTRL_K: self._kill_to_end, CTRL_L: self._redraw,
            CTRL_U: self._kill_line, CTRL_W: self._kill_word, b"\x7f": self.handle_BACKSPACE,
            b"\x08": self.handle_BACKSPACE,
        })  # fmt: skip

    def initializeScreen(self) -> None:
        """RecvLine API: start on a fresh line, in insert mode, without clearing the screen."""
        self.terminal.write(b"\r\n" + self.ps[self.pn])
        self.setInsertMode()

    def keystrokeReceived(self, keyID: Any, modifier: Any) -> None:
        """TerminalProtocol API: RecvLine only takes printable ASCII; also take UTF-8, one
        whole character per buffer cell, so the cursor and Backspace move by characters."""
        if isinstance(keyID, bytes) and len(keyID) == 1 and (keyID[0] >= 0x80 or self._utf8):
            self._utf8 += keyID
            try:
                char = self._utf8.decode("utf-8")
            except UnicodeDecodeError as e:
                if e.reason == "unexpected end of data" and len(self._utf8) < 4:
                    return  # more bytes of this character to come
                self._utf8 = b""  # not UTF-8: dropped (the terminal sent garbage)
                return
            self._utf8 = b""
            if char.isprintable():
                self.characterReceived(char.encode("utf-8"), False)
            return
        super().keystrokeReceived(keyID, modifier)

    def _deliverBuffer(self, buf: bytes) -> None:
        """HistoricRecvLine API: recalled history goes in character by character."""
        for char in buf.decode("utf-8", "replace"):
            self.characterReceived(char.encode("utf-8"), True)

    def lineReceived(self, line: bytes) -> None:
        """RecvLine API: one whole line, handled exactly as the line console does."""
        if self.lines.stopped_reading:
            return
        self._handling = True
        try:
            self.lines.lineReceived(line)
        finally:
            self._handling = False
        if self.lines.stopped_reading:  # /quit
            self.closed = True
            return
        self.terminal.write(self.ps[self.pn])

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """TerminalProtocol API: the terminal is gone (stdin closed): quit as at end of input."""
        self._quit()

    # -- keys ------------------------------------------------------------------------------
    def _quit(self) -> None:
        if not self.lines.stopped_reading:
            self.lines.stopped_reading = True
            self.closed = True
            self.controller.quit()

    def _interrupt(self) -> None:
        """Ctrl-C: drop the line being typed; on an empty line, quit."""
        if self.lineBuffer:
            self._kill_line()
        else:
            self.terminal.write(b"\r\n")
            self._quit()

    def _end_of_input(self) -> None:
        """Ctrl-D: delete under the cursor; on an empty line, end of input (quit)."""
        if self.lineBuffer:
            self.handle_DELETE()
        else:
            self.terminal.write(b"\r\n")
            self._quit()

    def _kill_line(self) -> None:
        self.handle_HOME()
        self.terminal.eraseToLineEnd()
        self.lineBuffer = []
        self.lineBufferIndex = 0

    def _kill_to_end(self) -> None:
        self.terminal.eraseToLineEnd()
        del self.lineBuffer[self.lineBufferIndex :]

    def _kill_word(self) -> None:
        """Ctrl-W: delete the word before the cursor (and the spaces after it)."""
        start = self.lineBufferIndex
        while start and self.lineBuffer[start - 1] == b" ":
            start -= 1
        while start and self.lineBuffer[start - 1] != b" ":
            start -= 1
        for _ in range(self.lineBufferIndex - start):
            self.handle_BACKSPACE()

    def _redraw(self) -> None:
        """Ctrl-L: clear the screen and draw the input line again."""
        self.terminal.eraseDisplay()
        self.terminal.cursorHome()
        self._draw_input()

    # -- output ----------------------------------------------------------------------------
    def _draw_input(self) -> None:
        self.drawInputLine()
        back = len(self.lineBuffer) - self.lineBufferIndex
        if back:
            self.terminal.cursorBackward(back)

    def _columns(self) -> int:
        try:
            return os.get_terminal_size(sys.stdout.fileno()).columns or self.width
        except OSError:  # not a real terminal (tests): RecvLine's 80
            return int(self.width)

    def _print_above(self, data: bytes) -> None:
        """Renderer output: erase the input line, print, and draw the input line again.

        An input line longer than the terminal is wide wraps over several rows: the cursor
        goes up to the first of them and everything below is erased, so no piece of the
        half-typed line is left between the messages."""
        if self.terminal is None:
            return
        text = data.decode("utf-8", "replace").rstrip("\n")
        prompt = len(self.ps[self.pn].decode("utf-8", "replace"))
        row = (prompt + self.lineBufferIndex) // max(1, self._columns())
        if row:
            self.terminal.cursorUp(row)
        self.terminal.write(b"\r")
        self.terminal.eraseToDisplayEnd()
        for line in text.split("\n"):
            self.terminal.write(line.encode("utf-8") + b"\r\n")
        if not self.closed and not self._handling:
            self._draw_input()


@contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """The terminal in raw mode (keys one by one, no echo) for the block; always restored."""
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)
        os.write(sys.stdout.fileno(), b"\r\n")


def wants_terminal(json_mode: bool) -> bool:
    """The terminal console is for people: both ends a terminal and no ``--json``."""
    return not json_mode and sys.stdin.isatty() and sys.stdout.isatty()
