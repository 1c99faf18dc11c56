"""Setting up one connection: hello, registration, login, and prekey publishing.

Kept apart from the chat controller so that what happens before the user may type (and
what a reconnect repeats) reads in one place. Everything here runs over one
:class:`~securechat.client.network.WireClientProtocol` and raises on the first refusal;
the controller decides what a failure means (first login: exit; reconnect: retry).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from securechat import wire
from securechat.client import events as ev
from securechat.client.keystore import DERIVED_LOGIN
from securechat.client.network import (
    LoginFailed,
    RemoteError,
    WireClientProtocol,
    login_password,
)
from securechat.client.sessions import SessionManager
from securechat.crypto.password_kdf import login_secret, new_password_problem

AGENT = "securechat-client/0.1"


@dataclass(frozen=True)
class LoggedIn:
    """What a successful set-up learned about the server and us."""

    welcome: wire.Welcome
    role: str


class Account:
    """Registration, login and prekeys for the user of one keystore."""

    def __init__(
        self,
        sessions: SessionManager,
        *,
        password: str | None,
        register: bool,
        emit: Callable[[ev.Event], None],
    ) -> None:
        self.sessions = sessions
        self.keystore = sessions.keystore
        self.user = sessions.user
        self.password = password
        self.register = register
        self._emit = emit
        self._secret: str | None = None

    @staticmethod
    def secret_for(user: str, password: str) -> str:
        """The login secret of another account (an admin's ``/user add`` sends that, so the
        relay does not see the one-time password either)."""
        return login_secret(user, password)

    def login_secret(self) -> str:
        """What this client sends as its password (derived once, then kept in memory):
        never the password itself, which may open the keystore
        (:mod:`securechat.crypto.password_kdf`)."""
        assert self.password is not None
        if self._secret is None:
            self._secret = login_secret(self.user, self.password)
        return self._secret

    async def set_up(self, proto: WireClientProtocol, backend: str | None) -> LoggedIn:
        """Hello, register if asked (once), log in, and publish prekeys for every backend.

        :param backend: the backend the user chose, refused if the server does not allow it.
        """
        welcome = await proto.request(wire.Hello, version=wire.PROTOCOL_VERSION, agent=AGENT)
        assert isinstance(welcome, wire.Welcome)
        if backend is not None and backend not in welcome.backends:
            # Before registering or logging in: nothing is created under a refused choice.
            raise LoginFailed(f"the server does not allow backend {backend!r} "
                              f"(allowed: {', '.join(welcome.backends)})")  # fmt: skip
        registering = self.register and not self.keystore.state.extra.get("registered")
        if registering:
            await self._register(proto, welcome)
        role = await self._login(proto, welcome)
        if registering:
            self.keystore.state.extra["registered"] = True
            self.keystore.save()
        for name in welcome.backends:
            await self.publish(proto, name, None)
        return LoggedIn(welcome, role)

    async def _register(self, proto: WireClientProtocol, welcome: wire.Welcome) -> None:
        if self.password is not None:
            problem = new_password_problem(self.user, self.password)
            if problem is not None:  # the server only sees the derived secret
                raise LoginFailed(f"cannot register {self.user}: {problem}")
        # Always asked for: the difficulty rises during a registration burst, so the
        # welcome's figure may be stale; the challenge's own ``bits`` is what counts.
        reply = await proto.request(wire.PowChallenge)
        assert isinstance(reply, wire.PowChallengeReply)
        challenge = reply.challenge
        solution = wire.pow_solve(challenge, self.user, reply.bits)
        try:
            await proto.request(
                wire.Register, user=self.user,
                password=None if self.password is None else self.login_secret(),
                identity_key=self.sessions.identity.public_bytes(),
                pow_challenge=challenge, pow_solution=solution,
            )  # fmt: skip
        except RemoteError as e:
            if e.code != "name-taken" or self.password is None:
                raise
            # An account an admin created (securechat-admin user add): logging in with its
            # password proves it is ours; the identity key goes up with the prekeys.
            self._emit(ev.Info(f"account {self.user} exists; logging in to set it up"))

    async def _login(self, proto: WireClientProtocol, welcome: wire.Welcome) -> str:
        methods = welcome.auth_methods
        if self.password is not None and "password" in methods:
            reply = await self._password_login(proto)
        elif "publickey" in methods:
            nonce = await proto.request(wire.LoginChallenge)
            assert isinstance(nonce, wire.LoginNonce)
            payload = wire.login_signature_payload(self.user, nonce.nonce, proto.exporter())
            reply = await proto.request(
                wire.LoginPublicKey, user=self.user, nonce=nonce.nonce,
                signature=self.sessions.identity.sign(payload),
            )  # fmt: skip
        elif "certificate" in methods:
            reply = await proto.request(wire.LoginCertificate)
        else:
            raise LoginFailed("the server offers no login method this client can use")
        assert isinstance(reply, wire.LoggedIn)
        return reply.role

    async def _password_login(self, proto: WireClientProtocol) -> wire.Message:
        """Log in with the derived secret; a keystore from before derived logins may, once,
        log in with the password itself and then turn the server's verifier into the
        derived one (an authenticated ``change_password``), after which it never sends the
        password again. Keystores made by this version never do, whatever the relay says,
        so a relay that fakes a refusal learns nothing."""
        secret = self.login_secret()
        state = self.keystore.state
        try:
            reply = await login_password(proto, self.user, secret)
        except RemoteError as e:
            if e.code != wire.E_AUTH_FAILED or state.extra.get(DERIVED_LOGIN):
                raise
            assert self.password is not None
            reply = await login_password(proto, self.user, self.password)
            await proto.request(wire.ChangePassword, old=self.password, new=secret)
            self._emit(ev.Info("this account now logs in with a secret derived from the "
                               "password; the password itself is no longer sent"))  # fmt: skip
        if not state.extra.get(DERIVED_LOGIN):
            state.extra[DERIVED_LOGIN] = True
            self.keystore.save()
        return reply

    async def publish(self, proto: WireClientProtocol, backend: str, have: int | None) -> None:
        """Upload a signed prekey (and the identity key) when needed, then top up one-time
        prekeys, made in the background and within the hourly budget
        (:meth:`PrekeyStore.make_one_time`)."""
        prekeys = self.sessions.prekeys
        signed, _ = prekeys.to_publish(backend, 1 << 30)  # the signed prekey only, if due
        if signed is not None or have is None:
            self.keystore.save()  # private halves are durable before anyone can use them
            reply = await proto.request(
                wire.PublishPrekeys, backend=backend, signed_prekey=signed, one_time=(),
                identity_key=self.sessions.identity.public_bytes(),
            )  # fmt: skip
            assert isinstance(reply, wire.PrekeysStored)
            have = reply.one_time_count
        one_time = await prekeys.make_one_time(backend, have)
        if one_time:
            self.keystore.save()
            await proto.request(
                wire.PublishPrekeys, backend=backend,
                one_time=tuple(wire.OneTimePrekey(i, k) for i, k in one_time),
            )  # fmt: skip
