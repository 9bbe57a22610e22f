ALTER TABLE tasks DROP KEY ix_tasks_next_attempt, ADD KEY ix_tasks_state_next_attempt (state, next_attempt_at);
