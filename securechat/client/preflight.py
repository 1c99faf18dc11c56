"""One-shot questions to the server before the client commits to anything local.

- Before ``--register`` creates a keystore (a new identity key), ask the server's policy:
  a backend it does not allow is reported before anything exists on either side.
- When the keystore does not open with the account password (the default passphrase),
  ask the server whether the password is right, so the user reads "login refused" for a
  wrong password instead of a keystore error that sends them looking at the wrong thing.

Each question is its own short connection, closed at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure

from securechat import wire
from securechat.client.network import RemoteError, WireClientProtocol

AGENT = "securechat-client/0.1"
_T = TypeVar("_T")


async def _with_connection(
    endpoint: IStreamClientEndpoint,
    ask: Callable[[WireClientProtocol], Awaitable[_T]],
) -> _T:
    proto = WireClientProtocol(lambda _msg: None, _ignore_lost)
    connected: Deferred[Any] = connectProtocol(endpoint, proto)  # type: ignore[no-untyped-call]
    await connected
    try:
        return await ask(proto)
    finally:
        if proto.transport is not None:
            proto.transport.loseConnection()


def _ignore_lost(_proto: WireClientProtocol, _reason: Failure) -> None:
    """A preflight connection's end matters to nobody."""


async def _hello(proto: WireClientProtocol) -> wire.Welcome:
    welcome = await proto.request(wire.Hello, version=wire.PROTOCOL_VERSION, agent=AGENT)
    assert isinstance(welcome, wire.Welcome)
    return welcome


async def server_policy(endpoint: IStreamClientEndpoint) -> wire.Welcome:
    """The server's ``welcome`` (allowed backends, auth methods, registration)."""
    return await _with_connection(endpoint, _hello)


def refuse_backend(welcome: wire.Welcome, backend: str | None) -> str | None:
    """The one line for a ``--backend`` the server does not allow, else None."""
    if backend is None or backend in welcome.backends:
        return None
    return (f"the server does not allow backend {backend!r} "
            f"(allowed: {', '.join(welcome.backends)})")  # fmt: skip


async def password_verdict(endpoint: IStreamClientEndpoint, user: str, password: str) -> str | None:
    """Try a password login: None if the server accepts it, else the one line saying why not.

    A successful login starts a session that ends with this connection (and, like any
    login, replaces another live session of the same user)."""

    async def ask(proto: WireClientProtocol) -> str | None:
        welcome = await _hello(proto)
        if "password" not in welcome.auth_methods:
            return "the server does not take password logins"
        try:
            await proto.request(wire.LoginPassword, user=user, password=password)
        except RemoteError as e:
            if e.code == wire.E_AUTH_FAILED:
                return f"login refused: wrong user name or password for {user}"
            if e.retry_after is not None:
                return (f"login refused: {e.message or e.code} "
                        f"(retry in {e.retry_after:.0f} s)")  # fmt: skip
            return f"login refused: {e}"
        return None

    return await _with_connection(endpoint, ask)
