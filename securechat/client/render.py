"""Turn the core's typed events into output: JSON lines for scripts, text lines for people.

Both renderers take the same :class:`~securechat.client.events.Event` objects; neither is
derived from the other's output. Every string shown to a person may come from a peer or
the relay, so the text renderer strips control characters and indents continuation lines.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from securechat.client import events as ev
from securechat.client.trustmark import mark


class Renderer:
    """Writes events to stdout, as text for people or as JSON lines for scripts."""

    def __init__(
        self,
        write: Callable[[bytes], None],
        json_mode: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._write = write
        self.json_mode = json_mode
        self._clock = clock

    def show(self, event: ev.Event) -> None:
        """Emit one event."""
        if self.json_mode:
            line = render_json(event, self._clock())
        else:
            line = render_text(event, self._clock())
        self._write(line.encode("utf-8") + b"\n")


def render_json(event: ev.Event, now: float) -> str:
    """One JSON object on one line (``ensure_ascii``: no raw U+2028 to split it)."""
    fields = event.to_json()
    fields.setdefault("time", now)
    return json.dumps({"type": event.kind, **fields}, ensure_ascii=True, sort_keys=True)


def render_text(event: ev.Event, now: float) -> str:
    """One line (or a few indented ones) for a person."""
    when = getattr(event, "time", None)
    stamp = time.strftime("%H:%M:%S", time.localtime(float(when if when is not None else now)))
    draw = _TEXT.get(type(event))
    if draw is not None:
        return draw(stamp, event)
    if isinstance(event, ev.Error) and event.command:
        return f"{stamp} ERROR ({safe(event.command)}): {safe(event.text)}"
    if event.kind in ("warning", "error"):
        return f"{stamp} {event.kind.upper()}: {safe(event.text)}"
    return f"{stamp} {safe(event.text)}"


def _where(room: str | None) -> str:
    return f" [{safe(room)}]" if room else ""


def _message(stamp: str, e: Any) -> str:
    assert isinstance(e, ev.Message)
    return f"{stamp}{_where(e.room)} <{safe(e.sender)}{mark(e.trust, e.verified)}> {safe(e.body)}"


def _sent(stamp: str, e: Any) -> str:
    assert isinstance(e, ev.Sent)
    where = "" if e.recipients is not None else _where(e.room)
    return f"{stamp}{where} {safe(e.text)}"


def _receipt(stamp: str, e: Any) -> str:
    assert isinstance(e, ev.Receipt)
    head, peer = f"{stamp}{_where(e.room)} -> {safe(e.to)}:", safe(e.peer or "")
    if e.status == "received":
        return f"{head} \u2713\u2713 received by {peer}"
    return f"{head} \u2717 {peer} could not decrypt it: {safe(e.reason or '')}"


def _verify(stamp: str, e: Any) -> str:
    assert isinstance(e, ev.Verify)
    flag = "verified" if e.verified else "not verified"
    lines = [
        f"{stamp} safety number with {safe(e.user)} ({flag}):",
        f"  {e.safety_number}",
        f"  your key:  {e.own_fingerprint}",
        f"  their key: {e.fingerprint}",
    ]
    if e.pinned_fingerprint is not None and e.pinned_fingerprint != e.fingerprint:
        lines.append(f"  pinned:    {e.pinned_fingerprint}")
    if e.served_fingerprint is not None and e.served_fingerprint != e.fingerprint:
        lines.append(f"  the relay now serves: {e.served_fingerprint}")
    return "\n".join(lines)


def _presence(stamp: str, e: Any) -> str:
    assert isinstance(e, ev.Presence)
    return f"{stamp} * {safe(e.text)}"


def _history(stamp: str, e: Any) -> str:
    assert isinstance(e, ev.History)
    lines = [f"{stamp} {safe(e.text)}"]
    for m in e.messages:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(m["time"])))
        lines.append(f"  {when} <{safe(m['from'])}> {safe(m['text'])}")
    return "\n".join(lines)


_TEXT: dict[type[ev.Event], Callable[[str, Any], str]] = {
    ev.History: _history,
    ev.Message: _message,
    ev.Sent: _sent,
    ev.Receipt: _receipt,
    ev.Verify: _verify,
    ev.Presence: _presence,
}


def safe(text: str) -> str:
    """Strip terminal control characters from peer-supplied text (no escape injection);
    continuation lines are indented so they cannot pass for a message of their own."""
    clean = "".join(c if c.isprintable() or c == "\n" else "\ufffd" for c in text)
    return clean.replace("\n", "\n    ")
