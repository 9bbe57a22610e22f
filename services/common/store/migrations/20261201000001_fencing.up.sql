-- Fencing (see dispatch-core version.rs): the lease epoch of the owner that made a row's last
-- write, and a random token per applied write so a writer can tell exactly which of its writes
-- landed. DEAD gets its own version rank (6; SUCCEEDED keeps 5), so a version alone says whether a
-- row is terminal and which state it holds.
ALTER TABLE tasks
    ADD COLUMN lease_epoch BIGINT UNSIGNED NOT NULL DEFAULT 0,
    ADD COLUMN write_token BIGINT UNSIGNED NOT NULL DEFAULT 0;

UPDATE tasks SET version = version + 1 WHERE state = 'dead' AND (version & 7) = 5;

-- One epoch per (consumer group, partition), raised at every assignment: the owners of a
-- partition are ordered by it, and the store drops a write of an owner that has been replaced.
CREATE TABLE IF NOT EXISTS partition_epochs (
    consumer_group VARCHAR(255) CHARACTER SET ascii NOT NULL,
    topic          VARCHAR(249) CHARACTER SET ascii NOT NULL,
    partition_id   INT          NOT NULL,
    epoch          BIGINT UNSIGNED NOT NULL,
    owner          VARCHAR(255) NOT NULL DEFAULT '',
    updated_at     DATETIME(6)  NOT NULL,
    PRIMARY KEY (consumer_group, topic, partition_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
