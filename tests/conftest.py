"""Shared pytest fixtures: the reactor for pytest-twisted tests and a temporary config writer.

pytest-twisted has no ``reactor`` fixture of its own (see the style guide, section 6), and
several test modules need a server config file whose paths all live in a temporary
directory, so both are defined once here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

#: A config that is safe for tests: loopback only, port 0, every path under the tmp dir.
#: Paths are relative, so they resolve against the config file's directory.
TEST_SECTIONS: dict[str, dict[str, Any]] = {
    "server": {"host": "127.0.0.1", "port": 0},
    "tls": {
        "cert": "tls/server.pem",
        "key": "tls/server.key",
        "ca": "tls/ca.pem",
        "ca_key": "tls/ca.key",
        "hostnames": ["localhost", "127.0.0.1"],
    },
    "store": {"path": "data/securechat.sqlite3"},
    # Every test user registers from 127.0.0.1: the per-address registration limit (5) is
    # for the real world; tests that exercise it set their own value.
    "auth": {"registration_address_burst": 10_000},
}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def toml_text(sections: Mapping[str, Mapping[str, Any]]) -> str:
    """Serialise a two-level mapping of simple values as TOML (enough for the config)."""
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


def merged_sections(
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """``TEST_SECTIONS`` with ``overrides`` applied key by key."""
    merged = {name: dict(values) for name, values in TEST_SECTIONS.items()}
    for name, values in (overrides or {}).items():
        merged.setdefault(name, {}).update(values)
    return merged


ConfigWriter = Callable[..., Path]


@pytest.fixture
def write_config(tmp_path: Path) -> ConfigWriter:
    """Return ``write(overrides=None, *, text=None, name="server.toml") -> Path``.

    Without ``text`` the file is :data:`TEST_SECTIONS` plus ``overrides``; with ``text``
    the raw text is written as is (for syntax and type errors).
    """

    def write(
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        text: str | None = None,
        name: str = "server.toml",
    ) -> Path:
        path = tmp_path / name
        path.write_text(text if text is not None else toml_text(merged_sections(overrides)))
        return path

    return write


@pytest.fixture
def reactor() -> Any:
    """The global reactor that pytest-twisted runs (it installs it before collection)."""
    from twisted.internet import reactor as global_reactor

    return global_reactor
