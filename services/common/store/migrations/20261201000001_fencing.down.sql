DROP TABLE IF EXISTS partition_epochs;
UPDATE tasks SET version = version - 1 WHERE state = 'dead' AND (version & 7) = 6;
ALTER TABLE tasks DROP COLUMN write_token, DROP COLUMN lease_epoch;
