# -*- test-case-name: tests.server.test_protocol -*-
"""Handlers of the requests a connection may send before it is logged in.

Split from :mod:`securechat.server.protocol` to keep modules small, as
:mod:`securechat.server.handlers` holds those of logged-in connections. Each handler
takes the connection (its per-connection login state: the registration challenge, the
login nonce, a login in progress) and the decoded request, and returns the reply (or
None when the reply was already sent). Refusals are raised and become typed ``error``
replies in the protocol.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from securechat import wire
from securechat.server.auth import Account, ProofOfWorkRequired, register_user, valid_username
from securechat.server.autherrors import AuthError, BadCredentials, Throttled
from securechat.server.registration import set_password
from securechat.server.relay import RelayError

if TYPE_CHECKING:
    from securechat.server.protocol import RelayProtocol

log = Logger(namespace="securechat.server.login")


async def hello(conn: RelayProtocol, msg: wire.Hello) -> wire.Message:
    """Answer with the server's policy; a version we do not speak is an error."""
    if msg.version != wire.PROTOCOL_VERSION:
        raise RelayError(wire.E_UNSUPPORTED_VERSION, f"this server speaks version "
                         f"{wire.PROTOCOL_VERSION}")  # fmt: skip
    bits = conn.server.registrations.pow_bits()
    return dataclasses.replace(conn.server.welcome, id=msg.id, pow_bits=bits)


async def ping(conn: RelayProtocol, msg: wire.Ping) -> wire.Message:
    """Keep-alive."""
    return wire.Pong(id=msg.id)


def _check_not_logged_in(conn: RelayProtocol) -> None:
    if conn.session is not None:
        raise RelayError(wire.E_ALREADY_AUTHENTICATED, "already logged in")
    if conn.logging_in:
        raise RelayError(wire.E_BAD_REQUEST, "a login is already in progress")


async def pow_challenge(conn: RelayProtocol, msg: wire.PowChallenge) -> wire.Message:
    """A fresh, single-use registration challenge for this connection."""
    conn.pow_challenge = challenge = secrets.token_bytes(wire.POW_CHALLENGE_BYTES)
    conn.pow_bits = bits = conn.server.registrations.pow_bits()
    return wire.PowChallengeReply(id=msg.id, challenge=challenge, bits=bits)


async def register(conn: RelayProtocol, msg: wire.Register) -> wire.Message:
    """Create an account (the client logs in afterwards), at most
    ``registration_address_burst`` per address, then one per ``1/registration_address_rate``
    seconds; the proof of work is checked at the difficulty its challenge was issued with."""
    _check_not_logged_in(conn)
    f = conn.server
    issued, conn.pow_challenge = conn.pow_challenge, None
    challenge, bits = b"", f.registrations.pow_bits()
    offered = msg.pow_challenge
    if issued is not None and offered is not None and wire.constant_time_equal(issued, offered):
        challenge, bits = issued, conn.pow_bits
    if f.config.auth.registration:
        wait = f.registrations.check(conn.address)
        if wait > 0:
            raise Throttled(wait)
    record = await register_user(
        f.store, f.config, msg.user, msg.password, msg.identity_key, challenge,
        msg.pow_solution or b"", f.run_in_thread, params=f.hash_params, pow_bits=bits,
    )  # fmt: skip
    f.relay.identities.forget(record.name)  # a re-created account has a new identity key
    log.info("registered {user} (conn {conn})", user=record.name, conn=conn.cid)
    # An earlier account of that name may have been removed behind the relay's back: the
    # newcomer inherits nothing the relay still remembers about it (rooms, contacts).
    f.relay.forget_user(record.name)
    return wire.Registered(id=msg.id, user=record.name)


async def login_password(conn: RelayProtocol, msg: wire.LoginPassword) -> wire.Message | None:
    """Password login; when the account is under attack from unknown addresses, the
    attempt must first pay a proof of work (a fresh challenge, single-use, this
    connection only), which the reply :class:`wire.PowRequired` asks for."""
    _check_not_logged_in(conn)
    auth = conn.server.auth
    issued, conn.login_pow = conn.login_pow, None
    proof = False
    if msg.pow_challenge is not None or msg.pow_solution is not None:
        proof = (
            issued is not None
            and msg.pow_challenge is not None
            and wire.constant_time_equal(issued, msg.pow_challenge)
            and wire.pow_valid(issued, msg.user, msg.pow_solution or b"", auth.pow_bits)
        )
        if not proof:
            raise RelayError(wire.E_BAD_PROOF_OF_WORK, "proof of work not issued or not valid")
    try:
        attempt = auth.login_password(msg.user, msg.password, conn.address, proof)
        await _login(conn, msg.id, attempt, "password", msg.user)
    except ProofOfWorkRequired as e:
        conn.login_pow = challenge = secrets.token_bytes(wire.POW_CHALLENGE_BYTES)
        return wire.PowRequired(id=msg.id, challenge=challenge, bits=e.bits)
    return None


async def login_challenge(conn: RelayProtocol, msg: wire.LoginChallenge) -> wire.Message:
    """Issue the nonce for the next public-key login on this connection."""
    _check_not_logged_in(conn)
    conn.login_nonce = nonce = secrets.token_bytes(wire.LOGIN_NONCE_BYTES)
    return wire.LoginNonce(id=msg.id, nonce=nonce)


async def login_publickey(conn: RelayProtocol, msg: wire.LoginPublicKey) -> wire.Message | None:
    """Public-key login; the nonce is consumed by any attempt, right or wrong."""
    _check_not_logged_in(conn)
    issued, conn.login_nonce = conn.login_nonce, None
    if issued is None or not wire.constant_time_equal(issued, msg.nonce):
        log.warn("conn {conn}: login nonce not issued or reused", conn=conn.cid)
        conn.server.metrics.login("publickey", "refused")
        raise RelayError(wire.E_AUTH_FAILED, "login challenge not issued or already used")
    attempt = conn.server.auth.login_publickey(
        msg.user, issued, conn.info.exporter(), msg.signature, conn.address
    )
    await _login(conn, msg.id, attempt, "publickey", msg.user)
    return None


async def login_certificate(conn: RelayProtocol, msg: wire.LoginCertificate) -> wire.Message | None:
    """Log in as the verified client certificate's CN."""
    _check_not_logged_in(conn)
    cn = conn.info.peer_cn()
    if cn is None:
        conn.server.metrics.login("certificate", "refused")
        raise RelayError(wire.E_AUTH_FAILED, "no verified client certificate")
    attempt = conn.server.auth.login_certificate(cn, conn.address)
    await _login(conn, msg.id, attempt, "certificate", cn)
    return None


def shown_name(name: str) -> str:
    """An attempted (unchecked) user name as the log shows it: the name itself when it is
    a valid user name, else a placeholder. A string that cannot be a user name is often a
    password typed into the wrong field, and must not end up in a log; a valid name cannot
    forge a log line either."""
    return name if valid_username(name) else f"(not a valid user name, {len(name)} chars)"


async def _login(
    conn: RelayProtocol, rid: int, attempt: Deferred[Account], method: str, user: str
) -> None:
    # Held until the session is started (or the login failed): a second login on this
    # connection while the relay registers the first must not make a second session.
    conn.logging_in = True
    metrics = conn.server.metrics
    try:
        try:
            account = await attempt
        except AuthError as e:
            result = "throttled" if isinstance(e, Throttled) else (
                "failed" if isinstance(e, BadCredentials) else "refused")  # fmt: skip
            metrics.login(method, result)
            log.info("conn {conn}: {method} login {result} for {user} from {address}",
                     conn=conn.cid, method=method, result=result, user=shown_name(user),
                     address=conn.address)  # fmt: skip
            raise
        except Exception:
            metrics.login(method, "error")
            raise
        if conn.gone:
            return
        relay = conn.server.relay
        session = await relay.login(account.name, account.role, conn)
        if conn.gone:
            relay.logout(session)
            return
        conn.start_session(session)
    finally:
        conn.logging_in = False
    metrics.login(method, "ok")
    log.info("{user} logged in (conn {conn}) from {address} with {method}", user=account.name,
             conn=conn.cid, address=conn.address, method=method)  # fmt: skip
    conn.push(wire.LoggedIn(id=rid, user=account.name, role=account.role))
    relay.start(session)


async def change_password(conn: RelayProtocol, msg: wire.ChangePassword) -> wire.Message:
    """Replace the logged-in account's password. The old one is checked as a login is
    (throttled per account and address, same failure delay), so a session left open cannot
    be used to lock its owner out; clients use it to move from the password to a derived
    login secret. Here rather than with the logged-in handlers: it needs the address."""
    session = conn.session
    if session is None:
        raise RelayError(wire.E_NOT_AUTHENTICATED, "log in first")
    f = conn.server
    await f.auth.login_password(session.user, msg.old, conn.address)
    await set_password(f.store, f.config, session.user, msg.new, f.run_in_thread,
                       params=f.hash_params)  # fmt: skip
    log.info("{user} changed their password (conn {conn})", user=session.user, conn=conn.cid)
    return wire.Ok(id=msg.id)


_Handler = Callable[["RelayProtocol", Any], Coroutine[Any, Any, wire.Message | None]]
#: ``type`` -> handler for the requests allowed before login.
PRE_LOGIN_HANDLERS: dict[str, _Handler] = {
    "hello": hello,
    "ping": ping,
    "pow_challenge": pow_challenge,
    "register": register,
    "login_password": login_password,
    "login_challenge": login_challenge,
    "login_publickey": login_publickey,
    "login_certificate": login_certificate,
    "change_password": change_password,
}
