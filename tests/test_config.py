"""Tests for securechat.config: every bad value is one ConfigError naming the file and key.

The operator sees ``str(error)`` as the single line twistd prints, so each case checks the
message text, not just the exception type.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from securechat import tap
from securechat.config import KNOWN_BACKENDS, ServerConfig, load_config
from securechat.errors import ConfigError
from tests.conftest import ConfigWriter

REPO = Path(__file__).resolve().parent.parent

BAD_VALUES = [
    # (case id, TOML text, key the message must name)
    ("unknown section", "[serverr]\nport = 1\n", "[serverr]"),
    ("section not a table", "server = 5\n", "[server]"),
    ("unknown key", "[server]\nprot = 1\n", "[server] prot"),
    ("int as string", '[server]\nport = "8443"\n', "[server] port"),
    ("int as float", "[server]\nport = 8443.0\n", "[server] port"),
    ("bool as int", "[server]\nport = true\n", "[server] port"),
    ("number as string", '[store]\nqueue_ttl = "1d"\n', "[store] queue_ttl"),
    ("nan", "[store]\nqueue_ttl = nan\n", "[store] queue_ttl"),
    ("infinite", "[server]\nidle_timeout = inf\n", "[server] idle_timeout"),
    ("bool as string", '[tls]\nauto_generate = "yes"\n', "[tls] auto_generate"),
    ("path empty", '[tls]\ncert = ""\n', "[tls] cert"),
    ("path as number", "[store]\npath = 5\n", "[store] path"),
    ("list as string", '[auth]\nmethods = "password"\n', "[auth] methods"),
    ("list of ints", "[crypto]\nbackends = [1, 2]\n", "[crypto] backends"),
    ("string as list", '[policy]\nmessaging = ["anyone"]\n', "[policy] messaging"),
    ("negative int", "[server]\nmax_outbound_bytes = -1\n", "[server] max_outbound_bytes"),
    ("negative float", "[auth]\naccount_rate = -0.5\n", "[auth] account_rate"),
    ("port too big", "[server]\nport = 65536\n", "[server] port"),
    ("frame too small", "[server]\nmax_frame_bytes = 100\n", "[server] max_frame_bytes"),
    ("zero handshake timeout", "[server]\nhandshake_timeout = 0\n", "[server] handshake_timeout"),
    ("zero idle timeout", "[server]\nidle_timeout = 0\n", "[server] idle_timeout"),
    ("tls version", '[tls]\nmin_version = "1.1"\n', "[tls] min_version"),
    ("no hostnames", "[tls]\nhostnames = []\n", "[tls] hostnames"),
    ("bad hostname", '[tls]\nhostnames = ["bad host"]\n', "[tls] hostnames"),
    ("synchronous mode", '[store]\nsynchronous = "off"\n', "[store] synchronous"),
    ("zero queue limit", "[store]\nqueue_limit = 0\n", "[store] queue_limit"),
    ("zero batch", "[store]\nmax_batch = 0\n", "[store] max_batch"),
    ("no auth methods", "[auth]\nmethods = []\n", "[auth] methods"),
    ("unknown auth method", '[auth]\nmethods = ["password", "magic"]\n', "[auth] methods"),
    ("password hash", '[auth]\npassword_hash = "md5"\n', "[auth] password_hash"),
    ("pow bits", "[auth]\nregistration_pow_bits = 33\n", "[auth] registration_pow_bits"),
    ("no backends", "[crypto]\nbackends = []\n", "[crypto] backends"),
    ("unknown backend", '[crypto]\nbackends = ["ecdh", "rot13"]\n', "[crypto] backends"),
    (
        "default not enabled",
        '[crypto]\nbackends = ["rsa"]\ndefault_backend = "ecdh"\n',
        "[crypto] default_backend",
    ),
    ("messaging policy", '[policy]\nmessaging = "friends"\n', "[policy] messaging"),
    (
        "envelope larger than frame",
        "[policy]\nmax_envelope_bytes = 2000000\n",
        "[policy] max_envelope_bytes",
    ),
    ("syntax error", "[server\nport = 1\n", "(syntax)"),
    ("duplicate key", "[server]\nport = 1\nport = 2\n", "(syntax)"),
    ("not utf-8", "[server]\n# \udcff\n", "(syntax)"),
]


@pytest.mark.parametrize(
    ("text", "key"), [case[1:] for case in BAD_VALUES], ids=[case[0] for case in BAD_VALUES]
)
def test_bad_value_names_file_and_key(write_config: ConfigWriter, text: str, key: str) -> None:
    """Each bad value stops loading with ``FILE: KEY: problem`` on one line."""
    path = write_config(text="")
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: ")
    assert info.value.key == key and info.value.path == str(path)
    assert "\n" not in message


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    """A wrong --config path is reported as such."""
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match=r"absent\.toml: \(file\): cannot read"):
        load_config(path)


def test_directory_is_unreadable(tmp_path: Path) -> None:
    """Pointing --config at a directory is a config error, not an IsADirectoryError."""
    with pytest.raises(ConfigError, match=r"\(file\): cannot read"):
        load_config(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(write_config: ConfigWriter) -> None:
    """A file without read permission is reported with the OS reason."""
    path = write_config()
    path.chmod(0)
    try:
        with pytest.raises(ConfigError, match="Permission denied"):
            load_config(path)
    finally:
        path.chmod(0o600)


def test_options_turn_config_errors_into_one_line(
    write_config: ConfigWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad file never starts a server: exit 1 and one line naming the file and key."""
    path = write_config(text='[crypto]\nbackends = ["rot13"]\n')
    with pytest.raises(SystemExit):
        tap.Options().parseOptions(["--config", str(path)])
    [line] = capsys.readouterr().err.splitlines()
    assert str(path) in line and "[crypto] backends" in line


def test_shipped_config_loads() -> None:
    """etc/server.toml is valid and keeps the documented development defaults."""
    cfg = load_config(REPO / "etc" / "server.toml")
    assert isinstance(cfg, ServerConfig)
    assert cfg.server.host == "127.0.0.1"
    assert cfg.tls.min_version == "1.3" and cfg.tls.auto_generate
    assert cfg.crypto.default_backend in cfg.crypto.backends
    assert cfg.tls.ca == (REPO / "var" / "tls" / "ca.pem").resolve()


def test_relative_paths_resolve_against_the_config_file(write_config: ConfigWriter) -> None:
    """The server behaves the same whatever directory twistd is started from."""
    path = write_config({"store": {"path": "db/x.sqlite3"}})
    cfg = load_config(path)
    assert cfg.store.path == path.parent.resolve() / "db" / "x.sqlite3"
    assert cfg.tls.cert == path.parent.resolve() / "tls" / "server.pem"


def test_defaults_fill_missing_sections(write_config: ConfigWriter) -> None:
    """An empty file is a complete config; default paths sit next to the file."""
    path = write_config(text="")
    cfg = load_config(path)
    assert cfg.server.port == 8443
    assert cfg.store.path == path.parent.resolve() / "var" / "securechat.sqlite3"
    assert set(cfg.crypto.backends) == set(KNOWN_BACKENDS)


def test_values_are_converted(write_config: ConfigWriter) -> None:
    """Integers are accepted for float keys, lists become tuples, hostnames may be IPs."""
    cfg = load_config(
        write_config(
            {
                "server": {"idle_timeout": 30},
                "tls": {"hostnames": ["chat.example.org", "::1"]},
                "auth": {"methods": ["password", "certificate"]},
            }
        )
    )
    assert cfg.server.idle_timeout == 30.0 and isinstance(cfg.server.idle_timeout, float)
    assert cfg.tls.hostnames == ("chat.example.org", "::1")
    assert cfg.auth.methods == ("password", "certificate")
