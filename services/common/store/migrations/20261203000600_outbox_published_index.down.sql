ALTER TABLE outbox DROP INDEX IF EXISTS ix_outbox_state_published;
