"""The server's configuration: one TOML file loaded into frozen dataclasses.

Every value is checked here, once, so the rest of the server can trust its config object
and a bad file stops ``twistd`` with a single line naming the file and the key.
Relative paths are resolved against the directory of the config file, so the server
behaves the same whatever directory it is started from.
"""

from __future__ import annotations

import ipaddress
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from securechat.crypto.backends import DEFAULT_BACKEND, SPECS, backend_names
from securechat.errors import ConfigError

#: Key-agreement backends that exist: read from their specs (a data-only module, so the
#: server still loads no crypto implementation).
KNOWN_BACKENDS = backend_names()
#: Per backend, what the relay checks published keys against and when it asks a client
#: for more one-time prekeys (also from the specs, so that client and server agree).
PUBLIC_KEY_BYTES = {name: s.public_bytes for name, s in SPECS.items()}
ONE_TIME_LOW = {name: s.one_time_low for name, s in SPECS.items()}
AUTH_METHODS = ("password", "publickey", "certificate")
PASSWORD_HASHES = ("argon2id", "scrypt")
MESSAGING_POLICIES = ("anyone", "contacts")
TLS_VERSIONS = ("1.2", "1.3")
SYNCHRONOUS_MODES = ("full", "normal")
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class ServerSection:
    """``[server]``: where to listen and the per-connection limits."""

    host: str = "127.0.0.1"
    port: int = 8443
    max_frame_bytes: int = 1 << 20
    handshake_timeout: float = 10.0
    idle_timeout: float = 600.0
    max_outbound_bytes: int = 4 << 20
    prelogin_max_frame_bytes: int = 16 << 10
    max_connections_per_address: int = 256
    max_pending_per_address: int = 32


@dataclass(frozen=True)
class TLSSection:
    """``[tls]``: certificate material; generated on first start when ``auto_generate``."""

    auto_generate: bool = True
    cert: Path = Path("var/tls/server.pem")
    key: Path = Path("var/tls/server.key")
    ca: Path = Path("var/tls/ca.pem")
    ca_key: Path = Path("var/tls/ca.key")
    min_version: str = "1.3"
    hostnames: tuple[str, ...] = ("localhost", "127.0.0.1")
    #: Seconds between checks whether ``cert``/``key`` changed on disk (0: never); a
    #: changed pair is loaded for new connections, and an auto-generated leaf is renewed.
    reload_interval: float = 300.0


@dataclass(frozen=True)
class StoreSection:
    """``[store]``: the SQLite database and the offline-queue policy."""

    path: Path = Path("var/securechat.sqlite3")
    queue_ttl: float = 30 * 24 * 3600.0
    queue_limit: int = 10_000
    synchronous: str = "full"
    max_batch: int = 4096
    #: Quotas of :mod:`securechat.server.store.quota` (per recipient, per sender, strangers).
    queue_bytes: int = 256 << 20
    sender_limit: int = 5_000
    sender_bytes: int = 128 << 20
    stranger_limit: int = 20
    stranger_bytes: int = 1 << 20
    strangers_limit: int = 1_000
    strangers_bytes: int = 32 << 20
    #: New envelopes are refused while less than this is free on the database's disk.
    min_free_bytes: int = 64 << 20


@dataclass(frozen=True)
class AuthSection:
    """``[auth]``: which login methods exist and how registration and throttling work."""

    methods: tuple[str, ...] = ("password", "publickey")
    registration: bool = True
    registration_pow_bits: int = 0
    password_hash: str = "argon2id"  # noqa: S105 - a hash scheme name, not a secret
    pair_burst: int = 5
    pair_rate: float = 0.02
    address_burst: int = 20
    address_rate: float = 0.1
    account_burst: int = 10
    account_rate: float = 0.01
    login_pow_bits: int = 18
    known_address_ttl: float = 30 * 86400.0
    registration_address_burst: int = 5
    registration_address_rate: float = 0.002
    registration_burst: int = 10
    registration_pow_max_bits: int = 24
    hash_memory_mib: int = 128
    hash_queue_timeout: float = 5.0
    hash_queue_limit: int = 64


@dataclass(frozen=True)
class CryptoSection:
    """``[crypto]``: the end-to-end backends clients may use, and the default one."""

    backends: tuple[str, ...] = tuple(SPECS)  # the order of the specs: default first
    default_backend: str = DEFAULT_BACKEND


@dataclass(frozen=True)
class PolicySection:
    """``[policy]``: who may message whom, and how fast."""

    messaging: str = "anyone"
    send_rate: float = 500.0
    send_burst: int = 2000
    max_envelope_bytes: int = 64 * 1024
    max_room_members: int = 256
    #: One-time prekeys one user may take from one other user's pool: a burst, then one
    #: per 1/rate seconds; further bundles come without one (``0`` switches it off).
    one_time_per_peer_burst: int = 3
    one_time_per_peer_rate: float = 1 / 600


@dataclass(frozen=True)
class LogSection:
    """``[log]``: how the daemon writes its log lines."""

    format: str = "text"


@dataclass(frozen=True)
class MetricsSection:
    """``[metrics]``: the Prometheus ``/metrics`` and ``/healthz`` listener (off when empty)."""

    listen: str = ""


@dataclass(frozen=True)
class ServerConfig:
    """The whole, validated server configuration."""

    path: Path
    server: ServerSection
    tls: TLSSection
    store: StoreSection
    auth: AuthSection
    crypto: CryptoSection
    policy: PolicySection
    log: LogSection = LogSection()
    metrics: MetricsSection = MetricsSection()


_T = TypeVar("_T")
_SECTIONS: dict[str, type[Any]] = {
    "server": ServerSection,
    "tls": TLSSection,
    "store": StoreSection,
    "auth": AuthSection,
    "crypto": CryptoSection,
    "policy": PolicySection,
    "log": LogSection,
    "metrics": MetricsSection,
}


def load_config(path: str | Path) -> ServerConfig:
    """Read and validate the TOML file at ``path``.

    :raises ConfigError: naming the file and the key, for any missing file, syntax
        error, unknown key, wrongly typed or out-of-range value.
    """
    p = Path(path)
    shown = str(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(shown, "(file)", f"cannot read: {e.strerror or e}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(shown, "(syntax)", str(e)) from None
    return config_from_mapping(data, p.resolve().parent, shown)


def config_from_mapping(data: Mapping[str, Any], base: Path, shown: str) -> ServerConfig:
    """Build a :class:`ServerConfig` from parsed TOML, resolving paths against ``base``."""
    for name in data:
        if name not in _SECTIONS:
            raise ConfigError(shown, f"[{name}]", "unknown section")
    built: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        section = data.get(name, {})
        if not isinstance(section, dict):
            raise ConfigError(shown, f"[{name}]", "must be a table")
        built[name] = _build_section(cls, name, section, base, shown)
    cfg = ServerConfig(path=Path(shown), **built)
    _check(cfg, shown)
    return cfg


def _build_section(
    cls: type[_T], name: str, section: Mapping[str, Any], base: Path, shown: str
) -> _T:
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, value in section.items():
        where = f"[{name}] {key}"
        if key not in known:
            raise ConfigError(shown, where, "unknown key")
        default = known[key].default
        values[key] = _coerce(value, default, where, base, shown)
    obj = cls(**values)
    # Default paths are relative too: resolve them against the config file's directory.
    for key, f in known.items():
        if isinstance(f.default, Path) and key not in values:
            object.__setattr__(obj, key, (base / f.default).resolve())
    return obj


def _coerce(value: Any, default: Any, where: str, base: Path, shown: str) -> Any:
    """Check ``value`` against the type of the field's default and convert it."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(shown, where, "must be true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(shown, where, "must be an integer")
        if value < 0:
            raise ConfigError(shown, where, "must not be negative")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(shown, where, "must be a number")
        if not math.isfinite(value):
            raise ConfigError(shown, where, "must be a finite number")
        if value < 0:
            raise ConfigError(shown, where, "must not be negative")
        return float(value)
    if isinstance(default, Path):
        if not isinstance(value, str) or not value:
            raise ConfigError(shown, where, "must be a non-empty path string")
        return (base / value).resolve()
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(shown, where, "must be a list of strings")
        return tuple(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(shown, where, "must be a string")
        return value
    raise ConfigError(shown, where, "unsupported value")  # pragma: no cover


_DNS_NAME = re.compile(
    r"(?=.{1,253}$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*"
)


def _valid_hostname(host: str) -> bool:
    """An IP address or an ASCII DNS name: what a certificate's SAN can hold."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return _DNS_NAME.fullmatch(host) is not None
    return True


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as a host and a port number.

    :raises ValueError: if it is not of that form.
    """
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError("must be HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    number = int(port)
    if number > 65535:
        raise ValueError("port must be between 0 and 65535")
    return host, number


def _check_loopback_listen(shown: str, value: str) -> None:
    """Metrics tell user names' activity patterns: keep them off the network by default."""
    where = "[metrics] listen"
    try:
        host, _ = parse_listen(value)
        address = ipaddress.ip_address(host)
    except ValueError as e:
        raise ConfigError(shown, where, f"{value!r}: {e}, with an IP address") from None
    if not address.is_loopback:
        raise ConfigError(shown, where, f"{host} is not a loopback address")


def _one_of(shown: str, where: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(shown, where, f"{value!r} is not one of {', '.join(allowed)}")


def _check(cfg: ServerConfig, shown: str) -> None:
    """Cross-field and range checks that a type alone cannot express."""
    if not 0 <= cfg.server.port <= 65535:
        raise ConfigError(shown, "[server] port", "must be between 0 and 65535")
    if not 1024 <= cfg.server.max_frame_bytes <= 64 << 20:
        raise ConfigError(shown, "[server] max_frame_bytes", "must be between 1024 and 64 MiB")
    if cfg.server.prelogin_max_frame_bytes < 1024:  # max_frame_bytes caps it too
        raise ConfigError(shown, "[server] prelogin_max_frame_bytes", "must be at least 1024")
    for key in ("handshake_timeout", "idle_timeout"):
        if getattr(cfg.server, key) <= 0:
            raise ConfigError(shown, f"[server] {key}", "must be positive")
    _one_of(shown, "[tls] min_version", cfg.tls.min_version, TLS_VERSIONS)
    if not cfg.tls.hostnames:
        raise ConfigError(shown, "[tls] hostnames", "must name at least one host")
    for host in cfg.tls.hostnames:
        if not _valid_hostname(host):
            raise ConfigError(shown, "[tls] hostnames", f"{host!r} is not a host name or IP")
    _one_of(shown, "[store] synchronous", cfg.store.synchronous, SYNCHRONOUS_MODES)
    for key in ("queue_limit", "max_batch", "queue_bytes", "sender_limit", "sender_bytes"):
        if getattr(cfg.store, key) < 1:
            raise ConfigError(shown, f"[store] {key}", "must be at least 1")
    if not cfg.auth.methods:
        raise ConfigError(shown, "[auth] methods", "must name at least one method")
    for m in cfg.auth.methods:
        _one_of(shown, "[auth] methods", m, AUTH_METHODS)
    _one_of(shown, "[auth] password_hash", cfg.auth.password_hash, PASSWORD_HASHES)
    if cfg.auth.hash_memory_mib < 1:
        raise ConfigError(shown, "[auth] hash_memory_mib", "must be at least 1")
    for key in ("registration_pow_bits", "login_pow_bits", "registration_pow_max_bits"):
        if getattr(cfg.auth, key) > 32:
            raise ConfigError(shown, f"[auth] {key}", "must be at most 32")
    if not cfg.crypto.backends:
        raise ConfigError(shown, "[crypto] backends", "must name at least one backend")
    for b in cfg.crypto.backends:
        _one_of(shown, "[crypto] backends", b, KNOWN_BACKENDS)
    if cfg.crypto.default_backend not in cfg.crypto.backends:
        raise ConfigError(
            shown, "[crypto] default_backend", f"{cfg.crypto.default_backend!r} is not in backends"
        )
    _one_of(shown, "[policy] messaging", cfg.policy.messaging, MESSAGING_POLICIES)
    _one_of(shown, "[log] format", cfg.log.format, LOG_FORMATS)
    if cfg.metrics.listen:
        _check_loopback_listen(shown, cfg.metrics.listen)
    if cfg.policy.max_envelope_bytes >= cfg.server.max_frame_bytes:
        raise ConfigError(
            shown, "[policy] max_envelope_bytes", "must be smaller than [server] max_frame_bytes"
        )
