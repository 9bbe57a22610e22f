-- Whether an execution's attempt had its RUNNING committed (awaited, and not fenced out) before
-- the simulate handler started. The fault audit judges such an execution by its claim: the fence
-- refuses RUNNING over a terminal state, so a claimed attempt was RUNNING before any cancel
-- committed over it, and its handler starting a few milliseconds after that cancel is a running
-- task being cancelled, not a finished task run again. An instant ALTER (appended, defaulted).
ALTER TABLE handler_executions
    ADD COLUMN IF NOT EXISTS claimed TINYINT(1) NOT NULL DEFAULT 0;
