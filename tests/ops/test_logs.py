"""The JSON log observer: one parseable object per line, the expected fields, no secrets."""

from __future__ import annotations

import io
import json
import subprocess
import sys

from twisted.logger import LogLevel
from twisted.python.failure import Failure

from securechat.logs import JSONLinesObserver, event_as_dict, json_observer, rfc3339


def emit(**event: object) -> dict[str, object]:
    out = io.StringIO()
    JSONLinesObserver(out)(event)
    text = out.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    parsed: dict[str, object] = json.loads(text)
    return parsed


def test_fields_that_log_shippers_index() -> None:
    """time (RFC 3339 UTC), level, namespace, the formatted event, conn and user."""
    line = emit(
        log_format="{user} logged in (conn {conn})",
        log_level=LogLevel.info,
        log_namespace="securechat.server.login",
        log_time=1_764_936_118.5,
        user="alice",
        conn=7,
        address="127.0.0.1",
    )
    assert line == {
        "time": "2025-12-05T12:01:58.500Z",
        "level": "info",
        "namespace": "securechat.server.login",
        "event": "alice logged in (conn 7)",
        "user": "alice",
        "conn": 7,
        "address": "127.0.0.1",
    }
    assert rfc3339(0.0) == "1970-01-01T00:00:00.000Z"


def test_secret_fields_and_non_scalars_are_never_written() -> None:
    """Second line of defence: a field named like a secret or holding bytes is dropped."""
    line = emit(
        log_format="something happened",
        log_level=LogLevel.warn,
        log_namespace="x",
        log_time=0.0,
        password="hunter2",
        identity_key="k3y-material",
        payload=b"attack at dawn",
        text="the plaintext",
        blob=b"\x00raw",
        obj=object(),
        count=3,
    )
    raw = json.dumps(line)
    for secret in ("hunter2", "k3y-material", "attack at dawn", "the plaintext", "raw"):
        assert secret not in raw
    assert line["count"] == 3 and "obj" not in line and "blob" not in line


def test_failures_carry_their_traceback() -> None:
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        failure = Failure()
    record = event_as_dict(
        {"log_format": "oops", "log_level": LogLevel.error, "log_failure": failure,
         "log_namespace": "n", "log_time": 1.0}
    )
    assert record["level"] == "error" and "ZeroDivisionError" in str(record["failure"])


def test_twistd_logger_option_takes_the_factory() -> None:
    """``twistd --logger securechat.logs.json_observer`` needs a factory without arguments
    that returns an ``ILogObserver`` (Twisted's ``jsonFileLogObserver`` needs a file)."""
    from twisted.logger import ILogObserver

    assert ILogObserver.providedBy(json_observer())
    script = (
        "from twisted.application.app import AppLogger\n"
        "from twisted.application.service import Application\n"
        "from twisted.logger import Logger\n"
        "AppLogger({'logger': __import__('securechat.logs', fromlist=['x']).json_observer})"
        ".start(Application('t'))\n"
        "Logger(namespace='probe').info('probe {n}', n=1)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert any(line["event"] == "probe 1" and line["namespace"] == "probe" for line in lines)


def test_attempted_names_that_cannot_be_user_names_are_not_logged() -> None:
    """A password typed into the user-name field must not reach the log."""
    from securechat.server.login import shown_name

    assert shown_name("alice") == "alice"
    assert shown_name("Tr0ub4dor&3") == "(not a valid user name, 11 chars)"
    assert shown_name("evil\nconn 1: alice logged in").startswith("(not a valid user name")
