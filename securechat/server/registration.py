"""Self-registration rules: names, password bounds, identity keys and proof of work.

The cheap checks run first and in the order a user wants to hear about them; the
expensive password hash runs only after the name is known to be free, on a thread.
"""

from __future__ import annotations

import re

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from twisted.internet.defer import Deferred, fail
from twisted.internet.threads import deferToThread

from securechat import wire
from securechat.config import ServerConfig
from securechat.errors import UserExists
from securechat.server.autherrors import (
    BadProofOfWork,
    InvalidIdentityKey,
    InvalidUsername,
    NameTaken,
    NoUsableCredential,
    RegistrationClosed,
    RegistrationError,
    WeakPassword,
)
from securechat.server.passwords import DEFAULT_PARAMS, HashParams, ThreadRunner, hash_password
from securechat.server.store.interface import ROLE_USER, IStore, UserRecord

#: User names: lower case, so two accounts never differ only by case; no ``#``, which
#: starts room names, and no ``@``/space, so names are safe in commands and logs.
USERNAME_RE = re.compile(r"[a-z0-9_][a-z0-9_.-]{0,31}", re.ASCII)
#: Room names: ``#`` followed by the same characters as a user name.
ROOM_RE = re.compile(r"#[a-z0-9_][a-z0-9_.-]{0,31}", re.ASCII)
MIN_PASSWORD_CHARS = 8  # NIST SP 800-63B section 5.1.1.2: at least 8 characters
MAX_PASSWORD_CHARS = 1024  # bounds the hashing input; long passphrases still fit
IDENTITY_KEY_BYTES = 32  # raw Ed25519 public key, RFC 8032 section 5.1.5
POW_CHALLENGE_MIN_BYTES = 16
POW_SOLUTION_MAX_BYTES = 64


def valid_username(name: str) -> bool:
    """True if ``name`` is a well-formed user name (:data:`USERNAME_RE`)."""
    return USERNAME_RE.fullmatch(name) is not None


def valid_room_name(name: str) -> bool:
    """True if ``name`` is a well-formed room name (:data:`ROOM_RE`)."""
    return ROOM_RE.fullmatch(name) is not None


def _check_registration(
    cfg: ServerConfig,
    name: str,
    password: str | None,
    identity_key: bytes | None,
    pow_challenge: bytes,
    pow_solution: bytes,
    pow_bits: int,
) -> None:
    """The cheap registration rules, in the order a user would want to hear about them."""
    auth = cfg.auth
    if not auth.registration:
        raise RegistrationClosed()
    if not valid_username(name):
        raise InvalidUsername()
    if password is not None and (
        not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS
        or password.casefold() == name.casefold()
    ):
        raise WeakPassword()
    if identity_key is not None:
        try:
            if len(identity_key) != IDENTITY_KEY_BYTES:
                raise ValueError("length")
            Ed25519PublicKey.from_public_bytes(identity_key)
        except ValueError:
            raise InvalidIdentityKey() from None
    # A certificate is issued by the operator, out of band: it never makes a
    # self-registered account usable, or anyone could squat names for certificate users.
    usable = (password is not None and "password" in auth.methods) or (
        identity_key is not None and "publickey" in auth.methods
    )
    if not usable:
        raise NoUsableCredential()
    if pow_bits > 0 and (
        len(pow_challenge) < POW_CHALLENGE_MIN_BYTES
        or len(pow_solution) > POW_SOLUTION_MAX_BYTES
        or not wire.pow_valid(pow_challenge, name, pow_solution, pow_bits)
    ):
        raise BadProofOfWork()


async def _register(
    store: IStore,
    cfg: ServerConfig,
    name: str,
    password: str | None,
    identity_key: bytes | None,
    run_in_thread: ThreadRunner,
    params: HashParams,
) -> UserRecord:
    # Checked before hashing so that a taken name costs no hash; add_user re-checks.
    if await store.get_user(name) is not None:
        raise NameTaken()
    stored = None
    if password is not None:
        stored = await run_in_thread(hash_password, password, cfg.auth.password_hash, params)
    # The identity key is also the user's end-to-end identity in the key directory, so it
    # is kept even when public-key login is not enabled.
    try:
        return await store.add_user(name, ROLE_USER, stored, identity_key)
    except UserExists:
        raise NameTaken() from None


def register_user(
    store: IStore,
    cfg: ServerConfig,
    name: str,
    password: str | None,
    identity_key: bytes | None,
    pow_challenge: bytes,
    pow_solution: bytes,
    run_in_thread: ThreadRunner = deferToThread,
    *,
    params: HashParams = DEFAULT_PARAMS,
    pow_bits: int | None = None,
) -> Deferred[UserRecord]:
    """Create a self-registered account with role ``user``.

    ``pow_challenge`` must be fresh random bytes the server issued on this connection
    (at least 16), so that solutions cannot be computed in advance.

    :param pow_bits: the difficulty the challenge was issued with (it rises under a
        registration burst); ``[auth] registration_pow_bits`` if None.

    :returns: a Deferred firing with the new record, or failing with a
        :class:`RegistrationError` subclass (each has a stable ``code``).
    """
    try:
        bits = cfg.auth.registration_pow_bits if pow_bits is None else pow_bits
        _check_registration(
            cfg, name, password, identity_key, pow_challenge, pow_solution, bits
        )
    except RegistrationError as e:
        return fail(e)
    return Deferred.fromCoroutine(
        _register(store, cfg, name, password, identity_key, run_in_thread, params)
    )


async def set_password(
    store: IStore,
    cfg: ServerConfig,
    name: str,
    password: str,
    run_in_thread: ThreadRunner = deferToThread,
    *,
    params: HashParams = DEFAULT_PARAMS,
) -> None:
    """Hash ``password`` (the registration rules apply) and make it ``name``'s password.

    :raises WeakPassword: too short, too long, or the user name.
    """
    if (
        not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS
        or password.casefold() == name.casefold()
    ):
        raise WeakPassword()
    stored = await run_in_thread(hash_password, password, cfg.auth.password_hash, params)
    await store.set_password_hash(name, stored)
