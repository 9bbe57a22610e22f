-- Cancels go through the outbox too while Kafka is unavailable, in order with their task's other
-- records (same topic and key). A submit row stays unique per (task, topic), so a client's retry
-- finds it (`dedupe` = 1); a cancel row has `dedupe` NULL, which a unique key does not compare,
-- so every cancel is a record of its own (a cancel after a redrive must not find the first one).
ALTER TABLE outbox
    ADD COLUMN IF NOT EXISTS kind VARCHAR(8) CHARACTER SET ascii NOT NULL DEFAULT 'submit',
    ADD COLUMN IF NOT EXISTS dedupe TINYINT UNSIGNED NULL DEFAULT 1;
ALTER TABLE outbox DROP INDEX IF EXISTS uk_outbox_task;
ALTER TABLE outbox ADD UNIQUE KEY uk_outbox_task (task_id, topic, dedupe);
-- The relay finds the keys blocked behind a failing or dead row.
ALTER TABLE outbox ADD KEY IF NOT EXISTS ix_outbox_key (topic, record_key, id);
