"""The stdio side of the client: parse commands, render events for people or scripts.

The console knows nothing about the network or cryptography: it turns lines into calls on
an :class:`IChatController` and turns events into text. With ``--json`` every event is one
JSON object per line, the contract that bots and scripts rely on. End of stdin is a
half-close (``IHalfCloseableProtocol``): stdout stays open so replies that arrive after the
last input line are still shown, and the controller decides when everything is flushed.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.protocols.basic import LineReceiver
from zope.interface import Interface, implementer

from securechat.client import events as ev
from securechat.client.render import Renderer

__all__ = ["HELP", "MAX_LINE", "ConsoleProtocol", "IChatController", "Renderer"]

HELP = """\
/msg USER|#ROOM TEXT   send one message
/chat USER|#ROOM       plain lines then go there
/who                   who is online
/contacts              your contacts and requests
/contact add|accept|remove USER
/join #ROOM  /leave #ROOM
/verify USER           show the safety number and fingerprints
/trust USER            mark USER's current key as verified
/backend [NAME]        show or choose the key-agreement backend (dh, ecdh, rsa)
/users  /kick USER     (admins)
/quit                  leave after pending messages are accepted"""

MAX_LINE = 16 * 1024


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

    def join(room: str) -> None:
        """Join ``#room``."""

    def leave(room: str) -> None:
        """Leave ``#room``."""

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

    def quit() -> None:
        """Finish pending sends, then exit."""


@implementer(IHalfCloseableProtocol)
class ConsoleProtocol(LineReceiver):
    """Line protocol on stdin/stdout."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

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

    def connectionMade(self) -> None:
        """Protocol API: stdout is ready, so the renderer can write to it."""
        assert self.transport is not None
        self.renderer = self._renderer_factory(self.transport.write)

    def lineReceived(self, line: bytes) -> None:
        """LineReceiver API: one command or one message."""
        text = line.decode("utf-8", errors="replace").rstrip("\r")
        if not text.strip():
            return
        if text.startswith("/"):
            self._command(text)
        elif self.target is None:
            self._error("no conversation chosen: use /chat USER or /msg USER TEXT")
        else:
            self.controller.send_text(self.target, text)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._error(f"line too long (at most {MAX_LINE} bytes)")

    def readConnectionLost(self) -> None:
        """IHalfCloseableProtocol API: stdin ended; finish pending sends, then quit."""
        self.controller.quit()

    def writeConnectionLost(self) -> None:
        """IHalfCloseableProtocol API: nothing to do when stdout closes early."""

    def _error(self, text: str) -> None:
        assert self.renderer is not None
        self.renderer.show(ev.Error(text, code="bad-input"))

    def _command(self, text: str) -> None:
        parts = text.split(maxsplit=2)
        name, args = parts[0].lower(), parts[1:]
        c = self.controller
        simple: dict[str, Callable[[], None]] = {
            "/who": c.who,
            "/contacts": c.contacts,
            "/quit": c.quit,
            "/users": c.admin_users,
        }
        one_arg: dict[str, Callable[[str], None]] = {
            "/join": c.join,
            "/leave": c.leave,
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
            if name in ("/join", "/leave") and not c_arg.startswith("#"):
                self._error(f"{name} needs a room name starting with #")
            else:
                one_arg[name](c_arg)
        elif name == "/msg" and len(args) == 2:
            c.send_text(args[0], args[1])
        elif name == "/chat" and len(args) == 1:
            self.target = args[0]
            assert self.renderer is not None
            self.renderer.show(ev.Info(f"now talking to {self.target}", to=self.target))
        elif name == "/contact" and len(args) == 2 and args[0] in ("add", "accept", "remove"):
            c.contact(args[0], args[1].split()[0])
        elif name == "/backend" and len(args) <= 1:
            c.backend(args[0] if args else None)
        else:
            self._error(f"bad command {parts[0]!r}: type /help")
