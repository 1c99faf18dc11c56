# -*- test-case-name: tests.server.test_relay_admin -*-
"""Administrative commands for users with role ``admin``.

The protocol checks the role before calling anything here; these functions assume it.
Password hashing runs through the injected ``run_in_thread`` because it takes tens of
milliseconds by design and must never run on the reactor thread.
"""

from __future__ import annotations

from securechat import wire
from securechat.errors import UserExists
from securechat.server.auth import valid_username
from securechat.server.passwords import DEFAULT_PARAMS, HashParams, ThreadRunner, hash_password
from securechat.server.relay import Relay, RelayError
from securechat.server.store.interface import ROLE_ADMIN, ROLE_USER


async def list_users(relay: Relay) -> tuple[wire.UserInfo, ...]:
    """Every registered user with role and whether a session is live."""
    users = await relay.store.list_users()
    return tuple(
        wire.UserInfo(u.name, u.role, u.name in relay.sessions) for u in users[: wire.MAX_LIST]
    )


async def add_user(
    relay: Relay,
    run_in_thread: ThreadRunner,
    user: str,
    role: str,
    password: str | None,
    params: HashParams = DEFAULT_PARAMS,
) -> None:
    """Create an account; the password, if any, is hashed off the reactor thread."""
    if not valid_username(user):
        raise RelayError(wire.E_BAD_NAME, "user names are 1 to 32 of [a-z0-9_.-]")
    if role not in (ROLE_ADMIN, ROLE_USER):
        raise RelayError(wire.E_BAD_REQUEST, "role must be 'admin' or 'user'")
    if await relay.store.get_user(user) is not None:
        raise RelayError(wire.E_USER_EXISTS, "that user exists")
    stored = None
    if password is not None:
        scheme = relay.config.auth.password_hash
        stored = await run_in_thread(hash_password, password, scheme, params)
    try:
        await relay.store.add_user(user, role, stored, None)
    except UserExists:
        raise RelayError(wire.E_USER_EXISTS, "that user exists") from None


async def remove_user(relay: Relay, user: str) -> None:
    """Delete an account with its keys, contacts and queue; a live session is closed."""
    if not await relay.store.remove_user(user):
        raise RelayError(wire.E_NO_SUCH_USER, "no such user")
    relay.kick(user, wire.E_REMOVED, "your account was removed")
    relay.forget_user(user)


def kick(relay: Relay, user: str) -> None:
    """Close ``user``'s live session."""
    if not relay.kick(user, wire.E_KICKED, "disconnected by an administrator"):
        raise RelayError(wire.E_NOT_ONLINE, "that user is not connected")
