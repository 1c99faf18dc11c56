# -*- test-case-name: tests.server.test_relay_admin -*-
"""Administrative commands for users with role ``admin``, and the account checks that
keep live sessions in step with changes made by ``securechat-admin``.

The protocol checks the role (:func:`is_admin`) before calling the commands here; they
assume it.
Password hashing runs through the injected ``run_in_thread`` because it takes tens of
milliseconds by design and must never run on the reactor thread.
"""

from __future__ import annotations

from securechat import wire
from securechat.errors import UserExists
from securechat.server.auth import valid_username
from securechat.server.passwords import DEFAULT_PARAMS, HashParams, ThreadRunner, hash_password
from securechat.server.relay import Relay, RelayError, Session
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
    if password == "":
        raise RelayError(wire.E_BAD_REQUEST, "the password must not be empty")
    if password is None and "certificate" not in relay.config.auth.methods:
        # securechat-admin's rule: such an account could only log in with a certificate.
        raise RelayError(wire.E_BAD_REQUEST, "an account without a password needs "
                         "certificate login, which this server does not allow")  # fmt: skip
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
    relay.forget_user(user)  # nothing left over from an earlier account of that name


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


async def is_admin(relay: Relay, session: Session) -> bool:
    """The account behind ``session`` still exists and is an administrator *now*.

    Read from the store, not the session: ``securechat-admin`` edits the database of a
    running server, so a cached role may be stale.
    """
    if session.role != ROLE_ADMIN:
        return False
    record = await relay.store.get_user(session.user)
    if record is None or record.role != ROLE_ADMIN:
        session.role = record.role if record is not None else ROLE_USER
        return False
    return True


async def drop_removed_sessions(relay: Relay) -> int:
    """Close the live sessions whose account was removed (one ``get_user`` each, one
    after the other so the store is never flooded); returns how many were closed.

    Roles are refreshed on the way, so a demoted administrator's session shows it.
    """
    dropped = 0
    for user, session in list(relay.sessions.items()):
        record = await relay.store.get_user(user)
        if relay.sessions.get(user) is not session:
            continue  # logged out or replaced meanwhile
        if record is None:
            relay.log.info("{user} was removed; closing the session", user=user)
            relay.kick(user, wire.E_REMOVED, "your account was removed")
            relay.forget_user(user)
            dropped += 1
        else:
            session.role = record.role
    return dropped
