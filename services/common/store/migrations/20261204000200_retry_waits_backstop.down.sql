ALTER TABLE retry_waits
    DROP COLUMN IF EXISTS backstop;
