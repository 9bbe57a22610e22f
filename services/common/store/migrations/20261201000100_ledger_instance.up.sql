-- The simulate handler's ledger records who ran each execution and when it started, so the fault
-- audit can see a task run by two processor instances at once (overlapping started_at..executed_at
-- on different instances) and an execution that started after its task's terminal commit.
-- `instance` is "<hostname>:<pid>"; `outcome` is ok, failed, cancelled or panic. Appended columns
-- with defaults: an instant ALTER on MariaDB 10.3+ and MySQL 8.0.29+; rows written before this
-- migration keep started_at NULL and instance ''.
ALTER TABLE handler_executions
    ADD COLUMN IF NOT EXISTS instance   VARCHAR(128) CHARACTER SET ascii NOT NULL DEFAULT '',
    ADD COLUMN IF NOT EXISTS started_at DATETIME(6)  NULL,
    ADD COLUMN IF NOT EXISTS outcome    VARCHAR(16)  CHARACTER SET ascii NOT NULL DEFAULT '';
