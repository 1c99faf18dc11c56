"""Structured logs: one JSON object per line, for journald, Loki or Elasticsearch.

``[log] format = "json"`` in the server config installs :func:`json_observer` as the
daemon's log observer, and ``twistd --logger securechat.logs.json_observer`` does the same
for any twistd application (twistd's ``--logger`` wants a factory taking no argument,
which is why Twisted's own ``jsonFileLogObserver(outFile)`` cannot be named there).

Each line has the fields log shippers index: ``time`` (RFC 3339, UTC, milliseconds),
``level``, ``namespace``, ``event`` (the formatted text), and ``conn`` / ``user`` /
``address`` when the event carries them, plus the event's other plain fields. What is
never written: fields whose names say they hold a secret or content (``password``,
``payload``, ``key``, ``text``, ...), values that are not plain scalars (bytes, objects),
and Twisted's own ``log_*`` bookkeeping. The server never puts a message, a password or
a private key into a log event in the first place; this is the second line.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import ILogObserver, LogEvent, formatEvent
from zope.interface import implementer

#: Substrings of field names whose values are never written (the second line of defence).
SECRET_FIELD_PARTS = (
    "password",
    "passphrase",
    "secret",
    "key",
    "payload",
    "plaintext",
    "text",
    "token",
    "signature",
    "nonce",
    "solution",
)
#: Longest string value written; longer ones are cut (a log line is not a data dump).
MAX_VALUE_CHARS = 1024
_FIRST = ("time", "level", "namespace", "event")


def rfc3339(timestamp: float) -> str:
    """``2026-12-05T12:01:58.123Z``: RFC 3339 in UTC with milliseconds."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _secret_name(name: str) -> bool:
    lowered = name.lower()
    return any(part in lowered for part in SECRET_FIELD_PARTS)


def _plain(value: Any) -> Any:
    """The value if it is a JSON scalar worth writing, else ``None`` (dropped)."""
    if isinstance(value, bool | int) or value is None:
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, str):
        return value[:MAX_VALUE_CHARS]
    return None


def event_as_dict(event: LogEvent) -> dict[str, Any]:
    """The JSON-ready form of one log event (see the module docstring for what is left out)."""
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": rfc3339(float(event.get("log_time") or 0.0)),
        "level": getattr(level, "name", "info"),
        "namespace": str(event.get("log_namespace", "")),
        "event": (formatEvent(event) or "")[: MAX_VALUE_CHARS * 4],
    }
    for name, value in event.items():
        if name.startswith("log_") or name in _FIRST or _secret_name(name):
            continue
        plain = _plain(value)
        if plain is not None or value is None:
            record[name] = plain
    failure = event.get("log_failure")
    if failure is not None:
        record["failure"] = failure.getTraceback()[: MAX_VALUE_CHARS * 16]
    return record


@implementer(ILogObserver)
class JSONLinesObserver:
    """Writes each event as one JSON line to ``out`` and flushes, so a crash loses nothing
    already logged and ``journalctl -f`` shows lines at once."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def __call__(self, event: LogEvent) -> None:
        """ILogObserver API."""
        line = json.dumps(event_as_dict(event), ensure_ascii=False, separators=(",", ":"))
        self._out.write(line + "\n")
        self._out.flush()


def json_observer() -> JSONLinesObserver:
    """The factory for ``twistd --logger securechat.logs.json_observer``.

    It captures stdout as it is now: twistd later replaces ``sys.stdout`` with a file that
    writes into the log, which would loop back into this observer.
    """
    return JSONLinesObserver(sys.stdout)
