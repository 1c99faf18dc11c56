"""End-to-end: what a user gets wrong on the command line, said in one line by real processes.

Each case runs the real ``securechat-client`` (or ``securechat-admin``) against the real
daemon and checks exit status 1, exactly one line on stderr, no traceback, and that nothing
was created that the mistake should not create.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
import pytest_twisted

from securechat.client.home import default_home, legacy_home
from securechat.client.keystore import Keystore
from tests.e2e.clientproc import ClientExit, ClientProcess, client_command
from tests.e2e.test_client_e2e import HASH, Relay, _block, _reactor

pytest.importorskip("securechat.server.protocol")


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    r = Relay(
        tmp_path_factory.mktemp("relay-cli"), {"auth": HASH, "crypto": {"backends": ["ecdh"]}}
    )
    _block(r.start())
    yield r
    if r.daemon is not None:
        _block(r.stop())


def _spawn(r: Relay, name: str, *args: str, env: dict[str, str] | None = None) -> ClientProcess:
    """A client with exactly ``args`` after the command (no implied --home)."""
    proto = ClientProcess(_reactor(), name)
    argv = [*client_command(), *args]
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    _reactor().spawnProcess(proto, argv[0], argv, env=full_env, path=str(r.root))
    return proto


def _base(r: Relay, user: str, pw: Path, host: str = "127.0.0.1") -> tuple[str, ...]:
    return ("--server", f"{host}:{r.port}", "--ca", str(r.ca), "--user", user,
            "--password-file", str(pw), "--json")  # fmt: skip


def _one_line(exit: ClientExit) -> str:
    assert exit.code == 1, exit
    assert "Traceback" not in exit.stderr, exit.stderr
    [line] = exit.stderr_lines
    assert line.startswith("securechat-client: error: "), line
    return line


def _users(r: Relay) -> set[str]:
    with closing(sqlite3.connect(r.db, timeout=10)) as db:
        return {row[0] for row in db.execute("SELECT name FROM users")}


@pytest_twisted.ensureDeferred
async def test_ca_file_that_is_not_a_certificate(relay: Relay) -> None:
    r = relay
    bad = r.root / "not-a-ca.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    home = r.home("cli-ca")
    c = _spawn(r, "cli-ca", "--server", f"127.0.0.1:{r.port}", "--ca", str(bad), "--user",
               "cli-ca", "--password-file", str(r.password_file("cli-ca")), "--home", str(home),
               "--register")  # fmt: skip
    line = _one_line(await c.wait_exit())
    assert f"--ca {bad} is not a PEM certificate" in line
    assert not home.exists() and "cli-ca" not in _users(r)


@pytest_twisted.ensureDeferred
async def test_wrong_password_is_login_refused(relay: Relay) -> None:
    """The keystore opens with the password; a wrong one is the server's "login refused"."""
    r = relay
    c = r.client("cli-pw", register=True)
    await c.logged_in()
    await c.finish()
    wrong = r.client("cli-pw", password="not the password")
    line = _one_line(await wrong.wait_exit())
    assert "login refused: wrong user name or password" in line
    assert "keystore" not in line and "passphrase" not in line


@pytest_twisted.ensureDeferred
async def test_right_password_that_does_not_open_the_keystore(relay: Relay) -> None:
    """Made with --passphrase-file, opened without it: the server accepts the password, so
    the line says the keystore is the problem and how to open it."""
    r = relay
    pp = r.root / "cli-pp.passphrase"
    pp.write_text("a separate keystore passphrase\n")
    c = r.client("cli-pp", register=True, extra=("--passphrase-file", str(pp)))
    await c.logged_in()
    await c.finish()
    line = _one_line(await r.client("cli-pp").wait_exit())
    assert "the server accepts the password, but it does not open the keystore" in line
    assert "--passphrase-file" in line


@pytest_twisted.ensureDeferred
async def test_keystore_found_under_another_spelling_of_the_server(
    relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Registered as localhost, logged in as 127.0.0.1: one keystore, keyed by the CA."""
    r = relay
    monkeypatch.setenv("XDG_DATA_HOME", str(r.root / "xdg"))
    xdg = {"XDG_DATA_HOME": str(r.root / "xdg")}
    pw = r.password_file("cli-host")
    first = _spawn(r, "cli-host", *_base(r, "cli-host", pw, "localhost"), "--register", env=xdg)
    await first.logged_in()
    await first.finish()
    second = _spawn(r, "cli-host", *_base(r, "cli-host", pw, "127.0.0.1"), env=xdg)
    await second.logged_in()
    await second.finish()
    homes = list((r.root / "xdg" / "securechat").iterdir())
    assert homes == [default_home("cli-host", "localhost", r.port, r.ca.read_bytes())]


@pytest_twisted.ensureDeferred
async def test_legacy_keystore_is_moved_and_missing_one_says_where(
    relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = relay
    xdg_dir = r.root / "xdg-legacy"
    monkeypatch.setenv("XDG_DATA_HOME", str(xdg_dir))  # for legacy_home/default_home here
    xdg = {"XDG_DATA_HOME": str(xdg_dir)}
    pw = r.password_file("cli-old")
    old = legacy_home("cli-old", "localhost", r.port)
    made = _spawn(r, "cli-old", *_base(r, "cli-old", pw, "localhost"), "--register",
                  "--home", str(old), env=xdg)  # fmt: skip
    await made.logged_in()
    await made.finish()
    # Another user, never registered: the error names every place it looked.
    missing = _spawn(r, "cli-none", *_base(r, "cli-none", pw), env=xdg)
    line = _one_line(await missing.wait_exit())
    new_place = default_home("cli-none", "127.0.0.1", r.port, r.ca.read_bytes())
    assert f"no keystore for cli-none: looked in {Keystore.file_for(new_place)}" in line
    assert "--register" in line
    # The legacy keystore moves on first use under the spelling that made it.
    moved = _spawn(r, "cli-old", *_base(r, "cli-old", pw, "localhost"), env=xdg)
    await moved.logged_in()
    result = await moved.finish()
    new_home = default_home("cli-old", "localhost", r.port, r.ca.read_bytes())
    assert f"moved the keystore from {old} to {new_home}" in result.stderr
    assert Keystore.exists(new_home) and not old.exists()


@pytest_twisted.ensureDeferred
async def test_backend_not_allowed_is_said_before_anything_is_created(relay: Relay) -> None:
    r = relay
    c = r.client("cli-rsa", register=True, backend="rsa")
    line = _one_line(await c.wait_exit())
    assert "the server does not allow backend 'rsa' (allowed: ecdh); nothing was created" in line
    assert not r.home("cli-rsa").exists()
    assert "cli-rsa" not in _users(r)


def test_admin_refuses_a_password_less_account_without_certificate_login(
    tmp_path: Path,
) -> None:
    from tests.conftest import merged_sections, toml_text

    config = tmp_path / "server.toml"
    config.write_text(toml_text(merged_sections({"auth": {"password_hash": "scrypt"}})))
    admin = [sys.executable, "-c", "from securechat.admin import main; raise SystemExit(main())"]
    init = subprocess.run([*admin, "--config", str(config), "init"], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
    assert init.returncode == 0, init.stderr
    add = subprocess.run([*admin, "--config", str(config), "user", "add", "root", "--admin"],
                         capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)  # fmt: skip
    assert add.returncode == 1 and add.stdout == ""
    [line] = add.stderr.splitlines()
    assert line.startswith("securechat-admin: error: refusing to add root without a password")


@pytest_twisted.ensureDeferred
async def test_second_login_replaces_the_first_which_says_so(relay: Relay) -> None:
    """One connection per user: the older client gets one clear error and exits 1 (it does
    not reconnect and push the newer one out); a second client on the same keystore is
    refused before it connects."""
    r = relay
    first = r.client("cli-twice", register=True)
    await first.logged_in()
    # The same account from a copy of the keystore (another device restored from a backup).
    copy = r.root / "homes" / "cli-twice-copy"
    shutil.copytree(r.home("cli-twice"), copy, ignore=shutil.ignore_patterns("*.lock"))
    second = _spawn(r, "cli-twice-2", *_base(r, "cli-twice", r.password_file("cli-twice")),
                    "--home", str(copy))  # fmt: skip
    await second.logged_in()
    error = await first.expect("error", code="replaced")
    assert "cli-twice logged in again from another client or device" in error["text"]
    assert (await first.wait_exit()).code == 1
    # A third client on the second's keystore while it runs: refused, one line.
    third = _spawn(r, "cli-twice-3", *_base(r, "cli-twice", r.password_file("cli-twice")),
                   "--home", str(copy))  # fmt: skip
    line = _one_line(await third.wait_exit())
    assert f"the keystore in {copy} is in use by another securechat-client" in line
    await second.finish()
