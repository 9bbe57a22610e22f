-- Pending cancel rows are dropped with the column that tells them apart (a down migration runs
-- with the gateways stopped; re-issue those cancels afterwards).
DELETE FROM outbox WHERE kind = 'cancel';
ALTER TABLE outbox DROP INDEX IF EXISTS ix_outbox_key;
ALTER TABLE outbox DROP INDEX IF EXISTS uk_outbox_task;
ALTER TABLE outbox ADD UNIQUE KEY uk_outbox_task (task_id, topic);
ALTER TABLE outbox DROP COLUMN IF EXISTS dedupe, DROP COLUMN IF EXISTS kind;
