-- securechat relay database: upgrade schema version 2 to 3.
-- Runs inside the migration transaction; the statements must leave the schema exactly as
-- v3.sql creates it (tests/server/test_store_migration.py compares the two).

-- Rooms become invite-only with membership decided by signed events. Memberships made
-- before (unsigned, joinable by anyone) cannot be vouched for by any member's key, so
-- they are dropped: members create their rooms again and invite each other. Queued room
-- envelopes stay deliverable (queue.room is not a foreign key).
DROP TABLE room_members;
DROP TABLE rooms;
CREATE TABLE rooms (
    name TEXT PRIMARY KEY NOT NULL,
    created REAL NOT NULL
);

-- Clients decide membership from signed room events; these rows are the relay's second
-- line: who may post events, read them, receive room envelopes and see presence.
CREATE TABLE room_members (
    room TEXT NOT NULL REFERENCES rooms (name) ON DELETE CASCADE,
    user TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    state TEXT NOT NULL CHECK (state IN ('member', 'invited')),
    PRIMARY KEY (room, user)
);
CREATE INDEX room_members_user ON room_members (user);

-- Each room's signed membership events in order (opaque to the relay but for the rules).
CREATE TABLE room_events (
    room TEXT NOT NULL REFERENCES rooms (name) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    event BLOB NOT NULL,
    PRIMARY KEY (room, seq)
);

UPDATE schema_version SET version = 3;
