"""The client's outbox: every typed message, durable in the encrypted keystore until the
server has accepted it, and how it is cut into ``send`` frames the server will take.

An entry is written at the moment the user types the line, before any network step: with
the plaintext while there is no session yet (the keystore is encrypted at rest), with the
envelope once it is encrypted. So a message typed while the server is down, or to a peer
whose bundle has not been fetched yet, survives a disconnect and a restart; the bundle
fetch and the handshake happen when the server is back. The message id is chosen when the
line is typed and never changes, so the recipient drops any second copy.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from securechat.client.keystore import KeystoreError

#: Per-item overhead on the wire besides the payload: names, message id, CBOR framing.
ITEM_OVERHEAD = 128
#: Format of ``extra["outbox"]``; version 1 was a bare list of dicts (always encrypted).
VERSION = 2
MESSAGE_ID_SIZE = 16
#: Sent messages kept (with their plaintext, encrypted at rest) until the peer's receipt.
AWAIT_LIMIT = 1000


@dataclass(frozen=True)
class OutboxEntry:
    """One message to one peer (a room message is one entry per member).

    :ivar text: the plaintext, kept until the server accepted the envelope, so that a
        message refused for a stale identity can be encrypted again under a new session
        (same id). ``None`` only for entries migrated from version 1.
    :ivar payload: the envelope, or ``None`` while it still waits for a session.
    :ivar identity: fingerprint of the recipient identity key ``payload`` was encrypted
        to (the relay refuses the item if that is no longer the recipient's key).
    :ivar group: the entries of one room message share it (one ``sent`` event for all).
    :ivar admitted: for a room message, the identity key the room's signed events admitted
        the recipient with: it is encrypted to that key or not at all.
    """

    mid: bytes
    to: str
    backend: str
    room: str | None = None
    text: str | None = None
    payload: bytes | None = None
    identity: bytes | None = None
    group: str | None = None
    admitted: bytes | None = None
    #: For a receipt we owe a peer: its status and the message ids it answers (``text``
    #: is then ``None``). Receipts are never answered by receipts.
    receipt: str | None = None
    ids: tuple[bytes, ...] = ()
    #: This message was already sent again after a could-not-decrypt receipt.
    resent: bool = False

    @property
    def encrypted(self) -> bool:
        return self.payload is not None

    @property
    def is_receipt(self) -> bool:
        return self.receipt is not None

    def to_cbor(self) -> dict[str, Any]:
        return {
            "mid": self.mid, "to": self.to, "backend": self.backend, "room": self.room,
            "text": self.text, "payload": self.payload, "identity": self.identity,
            "group": self.group, "admitted": self.admitted,
            "receipt": self.receipt, "ids": list(self.ids), "resent": self.resent,
        }  # fmt: skip

    @classmethod
    def from_cbor(cls, raw: Any) -> OutboxEntry:
        if not isinstance(raw, dict):
            raise ValueError("outbox entry is not a map")
        payload = raw.get("payload")
        text = raw.get("text")
        receipt = raw.get("receipt")
        if payload is None and text is None and receipt is None:
            raise ValueError("outbox entry has neither text nor envelope")
        identity = raw.get("identity")
        return cls(
            mid=bytes(raw["mid"]), to=str(raw["to"]), backend=str(raw["backend"]),
            room=None if raw.get("room") is None else str(raw["room"]),
            text=None if text is None else str(text),
            payload=None if payload is None else bytes(payload),
            identity=None if identity is None else bytes(identity),
            group=None if raw.get("group") is None else str(raw["group"]),
            admitted=None if raw.get("admitted") is None else bytes(raw["admitted"]),
            receipt=None if receipt is None else str(receipt),
            ids=tuple(bytes(i) for i in raw.get("ids", ())), resent=bool(raw.get("resent")),
        )  # fmt: skip


def new_message_id() -> bytes:
    return os.urandom(MESSAGE_ID_SIZE)


class Outbox:
    """The typed outbox, written through to ``extra["outbox"]`` of the keystore state on
    every change: whoever saves the keystore next saves the outbox as it is in memory."""

    def __init__(self, extra: dict[str, Any]) -> None:
        self._extra = extra
        try:
            self._entries: list[OutboxEntry] = _load(extra.get("outbox"))
            self._awaiting: list[OutboxEntry] = _load_awaiting(extra.get("outbox"))
        except (KeyError, TypeError, ValueError) as e:
            raise KeystoreError(f"the keystore's outbox is malformed ({e})") from None
        self._sync()

    def _sync(self) -> None:
        self._extra["outbox"] = {
            "version": VERSION, "entries": [e.to_cbor() for e in self._entries],
            "awaiting": [e.to_cbor() for e in self._awaiting],
        }  # fmt: skip

    def __iter__(self) -> Iterator[OutboxEntry]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def get(self, mid: bytes) -> OutboxEntry | None:
        return next((e for e in self._entries if e.mid == mid), None)

    def add(self, entry: OutboxEntry) -> None:
        self._entries.append(entry)
        self._sync()

    def update(self, entry: OutboxEntry) -> None:
        """Replace the entry with the same message id (keeping its place in the queue)."""
        self._entries = [entry if e.mid == entry.mid else e for e in self._entries]
        self._sync()

    def replace(self, mid: bytes, entries: list[OutboxEntry]) -> None:
        """Put ``entries`` where the entry ``mid`` was (a room message split per member)."""
        out: list[OutboxEntry] = []
        for e in self._entries:
            out.extend(entries if e.mid == mid else [e])
        self._entries = out
        self._sync()

    def remove(self, mids: Iterable[bytes]) -> None:
        gone = set(mids)
        self._entries = [e for e in self._entries if e.mid not in gone]
        self._sync()

    # -- sent, waiting for the peer's receipt ----------------------------------------------
    def accepted(self, entry: OutboxEntry) -> None:
        """The server accepted ``entry``: keep its plaintext (in the encrypted keystore) until
        the peer's receipt, so a could-not-decrypt receipt can be answered by a resend."""
        if entry.is_receipt or entry.text is None:
            return
        self._awaiting = [e for e in self._awaiting if e.mid != entry.mid]
        self._awaiting.append(replace(entry, payload=None, identity=None))
        del self._awaiting[: max(0, len(self._awaiting) - AWAIT_LIMIT)]
        self._sync()

    def answered(self, peer: str, mid: bytes) -> OutboxEntry | None:
        """Take the message ``mid`` sent to ``peer`` out of the waiting list (a receipt from
        anyone else about it is ignored: receipts are only believed from the recipient)."""
        found = next((e for e in self._awaiting if e.mid == mid and e.to == peer), None)
        if found is not None:
            self._awaiting.remove(found)
            self._sync()
        return found

    def reset(self, mid: bytes) -> OutboxEntry | None:
        """Forget the envelope of ``mid`` (it goes again under a new session)."""
        entry = self.get(mid)
        if entry is None or entry.text is None:
            return None
        entry = replace(entry, payload=None, identity=None)
        self.update(entry)
        return entry


def _load_awaiting(raw: Any) -> list[OutboxEntry]:
    if isinstance(raw, dict):
        return [OutboxEntry.from_cbor(item) for item in raw.get("awaiting", [])]
    return []


def _load(raw: Any) -> list[OutboxEntry]:
    """Read either format; version 1 (a list of ``to/backend/mid/payload/room`` dicts) is
    migrated as already-encrypted entries."""
    if raw is None:
        return []
    if isinstance(raw, list):
        items: Any = raw
    elif isinstance(raw, dict) and raw.get("version") == VERSION:
        items = raw.get("entries", [])
    else:
        raise ValueError("unknown outbox format in the keystore")
    return [OutboxEntry.from_cbor(item) for item in items]


def plan_batches(
    todo: list[OutboxEntry], max_batch: int, max_frame_bytes: int
) -> list[list[OutboxEntry]]:
    """Split encrypted outbox entries, in order, into batches of at most ``max_batch``
    items that stay well under ``max_frame_bytes``: a frame over the limit makes the server
    close the connection, and since the outbox is resent on reconnect that would loop."""
    max_items = max(1, min(256, max_batch))
    budget = max(4096, max_frame_bytes - 4096)
    batches: list[list[OutboxEntry]] = []
    current: list[OutboxEntry] = []
    size = 0
    for entry in todo:
        assert entry.payload is not None
        cost = len(entry.payload) + ITEM_OVERHEAD
        if current and (len(current) >= max_items or size + cost > budget):
            batches.append(current)
            current, size = [], 0
        current.append(entry)
        size += cost
    if current:
        batches.append(current)
    return batches
