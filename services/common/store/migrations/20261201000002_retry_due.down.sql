ALTER TABLE tasks DROP KEY ix_tasks_state_next_attempt, DROP COLUMN next_attempt_at;
