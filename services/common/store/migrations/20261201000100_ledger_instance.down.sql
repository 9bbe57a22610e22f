ALTER TABLE handler_executions
    DROP COLUMN IF EXISTS outcome,
    DROP COLUMN IF EXISTS started_at,
    DROP COLUMN IF EXISTS instance;
