ALTER TABLE tasks
    ADD COLUMN next_attempt_at DATETIME(6) NULL,
    ADD KEY ix_tasks_state_next_attempt (state, next_attempt_at);
UPDATE tasks t JOIN retry_waits w ON w.task_id = t.task_id
    SET t.next_attempt_at = w.due_at
    WHERE t.state = 'retrying' AND t.version = w.version;
DROP TABLE IF EXISTS retry_waits;
