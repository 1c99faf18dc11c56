"""securechat-admin, run in-process against a temporary config and database.

Checks the command-line contract (init, user add/list/remove, contact add), that the
passwords it stores are real hashes the server can verify, and that every operator
mistake ends as one error line and a non-zero exit status rather than a traceback.
"""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import pytest

from securechat import admin
from securechat.crypto.password_kdf import login_secret
from securechat.server.passwords import verify_password
from securechat.server.store import queries, schema
from tests.conftest import ConfigWriter


class Run:
    """Runs ``admin.main`` with captured output for one config file."""

    def __init__(self, config: Path) -> None:
        self.config = config

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        status = admin.main(["--config", str(self.config), *argv], out, err)
        return status, out.getvalue(), err.getvalue()


@pytest.fixture
def config(write_config: ConfigWriter) -> Path:
    # scrypt keeps each hash in these tests cheap enough; certificate login lets the tests
    # add password-less accounts.
    methods = ["password", "publickey", "certificate"]
    return write_config({"auth": {"password_hash": "scrypt", "methods": methods}})


@pytest.fixture
def run(config: Path) -> Run:
    return Run(config)


@pytest.fixture
def db_path(config: Path) -> Path:
    return config.parent / "data" / "securechat.sqlite3"


@pytest.fixture
def initialised(run: Run) -> Run:
    assert run("init")[0] == 0
    return run


def users_in(db_path: Path) -> dict[str, tuple[str, str | None]]:
    conn = schema.open_database(db_path)
    try:
        return {u.name: (u.role, u.password_hash) for u in queries.list_users(conn)}
    finally:
        conn.close()


def test_init_creates_then_reports_up_to_date(run: Run, db_path: Path) -> None:
    """init says where it created the database, and is harmless to repeat."""
    status, out, err = run("init")
    assert (status, err) == (0, "")
    assert out == f"created database {db_path} (schema version {schema.PACKAGED.latest})\n"
    assert db_path.stat().st_mode & 0o777 == 0o600
    status, out, _ = run("init")
    assert status == 0 and "up to date" in out


def test_init_upgrades_an_old_file(run: Run, db_path: Path) -> None:
    """init on an older schema upgrades it and says from which version."""
    db_path.parent.mkdir()
    old = schema.SchemaFiles(schema.PACKAGED.read, 1)
    schema.open_database(db_path, files=old).close()
    status, out, _ = run("init")
    assert status == 0
    assert out == f"upgraded database {db_path} from schema version 1 to 3\n"


def test_user_add_with_password_file(initialised: Run, db_path: Path, tmp_path: Path) -> None:
    """The first line of the file, without its newline, becomes a verifiable hash."""
    pw = tmp_path / "pw"
    pw.write_text("correct horse battery\nsecond line ignored\n")
    status, out, err = initialised("user", "add", "alice", "--password-file", str(pw))
    assert (status, err) == (0, "")
    assert out == "added user alice (role user, password set)\n"
    role, stored = users_in(db_path)["alice"]
    assert role == "user" and stored is not None and stored.startswith("$scrypt$")
    # The hash of the login secret the client derives (and sends), never of the password:
    # what the relay receives and keeps cannot open a keystore.
    assert verify_password(stored, login_secret("alice", "correct horse battery"))
    assert not verify_password(stored, "correct horse battery")
    assert "correct horse" not in out


def test_user_passwd_sets_a_new_derived_password(
    initialised: Run, db_path: Path, tmp_path: Path
) -> None:
    """``user passwd`` resets a password (accounts made before derived logins, forgotten
    passwords); unknown users and too-short passwords are refused with one line."""
    pw = tmp_path / "pw"
    pw.write_text("first password\n")
    initialised("user", "add", "alice", "--password-file", str(pw))
    pw.write_text("second password\n")
    status, out, err = initialised("user", "passwd", "alice", "--password-file", str(pw))
    assert (status, out, err) == (0, "password of alice set\n", "")
    stored = users_in(db_path)["alice"][1]
    assert stored is not None and verify_password(stored, login_secret("alice", "second password"))
    status, _, err = initialised("user", "passwd", "nobody", "--password-file", str(pw))
    assert status == 1 and "nobody" in err
    pw.write_text("short\n")
    status, _, err = initialised("user", "passwd", "alice", "--password-file", str(pw))
    assert (status, err) == (
        1, "securechat-admin: error: the password must have at least 8 characters\n"
    )  # fmt: skip


def test_user_add_admin_without_password(initialised: Run, db_path: Path) -> None:
    """Without a file and without a terminal the user has no password, and is told so."""
    status, out, _ = initialised("user", "add", "root", "--admin")
    assert status == 0
    assert out == "added user root (role admin, no password: client-certificate login only)\n"
    assert users_in(db_path)["root"] == ("admin", None)


def test_user_add_without_password_refused_without_certificate_login(
    write_config: ConfigWriter,
) -> None:
    """With certificate login disabled a password-less account could never log in: refused,
    one line, nothing stored."""
    config = write_config({"auth": {"password_hash": "scrypt"}}, name="nocert.toml")
    db_path = config.parent / "data" / "securechat.sqlite3"
    run = Run(config)
    assert run("init")[0] == 0
    status, out, err = run("user", "add", "root", "--admin")
    assert (status, out) == (1, "")
    [line] = err.splitlines()
    assert line.startswith("securechat-admin: error: refusing to add root without a password")
    assert str(config) in line and "certificate" in line and "--password-file" in line
    assert "root" not in users_in(db_path)


def test_user_add_prompts_on_a_terminal(
    initialised: Run, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a TTY the password is asked twice; a mismatch stores nothing."""
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    answers = iter(["s3cret pass", "s3cret pass", "one", "other"])
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))
    assert initialised("user", "add", "bob")[0] == 0
    stored = users_in(db_path)["bob"][1]
    assert stored is not None and verify_password(stored, login_secret("bob", "s3cret pass"))
    status, _, err = initialised("user", "add", "carol")
    assert (status, err) == (1, "securechat-admin: error: the passwords do not match\n")
    assert "carol" not in users_in(db_path)


def test_user_list_and_remove(initialised: Run, tmp_path: Path) -> None:
    """list prints one tab-separated line per user; remove deletes exactly one."""
    pw = tmp_path / "pw"
    pw.write_text("pw-for-bob")
    initialised("user", "add", "bob", "--password-file", str(pw))
    initialised("user", "add", "alice", "--admin")
    status, out, _ = initialised("user", "list")
    lines = [line.split("\t") for line in out.splitlines()]
    assert status == 0
    assert [row[:3] for row in lines] == [
        ["alice", "admin", "certificate"],
        ["bob", "user", "password"],
    ]
    assert all(row[3].endswith("Z") for row in lines)
    assert initialised("user", "remove", "bob") == (0, "removed user bob\n", "")
    assert initialised("user", "list")[1].startswith("alice\tadmin")
    assert len(initialised("user", "list")[1].splitlines()) == 1


def test_contact_add(initialised: Run, db_path: Path) -> None:
    """contact add makes both users accepted contacts of each other."""
    initialised("user", "add", "alice")
    initialised("user", "add", "bob")
    assert initialised("contact", "add", "alice", "bob") == (
        0,
        "alice and bob are now contacts\n",
        "",
    )
    conn = schema.open_database(db_path)
    try:
        assert queries.are_contacts(conn, "bob", "alice")
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["user", "remove", "ghost"], "no such user: ghost"),
        (["contact", "add", "alice", "ghost"], "no such user: ghost"),
        (["user", "add", "alice"], "user alice already exists"),
        (["user", "add", "Not Valid!"], "invalid user name 'Not Valid!'"),
        (["user", "add", "x", "--password-file", "/nonexistent/pw"], "cannot read password"),
    ],
)
def test_operator_errors(initialised: Run, argv: list[str], message: str) -> None:
    """Mistakes give exit status 1 and a single error line on stderr, nothing on stdout."""
    initialised("user", "add", "alice")
    status, out, err = initialised(*argv)
    assert (status, out) == (1, "")
    assert err.startswith(f"securechat-admin: error: {message}")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_commands_need_init(run: Run, db_path: Path) -> None:
    """Before init, user commands say how to create the database instead of creating one."""
    status, _, err = run("user", "list")
    assert status == 1
    assert err == (
        f"securechat-admin: error: no database at {db_path}; "
        "run 'securechat-admin --config ... init' first\n"
    )
    assert not db_path.exists()


def test_bad_config(write_config: ConfigWriter) -> None:
    """A config error is reported as the loader's one line (file, key, problem)."""
    bad = write_config({"store": {"synchronous": "sometimes"}}, name="bad.toml")
    status, out, err = Run(bad)("init")
    assert (status, out) == (1, "")
    assert err.startswith(f"securechat-admin: error: {bad}: [store] synchronous:")
    assert err.count("\n") == 1
    status, _, err = Run(bad.parent / "missing.toml")("user", "list")
    assert status == 1 and "cannot read" in err


def test_corrupt_database(run: Run, db_path: Path) -> None:
    """A damaged database file is an error line, and the file is left as it was."""
    db_path.parent.mkdir()
    db_path.write_bytes(b"not sqlite" * 500)
    status, _, err = run("init")
    assert status == 1 and "securechat database (file is not a database)" in err
    assert db_path.read_bytes() == b"not sqlite" * 500


def test_locked_database(initialised: Run, db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the server held the write lock too long, the tool fails cleanly."""
    original = schema.open_database
    monkeypatch.setattr(
        schema,
        "open_database",
        lambda path, sync="full": original(path, sync, busy_timeout=0.05),
    )
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        status, _, err = initialised("user", "add", "alice")
    finally:
        other.close()
    assert status == 1 and "database is locked" in err


def test_parser_matches_contract() -> None:
    """Missing arguments are argparse usage errors (status 2), not tracebacks."""
    with pytest.raises(SystemExit) as info:
        admin.main(["--config", "x.toml", "user"], io.StringIO(), io.StringIO())
    assert info.value.code == 2
