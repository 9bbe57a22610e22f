-- Operator pauses of consumption, shared by every processor instance: AdminService writes a row,
-- every instance polls the table and applies it, so a pause holds wherever the partitions or the
-- task type's records happen to be consumed (and survives restarts and rebalances).
CREATE TABLE IF NOT EXISTS consumption_pauses (
    kind      VARCHAR(16)  CHARACTER SET ascii NOT NULL,
    target    VARCHAR(128) CHARACTER SET ascii NOT NULL,
    paused_at DATETIME(6)  NOT NULL,
    PRIMARY KEY (kind, target)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
