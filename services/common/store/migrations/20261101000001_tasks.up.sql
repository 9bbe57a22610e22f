-- Tasks: one row per task, the system of record for state. No foreign keys anywhere: relations are
-- by id and queries are written out.
CREATE TABLE IF NOT EXISTS tasks (
    task_id            BINARY(16)       NOT NULL,
    tenant             VARCHAR(64)      CHARACTER SET ascii NOT NULL,
    business_key       VARCHAR(256)     CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    -- Empty for a placeholder row written by a cancel that overtook its submit's first write.
    task_type          VARCHAR(128)     CHARACTER SET ascii NOT NULL,
    priority           TINYINT UNSIGNED NOT NULL,
    payload            MEDIUMBLOB       NOT NULL,
    state              VARCHAR(16)      CHARACTER SET ascii NOT NULL,
    attempts           INT UNSIGNED     NOT NULL DEFAULT 0,
    max_attempts       INT UNSIGNED     NOT NULL,
    initial_backoff_ms INT UNSIGNED     NOT NULL,
    max_backoff_ms     INT UNSIGNED     NOT NULL,
    generation         INT UNSIGNED     NOT NULL DEFAULT 0,
    idempotency_key    VARCHAR(128)     CHARACTER SET ascii NULL,
    run_at             DATETIME(6)      NULL,
    deadline_at        DATETIME(6)      NULL,
    last_error         VARCHAR(1024)    NOT NULL DEFAULT '',
    result             BLOB             NULL,
    -- See dispatch-core state.rs: writes are applied only when they raise the version.
    version            BIGINT UNSIGNED  NOT NULL,
    created_at         DATETIME(6)      NOT NULL,
    updated_at         DATETIME(6)      NOT NULL,
    finished_at        DATETIME(6)      NULL,
    PRIMARY KEY (task_id),
    UNIQUE KEY uk_tasks_tenant_idem (tenant, idempotency_key),
    KEY ix_tasks_tenant_key (tenant, business_key),
    KEY ix_tasks_state_run_at (state, run_at),
    KEY ix_tasks_tenant_state_updated (tenant, state, updated_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- One row per attempt started.
CREATE TABLE IF NOT EXISTS task_attempts (
    task_id     BINARY(16)   NOT NULL,
    generation  INT UNSIGNED NOT NULL,
    attempt     INT UNSIGNED NOT NULL,
    outcome     VARCHAR(16)  CHARACTER SET ascii NOT NULL,
    error       VARCHAR(1024) NOT NULL DEFAULT '',
    started_at  DATETIME(6)  NOT NULL,
    finished_at DATETIME(6)  NULL,
    duration_ms INT UNSIGNED NOT NULL DEFAULT 0,
    PRIMARY KEY (task_id, generation, attempt)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Records accepted while Kafka was unreachable, drained in id order by the relay.
CREATE TABLE IF NOT EXISTS outbox (
    id              BIGINT UNSIGNED  NOT NULL AUTO_INCREMENT,
    task_id         BINARY(16)       NOT NULL,
    topic           VARCHAR(249)     CHARACTER SET ascii NOT NULL,
    record_key      VARBINARY(1024)  NOT NULL,
    record_value    MEDIUMBLOB       NOT NULL,
    -- JSON object of header name -> base64 value.
    headers         TEXT             NOT NULL,
    state           VARCHAR(16)      CHARACTER SET ascii NOT NULL DEFAULT 'pending',
    attempts        INT UNSIGNED     NOT NULL DEFAULT 0,
    next_attempt_at DATETIME(6)      NOT NULL,
    last_error      VARCHAR(1024)    NOT NULL DEFAULT '',
    created_at      DATETIME(6)      NOT NULL,
    published_at    DATETIME(6)      NULL,
    PRIMARY KEY (id),
    KEY ix_outbox_state_id (state, id),
    UNIQUE KEY uk_outbox_task (task_id, topic)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
