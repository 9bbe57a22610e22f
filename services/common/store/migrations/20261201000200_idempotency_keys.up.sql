-- What each (tenant, idempotency key) was first submitted with, so that a second submit with the
-- same key but other parameters is refused on every gateway instance, also while Redis is down.
-- The gateway writes a row before it makes the task durable; the key is the task id derived from
-- (tenant, idempotency key). `fingerprint` holds one hash per compared field (business key, type,
-- priority, payload, run_at, deadline, retry policy), so a conflict can name the field. The
-- business key and priority also route a cancel of the task before the processor stored it.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    task_id         BINARY(16)       NOT NULL,
    tenant          VARCHAR(64)      CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    idempotency_key VARCHAR(128)     CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    business_key    VARCHAR(256)     CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    priority        TINYINT UNSIGNED NOT NULL,
    fingerprint     VARBINARY(128)   NOT NULL,
    created_at      DATETIME(6)      NOT NULL,
    PRIMARY KEY (task_id),
    KEY ix_idempotency_keys_created (created_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
