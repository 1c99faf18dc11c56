
# -*- test-case-name: tests.server.test_auth -*-
"""Authentication for the relay: ``twisted.cred`` checkers, the realm, registration rules.

Three login methods, enabled by ``[auth] methods`` (``twisted-style`` section 1, pluggable
authentication: one checker per credential interface, all behind one :class:`Portal`):

- ``password``: :class:`IUsernamePassword` against the stored Argon2id/scrypt hash
  (:mod:`securechat.server.passwords`), computed on a thread, never on the reactor.
- ``publickey``: an Ed25519 signature (RFC 8032) by the user's identity key over
  :func:`securechat.wire.login_signature_payload` of a server nonce and the TLS exporter
  value of this connection (RFC 8446 section 7.5, as channel binding in RFC 9266), so a
  signature is good for one challenge on one connection only.
- ``certificate``: the CN of a client certificate that TLS already verified against the
  server's CA (``security-notes`` 2.8).

Failures are indistinguishable: an unknown user, a wrong password, a user without a
password, a bad signature all raise the same :class:`BadCredentials`, after the same work
(a dummy hash, a dummy signature check). The protocol calls :class:`AuthService`, which
adds login throttling (:mod:`securechat.server.ratelimit`) before any expensive work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials, IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from securechat import wire
from securechat.config import ServerConfig
from securechat.server.autherrors import (
    AuthError,
    BadCredentials,
    BadProofOfWork,
    InvalidIdentityKey,
    InvalidUsername,
    MethodNotAllowed,
    NameTaken,
    NoUsableCredential,
    ProofOfWorkRequired,
    RegistrationClosed,
    RegistrationError,
    Throttled,
    WeakPassword,
)
from securechat.server.loginthrottle import LoginThrottle
from securechat.server.passwords import (
    DEFAULT_PARAMS,
    HashParams,
    ThreadRunner,
    UnsupportedHash,
    dummy_hash,
    verify_password,
)
from securechat.server.registration import (
    IDENTITY_KEY_BYTES,
    MAX_PASSWORD_CHARS,
    MIN_PASSWORD_CHARS,
    ROOM_RE,
    USERNAME_RE,
    register_user,
    valid_room_name,
    valid_username,
)
from securechat.server.store.interface import IStore

#: Re-exported so callers import every auth name from this module.
__all__ = [
    "IDENTITY_KEY_BYTES", "MAX_PASSWORD_CHARS", "MIN_PASSWORD_CHARS", "ROOM_RE", "USERNAME_RE",
    "Account", "AccountRealm", "AuthError", "AuthService", "BadCredentials", "BadProofOfWork",
    "CertificateCredentials", "IAccount", "InvalidIdentityKey", "InvalidUsername",
    "MethodNotAllowed", "NameTaken", "NoUsableCredential", "ProofOfWorkRequired",
    "PublicKeyCredentials",
    "RegistrationClosed", "RegistrationError", "Throttled", "WeakPassword", "make_portal",
    "register_user", "valid_room_name", "valid_username",
]

#: Used publickey nonces remembered to refuse replays (32 bytes each).
NONCE_CACHE_SIZE = 65_536
#: Extra delay before a failed login is answered: uniform failure timing, slower guessing.
DEFAULT_FAILURE_DELAY = 0.25


class IAccount(Interface):
    """The avatar of a logged-in user: who they are and what they may do."""

    name = Attribute("The user name (str).")
    role = Attribute("'admin' or 'user'.")


@implementer(IAccount)
@dataclass(frozen=True)
class Account:
    """A logged-in user (IAccount)."""

    name: str
    role: str


class IPublicKeyLogin(ICredentials):
    """A signature answering a login challenge, bound to one TLS connection."""

    username = Attribute("The user name (str).")
    nonce = Attribute("The challenge the server issued on this connection (bytes).")
    exporter = Attribute("The TLS exporter value of this connection, server side (bytes).")
    signature = Attribute("Ed25519 signature over wire.login_signature_payload (bytes).")


class ICertificateLogin(ICredentials):
    """A client certificate that TLS verified; only its CN is needed."""

    common_name = Attribute("The subject CN of the verified certificate (str).")


@implementer(IPublicKeyLogin)
@dataclass(frozen=True)
class PublicKeyCredentials:
    """IPublicKeyLogin. ``nonce`` and ``exporter`` must come from the server's own state."""

    username: str
    nonce: bytes
    exporter: bytes
    signature: bytes


@implementer(ICertificateLogin)
@dataclass(frozen=True)
class CertificateCredentials:
    """ICertificateLogin. ``common_name`` must come from a certificate TLS verified."""

    common_name: str


class NonceCache:
    """Recently used login nonces, bounded (oldest forgotten first).

    The protocol already keeps one nonce per connection; this second, global line of
    defence makes a replayed challenge fail even if a protocol bug reused one.
    """

    def __init__(self, max_entries: int = NONCE_CACHE_SIZE) -> None:
        self.max_entries = max_entries
        self._seen: dict[bytes, None] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def consume(self, nonce: bytes) -> bool:
        """Mark ``nonce`` used; False if it already was."""
        if nonce in self._seen:
            return False
        if len(self._seen) >= self.max_entries:
            del self._seen[next(iter(self._seen))]
        self._seen[nonce] = None
        return True


@implementer(ICredentialsChecker)
class PasswordChecker:
    """ICredentialsChecker for IUsernamePassword against the stored password hash."""

    credentialInterfaces = (IUsernamePassword,)
    log = Logger()

    def __init__(self, store: IStore, run_in_thread: ThreadRunner, dummy: str) -> None:
        self._store = store
        self._run = run_in_thread
        self._dummy = dummy

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes | tuple[()]]:
        """ICredentialsChecker API."""
        return Deferred.fromCoroutine(self._check(credentials))

    async def _check(self, credentials: IUsernamePassword) -> bytes | tuple[()]:
        name = credentials.username.decode("utf-8", "surrogatepass")
        password = credentials.password.decode("utf-8", "surrogatepass")
        record = await self._store.get_user(name)
        stored = record.password_hash if record is not None else None
        # Always one full verification, so an unknown user costs as much as a known one.
        try:
            ok = await self._run(verify_password, stored or self._dummy, password)
        except UnsupportedHash:
            self.log.warn("password hash of {user} is malformed or out of bounds", user=name)
            raise BadCredentials() from None
        if not (ok and stored):
            raise BadCredentials()
        return name.encode("utf-8")


@implementer(ICredentialsChecker)
class PublicKeyChecker:
    """ICredentialsChecker for IPublicKeyLogin: Ed25519 over nonce and TLS exporter."""

    credentialInterfaces = (IPublicKeyLogin,)

    def __init__(self, store: IStore, nonces: NonceCache | None = None) -> None:
        self._store = store
        self._nonces = nonces if nonces is not None else NonceCache()
        self._dummy_key = Ed25519PrivateKey.generate().public_key()

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes | tuple[()]]:
        """ICredentialsChecker API."""
        return Deferred.fromCoroutine(self._check(credentials))

    async def _check(self, c: IPublicKeyLogin) -> bytes | tuple[()]:
        # Consumed before anything else: one challenge gets one attempt, right or wrong.
        fresh = self._nonces.consume(c.nonce)
        shaped = (
            len(c.nonce) == wire.LOGIN_NONCE_BYTES
            and len(c.exporter) == wire.EXPORTER_LENGTH
            and len(c.signature) == 64
        )
        record = await self._store.get_user(c.username)
        key = self._dummy_key
        if record is not None and record.identity_key is not None:
            try:
                key = Ed25519PublicKey.from_public_bytes(record.identity_key)
            except ValueError:
                record = None
        payload = wire.login_signature_payload(c.username, c.nonce, c.exporter)
        try:
            key.verify(c.signature, payload)
            good = True
        except InvalidSignature:
            good = False
        if not (good and fresh and shaped and record is not None and record.identity_key):
            raise BadCredentials()
        return record.name.encode("utf-8")


@implementer(ICredentialsChecker)
class CertificateChecker:
    """ICredentialsChecker for ICertificateLogin: the verified CN names an existing user."""

    credentialInterfaces = (ICertificateLogin,)

    def __init__(self, store: IStore) -> None:
        self._store = store

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes | tuple[()]]:
        """ICredentialsChecker API."""
        return Deferred.fromCoroutine(self._check(credentials))

    async def _check(self, c: ICertificateLogin) -> bytes | tuple[()]:
        name: str = c.common_name
        record = await self._store.get_user(name) if valid_username(name) else None
        if record is None:
            raise BadCredentials()
        return record.name.encode("utf-8")


#: ``[auth] methods`` name -> checker factory ``(store, run_in_thread, dummy_hash)``.
CHECKER_FACTORIES: dict[str, Callable[[IStore, ThreadRunner, str], ICredentialsChecker]] = {
    "password": lambda store, run, dummy: PasswordChecker(store, run, dummy),
    "publickey": lambda store, run, dummy: PublicKeyChecker(store),
    "certificate": lambda store, run, dummy: CertificateChecker(store),
}


@implementer(IRealm)
class AccountRealm:
    """IRealm giving an :class:`Account` with the user's current role from the store.

    :param on_logout: called with the account when the session's logout runs.
    """

    def __init__(self, store: IStore, on_logout: Callable[[Account], None] | None = None) -> None:
        self._store = store
        self._on_logout = on_logout

    def requestAvatar(
        self, avatarId: bytes | tuple[()], mind: object, *interfaces: Any
    ) -> Deferred[tuple[Any, object, Callable[[], None]]]:
        """IRealm API."""
        if IAccount not in interfaces or not isinstance(avatarId, bytes):
            raise NotImplementedError("AccountRealm only provides IAccount")
        return Deferred.fromCoroutine(self._avatar(avatarId.decode("utf-8")))

    async def _avatar(self, name: str) -> tuple[Any, object, Callable[[], None]]:
        record = await self._store.get_user(name)
        if record is None:  # removed between the check and now
            raise BadCredentials()
        account = Account(record.name, record.role)
        hook = self._on_logout

        def logout() -> None:
            if hook is not None:
                hook(account)

        return IAccount, account, logout


def make_portal(
    config: ServerConfig,
    store: IStore,
    run_in_thread: ThreadRunner = deferToThread,
    *,
    params: HashParams = DEFAULT_PARAMS,
) -> Portal:
    """A :class:`Portal` with one checker per method in ``[auth] methods``.

    :param params: cost of the dummy hash that unknown users are checked against; it
        should equal the cost of real hashes so both take the same time.
    """
    dummy = dummy_hash(config.auth.password_hash, params)
    checkers = [CHECKER_FACTORIES[m](store, run_in_thread, dummy) for m in config.auth.methods]
    return Portal(AccountRealm(store), checkers)


class AuthService:
    """What the protocol calls to log a connection in: method check, throttle, portal.

    :param portal: from :func:`make_portal`; its checkers say which methods are enabled.
    :param throttle: failed-login buckets, consulted before any expensive work.
    :param clock: schedules the :data:`DEFAULT_FAILURE_DELAY` before a failure is answered.
    """

    def __init__(
        self,
        portal: Portal,
        throttle: LoginThrottle,
        clock: IReactorTime,
        failure_delay: float = DEFAULT_FAILURE_DELAY,
    ) -> None:
        self._portal = portal
        self._throttle = throttle
        self._clock = clock
        self._failure_delay = failure_delay

    def prune(self) -> int:
        """Forget idle throttle buckets (called periodically by the daemon's timer)."""
        return self._throttle.prune()

    def login_password(
        self, user: str, password: str, address: str, proof: bool = False
    ) -> Deferred[Account]:
        """Log in with a password; ``address`` is the peer host, for throttling.

        :param proof: the attempt came with a valid proof of work of
            :attr:`pow_bits` (the protocol checked it).
        :raises ProofOfWorkRequired: (as a failure) when this account had too many
            failures from addresses it never logged in from, and ``proof`` is False.
        """
        creds = UsernamePassword(
            user.encode("utf-8", "surrogatepass"), password.encode("utf-8", "surrogatepass")
        )
        return Deferred.fromCoroutine(self._login_password(creds, user, address, proof))

    @property
    def pow_bits(self) -> int:
        """Difficulty of the proof of work a throttled password login must bring."""
        return self._throttle.pow_bits

    def login_publickey(
        self, user: str, nonce: bytes, exporter: bytes, signature: bytes, address: str
    ) -> Deferred[Account]:
        """Log in with a signature; ``nonce`` and ``exporter`` from this connection's state."""
        creds = PublicKeyCredentials(user, nonce, exporter, signature)
        return Deferred.fromCoroutine(self._login_signature(creds, IPublicKeyLogin, address))

    def login_certificate(self, cn: str, address: str) -> Deferred[Account]:
        """Log in as the CN of the client certificate TLS verified on this connection."""
        creds = CertificateCredentials(cn)
        return Deferred.fromCoroutine(self._login_signature(creds, ICertificateLogin, address))

    async def _login_password(
        self, creds: ICredentials, account: str, address: str, proof: bool
    ) -> Account:
        if IUsernamePassword not in self._portal.checkers:
            raise MethodNotAllowed()
        verdict = self._throttle.check(account, address, proof)
        if verdict.pow_bits:
            raise ProofOfWorkRequired(verdict.pow_bits)
        if verdict.wait > 0:
            raise Throttled(verdict.wait)
        try:
            avatar = await self._portal_login(creds)
        except BadCredentials:
            self._throttle.failed(account, address, verdict)
            await self._failure_pause()
            raise
        except Exception:
            # Not the user's fault (the store failed, say): the attempt costs nothing.
            self._throttle.release(account, address, verdict)
            raise
        self._throttle.succeeded(account, address, verdict)
        return avatar

    async def _login_signature(
        self, creds: ICredentials, interface: type[Interface], address: str
    ) -> Account:
        """Public-key and certificate logins: only their own per-address failure limit
        applies, so password failures (anyone's) never lock them out."""
        if interface not in self._portal.checkers:
            raise MethodNotAllowed()
        verdict = self._throttle.check_signature(address)
        if verdict.wait > 0:
            raise Throttled(verdict.wait)
        try:
            avatar = await self._portal_login(creds)
        except BadCredentials:
            self._throttle.failed_signature(address)
            await self._failure_pause()
            raise
        except Exception:
            self._throttle.release_signature(address)
            raise
        self._throttle.release_signature(address)
        return avatar

    async def _portal_login(self, creds: ICredentials) -> Account:
        try:
            _, avatar, _ = await self._portal.login(creds, None, IAccount)
        except UnauthorizedLogin:
            raise BadCredentials() from None
        if not isinstance(avatar, Account):
            raise TypeError("the realm returned something other than an Account")
        return avatar

    async def _failure_pause(self) -> None:
        if self._failure_delay > 0:
            await deferLater(self._clock, self._failure_delay)
