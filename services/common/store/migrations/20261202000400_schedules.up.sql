-- Schedules (ScheduleService; dispatch_store::schedules): a tenant's named timing and task
-- template. The processors' schedule loop claims due rows (paused = 0 AND next_fire_at <= now,
-- FOR UPDATE SKIP LOCKED, through ix_schedules_due), inserts each fire as a `scheduled` task whose
-- id is derived from (schedule_id, fire time) (so the tasks primary key refuses a second attempt
-- at one fire), and advances next_fire_at, in one transaction. Plain statements only: MariaDB and
-- MySQL 8 alike.
CREATE TABLE IF NOT EXISTS schedules (
    schedule_id   BINARY(16)       NOT NULL,
    tenant        VARCHAR(64)      CHARACTER SET ascii NOT NULL,
    name          VARCHAR(100)     CHARACTER SET ascii NOT NULL,
    -- Exactly one of cron_expr and interval_ms; interval fires are anchor_at + k * interval_ms.
    cron_expr     VARCHAR(256)     CHARACTER SET ascii NULL,
    interval_ms   BIGINT UNSIGNED  NULL,
    anchor_at     DATETIME(6)      NOT NULL,
    time_zone     VARCHAR(64)      CHARACTER SET ascii NOT NULL,
    -- The TaskSpec each fire submits (protobuf bytes).
    template      MEDIUMBLOB       NOT NULL,
    overlap       VARCHAR(8)       CHARACTER SET ascii NOT NULL,
    catchup       VARCHAR(8)       CHARACTER SET ascii NOT NULL,
    catchup_limit INT UNSIGNED     NOT NULL,
    jitter_ms     INT UNSIGNED     NOT NULL,
    paused        TINYINT UNSIGNED NOT NULL DEFAULT 0,
    -- NULL: the timing never fires again.
    next_fire_at  DATETIME(6)      NULL,
    last_fire_at  DATETIME(6)      NULL,
    last_task_id  BINARY(16)       NULL,
    fires         BIGINT UNSIGNED  NOT NULL DEFAULT 0,
    overlap_skipped BIGINT UNSIGNED NOT NULL DEFAULT 0,
    missed        BIGINT UNSIGNED  NOT NULL DEFAULT 0,
    version       BIGINT UNSIGNED  NOT NULL DEFAULT 1,
    created_at    DATETIME(6)      NOT NULL,
    updated_at    DATETIME(6)      NOT NULL,
    PRIMARY KEY (schedule_id),
    UNIQUE KEY uk_schedules_tenant_name (tenant, name),
    KEY ix_schedules_due (paused, next_fire_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
