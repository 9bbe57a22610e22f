ALTER TABLE handler_executions
    DROP COLUMN IF EXISTS claimed;
