"""``securechat-client`` settings: flags over the config file, secrets files, one-line errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from securechat.client import main as main_mod
from securechat.client.main import UsageProblem, main, resolve


@pytest.fixture
def pw(tmp_path: Path) -> Path:
    path = tmp_path / "alice.pw"
    path.write_text("s3cret password\nignored second line\n")
    return path


def base(pw: Path, *extra: str) -> list[str]:
    return ["--server", "chat.example:7443", "--user", "alice", "--password-file", str(pw), *extra]


def test_flags_are_read(pw: Path, tmp_path: Path) -> None:
    s = resolve(base(pw, "--ca", "ca.pem", "--backend", "rsa", "--home", str(tmp_path), "--json"))
    assert (s.host, s.port, s.user) == ("chat.example", 7443, "alice")
    assert (s.password, s.passphrase) == ("s3cret password", "s3cret password")
    assert (s.ca, s.home, s.backend, s.json, s.register) == (
        Path("ca.pem"), tmp_path, "rsa", True, False,
    )  # fmt: skip


def test_separate_passphrase_file(pw: Path, tmp_path: Path) -> None:
    pp = tmp_path / "pp"
    pp.write_text("keystore only\r\n")
    s = resolve(base(pw, "--passphrase-file", str(pp)))
    assert (s.password, s.passphrase) == ("s3cret password", "keystore only")


def test_ipv6_server_and_no_home(pw: Path) -> None:
    """Without --home the keystore's place is chosen once the CA is read (see test_home)."""
    s = resolve(["--server", "[::1]:443", "--user", "bob", "--password-file", str(pw)])
    assert (s.host, s.port, s.home) == ("::1", 443, None)
    assert s.passphrase_is_password


def test_config_gives_defaults_and_flags_win(pw: Path, tmp_path: Path) -> None:
    conf = tmp_path / "client.toml"
    conf.write_text(
        f'server = "relay.example:9000"\nuser = "carol"\npassword_file = "{pw}"\n'
        'backend = "dh"\njson = true\n'
    )
    s = resolve(["--config", str(conf)])
    assert (s.host, s.port, s.user) == ("relay.example", 9000, "carol")
    assert (s.backend, s.json) == ("dh", True)
    s = resolve(["--config", str(conf), "--user", "dave", "--backend", "ecdh"])
    assert (s.user, s.backend, s.host) == ("dave", "ecdh", "relay.example")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--user", "alice"], "--server HOST:PORT and --user NAME are required"),
        (["--server", "h:1"], "--server HOST:PORT and --user NAME are required"),
        (["--server", "localhost", "--user", "a"], "--server must be HOST:PORT, not 'localhost'"),
        (["--server", "h:http", "--user", "a"], "--server must be HOST:PORT"),
        (["--server", "h:0", "--user", "a"], "--server must be HOST:PORT"),
        (["--server", "h:65536", "--user", "a"], "--server must be HOST:PORT"),
        (["--server", ":7443", "--user", "a"], "--server must be HOST:PORT"),
    ],
)
def test_bad_server_or_user(argv: list[str], message: str) -> None:
    with pytest.raises(UsageProblem) as e:
        resolve(argv)
    assert str(e.value).startswith(message)


def test_unreadable_or_empty_password_file(tmp_path: Path, pw: Path) -> None:
    missing = tmp_path / "nope.pw"
    with pytest.raises(UsageProblem, match=r"cannot read password file .*nope\.pw: No such file"):
        resolve(base(missing))
    empty = tmp_path / "empty.pw"
    empty.write_text("\n")
    with pytest.raises(UsageProblem, match=r"password file .* is empty"):
        resolve(base(empty))
    with pytest.raises(UsageProblem, match="cannot read passphrase file"):
        resolve(base(pw, "--passphrase-file", str(tmp_path)))


def test_no_secret_and_stdin_is_for_chat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    with pytest.raises(UsageProblem, match="give --password-file"):
        resolve(["--server", "h:1", "--user", "a"])


@pytest.mark.parametrize(
    "text, message",
    [
        ('colour = "blue"\n', "unknown key 'colour'"),
        ('json = "yes"\n', "json must be a bool"),
        ("server = 7443\n", "server must be a str"),
        ("server = \n", "Invalid value"),
    ],
)
def test_bad_config_file(tmp_path: Path, text: str, message: str) -> None:
    conf = tmp_path / "client.toml"
    conf.write_text(text)
    with pytest.raises(UsageProblem, match=message) as e:
        resolve(["--config", str(conf), "--server", "h:1", "--user", "a"])
    assert str(e.value).startswith(str(conf))


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(UsageProblem, match=r"cannot read config .*: No such file"):
        resolve(["--config", str(tmp_path / "none.toml")])


def test_main_prints_one_line_and_exits_1(capsys: pytest.CaptureFixture[str], pw: Path) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--server", "nohost", "--user", "alice", "--password-file", str(pw)])
    assert e.value.code == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "securechat-client: error: --server must be HOST:PORT, not 'nohost'\n"


def test_main_reports_a_keystore_problem_in_one_line(
    capsys: pytest.CaptureFixture[str], pw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No keystore and no --register: the error comes from inside the reactor run."""
    monkeypatch.setattr(main_mod, "react", _run_once)
    with pytest.raises(SystemExit) as e:
        main(base(pw, "--home", str(tmp_path / "home")))
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("securechat-client: error: no keystore for alice: looked in ")
    assert "--register" in err and "Traceback" not in err


def _run_once(main_function: object) -> None:
    """``task.react`` without stopping the global reactor: run the coroutine to its end."""
    from twisted.internet import defer

    failures: list[BaseException] = []
    from twisted.internet import reactor

    d = defer.ensureDeferred(main_function(reactor))  # type: ignore[operator]
    d.addErrback(lambda f: failures.append(f.value))
    assert d.called, "run() should fail before it needs the reactor"
    if failures:
        raise failures[0]


def test_help_lists_the_console_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        resolve(["--help"])
    out = capsys.readouterr().out
    for command in ("/msg USER|#ROOM TEXT", "/chat", "/verify", "/trust", "/quit"):
        assert command in out
    assert "Trust marks" in out


def test_history_limit_flag(pw: Path) -> None:
    assert resolve(base(pw)).history == 200
    assert resolve(base(pw, "--history", "0")).history == 0
    with pytest.raises(UsageProblem, match="--history must be between 0 and 100000"):
        resolve(base(pw, "--history", "-1"))
