"""Every SQL statement of the store, as plain synchronous functions of a connection.

The server runs them on the adbapi pool thread (:mod:`securechat.server.store.sqlite`);
``securechat-admin`` calls the same functions directly, so the tool and the server cannot
disagree about what a user, a contact or a queue entry is. Connections come from
:func:`securechat.server.store.schema.connect` (autocommit): each function that writes
opens its own short ``BEGIN IMMEDIATE`` transaction, taking the write lock before reading
what the write depends on, and keeps it short so the other process is not held up.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from securechat.errors import NoSuchUser, RoomConflict, StoreError, TooManyPrekeys, UserExists
from securechat.server.store.interface import (
    CONTACT_ACCEPTED,
    CONTACT_PENDING_IN,
    CONTACT_PENDING_OUT,
    ROLE_ADMIN,
    ROLE_USER,
    ContactChange,
    PrekeyBundle,
    UserRecord,
)

_SELECT_USER = "SELECT name, role, password_hash, identity_key, created FROM users"
_INSERT_USER = (
    "INSERT INTO users (name, role, password_hash, identity_key, created) VALUES (?, ?, ?, ?, ?)"
)
_INSERT_QUEUE = (
    "INSERT INTO queue (seq, recipient, sender, backend, message_id, room, accepted_at, payload)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_SELECT_PENDING = (
    "SELECT seq, recipient, sender, backend, message_id, room, accepted_at, payload FROM queue"
    " WHERE recipient = ? AND seq > ? ORDER BY seq LIMIT ?"
)


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: committed when the block ends, rolled back on any error.

    A failed COMMIT (disk full, I/O error) is rolled back too and re-raised, so a caller
    never takes an uncommitted change for a durable one.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _user(row: tuple[str, str, str | None, bytes | None, float]) -> UserRecord:
    return UserRecord(row[0], row[1], row[2], row[3], row[4])


def _exists(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone() is not None


def _need_user(conn: sqlite3.Connection, name: str) -> None:
    if not _exists(conn, name):
        raise NoSuchUser(name)


# -- users ---------------------------------------------------------------------
def add_user(
    conn: sqlite3.Connection,
    name: str,
    role: str,
    password_hash: str | None,
    identity_key: bytes | None,
    now: float,
) -> UserRecord:
    """Insert a user. :raises UserExists: if the name is taken."""
    if role not in (ROLE_ADMIN, ROLE_USER):
        raise StoreError(f"unknown role {role!r}")
    with write_transaction(conn):
        if _exists(conn, name):
            raise UserExists(name)
        conn.execute(
            _INSERT_USER,
            (name, role, password_hash, identity_key, now),
        )
    return UserRecord(name, role, password_hash, identity_key, now)


def get_user(conn: sqlite3.Connection, name: str) -> UserRecord | None:
    """One user, or ``None``."""
    row = conn.execute(_SELECT_USER + " WHERE name = ?", (name,)).fetchone()
    return None if row is None else _user(row)


def list_users(conn: sqlite3.Connection) -> list[UserRecord]:
    """All users ordered by name."""
    return [_user(r) for r in conn.execute(_SELECT_USER + " ORDER BY name")]


def remove_user(conn: sqlite3.Connection, name: str) -> bool:
    """Delete a user; foreign keys cascade to keys, contacts, memberships and their queue.

    Rooms the user leaves without members are deleted as well, with their events.
    Envelopes the user sent stay queued for their recipients.
    """
    with write_transaction(conn):
        rooms = [
            r[0] for r in conn.execute("SELECT room FROM room_members WHERE user = ?", (name,))
        ]
        deleted = conn.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount > 0
        for room in rooms:
            _drop_room_if_empty(conn, room)
    return deleted


def set_identity_key(conn: sqlite3.Connection, name: str, identity_key: bytes) -> None:
    """Record a user's identity key. :raises NoSuchUser:"""
    with write_transaction(conn):
        cur = conn.execute("UPDATE users SET identity_key = ? WHERE name = ?", (identity_key, name))
        if cur.rowcount == 0:
            raise NoSuchUser(name)


def set_password_hash(conn: sqlite3.Connection, name: str, password_hash: str) -> None:
    """Replace a user's password hash. :raises NoSuchUser:"""
    with write_transaction(conn):
        cur = conn.execute(
            "UPDATE users SET password_hash = ? WHERE name = ?", (password_hash, name)
        )
        if cur.rowcount == 0:
            raise NoSuchUser(name)


# -- prekeys -------------------------------------------------------------------
def publish_prekeys(
    conn: sqlite3.Connection,
    user: str,
    backend: str,
    signed_prekey: bytes | None,
    one_time_prekeys: list[tuple[int, bytes]],
    max_one_time: int | None = None,
) -> int:
    """Replace the signed prekey if given, add one-time prekeys; return how many are left.

    A one-time prekey id published again replaces the old blob: the client is the
    authority on its own ids. More than ``max_one_time`` in all rolls the whole call back.
    """
    with write_transaction(conn):
        _need_user(conn, user)
        if signed_prekey is not None:
            conn.execute(
                "INSERT OR REPLACE INTO signed_prekeys (user, backend, blob) VALUES (?, ?, ?)",
                (user, backend, signed_prekey),
            )
        conn.executemany(
            "INSERT OR REPLACE INTO one_time_prekeys (user, backend, key_id, blob)"
            " VALUES (?, ?, ?, ?)",
            [(user, backend, key_id, blob) for key_id, blob in one_time_prekeys],
        )
        total = count_one_time_prekeys(conn, user, backend)
        if max_one_time is not None and total > max_one_time:
            raise TooManyPrekeys(user, backend, total)
        return total


def fetch_bundle(
    conn: sqlite3.Connection, user: str, backend: str, take_one_time: bool = True
) -> PrekeyBundle | None:
    """A bundle with the lowest-numbered one-time prekey, which is deleted in the same
    transaction so that no two peers ever receive it.

    ``None`` when the user is unknown or has no identity key or signed prekey for
    ``backend``.
    """
    with write_transaction(conn):
        row = conn.execute(
            "SELECT u.identity_key, s.blob FROM users u JOIN signed_prekeys s ON s.user = u.name"
            " WHERE u.name = ? AND s.backend = ?",
            (user, backend),
        ).fetchone()
        if row is None or row[0] is None:
            return None
        if not take_one_time:
            return PrekeyBundle(user, backend, row[0], row[1], None, None)
        otk = conn.execute(
            "SELECT key_id, blob FROM one_time_prekeys WHERE user = ? AND backend = ?"
            " ORDER BY key_id LIMIT 1",
            (user, backend),
        ).fetchone()
        if otk is None:
            return PrekeyBundle(user, backend, row[0], row[1], None, None)
        conn.execute(
            "DELETE FROM one_time_prekeys WHERE user = ? AND backend = ? AND key_id = ?",
            (user, backend, otk[0]),
        )
        return PrekeyBundle(user, backend, row[0], row[1], otk[0], otk[1])


def count_one_time_prekeys(conn: sqlite3.Connection, user: str, backend: str) -> int:
    """How many one-time prekeys ``user`` has left for ``backend``."""
    row = conn.execute(
        "SELECT count(*) FROM one_time_prekeys WHERE user = ? AND backend = ?", (user, backend)
    ).fetchone()
    return int(row[0])


# -- contacts ------------------------------------------------------------------
def _contact_state(conn: sqlite3.Connection, user: str, peer: str) -> str | None:
    row = conn.execute(
        "SELECT state FROM contacts WHERE user = ? AND peer = ?", (user, peer)
    ).fetchone()
    return None if row is None else str(row[0])


def _set_pair(conn: sqlite3.Connection, a: str, b: str, state_a: str, state_b: str) -> None:
    conn.executemany(
        "INSERT OR REPLACE INTO contacts (user, peer, state) VALUES (?, ?, ?)",
        [(a, b, state_a), (b, a, state_b)],
    )


def _check_pair(conn: sqlite3.Connection, a: str, b: str) -> None:
    if a == b:
        raise StoreError("a user cannot be their own contact")
    _need_user(conn, a)
    _need_user(conn, b)


def request_contact(conn: sqlite3.Connection, user: str, peer: str) -> ContactChange:
    """``user`` asks ``peer``; a crossing request from ``peer`` turns into acceptance,
    and a repeated one changes nothing (``changed`` is False)."""
    with write_transaction(conn):
        _check_pair(conn, user, peer)
        state = _contact_state(conn, user, peer)
        if state == CONTACT_PENDING_IN:
            _set_pair(conn, user, peer, CONTACT_ACCEPTED, CONTACT_ACCEPTED)
            return ContactChange(CONTACT_ACCEPTED, True)
        if state is None:
            _set_pair(conn, user, peer, CONTACT_PENDING_OUT, CONTACT_PENDING_IN)
            return ContactChange(CONTACT_PENDING_OUT, True)
        return ContactChange(state, False)


def accept_contact(conn: sqlite3.Connection, user: str, peer: str) -> bool:
    """Accept ``peer``'s pending request to ``user``; False if there is none."""
    with write_transaction(conn):
        if _contact_state(conn, user, peer) != CONTACT_PENDING_IN:
            return False
        _set_pair(conn, user, peer, CONTACT_ACCEPTED, CONTACT_ACCEPTED)
        return True


def remove_contact(conn: sqlite3.Connection, user: str, peer: str) -> bool:
    """Remove the contact or request in both directions."""
    with write_transaction(conn):
        cur = conn.execute(
            "DELETE FROM contacts WHERE (user = ? AND peer = ?) OR (user = ? AND peer = ?)",
            (user, peer, peer, user),
        )
        return cur.rowcount > 0


def add_contact(conn: sqlite3.Connection, a: str, b: str) -> None:
    """Make ``a`` and ``b`` accepted contacts whatever their state was (admin)."""
    with write_transaction(conn):
        _check_pair(conn, a, b)
        _set_pair(conn, a, b, CONTACT_ACCEPTED, CONTACT_ACCEPTED)


def list_contacts(conn: sqlite3.Connection, user: str) -> list[tuple[str, str]]:
    """``(peer, state)`` for ``user``, ordered by peer."""
    cur = conn.execute("SELECT peer, state FROM contacts WHERE user = ? ORDER BY peer", (user,))
    return [(str(p), str(s)) for p, s in cur]


def are_contacts(conn: sqlite3.Connection, a: str, b: str) -> bool:
    """True when ``a`` has ``b`` as an accepted contact (always symmetric)."""
    return _contact_state(conn, a, b) == CONTACT_ACCEPTED


# -- rooms ---------------------------------------------------------------------
def _drop_room_if_empty(conn: sqlite3.Connection, room: str) -> None:
    """A room without members ends: its invitations and events go with it."""
    conn.execute(
        "DELETE FROM rooms WHERE name = ? AND NOT EXISTS"
        " (SELECT 1 FROM room_members WHERE room = ? AND state = 'member')",
        (room, room),
    )


def post_room_event(
    conn: sqlite3.Connection,
    room: str,
    seq: int,
    event: bytes,
    changes: list[tuple[str, str | None]],
    now: float,
) -> None:
    """Append one event and apply its membership changes (see the interface).

    :raises RoomConflict: :raises NoSuchUser:
    """
    with write_transaction(conn):
        row = conn.execute("SELECT MAX(seq) FROM room_events WHERE room = ?", (room,)).fetchone()
        if (row[0] or 0) != seq - 1:
            raise RoomConflict(room)
        if seq == 1:
            conn.execute("INSERT INTO rooms (name, created) VALUES (?, ?)", (room, now))
        conn.execute(
            "INSERT INTO room_events (room, seq, event) VALUES (?, ?, ?)", (room, seq, event)
        )
        for user, state in changes:
            if state is None:
                conn.execute(
                    "DELETE FROM room_members WHERE room = ? AND user = ?", (room, user)
                )
            else:
                _need_user(conn, user)
                conn.execute(
                    "INSERT OR REPLACE INTO room_members (room, user, state) VALUES (?, ?, ?)",
                    (room, user, state),
                )
        _drop_room_if_empty(conn, room)


def room_events(
    conn: sqlite3.Connection, room: str, after: int, limit: int
) -> list[tuple[int, bytes]]:
    """Events of ``room`` after ``after``, oldest first."""
    cur = conn.execute(
        "SELECT seq, event FROM room_events WHERE room = ? AND seq > ? ORDER BY seq LIMIT ?",
        (room, after, limit),
    )
    return [(int(r[0]), bytes(r[1])) for r in cur]


def room_roster(conn: sqlite3.Connection, room: str) -> list[tuple[str, str]]:
    """(user, state) of ``room`` ordered by name."""
    cur = conn.execute(
        "SELECT user, state FROM room_members WHERE room = ? ORDER BY user", (room,)
    )
    return [(str(r[0]), str(r[1])) for r in cur]


def room_members(conn: sqlite3.Connection, room: str) -> list[str]:
    """Members of ``room`` ordered by name."""
    cur = conn.execute(
        "SELECT user FROM room_members WHERE room = ? AND state = 'member' ORDER BY user",
        (room,),
    )
    return [str(r[0]) for r in cur]


def user_rooms(conn: sqlite3.Connection, user: str) -> list[str]:
    """Rooms ``user`` is a member of, ordered by name."""
    cur = conn.execute(
        "SELECT room FROM room_members WHERE user = ? AND state = 'member' ORDER BY room",
        (user,),
    )
    return [str(r[0]) for r in cur]


def user_room_states(conn: sqlite3.Connection, user: str) -> list[tuple[str, str, int]]:
    """(room, state, last event seq) for ``user``, ordered by room."""
    cur = conn.execute(
        "SELECT m.room, m.state, (SELECT MAX(seq) FROM room_events e WHERE e.room = m.room)"
        " FROM room_members m WHERE m.user = ? ORDER BY m.room",
        (user,),
    )
    return [(str(r[0]), str(r[1]), int(r[2] or 0)) for r in cur]


# -- operations ----------------------------------------------------------------
def queue_stats(conn: sqlite3.Connection) -> tuple[int, int, float | None]:
    """Envelopes waiting, their payload bytes, and when the oldest was accepted (or None).

    One pass over the queue: the daemon calls it on a timer for its metrics and
    ``securechat-admin status`` once, never per request.
    """
    row = conn.execute(
        "SELECT count(*), coalesce(sum(length(payload)), 0), min(accepted_at) FROM queue"
    ).fetchone()
    return int(row[0]), int(row[1]), None if row[2] is None else float(row[2])


def ping(conn: sqlite3.Connection) -> int:
    """The schema version: a read that proves the database answers (``/healthz``)."""
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    return int(row[0])
