-- securechat relay database: upgrade schema version 1 to 2.
-- Runs inside the migration transaction; the statements must leave the schema exactly as
-- v2.sql creates it (tests/server/test_store_migration.py compares the two).

-- expire() deletes by age; without this index it scans the whole queue.
CREATE INDEX queue_accepted_at ON queue (accepted_at);

UPDATE schema_version SET version = 2;
