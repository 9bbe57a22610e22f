-- A task's own attempt timeout (TaskSpec.timeout_ms), kept with the row so that an envelope the
-- scheduler rebuilds from it (a SCHEDULED task come due, a retry waiting in MySQL, a PENDING row
-- republished) runs under the same bound as the submitted one. NULL: no per-task timeout (every
-- row written before this migration). An appended nullable column: an instant ALTER on MariaDB
-- 10.3+ and MySQL 8.0.29+.
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS timeout_ms INT UNSIGNED NULL;
