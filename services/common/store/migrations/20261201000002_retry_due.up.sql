-- Retries whose delay is longer than the retry topics take (consumer.retry_topic_max_delay_ms)
-- wait here instead: the scheduler claims RETRYING rows once next_attempt_at is due (FOR UPDATE
-- SKIP LOCKED) and publishes their next attempt, so a long backoff never holds up a short one.
ALTER TABLE tasks
    ADD COLUMN next_attempt_at DATETIME(6) NULL,
    ADD KEY ix_tasks_state_next_attempt (state, next_attempt_at);
