"""The twistd plugin is discoverable, both in-process and by the installed ``twistd``.

An editable install in setuptools' default (PEP 660 "lenient") mode hides
``twisted/plugins/securechat_plugin.py`` from twistd, so these tests guard the packaging.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin, getPlugins

from securechat import tap
from tests.e2e.daemon import twistd_command


def test_get_plugins_finds_securechat() -> None:
    """getPlugins(IServiceMaker) yields a maker with tapname "securechat" -> securechat.tap."""
    makers = {m.tapname: m for m in getPlugins(IServiceMaker)}
    assert "securechat" in makers
    maker = makers["securechat"]
    assert IPlugin.providedBy(maker)
    assert maker.module == "securechat.tap"
    assert maker.options is tap.Options
    assert maker.makeService is tap.makeService


def test_twistd_help_lists_securechat(tmp_path: Path) -> None:
    """The real twistd (a fresh interpreter, run outside the source tree) lists the plugin."""
    result = subprocess.run(
        [*twistd_command(), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    assert any(words[:1] == ["securechat"] for words in lines)


def test_twistd_securechat_help(tmp_path: Path) -> None:
    """``twistd securechat --help`` shows the --config option of tap.Options."""
    result = subprocess.run(
        [*twistd_command(), "securechat", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "--config=" in result.stdout
