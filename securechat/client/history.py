"""Local message history, kept inside the encrypted keystore (never on the relay).

Each conversation (a peer's name, or ``#room``) keeps its last ``limit`` messages, sent and
received, and all conversations together keep at most :data:`MAX_TOTAL_BYTES` of text: the
keystore is rewritten after every message, so its size is what each message costs, and a
keystore over its size limit would not open. The oldest messages go first. ``limit`` 0
keeps nothing (and forgets what was kept).

Stored as plain lists in ``KeystoreState.extra["history"]`` so the keystore's CBOR needs no
new type: ``{conversation: [[time, direction, sender, text, id], ...]}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KEY = "history"
#: Messages kept per conversation unless ``--history`` says otherwise.
DEFAULT_LIMIT = 200
#: Text kept over all conversations (UTF-8 bytes); the oldest messages are dropped first.
MAX_TOTAL_BYTES = 4 << 20
#: ``/history`` without a count shows this many.
DEFAULT_SHOWN = 20


@dataclass(frozen=True)
class Entry:
    """One message as it was shown: ``direction`` is ``in`` (received) or ``out`` (typed)."""

    time: float
    direction: str
    sender: str
    text: str
    id: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"time": self.time, "direction": self.direction,
                               "from": self.sender, "text": self.text}  # fmt: skip
        if self.id is not None:
            out["id"] = self.id
        return out


class History:
    """The history part of an open keystore's state; the caller saves the keystore."""

    def __init__(self, extra: dict[str, Any], limit: int = DEFAULT_LIMIT) -> None:
        self.limit = max(0, limit)
        raw = extra.get(KEY)
        data = raw if isinstance(raw, dict) else {}
        # Anything malformed (another version's layout) is left out rather than shown wrong.
        self._data: dict[str, list[list[Any]]] = {
            str(c): rows for c, rows in data.items()
            if isinstance(rows, list) and rows and all(_valid(r) for r in rows)
        }  # fmt: skip
        extra[KEY] = self._data
        self._bytes = sum(_size(row) for rows in self._data.values() for row in rows)
        for conversation in list(self._data):
            self._trim(conversation)
        while self._bytes > MAX_TOTAL_BYTES:
            self._drop_oldest()

    def add(self, conversation: str, entry: Entry) -> None:
        """Keep ``entry`` in ``conversation``, dropping the oldest beyond the bounds."""
        if self.limit == 0:
            return
        row = [entry.time, entry.direction, entry.sender, entry.text, entry.id]
        self._data.setdefault(conversation, []).append(row)
        self._bytes += _size(row)
        self._trim(conversation)
        while self._bytes > MAX_TOTAL_BYTES:
            self._drop_oldest()

    def last(self, conversation: str, count: int) -> tuple[list[Entry], int]:
        """The last ``count`` messages of ``conversation`` (oldest first), and how many
        are kept in all."""
        rows = self._data.get(conversation, [])
        shown = rows[-count:] if count > 0 else []
        return [_entry(row) for row in shown], len(rows)

    def _trim(self, conversation: str) -> None:
        rows = self._data[conversation]
        while len(rows) > self.limit:
            self._bytes -= _size(rows.pop(0))
        if not rows:
            del self._data[conversation]

    def _drop_oldest(self) -> None:
        oldest = min(self._data, key=lambda c: self._data[c][0][0])
        self._bytes -= _size(self._data[oldest].pop(0))
        if not self._data[oldest]:
            del self._data[oldest]


def _valid(row: Any) -> bool:
    return (isinstance(row, list) and len(row) == 5 and isinstance(row[0], int | float)
            and all(isinstance(x, str) for x in row[1:4]))  # fmt: skip


def _size(row: list[Any]) -> int:
    return len(str(row[3]).encode("utf-8")) + 64


def _entry(row: list[Any]) -> Entry:
    return Entry(float(row[0]), str(row[1]), str(row[2]), str(row[3]),
                 None if row[4] is None else str(row[4]))  # fmt: skip
