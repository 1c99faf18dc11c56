"""The stdio side of the client: parse commands, render events for people or scripts.

The console knows nothing about the network or cryptography: it turns lines into calls on
an :class:`IChatController` and turns events into text. With ``--json`` every event is one
JSON object per line, the contract that bots and scripts rely on. End of stdin is a
half-close (``IHalfCloseableProtocol``): stdout stays open so replies that arrive after the
last input line are still shown, and the controller decides when everything is flushed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from zope.interface import Interface, implementer

from securechat.client import events as ev
from securechat.client.history import DEFAULT_SHOWN
from securechat.client.render import Renderer

__all__ = ["HELP", "MAX_LINE", "ConsoleProtocol", "IChatController", "Renderer"]

HELP = """\
/msg USER|#ROOM TEXT   send one message
/chat USER|#ROOM       plain lines then go there
/who                   who is online
/contacts              your contacts and requests
/contact add|accept|remove USER
/join #ROOM [open]     accept an invitation, join an open room, or create the room
                       (invite-only unless created with "open"; you are its owner)
/invite USER #ROOM     invite USER (signed by you; they /join to accept)
/remove USER #ROOM     remove a member (room admins)
/promote|demote USER #ROOM   make or unmake a room admin (the room's owner)
/members #ROOM         the members you verified from signed events
/leave #ROOM           leave the room
/history USER|#ROOM [N]  the last N (20) messages kept in your keystore
/verify USER           show the safety number and fingerprints
/trust USER            mark USER's current key as verified
/backend [NAME]        show or choose the key-agreement backend (dh, ecdh, rsa)
/users  /kick USER     (admins)
/user add NAME [admin] (admins) create an account with a one-time password shown to you
/user remove NAME      (admins) delete an account, its keys and queued messages
/quit                  leave after pending messages are accepted (later lines are ignored)

A line (command or message) may be at most 16384 bytes of UTF-8; a longer line, or one
that is not UTF-8, is refused whole and nothing of it is sent.

Trust marks after a sender's name: <bob ✓> you verified bob's key (/verify, compared
the safety number, /trust); <bob> bob's first key, pinned but not compared; <bob !> bob's
key changed since it was pinned and is not verified: compare the safety number again.

At a terminal: Left/Right, Home/End (Ctrl-A/E), Backspace/Delete, Up/Down for earlier
lines, Ctrl-U (clear), Ctrl-K (to end), Ctrl-W (word), Ctrl-L (redraw), Ctrl-C (clear;
quit on an empty line), Ctrl-D on an empty line quits."""

#: The ``command`` of an error about a line refused before it was parsed, and of one about
#: a plain (non-command) line.
INPUT = "(input)"
PLAIN = "(message)"

#: Longest accepted input line in bytes (without the newline); the README and /help say so.
MAX_LINE = 16 * 1024


_ROOM_ADMIN: dict[str, Callable[[Any, str, str], None]] = {
    "/invite": lambda c, user, room: c.invite(user, room),
    "/remove": lambda c, user, room: c.remove(user, room),
    "/promote": lambda c, user, room: c.promote(user, room, True),
    "/demote": lambda c, user, room: c.promote(user, room, False),
}


class IChatController(Interface):
    """What the console asks of the rest of the client."""

    def send_text(target: str, text: str) -> None:
        """Send ``text`` to a user or to ``#room``."""

    def who() -> None:
        """Ask who is online."""

    def contacts() -> None:
        """List contacts."""

    def contact(action: str, user: str) -> None:
        """``add``, ``accept`` or ``remove`` a contact."""

    def join(room: str, is_open: bool = False) -> None:
        """Accept an invitation to ``#room``, join it if it is open, or create it."""

    def leave(room: str) -> None:
        """Leave ``#room``."""

    def invite(user: str, room: str) -> None:
        """Invite ``user`` to ``#room`` with a signed event."""

    def remove(user: str, room: str) -> None:
        """Remove ``user`` from ``#room`` (room admins)."""

    def promote(user: str, room: str, admin: bool) -> None:
        """Make (``admin``) or unmake ``user`` an admin of ``#room`` (its owner)."""

    def members(room: str) -> None:
        """Show the verified members of ``#room``."""

    def verify(user: str) -> None:
        """Show the safety number with ``user``."""

    def trust(user: str) -> None:
        """Mark ``user``'s pinned key verified."""

    def backend(name: str | None) -> None:
        """Show (None) or set the backend for new sessions."""

    def admin_users() -> None:
        """Admins: list connected users."""

    def admin_kick(user: str) -> None:
        """Admins: disconnect ``user``."""

    def admin_add_user(user: str, admin: bool) -> None:
        """Admins: create the account ``user`` (role admin if ``admin``)."""

    def admin_remove_user(user: str) -> None:
        """Admins: delete the account ``user``."""

    def history(target: str, count: int) -> None:
        """Show the last ``count`` kept messages with a user or ``#room``."""

    def quit() -> None:
        """Finish pending sends, then exit."""


@implementer(IHalfCloseableProtocol)
class ConsoleProtocol(Protocol):
    """Line protocol on stdin/stdout.

    Input rules: a line longer than :data:`MAX_LINE` bytes is refused whole (one error,
    nothing of it sent, the rest of it up to the next newline skipped), a line that is not
    UTF-8 is refused (one error) rather than sent with replacement characters, and after
    ``/quit`` nothing more is read: later lines are never sent.
    """

    def __init__(
        self,
        controller: IChatController,
        renderer_factory: Callable[[Callable[[bytes], None]], Renderer],
    ) -> None:
        self.controller = controller
        self._renderer_factory = renderer_factory
        self.renderer: Renderer | None = None
        self.target: str | None = None
        self.is_admin = False
        self._buffer = b""
        self._skipping = False  # inside an over-long line: drop bytes up to its newline
        self.stopped_reading = False

    def connectionMade(self) -> None:
        """Protocol API: stdout is ready, so the renderer can write to it."""
        assert self.transport is not None
        self.renderer = self._renderer_factory(self.transport.write)

    def dataReceived(self, data: bytes) -> None:
        """Protocol API: split stdin into lines, enforcing the input rules."""
        if self.stopped_reading:
            return
        self._buffer += data
        while not self.stopped_reading:
            line, newline, rest = self._buffer.partition(b"\n")
            if not newline:
                if len(self._buffer) > MAX_LINE and not self._skipping:
                    self._too_long()
                if self._skipping:
                    self._buffer = b""  # bounded memory while the long line goes on
                return
            self._buffer = rest
            if self._skipping:
                self._skipping = False  # the end of the refused line
            elif len(line) > MAX_LINE:
                self._too_long()
                self._skipping = False
            else:
                self.lineReceived(line)
        self._buffer = b""

    def _too_long(self) -> None:
        self._skipping = True
        self._error(f"line too long (at most {MAX_LINE} bytes): nothing of it was sent",
                    code="line-too-long", command=INPUT)  # fmt: skip

    def lineReceived(self, line: bytes) -> None:
        """One command or one message."""
        try:
            text = line.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError:
            self._error("line is not UTF-8: nothing of it was sent", code="not-utf8",
                        command=INPUT)  # fmt: skip
            return
        if not text.strip():
            return
        if text.startswith("/"):
            self._command(text)
        elif self.target is None:
            self._error("no conversation chosen: use /chat USER or /msg USER TEXT",
                        code="no-target", command=PLAIN)  # fmt: skip
        else:
            self.controller.send_text(self.target, text)

    def _quit(self) -> None:
        """``/quit``: stop reading stdin for good, then let pending sends finish."""
        self.stopped_reading = True
        self._buffer = b""
        if self.transport is not None and hasattr(self.transport, "stopReading"):
            self.transport.stopReading()
        self.controller.quit()

    def readConnectionLost(self) -> None:
        """IHalfCloseableProtocol API: stdin ended; finish pending sends, then quit."""
        if not self.stopped_reading:
            self.stopped_reading = True
            self.controller.quit()

    def writeConnectionLost(self) -> None:
        """IHalfCloseableProtocol API: nothing to do when stdout closes early."""

    def _user_command(self, action: str, words: list[str]) -> None:
        if action == "remove" and len(words) == 1:
            self.controller.admin_remove_user(words[0])
        elif action == "add" and len(words) in (1, 2) and words[1:] in ([], ["admin"]):
            self.controller.admin_add_user(words[0], len(words) == 2)
        else:
            self._error("usage: /user add NAME [admin] | /user remove NAME",
                        code="bad-argument", command=f"/user {action}")  # fmt: skip

    def _history(self, args: list[str]) -> None:
        count = args[1] if len(args) == 2 else str(DEFAULT_SHOWN)
        if not count.isdigit() or int(count) < 1:
            self._error("usage: /history USER|#ROOM [N], N a positive number",
                        code="bad-argument", command=f"/history {args[0]}")  # fmt: skip
            return
        self.controller.history(args[0], int(count))

    def _error(self, text: str, code: str, command: str) -> None:
        assert self.renderer is not None
        self.renderer.show(ev.Error(text, code=code, command=command))

    def _command(self, text: str) -> None:
        parts = text.split(maxsplit=2)
        name, args = parts[0].lower(), parts[1:]
        c = self.controller
        simple: dict[str, Callable[[], None]] = {
            "/who": c.who,
            "/contacts": c.contacts,
            "/quit": self._quit,
            "/users": c.admin_users,
        }
        one_arg: dict[str, Callable[[str], None]] = {
            "/join": c.join,
            "/leave": c.leave,
            "/members": c.members,
            "/verify": c.verify,
            "/trust": c.trust,
            "/kick": c.admin_kick,
        }
        if name == "/help":
            assert self.renderer is not None
            self.renderer.show(ev.Info(HELP))
        elif name in simple and not args:
            simple[name]()
        elif name in one_arg and len(args) == 1:
            c_arg = args[0]
            if name in ("/join", "/leave", "/members") and not c_arg.startswith("#"):
                self._error(f"{name} needs a room name starting with #", code="bad-argument",
                            command=f"{name} {c_arg}")  # fmt: skip
            else:
                one_arg[name](c_arg)
        elif name == "/join" and len(args) == 2 and args[1].strip() == "open":
            if args[0].startswith("#"):
                c.join(args[0], True)
            else:
                self._error("/join needs a room name starting with #", code="bad-argument",
                            command=text)  # fmt: skip
        elif name in _ROOM_ADMIN and len(args) == 2:
            room = args[1].strip()
            if " " in room or not room.startswith("#"):
                self._error(f"usage: {name} USER #ROOM", code="bad-argument", command=text)
            else:
                _ROOM_ADMIN[name](c, args[0], room)
        elif name == "/msg" and len(args) == 2:
            c.send_text(args[0], args[1])
        elif name == "/chat" and len(args) == 1:
            self.target = args[0]
            assert self.renderer is not None
            self.renderer.show(ev.Info(f"now talking to {self.target}", to=self.target))
        elif name == "/contact" and len(args) == 2 and args[0] in ("add", "accept", "remove"):
            c.contact(args[0], args[1].split()[0])
        elif name == "/user" and len(args) == 2 and args[0] in ("add", "remove"):
            self._user_command(args[0], args[1].split())
        elif name == "/history" and 1 <= len(args) <= 2:
            self._history(args)
        elif name == "/backend" and len(args) <= 1:
            c.backend(args[0] if args else None)
        else:
            self._error(f"bad command {parts[0]!r}: type /help", code="bad-command",
                        command=parts[0])  # fmt: skip
