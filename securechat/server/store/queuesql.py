"""The offline queue's SQL: group commit, backlog reads, acknowledgements and expiry.

Split from :mod:`securechat.server.store.queries` (same conventions: plain synchronous
functions of a connection, run on the store's pool thread). The quota counters
(:mod:`securechat.server.store.quota`) and the free-space check
(:mod:`securechat.server.store.diskspace`) are consulted once per batch, never per envelope.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from securechat.errors import NoSuchUser, StoreError
from securechat.server.store.interface import NewEnvelope, QueuedEnvelope
from securechat.server.store.queries import write_transaction
from securechat.server.store.quota import QueueUsage, UsageRows, wanted_of

_INSERT_QUEUE = (
    "INSERT INTO queue (seq, recipient, sender, backend, message_id, room, accepted_at, payload)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_SELECT_PENDING = (
    "SELECT seq, recipient, sender, backend, message_id, room, accepted_at, payload FROM queue"
    " WHERE recipient = ? AND seq > ? AND accepted_at >= ? ORDER BY seq LIMIT ?"
)
_DELETE_ACKED = "DELETE FROM queue WHERE recipient = ? AND seq <= ?"
_USAGE = (
    "SELECT sender, count(*), sum(length(payload)) FROM queue WHERE recipient = ? GROUP BY sender"
)

#: Checks the free space before a batch writes; returns the error every call then gets.
SpaceCheck = Callable[[sqlite3.Connection], StoreError | None]


def usage_rows(conn: sqlite3.Connection, recipient: str) -> UsageRows:
    """``(sender, envelopes, bytes)`` of one recipient's queue (loads :class:`QueueUsage`)."""
    return [(str(s), int(n), int(b or 0)) for s, n, b in conn.execute(_USAGE, (recipient,))]


def enqueue_batch(
    conn: sqlite3.Connection,
    calls: list[list[NewEnvelope]],
    now: float,
    usage: QueueUsage,
    acks: list[tuple[str, int]] | None = None,
    space: SpaceCheck | None = None,
) -> list[list[QueuedEnvelope] | StoreError]:
    """Store several callers' envelopes in one transaction (the group commit).

    ``acks`` are coalesced cumulative acknowledgements, ``(recipient, up_to_seq)``: their
    DELETEs ride in the same transaction, before any limit is checked, so the quotas see
    the acknowledged envelopes gone. Acknowledgements are applied even when ``space``
    refuses the envelopes: deleting is what frees space.

    Each call is all-or-nothing on its own: a call that would exceed a quota or names an
    unknown recipient gets its error in the result list and stores nothing, while the
    other calls of the batch go ahead. ``usage`` is kept current across the calls, so the
    quotas hold within the batch too; if the transaction fails it is emptied (it reloads
    from the database). Sequence numbers are assigned here from ``sqlite_sequence``, which
    is safe because ``BEGIN IMMEDIATE`` holds the only write lock; that lets one
    multi-row INSERT take the whole batch.

    :returns: for each call, its stored envelopes in order, or the error it got.
    """
    results: list[list[QueuedEnvelope] | StoreError] = []
    try:
        with write_transaction(conn):
            if acks:
                conn.executemany(_DELETE_ACKED, acks)
                for recipient, _ in acks:
                    usage.forget(recipient)
            refused = space(conn) if space is not None and calls else None
            if refused is not None:
                return [refused] * len(calls)
            known: dict[str, bool] = {}
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'queue'").fetchone()
            seq = int(row[0]) if row else 0
            rows: list[QueuedEnvelope] = []  # in _INSERT_QUEUE's column order
            for envelopes in calls:
                error = _admit(conn, known, usage, envelopes)
                if error is not None:
                    results.append(error)
                    continue
                stored = []
                for e in envelopes:
                    seq += 1
                    stored.append(
                        QueuedEnvelope(seq, e.recipient, e.sender, e.backend, e.message_id,
                                       e.room, now, e.payload)
                    )  # fmt: skip
                rows += stored
                results.append(stored)
            _insert_rows(conn, rows)
    except BaseException:
        usage.clear()  # counted envelopes were rolled back
        raise
    return results


def _admit(
    conn: sqlite3.Connection,
    known: dict[str, bool],
    usage: QueueUsage,
    envelopes: list[NewEnvelope],
) -> StoreError | None:
    """The error one call hits, or None once it is counted (each recipient looked up once)."""
    wanted = wanted_of((e.recipient, e.sender, len(e.payload), e.stranger) for e in envelopes)
    for recipient, _, _ in wanted:
        exists = known.get(recipient)
        if exists is None:
            row = conn.execute("SELECT 1 FROM users WHERE name = ?", (recipient,)).fetchone()
            exists = known[recipient] = row is not None
            if not exists:
                usage.forget(recipient)
        if not exists:
            return NoSuchUser(recipient)
    return usage.admit(wanted, lambda r: usage_rows(conn, r))


#: Rows per multi-row INSERT, largest first. A few fixed sizes keep the statements in
#: sqlite3's statement cache; one statement per chunk instead of one ``executemany`` step
#: per row saves a GIL release and re-acquisition per envelope on the store thread.
_CHUNKS = (256, 64, 16, 4, 1)
_INSERT_MANY = {  # only placeholders are repeated: no value is ever put in the SQL text
    n: _INSERT_QUEUE + ", (?, ?, ?, ?, ?, ?, ?, ?)" * (n - 1) for n in _CHUNKS
}


def _insert_rows(conn: sqlite3.Connection, rows: list[QueuedEnvelope]) -> None:
    i, total = 0, len(rows)
    max_rows = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 8  # 999 on old builds
    for n in _CHUNKS:
        if n > max_rows and n > 1:
            continue
        sql = _INSERT_MANY[n]
        while total - i >= n:
            if n == 1:
                conn.executemany(sql, rows[i:])
                return
            conn.execute(sql, [v for row in rows[i : i + n] for v in row])
            i += n


def pending(
    conn: sqlite3.Connection, recipient: str, after_seq: int, limit: int, cutoff: float = 0.0
) -> list[QueuedEnvelope]:
    """Up to ``limit`` envelopes for ``recipient`` after ``after_seq``, oldest first.

    Envelopes accepted before ``cutoff`` (past their TTL) are left out: they are never
    delivered, even before the periodic sweep deletes them.
    """
    cur = conn.execute(_SELECT_PENDING, (recipient, after_seq, cutoff, max(limit, 0)))
    return [QueuedEnvelope(*r) for r in cur]


def acknowledge(conn: sqlite3.Connection, recipient: str, up_to_seq: int) -> int:
    """Delete ``recipient``'s envelopes up to and including ``up_to_seq``."""
    with write_transaction(conn):
        return conn.execute(_DELETE_ACKED, (recipient, up_to_seq)).rowcount


def queue_length(conn: sqlite3.Connection, recipient: str, after_seq: int = 0) -> int:
    """How many envelopes wait for ``recipient`` (only those after ``after_seq``)."""
    row = conn.execute(
        "SELECT count(*) FROM queue WHERE recipient = ? AND seq > ?", (recipient, after_seq)
    ).fetchone()
    return int(row[0])


def expire(conn: sqlite3.Connection, cutoff: float) -> int:
    """Delete envelopes accepted before ``cutoff``."""
    with write_transaction(conn):
        return conn.execute("DELETE FROM queue WHERE accepted_at < ?", (cutoff,)).rowcount


def enqueue_batch_counting_acks(
    conn: sqlite3.Connection,
    calls: list[list[NewEnvelope]],
    now: float,
    usage: QueueUsage,
    acks: list[tuple[str, int]],
    space: SpaceCheck | None = None,
) -> tuple[list[list[QueuedEnvelope] | StoreError], int]:
    """:func:`enqueue_batch`, plus how many envelopes its acknowledgements deleted
    (the rows it changed beyond those it inserted), for the ``acked`` metric."""
    before = conn.total_changes
    result = enqueue_batch(conn, calls, now, usage, acks, space)
    inserted = sum(len(r) for r in result if isinstance(r, list))
    return result, conn.total_changes - before - inserted
