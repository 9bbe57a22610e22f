-- The relay reads the keys blocked behind a failing row (pending, next attempt in the future)
-- or a dead one every round; this index keeps that a range scan over those rows only, however
-- large the backlog of due rows is.
ALTER TABLE outbox ADD KEY IF NOT EXISTS ix_outbox_state_due (state, next_attempt_at);
