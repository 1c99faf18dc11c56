"""Local history: bounded per conversation and in total, kept encrypted in the keystore."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from securechat.client import history as hist
from securechat.client.history import Entry, History
from securechat.client.keystore import TEST_KDF, Keystore


def entry(i: int, text: str = "hi", direction: str = "in") -> Entry:
    return Entry(float(i), direction, "bob", f"{text} {i}", f"{i:032x}")


def test_last_messages_oldest_first_and_bounded_per_conversation() -> None:
    extra: dict[str, Any] = {}
    h = History(extra, limit=3)
    for i in range(5):
        h.add("bob", entry(i))
    h.add("#ops", entry(9, "room"))
    shown, kept = h.last("bob", 2)
    assert [e.text for e in shown] == ["hi 3", "hi 4"] and kept == 3
    assert h.last("#ops", 20) == ([entry(9, "room")], 1)
    assert h.last("nobody", 5) == ([], 0)


def test_total_size_is_bounded_oldest_dropped_first(monkeypatch: Any) -> None:
    monkeypatch.setattr(hist, "MAX_TOTAL_BYTES", 1000)
    h = History({}, limit=100)
    for i in range(30):
        h.add("bob" if i % 2 else "carol", Entry(float(i), "in", "x", "y" * 50))
    _, bob = h.last("bob", 100)
    _, carol = h.last("carol", 100)
    assert (bob + carol) * (50 + 64) <= 1000
    assert h.last("bob", 1)[0][0].time == 29.0  # the newest stay


def test_limit_zero_keeps_nothing_and_forgets() -> None:
    extra: dict[str, Any] = {}
    History(extra).add("bob", entry(1))
    h = History(extra, limit=0)
    h.add("bob", entry(2))
    assert h.last("bob", 10) == ([], 0)


def test_malformed_history_is_left_out() -> None:
    extra: dict[str, Any] = {"history": {"bob": [[1.0, "in", "bob"]], "carol": "x",
                                         "dave": [[2.0, "out", "me", "ok", None]]}}  # fmt: skip
    h = History(extra)
    assert h.last("bob", 5) == ([], 0) and h.last("carol", 5) == ([], 0)
    assert h.last("dave", 5)[0][0].text == "ok"


def test_kept_encrypted_in_the_keystore(tmp_path: Path) -> None:
    ks = Keystore.create(tmp_path, "pw", "alice", b"\x01" * 32, params=TEST_KDF)
    History(ks.state.extra).add("bob", Entry(1.0, "in", "bob", "PLAINTEXT-secret-history"))
    ks.save()
    assert b"PLAINTEXT-secret-history" not in Keystore.file_for(tmp_path).read_bytes()
    again = Keystore.open(tmp_path, "pw")
    assert History(again.state.extra).last("bob", 1)[0][0].text == "PLAINTEXT-secret-history"
