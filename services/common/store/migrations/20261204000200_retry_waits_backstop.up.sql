-- A retry on a retry topic also leaves a wait here, due a while after its next attempt (the
-- backstop: if the task is still RETRYING then, its record never reached a consumer and the
-- scheduler publishes the next attempt again). The flag tells such a wait from a long retry's,
-- so a backstop that fires is counted (dispatch_retry_backstops_total) and logged. An instant
-- ALTER (appended, defaulted).
ALTER TABLE retry_waits
    ADD COLUMN IF NOT EXISTS backstop TINYINT(1) NOT NULL DEFAULT 0;
