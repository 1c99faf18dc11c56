"""``securechat-client``: the entry point (argument parsing, keystore, connection, stdio).

Every failure a user can cause (wrong password, unreachable server, a certificate that does
not verify, a bad flag) ends with one line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
import tomllib
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, cast

from twisted.application.internet import ClientService, backoffPolicy
from twisted.conch.insults.insults import ServerProtocol
from twisted.internet import stdio
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.task import deferLater, react
from twisted.python.failure import Failure

from securechat.client.chat import ChatClient
from securechat.client.console import HELP, ConsoleProtocol, Renderer
from securechat.client.history import DEFAULT_LIMIT
from securechat.client.home import HomeError, Location, locate, lock_home, read_ca
from securechat.client.keystore import Keystore, KeystoreError, WrongPassphrase
from securechat.client.network import LoginFailed, WireClientFactory, describe_failure
from securechat.client.preflight import password_verdict, refuse_backend, server_policy
from securechat.client.sessions import SessionManager
from securechat.client.terminal import TerminalConsole, raw_terminal, wants_terminal
from securechat.crypto.backends import backend_names
from securechat.crypto.identity import IdentityKeyPair
from securechat.crypto.password_kdf import login_secret
from securechat.tls import client_tls_options

PROG = "securechat-client"
CONFIG_KEYS = {
    "server": str, "ca": str, "user": str, "home": str, "backend": str, "json": bool,
    "password_file": str, "passphrase_file": str, "cert": str, "history": int,
}  # fmt: skip


class UsageProblem(Exception):
    """A problem with the command line or the files it names."""


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    ca: Path | None
    user: str
    #: ``--home``; None: the default place for this server (see :mod:`.home`).
    home: Path | None
    backend: str | None
    json: bool
    register: bool
    password: str | None
    passphrase: str
    cert: Path | None
    #: No ``--passphrase-file``: the keystore opens with the account password.
    passphrase_is_password: bool = False
    #: Messages kept per conversation in the keystore (0: none).
    history: int = DEFAULT_LIMIT


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="End-to-end encrypted chat on stdio.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="console commands (type them once logged in):\n" + HELP,
    )  # fmt: skip
    p.add_argument("--config", help="TOML file with defaults for these options")
    p.add_argument("--server", help="HOST:PORT of the relay")
    p.add_argument("--ca", help="CA certificate to verify the server (default: system trust)")
    p.add_argument("--user", help="your user name")
    p.add_argument("--password-file", help="file whose first line is the account password")
    p.add_argument("--passphrase-file", help="keystore passphrase (default: the password)")
    p.add_argument("--register", action="store_true", default=None, help="create the account")
    p.add_argument("--backend", choices=backend_names(), help="backend for new sessions")
    p.add_argument("--home", help="keystore directory (default: $XDG_DATA_HOME/securechat/"
                   "USER@ca-ID_PORT, ID naming the --ca key)")
    p.add_argument("--json", action="store_true", default=None, help="one JSON event per line")
    p.add_argument("--cert", help="PEM with client certificate and key (certificate login)")
    p.add_argument("--history", type=int, metavar="N",
                   help=f"messages kept per conversation in the keystore, for /history "
                        f"(default {DEFAULT_LIMIT}; 0 keeps none)")  # fmt: skip
    return p


def _read_first_line(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            line = f.readline().rstrip("\r\n")
    except OSError as e:
        raise UsageProblem(f"cannot read {what} file {path}: {e.strerror}") from None
    if not line:
        raise UsageProblem(f"{what} file {path} is empty")
    return line


def _config_defaults(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageProblem(f"cannot read config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageProblem(f"{path}: {e}") from None
    for key, value in data.items():
        if key not in CONFIG_KEYS:
            raise UsageProblem(f"{path}: unknown key {key!r}")
        if not isinstance(value, CONFIG_KEYS[key]):
            raise UsageProblem(f"{path}: {key} must be a {CONFIG_KEYS[key].__name__}")
    return data


def resolve(argv: list[str]) -> Settings:
    """Merge flags over the config file and read the secrets they name."""
    args = build_parser().parse_args(argv)
    conf = _config_defaults(args.config)

    def get(name: str) -> Any:
        value = getattr(args, name)
        return value if value is not None else conf.get(name)

    server, user = get("server"), get("user")
    if not server or not user:
        raise UsageProblem("--server HOST:PORT and --user NAME are required")
    host, _, port_text = str(server).rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageProblem(f"--server must be HOST:PORT, not {server!r}")
    port = int(port_text)
    password: str | None = None
    if get("password_file"):
        password = _read_first_line(get("password_file"), "password")
    elif sys.stdin.isatty():
        password = getpass.getpass(f"password for {user}: ")
        if not password:
            raise UsageProblem("an empty password is not allowed")
    from_password = not get("passphrase_file")
    if not from_password:
        passphrase = _read_first_line(get("passphrase_file"), "passphrase")
    elif password is not None:
        passphrase = password
    else:
        raise UsageProblem("give --password-file (or --passphrase-file): stdin is for chat")
    backend = get("backend")
    if backend is not None and backend not in backend_names():
        raise UsageProblem(f"unknown backend {backend!r}")
    home = Path(get("home")) if get("home") else None
    history = get("history")
    if history is None:
        history = DEFAULT_LIMIT
    elif not 0 <= history <= 100_000:
        raise UsageProblem(f"--history must be between 0 and 100000, not {history}")
    return Settings(
        host=host.strip("[]"), port=port, ca=Path(get("ca")) if get("ca") else None, user=user,
        home=home, backend=backend, json=bool(get("json")), register=bool(get("register")),
        password=password, passphrase=passphrase, cert=Path(get("cert")) if get("cert") else None,
        passphrase_is_password=from_password, history=history,
    )  # fmt: skip


async def open_keystore(s: Settings, loc: Location, endpoint: Any) -> Keystore:
    """Open the keystore, or create it for ``--register`` once the server's policy allows.

    A keystore that the account password (the default passphrase) does not open makes the
    client ask the server about the password, so the one line says which of the two is wrong.
    """
    if s.register and not Keystore.exists(loc.home):
        try:
            welcome = await server_policy(endpoint)
        except Exception as e:  # any connect failure becomes one line
            why = describe_failure(Failure(e))  # type: ignore[no-untyped-call]
            raise UsageProblem(f"cannot connect to {s.host}:{s.port}: {why}") from None
        problem = refuse_backend(welcome, s.backend)
        if problem is not None:
            raise UsageProblem(f"{problem}; nothing was created")
        _lock(loc)
        identity = IdentityKeyPair.generate()
        return Keystore.create(loc.home, s.passphrase, s.user, identity.private_bytes())
    if not Keystore.exists(loc.home):
        raise UsageProblem(loc.describe_missing(s.user))
    _lock(loc)
    try:
        ks = Keystore.open(loc.home, s.passphrase)
    except WrongPassphrase:
        if not s.passphrase_is_password or s.password is None:
            raise
        try:
            verdict = await password_verdict(endpoint, s.user, login_secret(s.user, s.password))
        except Exception:  # the server cannot tell: the keystore's own answer stands
            raise WrongPassphrase(
                f"the password does not open the keystore {Keystore.file_for(loc.home)} "
                f"(and the server at {s.host}:{s.port} could not be asked whether it is right)"
            ) from None
        if verdict is not None:
            raise UsageProblem(verdict) from None
        raise UsageProblem(
            f"the server accepts the password, but it does not open the keystore "
            f"{Keystore.file_for(loc.home)}: was it made with --passphrase-file, or before "
            f"the password changed? (give that passphrase with --passphrase-file)"
        ) from None
    if ks.state.user != s.user:
        raise KeystoreError(f"the keystore in {loc.home} belongs to {ks.state.user!r}")
    return ks


def _read_bytes(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as e:
        raise UsageProblem(f"cannot read {what} {path}: {e.strerror}") from None


def _lock(loc: Location) -> None:
    try:
        lock_home(loc.home)  # held until the process ends
    except HomeError as e:
        raise UsageProblem(str(e)) from None


async def run(reactor: Any, s: Settings) -> None:
    try:
        ca_pem = read_ca(s.ca) if s.ca is not None else None
        tls = client_tls_options(s.host, ca_pem, _read_bytes(s.cert, "cert"))
        loc = locate(s.user, s.host, s.port, ca_pem, s.home)
    except (ValueError, HomeError) as e:
        raise UsageProblem(str(e)) from None
    if loc.moved_from is not None:
        sys.stderr.write(f"{PROG}: moved the keystore from {loc.moved_from} to {loc.home} "
                         "(found by the server's CA now, however the server is named)\n")
    endpoint = wrapClientTLS(tls, HostnameEndpoint(reactor, s.host, s.port, timeout=10))
    keystore = await open_keystore(s, loc, endpoint)
    done: Deferred[int] = Deferred()

    def stop(code: int) -> None:
        if not done.called:
            done.callback(code)

    client = ChatClient(
        SessionManager(keystore), password=s.password, register=s.register,
        backend=s.backend, clock=time.time, stop=stop, call_later=reactor.callLater,
        history_limit=s.history,
    )  # fmt: skip
    with ExitStack() as terminal_mode:
        protocol: Any
        if wants_terminal(s.json):
            terminal_mode.enter_context(raw_terminal(sys.stdin.fileno()))
            terminal = TerminalConsole(client, clock=time.time)
            protocol = ServerProtocol(lambda: terminal)  # type: ignore[no-untyped-call]
        else:
            protocol = ConsoleProtocol(client, lambda write: Renderer(write, s.json))
        stdio_transport: Any = cast(Any, stdio).StandardIO(protocol, reactor=reactor)
        stdio_transport.pauseProducing()  # no input until logged in
        client.renderer = terminal.renderer if wants_terminal(s.json) else protocol.renderer
        await _chat(reactor, s, client, endpoint, stdio_transport, done)


async def _chat(
    reactor: Any, s: Settings, client: ChatClient, endpoint: Any, stdio_transport: Any,
    done: Deferred[int],
) -> None:  # fmt: skip
    factory = WireClientFactory(client.connected, client.push, client.lost)
    service = ClientService(endpoint, factory, retryPolicy=backoffPolicy(0.5, 30.0))
    service.startService()
    try:
        await service.whenConnected(failAfterFailures=1)
        await client.first_login
    except LoginFailed as e:
        await _stop_soon(reactor, service)
        raise UsageProblem(str(e)) from None
    except Exception as e:  # any connect failure becomes one line
        await _stop_soon(reactor, service)
        raise UsageProblem(f"cannot connect to {s.host}:{s.port}: {e}") from None
    stdio_transport.resumeProducing()
    code = await done
    await service.stopService()
    if code:
        raise SystemExit(code)


async def _stop_soon(reactor: Any, service: ClientService) -> None:
    """Stop ``service`` from a fresh reactor turn: a failed first connection is reported
    from inside ClientService's state machine, which refuses a re-entrant ``stop``."""
    await deferLater(reactor, 0, lambda: None)
    await service.stopService()


def main(argv: list[str] | None = None) -> NoReturn:
    try:
        settings = resolve(sys.argv[1:] if argv is None else argv)
    except UsageProblem as e:
        _fail(str(e))

    async def _go(reactor: Any) -> None:
        try:
            await run(reactor, settings)
        except (UsageProblem, KeystoreError) as e:
            _fail_soft(str(e))
            raise SystemExit(1) from None

    react(_go)


def _fail(text: str) -> NoReturn:
    _fail_soft(text)
    raise SystemExit(1)


def _fail_soft(text: str) -> None:
    sys.stderr.write(f"{PROG}: error: {text}\n")
    sys.stderr.flush()
