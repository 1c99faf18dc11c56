"""A relay that records logins learns nothing that opens a keystore.

The client sends a secret derived from the password (Argon2id, login label, user name as
salt) instead of the password, and the keystore key is derived with another label; the
relay here records every byte the client sends inside TLS, and also tries to make clients
fall back to the raw password by refusing the derived login.
"""

from __future__ import annotations

import io
import sqlite3
from contextlib import closing

import pytest_twisted

from securechat import admin, wire
from securechat.client.keystore import DERIVED_LOGIN, KdfParams, Keystore, KeystoreState
from securechat.crypto.identity import IdentityKeyPair
from securechat.crypto.password_kdf import login_secret
from securechat.server.passwords import hash_password
from tests.adversary.arena import Arena
from tests.adversary.relay import MaliciousRelay
from tests.legacy_keystore import write_legacy_keystore


def _refuse_logins(relay: MaliciousRelay) -> None:
    """The relay answers every password login with ``auth-failed`` (a lie)."""
    relay.answer(wire.LoginPassword, lambda _, m: wire.Error(
        id=m.id, code=wire.E_AUTH_FAILED, message="login failed"))  # fmt: skip


def _opens(arena: Arena, user: str, passphrase: str) -> bool:
    try:
        Keystore.open(arena.root / "homes" / user, passphrase)
    except Exception:
        return False
    return True


@pytest_twisted.ensureDeferred
async def test_recorded_login_does_not_open_the_keystore(
    arena: Arena, relay: MaliciousRelay
) -> None:
    """Registration and login send only the derived secret; it does not open the keystore
    (whose default passphrase is the password), and the password never crosses."""
    user, password = "ls-alice", "alice's long password"
    client = arena.client(user, register=True, password=password)
    await client.logged_in()
    await client.finish()
    [register] = relay.sent_by_clients(wire.Register, user=None)
    [login] = relay.sent_by_clients(wire.LoginPassword, user=None)
    assert register.password == login.password == login_secret(user, password)
    assert password.encode() not in relay.client_bytes()
    assert not _opens(arena, user, login.password)
    assert _opens(arena, user, password)  # the control: the password does open it

    # A relay lying "wrong password" gets no second try with the raw password.
    relay.frames.clear()
    _refuse_logins(relay)
    again = arena.client(user, password=password)
    exit = await again.wait_exit()
    assert exit.code == 1 and "login refused" in exit.stderr, exit
    assert password.encode() not in relay.client_bytes()
    assert len(relay.sent_by_clients(wire.LoginPassword)) == 1


@pytest_twisted.ensureDeferred
async def test_admin_created_account_logs_in_with_the_derived_secret(
    arena: Arena, relay: MaliciousRelay
) -> None:
    """``securechat-admin user add --password-file`` stores the hash of the same derived
    secret, so the new client (``--register`` takes the account over) logs in."""
    user, password = "ls-bob", "bob's admin-set password"
    out, err = io.StringIO(), io.StringIO()
    pw_file = arena.password_file(user, password)
    argv = ["--config", str(arena.config), "user", "add", user, "--password-file", str(pw_file)]
    assert admin.main(argv, out, err) == 0, err.getvalue()
    client = arena.client(user, register=True, password=password)
    await client.logged_in()
    await client.expect_text("info", "exists")
    await client.finish()
    assert password.encode() not in relay.client_bytes()


@pytest_twisted.ensureDeferred
async def test_legacy_account_and_keystore_move_to_the_derived_secret_once(
    arena: Arena, relay: MaliciousRelay
) -> None:
    """An account whose server hash is of the raw password, with a keystore from before:
    the next login sends the raw password once, turns the server's verifier into the
    derived secret and re-seals the keystore with its own label; from then on only the
    derived secret is sent, even to a relay that refuses it."""
    user, password = "ls-carol", "carol's old password"
    identity = IdentityKeyPair.generate()
    home = arena.root / "homes" / user
    state = KeystoreState(user, identity.private_bytes(), extra={"registered": True})
    write_legacy_keystore(home, password, state, KdfParams())
    db = arena.root / "data" / "securechat.sqlite3"
    with closing(sqlite3.connect(db, timeout=10)) as conn, conn:
        conn.execute(
            "INSERT INTO users (name, role, password_hash, identity_key, created) "
            "VALUES (?, 'user', ?, ?, 0)",
            (user, hash_password(password, "argon2id"), identity.public_bytes()),
        )

    client = arena.client(user, password=password)
    await client.logged_in()
    await client.expect_text("info", "no longer sent")
    await client.finish()
    secret = login_secret(user, password)
    logins = [m.password for m in relay.sent_by_clients(wire.LoginPassword, user=None)]
    assert logins == [secret, password]  # derived first (refused), then the old way once
    [change] = relay.sent_by_clients(wire.ChangePassword)
    assert (change.old, change.new) == (password, secret)
    assert Keystore.open(home, password).state.extra[DERIVED_LOGIN] is True

    relay.frames.clear()
    client = arena.client(user, password=password)
    await client.logged_in()
    await client.finish()
    assert [m.password for m in relay.sent_by_clients(wire.LoginPassword)] == [secret]
    assert password.encode() not in relay.client_bytes()

    relay.frames.clear()
    _refuse_logins(relay)
    exit = await arena.client(user, password=password).wait_exit()
    assert exit.code == 1, exit
    assert password.encode() not in relay.client_bytes()
