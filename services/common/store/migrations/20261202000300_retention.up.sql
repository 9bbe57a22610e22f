-- Retention (processor, `[retention]`): terminal tasks, their attempts and ledger rows, and
-- dead-letter index rows are deleted after a per-tenant retention, a bounded batch at a time, by
-- one leader. Plain statements only (no IF NOT EXISTS on indexes): MariaDB and MySQL 8 alike.
--
-- How far each tenant's purge has got: every terminal task of the tenant that finished before
-- `purged_before` is deleted. It only grows. GetTask answers a missing id created before it
-- (a UUIDv7 id carries its creation time) with NOT_FOUND saying the task was purged.
CREATE TABLE IF NOT EXISTS retention_horizons (
    tenant        VARCHAR(64) CHARACTER SET ascii NOT NULL,
    purged_before DATETIME(6) NOT NULL,
    updated_at    DATETIME(6) NOT NULL,
    PRIMARY KEY (tenant)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- The purge reads a tenant's oldest dead letters in `dead_at` order (ix_dead_letters_filter has
-- the type and error class in between), and deletes them by primary key.
ALTER TABLE dead_letters ADD KEY ix_dead_letters_tenant_dead (tenant, dead_at);
