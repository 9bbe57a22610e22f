-- RETRYING rows waiting in MySQL are found by their due time alone. The index on
-- (state, next_attempt_at) had an entry rewritten at every state change of every task (state is
-- its first column), although almost no row ever waits here; an index on next_attempt_at alone
-- changes only for the rows that do. An applied write to tasks clears next_attempt_at (a RETRYING
-- write sets it again in the same transaction), so only waiting retries keep a value, and the
-- claim (`state = 'retrying' AND next_attempt_at <= NOW(6) ORDER BY next_attempt_at`) reads a
-- range of them in order.
UPDATE tasks SET next_attempt_at = NULL WHERE state <> 'retrying' AND next_attempt_at IS NOT NULL;
ALTER TABLE tasks DROP KEY ix_tasks_state_next_attempt, ADD KEY ix_tasks_next_attempt (next_attempt_at);
