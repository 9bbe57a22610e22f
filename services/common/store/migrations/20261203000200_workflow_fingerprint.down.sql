ALTER TABLE workflows
    DROP COLUMN fingerprint,
    MODIFY cancel_reason VARCHAR(256) NOT NULL DEFAULT '';
