-- An index of dispatch.dlq, written by the processor when it dead-letters a record, so operators
-- can filter, redrive and purge without scanning the topic.
CREATE TABLE IF NOT EXISTS dead_letters (
    id                 BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    task_id            BINARY(16)      NOT NULL,
    tenant             VARCHAR(64)     CHARACTER SET ascii NOT NULL,
    task_type          VARCHAR(128)    CHARACTER SET ascii NOT NULL,
    business_key       VARCHAR(256)    CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    generation         INT UNSIGNED    NOT NULL DEFAULT 0,
    error_class        VARCHAR(32)     CHARACTER SET ascii NOT NULL,
    error              VARCHAR(1024)   NOT NULL DEFAULT '',
    attempts           INT UNSIGNED    NOT NULL,
    original_topic     VARCHAR(249)    CHARACTER SET ascii NOT NULL,
    original_partition INT             NOT NULL,
    original_offset    BIGINT          NOT NULL,
    dlq_partition      INT             NOT NULL,
    dlq_offset         BIGINT          NOT NULL,
    dead_at            DATETIME(6)     NOT NULL,
    redrive_id         VARCHAR(64)     CHARACTER SET ascii NULL,
    redriven_at        DATETIME(6)     NULL,
    purged_at          DATETIME(6)     NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uk_dead_letters_coords (dlq_partition, dlq_offset),
    KEY ix_dead_letters_task (task_id),
    KEY ix_dead_letters_filter (tenant, task_type, error_class, dead_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Execution ledger of the built-in `simulate` handler: one row per handler execution, so the
-- crash and audit tests can prove that no task with a committed terminal state ran again.
CREATE TABLE IF NOT EXISTS handler_executions (
    id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    task_id     BINARY(16)      NOT NULL,
    generation  INT UNSIGNED    NOT NULL,
    attempt     INT UNSIGNED    NOT NULL,
    executed_at DATETIME(6)     NOT NULL,
    PRIMARY KEY (id),
    KEY ix_handler_executions_task (task_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
