-- Retries that wait in MySQL (delays longer than the retry topics take) get a table of their own.
-- The index on tasks (state, next_attempt_at) served them, at the price of an index entry per task
-- written at every insert and rewritten at every state change, although almost no task ever waits
-- here (in a drain of 100,000 noop tasks, dropping it and the two list indexes raised the rate by
-- about 15%). A row exists while its retry waits and is published: the writer inserts it with the
-- RETRYING write, the scheduler claims it (FOR UPDATE SKIP LOCKED), leases it, publishes the next
-- attempt and deletes it; a row whose task moved on meanwhile is deleted when next claimed.
CREATE TABLE IF NOT EXISTS retry_waits (
    task_id BINARY(16)      NOT NULL,
    -- The RETRYING version the wait belongs to: a newer write of the task makes the wait stale.
    version BIGINT UNSIGNED NOT NULL,
    due_at  DATETIME(6)     NOT NULL,
    PRIMARY KEY (task_id),
    KEY ix_retry_waits_due (due_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

INSERT IGNORE INTO retry_waits (task_id, version, due_at)
    SELECT task_id, version, next_attempt_at FROM tasks
    WHERE state = 'retrying' AND next_attempt_at IS NOT NULL;

ALTER TABLE tasks DROP KEY ix_tasks_state_next_attempt, DROP COLUMN next_attempt_at;
