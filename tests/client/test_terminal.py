"""The terminal console over Twisted's terminal emulator (no pty): what the screen shows."""

from __future__ import annotations

from typing import Any

from twisted.conch.insults import helper
from zope.interface import implementer

from securechat.client import events as ev
from securechat.client.console import IChatController
from securechat.client.terminal import TerminalConsole


@implementer(IChatController)
class Answering:
    """Records calls; ``trust`` answers at once, as the real controller does."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.console: TerminalConsole | None = None

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any) -> None:
            self.calls.append((name, *args))
            if name == "trust" and self.console is not None:
                self.console.renderer.show(ev.Info(f"{args[0]} is now verified"))

        return record


def screen() -> tuple[TerminalConsole, Answering, helper.TerminalBuffer]:
    controller = Answering()
    console = TerminalConsole(controller, clock=lambda: 0.0)
    controller.console = console
    terminal = helper.TerminalBuffer()
    terminal.connectionMade()
    console.makeConnection(terminal)
    return console, controller, terminal


def keys(console: TerminalConsole, data: bytes) -> None:
    for i in range(len(data)):
        console.keystrokeReceived(data[i : i + 1], None)


def lines(terminal: helper.TerminalBuffer) -> list[str]:
    return [line.rstrip() for line in bytes(terminal).decode().splitlines() if line.strip()]


def test_answer_during_the_line_draws_one_prompt() -> None:
    console, controller, terminal = screen()
    keys(console, b"/chat bob\r/trust bob\r")
    assert controller.calls == [("trust", "bob")]
    assert lines(terminal)[-2:] == ["00:00:00 bob is now verified", "bob>"]


def test_event_while_typing_keeps_the_half_line_and_cursor() -> None:
    console, controller, terminal = screen()
    keys(console, b"/chat bob\rhello world")
    for _ in range(2):
        console.keystrokeReceived(terminal.LEFT_ARROW, None)
    console.renderer.show(ev.Message(sender="bob", body="hi there", trust="pinned"))
    assert lines(terminal)[-2:] == ["00:00:00 <bob> hi there", "bob> hello world"]
    assert terminal.reportCursorPosition()[0] == len("bob> hello wor")
    keys(console, b"!\r")
    assert controller.calls == [("send_text", "bob", "hello wor!ld")]


def test_editing_keys() -> None:
    console, controller, terminal = screen()
    keys(console, b"/msg bob one two three\x17\x17\x01\x0b")  # Ctrl-W twice, Ctrl-A, Ctrl-K
    keys(console, b"/msg bob x\r")
    console.keystrokeReceived(terminal.UP_ARROW, None)  # recalls the line
    keys(console, b"\x7fy\r")  # Backspace edits it
    keys(console, b"abc\x03")  # Ctrl-C clears a non-empty line
    keys(console, b"\x04")  # Ctrl-D on an empty line: quit
    assert controller.calls == [
        ("send_text", "bob", "x"), ("send_text", "bob", "y"), ("quit",),
    ]  # fmt: skip


def test_a_wrapped_input_line_is_redrawn_whole() -> None:
    """A line longer than the terminal is wide leaves no fragment behind an event."""
    console, _, terminal = screen()
    long = b"x" * 100 + b"END"
    keys(console, b"/chat bob\r" + long)
    console.renderer.show(ev.Message(sender="bob", body="hi", trust="changed"))
    shown = lines(terminal)
    assert shown[-3] == "00:00:00 <bob !> hi"
    assert "".join(shown[-2:]) == "bob> " + long.decode()
    assert sum("xxxxx" in line for line in shown) == 2  # the two rows of the one input line
