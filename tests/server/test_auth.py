"""Tests for securechat.server.passwords and securechat.server.auth.

Hashing uses the cheap :data:`CHEAP` parameters passed explicitly, and a synchronous
thread runner, so every test runs in milliseconds without a reactor; the production
defaults are only checked against the OWASP and RFC 9106 figures, not timed.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from twisted.cred.credentials import IUsernamePassword
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from securechat import wire
from securechat.config import ServerConfig, config_from_mapping
from securechat.server import auth
from securechat.server.auth import (
    Account,
    AccountRealm,
    AuthService,
    BadCredentials,
    BadProofOfWork,
    IAccount,
    InvalidIdentityKey,
    InvalidUsername,
    MethodNotAllowed,
    NameTaken,
    NonceCache,
    NoUsableCredential,
    ProofOfWorkRequired,
    PublicKeyChecker,
    PublicKeyCredentials,
    RegistrationClosed,
    RegistrationError,
    Throttled,
    WeakPassword,
    make_portal,
    register_user,
    valid_room_name,
    valid_username,
)
from securechat.server.loginthrottle import LoginThrottle
from securechat.server.passwords import (
    DEFAULT_PARAMS,
    Argon2Params,
    HashParams,
    ScryptParams,
    UnsupportedHash,
    dummy_hash,
    hash_password,
    needs_rehash,
    parse_hash,
    verify_password,
)
from securechat.server.store.interface import ROLE_ADMIN, ROLE_USER
from securechat.server.store.memory import MemoryStore

CHEAP = HashParams(Argon2Params(memory_kib=64, iterations=1, lanes=1), ScryptParams(4, 8, 1))
PASSWORD = "correct horse battery staple"
ADDR = "192.0.2.10"


def make_config(**auth_values: Any) -> ServerConfig:
    return config_from_mapping({"auth": auth_values}, Path("/nonexistent"), "test.toml")


class SyncRunner:
    """A ThreadRunner that runs the call at once and records which function ran."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, f: Any, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        self.calls.append(f.__name__)
        return defer.maybeDeferred(f, *args, **kwargs)


# -- passwords ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "pattern"),
    [
        ("argon2id", r"\$argon2id\$v=19\$m=64,t=1,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}"),
        ("scrypt", r"\$scrypt\$ln=4,r=8,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}"),
    ],
)
def test_hash_format_and_verify(scheme: str, pattern: str) -> None:
    """Both schemes give a PHC string with a 16-byte salt and a 32-byte hash, and verify."""
    stored = hash_password(PASSWORD, scheme, CHEAP)
    assert re.fullmatch(pattern, stored)
    assert verify_password(stored, PASSWORD)
    assert not verify_password(stored, PASSWORD + "!")
    assert not verify_password(stored, "")


@pytest.mark.parametrize("scheme", ["argon2id", "scrypt"])
def test_stored_value_is_not_a_password(scheme: str) -> None:
    """Someone who reads the database cannot log in by sending the stored string."""
    stored = hash_password(PASSWORD, scheme, CHEAP)
    assert not verify_password(stored, stored)


@pytest.mark.parametrize("scheme", ["argon2id", "scrypt"])
def test_salt_is_per_hash(scheme: str) -> None:
    """The same password hashed twice gives different strings (random salt)."""
    assert hash_password(PASSWORD, scheme, CHEAP) != hash_password(PASSWORD, scheme, CHEAP)


def test_argon2id_interoperates_with_cryptography_phc_parser() -> None:
    """Our Argon2id strings are standard PHC: cryptography's own parser accepts them."""
    stored = hash_password(PASSWORD, "argon2id", CHEAP)
    Argon2id.verify_phc_encoded(PASSWORD.encode(), stored)


def test_scrypt_matches_rfc7914_computation() -> None:
    """The scrypt digest is scrypt(password, salt, N=2**ln, r, p) as RFC 7914 defines."""
    stored = hash_password(PASSWORD, "scrypt", CHEAP)
    _, _, _, salt, digest = stored.split("$")
    raw_salt = base64.b64decode(salt + "==")
    expected = Scrypt(salt=raw_salt, length=32, n=16, r=8, p=1).derive(PASSWORD.encode())
    assert base64.b64decode(digest + "=") == expected


def test_password_is_normalised_to_nfc() -> None:
    """A composed and a decomposed 'é' are the same password (RFC 8265 OpaqueString)."""
    stored = hash_password("caf\u00e9-password", "argon2id", CHEAP)
    assert verify_password(stored, "cafe\u0301-password")


def test_unknown_scheme_refused() -> None:
    """Only the schemes the config allows can hash."""
    with pytest.raises(ValueError, match="unknown password hash scheme"):
        hash_password(PASSWORD, "md5", CHEAP)


def _tamper(stored: str, old: str, new: str) -> str:
    assert old in stored
    return stored.replace(old, new, 1)


ARGON = hash_password(PASSWORD, "argon2id", CHEAP)
SCRYPT = hash_password(PASSWORD, "scrypt", CHEAP)


@pytest.mark.parametrize(
    "stored",
    [
        _tamper(ARGON, "m=64,", "m=4194304,"),  # 4 GiB per login
        _tamper(ARGON, "t=1,", "t=1000,"),
        _tamper(ARGON, "p=1$", "p=255$"),
        _tamper(ARGON, "p=1$", "p=0$"),
        _tamper(ARGON, "m=64,", "m=4,"),  # below 8 * p (RFC 9106)
        _tamper(ARGON, "m=64,t=1", "m=262144,t=8"),  # total work too large
        _tamper(ARGON, "v=19", "v=16"),
        _tamper(ARGON, "m=64,", "m=064,"),
        _tamper(ARGON, "m=64,", "m=99999999999,"),
        _tamper(SCRYPT, "ln=4,", "ln=30,"),
        _tamper(SCRYPT, "ln=4,", "ln=0,"),
        _tamper(SCRYPT, "r=8,", "r=4096,"),
        _tamper(SCRYPT, "p=1$", "p=1000$"),
        _tamper(SCRYPT, "ln=4,r=8", "ln=20,r=32"),  # 4 GiB of memory
        ARGON.rsplit("$", 2)[0] + "$c2FsdHNh$" + ARGON.rsplit("$", 1)[1],  # 6-byte salt
        ARGON.rsplit("$", 1)[0] + "$AAAAAAAAAAA",  # 8-byte hash
        ARGON[:-1] + "*",
        ARGON + "$extra",
        "$argon2i$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
        "$pbkdf2-sha256$29000$abc$def",
        "",
        PASSWORD,
    ],
)
def test_tampered_or_absurd_hash_refused(stored: str) -> None:
    """Malformed strings and costs outside the bounds raise instead of running."""
    with pytest.raises(UnsupportedHash):
        verify_password(stored, PASSWORD)


def test_tampered_digest_fails_verification() -> None:
    """A well-formed string with a different digest simply does not match."""
    head, digest = ARGON.rsplit("$", 1)
    flipped = ("B" if digest[0] == "A" else "A") + digest[1:]
    assert not verify_password(f"{head}${flipped}", PASSWORD)


def test_production_defaults_meet_owasp_and_rfc9106() -> None:
    """Defaults: RFC 9106's second profile with one lane (OpenSSL's multi-lane threads can
    deadlock under concurrency), above OWASP's minimum; scrypt N=2**17."""
    a = DEFAULT_PARAMS.argon2id
    assert (a.memory_kib, a.iterations, a.lanes) == (65536, 3, 1)
    assert a.memory_kib >= 19 * 1024 and a.iterations >= 2
    assert DEFAULT_PARAMS.scrypt == ScryptParams(17, 8, 1)
    parse_hash(dummy_hash("argon2id"))  # the defaults are inside the verification bounds
    parse_hash(dummy_hash("scrypt"))


def test_needs_rehash() -> None:
    """Hashes made with other costs or another scheme are flagged for re-hashing."""
    assert needs_rehash(ARGON, "argon2id")
    assert not needs_rehash(ARGON, "argon2id", CHEAP)
    assert needs_rehash(ARGON, "scrypt", CHEAP)
    assert needs_rehash("garbage", "argon2id")


@pytest.mark.parametrize("scheme", ["argon2id", "scrypt"])
def test_dummy_hash_matches_nothing(scheme: str) -> None:
    """The dummy hash is well-formed, costs a real verification, and matches no password."""
    dummy = dummy_hash(scheme, CHEAP)
    assert parse_hash(dummy).scheme == scheme
    assert not verify_password(dummy, "")
    assert not verify_password(dummy, PASSWORD)


# -- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["alice", "a", "bob_2", "x.y-z", "_", "a" * 32])
def test_valid_usernames(name: str) -> None:
    assert valid_username(name)
    assert not valid_room_name(name)
    assert valid_room_name("#" + name)


@pytest.mark.parametrize(
    "name", ["", "Alice", "#room", "-a", ".a", "a b", "a@b", "a" * 33, "\u00e9", "a\n", "a\0"]
)
def test_invalid_usernames(name: str) -> None:
    """Upper case, room prefixes, spaces, non-ASCII and overlong names are refused."""
    assert not valid_username(name)


# -- login -----------------------------------------------------------------------------------


class LoginTests(SynchronousTestCase):
    """Portal and AuthService over a MemoryStore, with a synchronous runner and a Clock."""

    methods: tuple[str, ...] = ("password", "publickey", "certificate")

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = MemoryStore(clock=self.clock)
        self.runner = SyncRunner()
        self.config = make_config(
            methods=list(self.methods), pair_burst=3, pair_rate=0.5, account_burst=3,
            account_rate=0.5, login_pow_bits=8,
        )  # fmt: skip
        self.portal = make_portal(self.config, self.store, self.runner, params=CHEAP)
        self.throttle = LoginThrottle.from_config(self.config.auth, self.clock.seconds)
        self.service = AuthService(self.portal, self.throttle, self.clock, failure_delay=0)
        self.key = Ed25519PrivateKey.generate()
        self.pub = self.key.public_key().public_bytes_raw()
        self.add("alice", password=PASSWORD, key=self.pub)
        self.add("root", password=PASSWORD, role=ROLE_ADMIN)
        self.add("keyonly", key=self.pub)
        self.runner.calls.clear()

    def add(
        self,
        name: str,
        password: str | None = None,
        key: bytes | None = None,
        role: str = ROLE_USER,
    ) -> None:
        stored = hash_password(password, "argon2id", CHEAP) if password else None
        self.successResultOf(self.store.add_user(name, role, stored, key))

    def fails_with(self, d: defer.Deferred[Any], exc: type[Exception]) -> Exception:
        failure = self.failureResultOf(d, exc)
        return failure.value  # type: ignore[return-value]

    def test_password_login(self) -> None:
        """The right password gives an Account with the stored role, hashing on the runner."""
        account = self.successResultOf(self.service.login_password("alice", PASSWORD, ADDR))
        self.assertEqual(account, Account("alice", ROLE_USER))
        self.assertTrue(IAccount.providedBy(account))
        self.assertEqual(self.runner.calls, ["verify_password"])
        root = self.successResultOf(self.service.login_password("root", PASSWORD, ADDR))
        self.assertEqual(root.role, ROLE_ADMIN)

    def test_unknown_user_and_wrong_password_look_the_same(self) -> None:
        """Same exception, same message, same work (one full hash) for both failures."""
        wrong = self.fails_with(
            self.service.login_password("alice", "nope-nope", ADDR), BadCredentials
        )
        unknown = self.fails_with(
            self.service.login_password("nobody", PASSWORD, ADDR), BadCredentials
        )
        nohash = self.fails_with(
            self.service.login_password("keyonly", PASSWORD, ADDR), BadCredentials
        )
        self.assertEqual({type(wrong), type(unknown), type(nohash)}, {BadCredentials})
        self.assertEqual({str(wrong), str(unknown), str(nohash)}, {""})
        self.assertEqual(wrong.code, "bad-credentials")
        self.assertEqual(self.runner.calls, ["verify_password"] * 3)

    def test_stored_hash_is_not_accepted_as_password(self) -> None:
        """Logging in with the stored string itself fails."""
        record = self.successResultOf(self.store.get_user("alice"))
        assert record is not None and record.password_hash is not None
        self.fails_with(
            self.service.login_password("alice", record.password_hash, ADDR), BadCredentials
        )

    def test_tampered_hash_in_store_denies_and_logs_without_secret(self) -> None:
        """An out-of-bounds stored hash is refused like a wrong password and reported."""
        tampered = _tamper(ARGON, "m=64,", "m=4194304,")
        self.successResultOf(self.store.add_user("mallory", ROLE_USER, tampered, None))
        with capturedLogs() as events:
            self.fails_with(self.service.login_password("mallory", PASSWORD, ADDR), BadCredentials)
        self.assertEqual([e["user"] for e in events if "user" in e], ["mallory"])
        self.assertNotIn(tampered, repr(events))
        self.assertNotIn(PASSWORD, repr(events))

    def sign(
        self, user: str, nonce: bytes, exporter: bytes, key: Ed25519PrivateKey | None = None
    ) -> bytes:
        return (key or self.key).sign(wire.login_signature_payload(user, nonce, exporter))

    def test_publickey_login(self) -> None:
        """A signature over this connection's nonce and exporter logs in, without hashing."""
        nonce, exporter = b"n" * 32, b"e" * 32
        sig = self.sign("alice", nonce, exporter)
        d = self.service.login_publickey("alice", nonce, exporter, sig, ADDR)
        self.assertEqual(self.successResultOf(d), Account("alice", ROLE_USER))
        self.assertEqual(self.runner.calls, [])

    def test_publickey_bad_signature(self) -> None:
        """A signature by another key, or over another user name, is refused."""
        nonce, exporter = b"n" * 32, b"e" * 32
        other = self.sign("alice", nonce, exporter, Ed25519PrivateKey.generate())
        self.fails_with(
            self.service.login_publickey("alice", nonce, exporter, other, ADDR), BadCredentials
        )
        nonce2 = b"m" * 32
        for_bob = self.sign("keyonly", nonce2, exporter)
        self.fails_with(
            self.service.login_publickey("alice", nonce2, exporter, for_bob, ADDR), BadCredentials
        )

    def test_publickey_signature_relayed_from_another_connection(self) -> None:
        """A signature made for another TLS connection (other exporter) is worthless here."""
        nonce = b"n" * 32
        sig = self.sign("alice", nonce, b"A" * 32)
        d = self.service.login_publickey("alice", nonce, b"B" * 32, sig, ADDR)
        self.fails_with(d, BadCredentials)

    def test_publickey_nonce_replay_refused(self) -> None:
        """The same challenge cannot be answered twice, even with a valid signature."""
        nonce, exporter = b"n" * 32, b"e" * 32
        sig = self.sign("alice", nonce, exporter)
        self.successResultOf(self.service.login_publickey("alice", nonce, exporter, sig, ADDR))
        d = self.service.login_publickey("alice", nonce, exporter, sig, ADDR)
        self.fails_with(d, BadCredentials)

    def test_publickey_malformed_or_unknown(self) -> None:
        """Short nonces, unknown users and users without a key all get the same refusal."""
        exporter = b"e" * 32
        cases = [("alice", b"short"), ("nobody", b"1" * 32), ("root", b"2" * 32)]
        for user, nonce in cases:
            sig = self.sign(user, nonce, exporter)
            d = self.service.login_publickey(user, nonce, exporter, sig, ADDR)
            self.fails_with(d, BadCredentials)

    def test_nonce_cache_is_bounded(self) -> None:
        """The replay cache forgets the oldest nonces beyond its size."""
        cache = NonceCache(max_entries=3)
        self.assertTrue(all(cache.consume(bytes([i])) for i in range(10)))
        self.assertEqual(len(cache), 3)
        self.assertFalse(cache.consume(bytes([9])))
        checker = PublicKeyChecker(self.store, cache)
        creds = PublicKeyCredentials(
            "alice", b"x" * 32, b"e" * 32, self.sign("alice", b"x" * 32, b"e" * 32)
        )
        self.assertEqual(self.successResultOf(checker.requestAvatarId(creds)), b"alice")

    def test_certificate_login(self) -> None:
        """A verified certificate's CN logs in as that user if the user exists."""
        self.assertEqual(
            self.successResultOf(self.service.login_certificate("root", ADDR)).role, ROLE_ADMIN
        )
        self.fails_with(self.service.login_certificate("nobody", ADDR), BadCredentials)
        self.fails_with(self.service.login_certificate("Root/../x", ADDR), BadCredentials)

    def test_realm_logout_hook_and_interfaces(self) -> None:
        """The realm answers only IAccount, and its logout calls the hook with the account."""
        out: list[Account] = []
        realm = AccountRealm(self.store, on_logout=out.append)
        iface, avatar, logout = self.successResultOf(realm.requestAvatar(b"alice", None, IAccount))
        self.assertIs(iface, IAccount)
        logout()
        self.assertEqual(out, [avatar])
        with self.assertRaises(NotImplementedError):
            realm.requestAvatar(b"alice", None, IUsernamePassword)

    def test_throttle_per_account_and_address(self) -> None:
        """After the burst of failures that address waits; no hash is computed meanwhile,
        and the account's owner elsewhere (where she logged in before) logs in."""
        self.successResultOf(self.service.login_password("alice", PASSWORD, ADDR))
        for _ in range(3):
            self.fails_with(
                self.service.login_password("alice", "wrong-pass", "192.0.2.1"), BadCredentials
            )
        self.runner.calls.clear()
        err = self.fails_with(
            self.service.login_password("alice", PASSWORD, "192.0.2.1"), Throttled
        )
        self.assertAlmostEqual(err.retry_after, 4.0)  # type: ignore[attr-defined]
        self.assertEqual(err.code, "throttled")  # type: ignore[attr-defined]
        self.assertEqual(self.runner.calls, [])
        self.successResultOf(self.service.login_password("alice", PASSWORD, ADDR))

    def test_account_under_attack_asks_for_proof_of_work(self) -> None:
        """Failures from many addresses make a new address pay; a known one does not."""
        self.successResultOf(self.service.login_password("alice", PASSWORD, ADDR))
        for i in range(3):
            self.fails_with(
                self.service.login_password("alice", "wrong-pass", f"198.51.100.{i}"),
                BadCredentials,
            )
        self.runner.calls.clear()
        err = self.fails_with(
            self.service.login_password("alice", PASSWORD, "203.0.113.5"), ProofOfWorkRequired
        )
        self.assertEqual(err.bits, 8)  # type: ignore[attr-defined]
        self.assertEqual(self.runner.calls, [])
        self.successResultOf(self.service.login_password("alice", PASSWORD, "203.0.113.5", True))
        self.successResultOf(self.service.login_password("alice", PASSWORD, ADDR))

    def test_password_failures_never_throttle_signature_logins(self) -> None:
        """Public-key and certificate logins have their own per-address limit."""
        throttle = LoginThrottle(now=self.clock.seconds, address_burst=2, address_rate=0.25)
        service = AuthService(self.portal, throttle, self.clock, failure_delay=0)
        for user in ("u1", "u2"):
            self.fails_with(service.login_password(user, PASSWORD, ADDR), BadCredentials)
        self.fails_with(service.login_password("alice", PASSWORD, ADDR), Throttled)
        self.successResultOf(service.login_certificate("alice", ADDR))
        self.successResultOf(service.login_password("alice", PASSWORD, "198.51.100.1"))
        for _ in range(2):
            self.fails_with(service.login_certificate("nobody", ADDR), BadCredentials)
        self.fails_with(service.login_certificate("alice", ADDR), Throttled)
        self.clock.advance(8.0)  # one token, plus the one the refused attempt was charged
        self.successResultOf(service.login_certificate("alice", ADDR))

    def test_failure_answer_is_delayed(self) -> None:
        """With a failure delay the refusal arrives only after the clock has advanced."""
        service = AuthService(self.portal, self.throttle, self.clock, failure_delay=0.25)
        d = service.login_password("alice", "wrong-pass", ADDR)
        self.assertNoResult(d)
        self.clock.advance(0.25)
        self.fails_with(d, BadCredentials)

    def test_store_failure_releases_reservation(self) -> None:
        """An internal error is not the user's fault: the attempt costs no token."""
        self.patch(self.store, "get_user", lambda name: defer.fail(OSError("disk")))
        for _ in range(10):
            self.fails_with(self.service.login_password("alice", PASSWORD, ADDR), OSError)


class OnlyPasswordTests(SynchronousTestCase):
    """Methods not in ``[auth] methods`` are refused before any work."""

    def test_unconfigured_methods_refused(self) -> None:
        clock = Clock()
        store = MemoryStore(clock=clock)
        config = make_config(methods=["password"])
        portal = make_portal(config, store, SyncRunner(), params=CHEAP)
        self.assertEqual(portal.listCredentialsInterfaces(), [IUsernamePassword])
        throttle = LoginThrottle.from_config(config.auth, clock.seconds)
        service = AuthService(portal, throttle, clock, failure_delay=0)
        d1 = service.login_publickey("alice", b"n" * 32, b"e" * 32, b"s" * 64, ADDR)
        d2 = service.login_certificate("alice", ADDR)
        for d in (d1, d2):
            self.assertEqual(
                self.failureResultOf(d, MethodNotAllowed).value.code, "method-not-allowed"
            )
        self.assertEqual(len(throttle.accounts), 0)


# -- registration ---------------------------------------------------------------------------


class RegistrationTests(SynchronousTestCase):
    """register_user's rules, each failure with its own exception and stable code."""

    def setUp(self) -> None:
        self.store = MemoryStore(clock=Clock())
        self.runner = SyncRunner()
        self.pub = Ed25519PrivateKey.generate().public_key().public_bytes_raw()

    def register(
        self,
        name: str = "alice",
        password: str | None = PASSWORD,
        key: bytes | None = None,
        challenge: bytes = b"c" * 32,
        solution: bytes = b"",
        **auth_values: Any,
    ) -> defer.Deferred[Any]:
        cfg = make_config(**auth_values)
        return register_user(
            self.store, cfg, name, password, key, challenge, solution, self.runner, params=CHEAP
        )

    def refused(self, exc: type[RegistrationError], code: str, **kw: Any) -> None:
        err = self.failureResultOf(self.register(**kw), exc).value
        self.assertEqual(err.code, code)  # type: ignore[attr-defined]
        self.assertEqual(self.successResultOf(self.store.list_users()), [])

    def test_register_with_password_then_login(self) -> None:
        """A registered user has role user, a hash (not the password), and can log in."""
        record = self.successResultOf(self.register())
        self.assertEqual(
            (record.name, record.role, record.identity_key), ("alice", ROLE_USER, None)
        )
        self.assertTrue(verify_password(record.password_hash, PASSWORD))
        self.assertNotIn(PASSWORD, record.password_hash)
        self.assertEqual(self.runner.calls, ["hash_password"])

    def test_register_with_identity_key_only(self) -> None:
        """Under publickey, an identity key alone is enough; no hash is computed."""
        record = self.successResultOf(self.register(password=None, key=self.pub))
        self.assertEqual((record.password_hash, record.identity_key), (None, self.pub))
        self.assertEqual(self.runner.calls, [])

    def test_registration_closed(self) -> None:
        self.refused(RegistrationClosed, "registration-closed", registration=False)

    def test_invalid_username(self) -> None:
        for name in ("Alice", "#room", "a" * 33, ""):
            self.refused(InvalidUsername, "invalid-username", name=name)

    def test_weak_password(self) -> None:
        """Too short, too long, or the user name itself."""
        for pw in ("short", "x" * 1025, "ALICE", "alice"):
            self.refused(WeakPassword, "weak-password", password=pw, name="alice")
        self.refused(WeakPassword, "weak-password", password="alice.smith", name="alice.smith")

    def test_invalid_identity_key(self) -> None:
        self.refused(InvalidIdentityKey, "invalid-identity-key", key=b"k" * 31)

    def test_no_usable_credential(self) -> None:
        """A credential for a disabled method, or none at all, is not enough."""
        self.refused(NoUsableCredential, "no-usable-credential", methods=["publickey"])
        self.refused(
            NoUsableCredential,
            "no-usable-credential",
            password=None,
            key=self.pub,
            methods=["password"],
        )
        self.refused(
            NoUsableCredential, "no-usable-credential", password=None, methods=["certificate"]
        )

    def test_proof_of_work(self) -> None:
        """With registration_pow_bits, only a valid solution for this name and challenge passes."""
        challenge = b"fresh-challenge-from-server-1234"
        good = wire.pow_solve(challenge, "alice", 8)
        wrong = next(
            s
            for s in (i.to_bytes(8, "big") for i in range(1000))
            if not wire.pow_valid(challenge, "alice", s, 8)
        )
        self.refused(
            BadProofOfWork, "bad-proof-of-work", registration_pow_bits=8, challenge=challenge
        )
        self.refused(
            BadProofOfWork,
            "bad-proof-of-work",
            registration_pow_bits=8,
            challenge=challenge,
            solution=wrong,
        )
        self.refused(
            BadProofOfWork,
            "bad-proof-of-work",
            registration_pow_bits=8,
            challenge=b"short",
            solution=wire.pow_solve(b"short", "alice", 8),
        )
        self.successResultOf(
            self.register(registration_pow_bits=8, challenge=challenge, solution=good)
        )

    def test_name_taken(self) -> None:
        """A taken name is refused before hashing."""
        self.successResultOf(self.register())
        self.runner.calls.clear()
        self.assertEqual(self.failureResultOf(self.register(), NameTaken).value.code, "name-taken")
        self.assertEqual(self.runner.calls, [])

    def test_codes_are_distinct(self) -> None:
        """Every exception the protocol maps has its own stable code."""
        classes = [
            cls
            for cls in vars(auth).values()
            if isinstance(cls, type) and issubclass(cls, auth.AuthError)
        ]
        codes = [cls.code for cls in classes]
        self.assertEqual(len(codes), len(set(codes)))
        self.assertGreaterEqual(len(codes), 11)
