"""The console: commands map to controller calls; events render for people and scripts."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.testing import StringTransport
from zope.interface import implementer

from securechat.client import events as ev
from securechat.client.console import MAX_LINE, ConsoleProtocol, IChatController, Renderer


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
    assert "<bob \u2713> hi".encode() in out[0]


def test_trust_marks_in_human_text() -> None:
    """verified ✓, pinned (no mark), changed !, and the JSON keeps the word."""
    out: list[bytes] = []
    r = Renderer(out.append, False, clock=lambda: 0.0)
    for trust in ("verified", "pinned", "changed"):
        r.show(ev.Message(sender="bob", body="hi", trust=trust))
    assert [line.decode().split(" ", 1)[1] for line in out] == [
        "<bob \u2713> hi\n", "<bob> hi\n", "<bob !> hi\n",
    ]  # fmt: skip
    js: list[bytes] = []
    Renderer(js.append, True, clock=lambda: 0.0).show(ev.Message(sender="bob", trust="changed"))
    assert json.loads(js[0])["trust"] == "changed"


def test_overlong_line_is_refused() -> None:
    proto, rec, t = console()
    proto.dataReceived(b"x" * (20 * 1024) + b"\n")
    assert b"too long" in t.value()
    assert rec.calls == []


def errors(t: StringTransport) -> list[dict[str, Any]]:
    return [e for e in map(json.loads, t.value().splitlines()) if e["type"] == "error"]


def test_an_overlong_chat_line_is_refused_whole_with_one_error() -> None:
    """Before: a 40,000-byte line gave an error *and* a 15,441-character fragment was sent."""
    proto, rec, t = console(json_mode=True)
    feed(proto, "/chat bob")
    proto.dataReceived(b"y" * 40_000 + b"\nafter\n")
    assert rec.calls == [("send_text", "bob", "after")]
    [error] = errors(t)
    assert error["code"] == "line-too-long" and "16384" in error["text"]


def test_a_megabyte_line_in_many_chunks_gives_one_error_and_bounded_memory() -> None:
    """Before: a 1 MB /msg line gave 43-64 identical errors."""
    proto, rec, t = console(json_mode=True)
    chunk = b"/msg bob " + b"z" * 65_527
    for _ in range(16):
        proto.dataReceived(chunk)
        assert len(proto._buffer) <= 16 * 1024 + len(chunk)
    proto.dataReceived(b"tail\n/who\n")
    assert rec.calls == [("who",)]
    assert len(errors(t)) == 1


def test_a_line_of_exactly_the_limit_is_accepted() -> None:
    proto, rec, _ = console()
    text = "a" * (MAX_LINE - len("/msg bob "))
    feed(proto, f"/msg bob {text}")
    assert rec.calls == [("send_text", "bob", text)]


def test_non_utf8_input_is_refused_with_one_error() -> None:
    proto, rec, t = console(json_mode=True)
    proto.dataReceived(b"/msg bob caf\xe9 au lait\n/who\n")
    assert rec.calls == [("who",)]
    [error] = errors(t)
    assert error["code"] == "not-utf8"


def test_nothing_after_quit_is_read() -> None:
    """Before: ``printf '/quit\\n/msg bob after quit\\n'`` delivered "after quit" later."""
    proto, rec, _ = console()
    feed(proto, "/msg bob before", "/quit", "/msg bob after quit")
    proto.dataReceived(b"/msg bob in a later chunk\n")
    proto.readConnectionLost()
    assert rec.calls == [("send_text", "bob", "before"), ("quit",)]


def test_help_states_the_line_limit() -> None:
    proto, _, t = console()
    feed(proto, "/help")
    assert b"16384 bytes" in t.value()


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


def test_user_add_and_remove_commands() -> None:
    proto, rec, t = console(json_mode=True)
    feed(proto, "/user add dave", "/user add erin admin", "/user remove dave",
         "/user add", "/user add a b", "/user delete dave")  # fmt: skip
    assert rec.calls == [
        ("admin_add_user", "dave", False),
        ("admin_add_user", "erin", True),
        ("admin_remove_user", "dave"),
    ]
    errors = [json.loads(line) for line in t.value().splitlines()]
    assert len([e for e in errors if e["type"] == "error"]) == 3


def test_every_local_error_has_a_code_and_the_command_it_answers() -> None:
    """JSON errors carry ``code`` and ``command``; the text mode names the command too."""
    proto, _, t = console(json_mode=True)
    feed(proto, "no target yet", "/frobnicate now", "/join ops", "/msg")
    proto.dataReceived(b"\xff\xfe\n" + b"x" * (MAX_LINE + 1) + b"\n")
    errors = [json.loads(line) for line in t.value().decode().splitlines()]
    assert [(e["type"], e["code"], e["command"]) for e in errors] == [
        ("error", "no-target", "(message)"),
        ("error", "bad-command", "/frobnicate"),
        ("error", "bad-argument", "/join ops"),
        ("error", "bad-command", "/msg"),
        ("error", "not-utf8", "(input)"),
        ("error", "line-too-long", "(input)"),
    ]
    proto, _, t = console(json_mode=False)
    feed(proto, "/join ops")
    text = t.value().decode()
    assert text.endswith("ERROR (/join ops): /join needs a room name starting with #\n")


def test_history_command() -> None:
    proto, rec, t = console(json_mode=True)
    feed(proto, "/history bob", "/history #ops 5", "/history bob x", "/history bob 0")
    assert rec.calls == [("history", "bob", 20), ("history", "#ops", 5)]
    assert [(e["code"], e["command"]) for e in errors(t)] == [
        ("bad-argument", "/history bob"), ("bad-argument", "/history bob"),
    ]  # fmt: skip


def test_history_in_human_text() -> None:
    out: list[bytes] = []
    Renderer(out.append, False, clock=lambda: 0.0).show(ev.History(
        conversation="bob", kept=7,
        messages=[{"time": 0.0, "direction": "in", "from": "bob", "text": "hi\x1b[2J"}],
    ))  # fmt: skip
    first, second = out[0].decode().splitlines()
    assert first.endswith("history with bob (last 1 of 7):")
    assert second.endswith("<bob> hi\ufffd[2J")


def test_room_commands_reach_the_controller() -> None:
    proto, rec, t = console(json_mode=True)
    feed(proto, "/join #ops open", "/invite bob #ops", "/remove bob #ops", "/promote carol #ops",
         "/demote carol #ops", "/members #ops", "/invite bob ops", "/members ops")  # fmt: skip
    assert rec.calls == [
        ("join", "#ops", True),
        ("invite", "bob", "#ops"),
        ("remove", "bob", "#ops"),
        ("promote", "carol", "#ops", True),
        ("promote", "carol", "#ops", False),
        ("members", "#ops"),
    ]
    errors = [json.loads(line) for line in t.value().splitlines()]
    assert [(e["type"], e["code"]) for e in errors] == [("error", "bad-argument")] * 2


def test_room_sends_show_their_recipients() -> None:
    """One line per room message, naming whom it was encrypted to (text and JSON)."""
    from securechat.client.render import render_json, render_text

    sent = ev.Sent(to="#ops", id="ab", status="delivered", room="#ops",
                   recipients=["alice", "dave"], statuses={"alice": "delivered",
                                                           "dave": "delivered"})  # fmt: skip
    assert render_text(sent, 0.0).endswith(" -> #ops (alice, dave): delivered")
    assert json.loads(render_json(sent, 0.0))["recipients"] == ["alice", "dave"]
    mixed = ev.Sent(to="#ops", id="ab", status="mixed", room="#ops", recipients=["a", "d"],
                    statuses={"a": "delivered", "d": "queued"})  # fmt: skip
    assert render_text(mixed, 0.0).endswith(" -> #ops (a: delivered, d: queued)")
