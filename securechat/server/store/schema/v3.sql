-- securechat relay database, schema version 2: fresh creation.
-- Applied in one transaction to an empty database. Later versions are created from their own
-- v<N>.sql and reached from older files by upgrade-v<N-1>-to-v<N>.sql; a test checks that both
-- roads give the same schema, so keep every CREATE statement here byte-identical in later files.

CREATE TABLE schema_version (
    version INTEGER NOT NULL
);
INSERT INTO schema_version (version) VALUES (3);

CREATE TABLE users (
    name TEXT PRIMARY KEY NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('admin', 'user')),
    password_hash TEXT,
    identity_key BLOB,
    created REAL NOT NULL
);

CREATE TABLE signed_prekeys (
    user TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    backend TEXT NOT NULL,
    blob BLOB NOT NULL,
    PRIMARY KEY (user, backend)
);

CREATE TABLE one_time_prekeys (
    user TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    backend TEXT NOT NULL,
    key_id INTEGER NOT NULL,
    blob BLOB NOT NULL,
    PRIMARY KEY (user, backend, key_id)
);

CREATE TABLE contacts (
    user TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    peer TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    state TEXT NOT NULL CHECK (state IN ('pending-out', 'pending-in', 'accepted')),
    PRIMARY KEY (user, peer)
);
-- Deleting a user cascades through contacts.peer: without this index that is a full scan.
CREATE INDEX contacts_peer ON contacts (peer);

-- The offline queue. seq is global and only grows (AUTOINCREMENT never reuses a value, even
-- after the newest rows are acknowledged), so it also grows strictly per recipient.
-- sender and room are not foreign keys: an envelope stays deliverable after its sender is
-- removed or its room is emptied.
CREATE TABLE queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    sender TEXT NOT NULL,
    backend TEXT NOT NULL,
    message_id BLOB NOT NULL,
    room TEXT,
    accepted_at REAL NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX queue_recipient_seq ON queue (recipient, seq);

-- v2: expire() deletes by age; without this index it scans the whole queue.
CREATE INDEX queue_accepted_at ON queue (accepted_at);

-- Rooms (version 3): invite-only, membership decided by signed events.
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
