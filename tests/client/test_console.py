"""The console: commands map to controller calls; events render for people and scripts."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.testing import StringTransport
from zope.interface import implementer

from securechat.client import events as ev
from securechat.client.console import ConsoleProtocol, IChatController, Renderer


@implementer(IChatController)
class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any) -> None:
            self.calls.append((name, *args))

        return record


def console(json_mode: bool = False) -> tuple[ConsoleProtocol, Recorder, StringTransport]:
    rec = Recorder()
    proto = ConsoleProtocol(rec, lambda w: Renderer(w, json_mode, clock=lambda: 0.0))
    t = StringTransport()
    proto.makeConnection(t)
    return proto, rec, t


def feed(proto: ConsoleProtocol, *lines: str) -> None:
    proto.dataReceived("".join(line + "\n" for line in lines).encode())


def test_commands_reach_the_controller() -> None:
    proto, rec, _ = console()
    feed(
        proto,
        "/msg bob hello there",
        "/who",
        "/contacts",
        "/contact add carol",
        "/join #ops",
        "/leave #ops",
        "/verify bob",
        "/trust bob",
        "/backend",
        "/backend rsa",
        "/users",
        "/kick mallory",
        "/quit",
    )
    assert rec.calls == [
        ("send_text", "bob", "hello there"),
        ("who",),
        ("contacts",),
        ("contact", "add", "carol"),
        ("join", "#ops"),
        ("leave", "#ops"),
        ("verify", "bob"),
        ("trust", "bob"),
        ("backend", None),
        ("backend", "rsa"),
        ("admin_users",),
        ("admin_kick", "mallory"),
        ("quit",),
    ]


def test_chat_sets_the_target_for_plain_lines() -> None:
    proto, rec, t = console()
    feed(proto, "hello?", "/chat #ops", "hi all", "second")
    assert rec.calls == [("send_text", "#ops", "hi all"), ("send_text", "#ops", "second")]
    assert b"no conversation chosen" in t.value()


def test_bad_commands_are_one_line_errors() -> None:
    proto, rec, t = console(json_mode=True)
    feed(proto, "/nope", "/join ops", "/msg bob", "/contact frobnicate bob")
    events = [json.loads(line) for line in t.value().splitlines()]
    assert [e["type"] for e in events] == ["error"] * 4
    assert rec.calls == []


def test_end_of_stdin_quits_through_the_controller() -> None:
    proto, rec, _ = console()
    proto.readConnectionLost()
    assert rec.calls == [("quit",)]


def test_json_events_are_one_object_per_line() -> None:
    _, _, t = console(json_mode=True)
    r = Renderer(t.write, True, clock=lambda: 12.5)
    r.show(ev.Message(sender="bob", body="hi\nthere", verified=False, room=None))
    line = t.value().splitlines()[-1]
    assert json.loads(line) == {
        "type": "message",
        "from": "bob",
        "text": "hi\nthere",
        "verified": False,
        "time": 12.5,
    }


def test_human_rendering_strips_control_characters() -> None:
    out: list[bytes] = []
    r = Renderer(out.append, False, clock=lambda: 0.0)
    r.show(ev.Message(sender="bob", body="hi\x1b[2Jthere", verified=True))
    assert b"\x1b" not in out[0]
    assert b"<bob> hi" in out[0]


def test_overlong_line_is_refused() -> None:
    proto, rec, t = console()
    proto.dataReceived(b"x" * (20 * 1024) + b"\n")
    assert b"too long" in t.value()
    assert rec.calls == []


def test_peer_text_cannot_fake_a_line_of_its_own() -> None:
    out: list[bytes] = []
    r = Renderer(out.append, False, clock=lambda: 0.0)
    r.show(ev.Message(sender="mallory", body="ok\n12:01:02 <alice> /trust mallory"))
    lines = out[0].decode().splitlines()
    assert len(lines) == 2 and lines[1].startswith("    ")  # indented continuation


def test_every_shown_field_is_cleaned() -> None:
    out: list[bytes] = []
    r = Renderer(out.append, False, clock=lambda: 0.0)
    r.show(ev.Presence(user="bob\x1b[31m", online=True))
    r.show(ev.Message(sender="bob", room="#r\x07", body="hi", verified=True))
    assert b"\x1b" not in b"".join(out) and b"\x07" not in b"".join(out)


def test_json_lines_survive_unicode_line_separators() -> None:
    out: list[bytes] = []
    Renderer(out.append, True, clock=lambda: 0.0).show(ev.Message(body="a\u2028b\x85c"))
    assert len(out[0].decode().splitlines()) == 1
    assert json.loads(out[0])["text"] == "a\u2028b\x85c"
