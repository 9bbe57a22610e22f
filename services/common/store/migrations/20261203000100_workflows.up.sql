-- Workflows (TaskService.SubmitWorkflow): tasks with dependencies, accepted in one transaction.
-- A node is an ordinary task row (tasks.workflow_id set); a node with dependencies waits in
-- state 'waiting' until the processor's workflow advancer releases it (to 'scheduled', which the
-- scheduler publishes) or cancels it (a dependency ended DEAD or CANCELLED, or CancelWorkflow).
-- No foreign keys, as everywhere: relations are by id.
ALTER TABLE tasks ADD COLUMN workflow_id BINARY(16) NULL;

CREATE TABLE IF NOT EXISTS workflows (
    workflow_id         BINARY(16)    NOT NULL,
    tenant              VARCHAR(64)   CHARACTER SET ascii NOT NULL,
    idempotency_key     VARCHAR(128)  CHARACTER SET ascii NULL,
    nodes               INT UNSIGNED  NOT NULL,
    created_at          DATETIME(6)   NOT NULL,
    -- CancelWorkflow: set once; the advancer cancels every unfinished node, then sets done.
    cancel_requested_at DATETIME(6)   NULL,
    cancel_reason       VARCHAR(256)  NOT NULL DEFAULT '',
    cancel_done_at      DATETIME(6)   NULL,
    PRIMARY KEY (workflow_id),
    UNIQUE KEY uk_workflows_tenant_idem (tenant, idempotency_key),
    KEY ix_workflows_cancel (cancel_done_at, cancel_requested_at),
    KEY ix_workflows_tenant_created (tenant, created_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS workflow_nodes (
    task_id        BINARY(16)   NOT NULL,
    workflow_id    BINARY(16)   NOT NULL,
    name           VARCHAR(64)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    -- The node's index in the request.
    position       INT UNSIGNED NOT NULL,
    -- When a CANCEL for it was last produced (dependency failed, or CancelWorkflow); a node with
    -- one is never released.
    cancel_sent_at DATETIME(6)  NULL,
    PRIMARY KEY (task_id),
    UNIQUE KEY uk_workflow_nodes_name (workflow_id, name),
    KEY ix_workflow_nodes_position (workflow_id, position)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS workflow_edges (
    -- The node that waits ...
    task_id     BINARY(16) NOT NULL,
    -- ... for this one.
    depends_on  BINARY(16) NOT NULL,
    workflow_id BINARY(16) NOT NULL,
    -- 'cancel' or 'run': what task_id does when depends_on ends DEAD or CANCELLED.
    on_failure  VARCHAR(8) CHARACTER SET ascii NOT NULL,
    PRIMARY KEY (task_id, depends_on),
    KEY ix_workflow_edges_workflow (workflow_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
