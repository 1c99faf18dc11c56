"""``securechat-admin``: create the database and manage users and contacts from a shell.

It works on the same SQLite file as the running server, with the same schema and
migration code (:mod:`securechat.server.store.schema`) and the same queries
(:mod:`securechat.server.store.queries`), but synchronously and without a reactor: each
command is a handful of short transactions. WAL mode and a busy timeout let it write
while the server runs, so an operator never has to stop the relay to add a user.

Every failure an operator can cause (bad config, unknown user, existing name, unreadable
password file, locked database) ends as one line on stderr and a non-zero exit code,
never a traceback. Passwords are hashed before they reach the database and are never
printed.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from securechat import adminops
from securechat.config import ServerConfig, load_config
from securechat.errors import NoSuchUser, SecureChatError, UserExists
from securechat.server.store import queries, schema
from securechat.server.store.interface import ROLE_ADMIN, ROLE_USER

PROG = "securechat-admin"


class AdminError(SecureChatError):
    """The command cannot be carried out; the message says why."""


def build_parser() -> argparse.ArgumentParser:
    """The command line of the architecture's "Command-line contract"."""
    parser = argparse.ArgumentParser(prog=PROG, description="Manage a securechat relay.")
    parser.add_argument("--config", required=True, type=Path, help="the server's TOML config")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = commands.add_parser("init", help="create the database, or upgrade its schema")
    init.set_defaults(run=cmd_init)

    user = commands.add_parser("user", help="add, list or remove users")
    user_commands = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    add = user_commands.add_parser("add", help="create a user")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="give the user the admin role")
    add.add_argument(
        "--password-file",
        type=Path,
        help="read the password from the first line of this file (default: prompt on a "
        "terminal, otherwise no password: client-certificate login only, refused unless "
        "[auth] methods includes certificate)",
    )
    add.set_defaults(run=cmd_user_add)
    passwd = user_commands.add_parser(
        "passwd", help="set a user's password (a reset; the client derives the same secret)"
    )
    passwd.add_argument("name")
    passwd.add_argument("--password-file", type=Path,
                        help="read the password from the first line of this file "
                        "(default: prompt on a terminal)")  # fmt: skip
    passwd.set_defaults(run=cmd_user_passwd)
    user_commands.add_parser("list", help="list users").set_defaults(run=cmd_user_list)
    remove = user_commands.add_parser("remove", help="delete a user and everything queued")
    remove.add_argument("name")
    remove.set_defaults(run=cmd_user_remove)

    contact = commands.add_parser("contact", help="manage contacts")
    contact_commands = contact.add_subparsers(dest="contact_command", required=True)
    contact_add = contact_commands.add_parser("add", help="make two users accepted contacts")
    contact_add.add_argument("a")
    contact_add.add_argument("b")
    contact_add.set_defaults(run=cmd_contact_add)
    adminops.add_commands(commands)
    return parser


@contextlib.contextmanager
def _database(cfg: ServerConfig, must_exist: bool = True) -> Iterator[sqlite3.Connection]:
    """The configured database, opened (and migrated) like the server does it."""
    path = cfg.store.path
    if must_exist and not path.exists():
        raise AdminError(f"no database at {path}; run '{PROG} --config ... init' first")
    conn = schema.open_database(path, cfg.store.synchronous)
    try:
        yield conn
    finally:
        conn.close()


def cmd_init(cfg: ServerConfig, args: argparse.Namespace, out: TextIO) -> None:
    """Create the database file, or bring an existing one to the current schema."""
    path = cfg.store.path
    created = schema.prepare_file(path)
    conn = schema.connect(str(path), cfg.store.synchronous)
    try:
        old = schema.migrate(conn, str(path))
    finally:
        conn.close()
    latest = schema.PACKAGED.latest
    if created:
        print(f"created database {path} (schema version {latest})", file=out)
    elif old < latest:
        print(f"upgraded database {path} from schema version {old} to {latest}", file=out)
    else:
        print(f"database {path} is up to date (schema version {latest})", file=out)


def _read_password(args: argparse.Namespace) -> str | None:
    """The new user's password from a file or a terminal prompt; None for no password."""
    password_file: Path | None = args.password_file
    if password_file is not None:
        try:
            with password_file.open(encoding="utf-8") as f:
                password = f.readline().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as e:
            raise AdminError(f"cannot read password file {password_file}: {e}") from None
        if not password:
            raise AdminError(f"password file {password_file} has an empty first line")
        return password
    if not sys.stdin.isatty():
        return None
    try:
        first: str = getpass.getpass(f"Password for {args.name} (empty for none): ")
        if not first:
            return None
        if getpass.getpass("Repeat the password: ") != first:
            raise AdminError("the passwords do not match")
    except (EOFError, KeyboardInterrupt):
        raise AdminError("cancelled") from None
    return first


def cmd_user_add(cfg: ServerConfig, args: argparse.Namespace, out: TextIO) -> None:
    """Create a user, hashing the password (if any) with the configured scheme."""
    from securechat.server.auth import valid_username

    if not valid_username(args.name):
        raise AdminError(f"invalid user name {args.name!r}")
    role = ROLE_ADMIN if args.admin else ROLE_USER
    with _database(cfg) as conn:
        # Check first so an existing name fails before the (slow) prompt and hashing.
        if queries.get_user(conn, args.name) is not None:
            raise UserExists(args.name)
        password = _read_password(args)
        if password is None and "certificate" not in cfg.auth.methods:
            # Only a client certificate (CN = name) can log in to an account with neither
            # password nor identity key; without that method the account would be dead.
            raise AdminError(
                f"refusing to add {args.name} without a password: [auth] methods in "
                f"{args.config} does not include \"certificate\", so the account could never "
                f"log in (give --password-file, or enable certificate login)"
            )
        hashed = _stored_password(cfg, args.name, password) if password else None
        queries.add_user(conn, args.name, role, hashed, None, time.time())
    login = "password set" if hashed else "no password: client-certificate login only"
    print(f"added user {args.name} (role {role}, {login})", file=out)


def _stored_password(cfg: ServerConfig, name: str, password: str) -> str:
    """What the database keeps for ``password``: the server's hash of the login secret the
    client derives from it (:mod:`securechat.crypto.password_kdf`), never of the password
    itself, since clients never send it."""
    from securechat.crypto.password_kdf import login_secret, new_password_problem
    from securechat.server.passwords import hash_password

    problem = new_password_problem(name, password)
    if problem is not None:
        raise AdminError(problem)
    return hash_password(login_secret(name, password), cfg.auth.password_hash)


def cmd_user_passwd(cfg: ServerConfig, args: argparse.Namespace, out: TextIO) -> None:
    """Set (reset) a user's password; their live sessions go on, new logins need it."""
    with _database(cfg) as conn:
        if queries.get_user(conn, args.name) is None:
            raise NoSuchUser(args.name)
        password = _read_password(args)
        if password is None:
            raise AdminError("give the new password with --password-file (or on a terminal)")
        queries.set_password_hash(conn, args.name, _stored_password(cfg, args.name, password))
    print(f"password of {args.name} set", file=out)


def cmd_user_list(cfg: ServerConfig, args: argparse.Namespace, out: TextIO) -> None:
    """One tab-separated line per user: name, role, login, creation time (UTC)."""
    with _database(cfg) as conn:
        users = queries.list_users(conn)
    for u in users:
        login = "password" if u.password_hash else "publickey" if u.identity_key else "certificate"
        created = datetime.fromtimestamp(u.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        print(f"{u.name}\t{u.role}\t{login}\t{created}", file=out)


def cmd_user_remove(cfg: ServerConfig, args: argparse.Namespace, out: TextIO) -> None:
    """Delete a user with their keys, contacts, memberships and queued envelopes."""
    with _database(cfg) as conn:
        if not queries.remove_user(conn, args.name):
            raise NoSuchUser(args.name)
    print(f"removed user {args.name}", file=out)


def cmd_contact_add(cfg: ServerConfig, args: argparse.Namespace, out: TextIO) -> None:
    """Make two users accepted contacts without the request round trip."""
    with _database(cfg) as conn:
        queries.add_contact(conn, args.a, args.b)
    print(f"{args.a} and {args.b} are now contacts", file=out)


def _describe(error: Exception) -> str:
    """One line for the operator; the bare exceptions carry only a user name."""
    if isinstance(error, UserExists):
        return f"user {error} already exists"
    if isinstance(error, NoSuchUser):
        return f"no such user: {error}"
    if isinstance(error, sqlite3.Error):
        return f"database error: {error}"
    return str(error)


def main(
    argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Run one command; returns the process exit status (0 on success, 1 on error).

    :param out: where results go (stdout); :param err: where the error line goes (stderr).
    """
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    args = build_parser().parse_args(argv)
    run: Callable[[ServerConfig, argparse.Namespace, TextIO], None] = args.run
    try:
        run(load_config(args.config), args, out)
    except (SecureChatError, sqlite3.Error, OSError) as e:
        print(f"{PROG}: error: {_describe(e)}", file=err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
