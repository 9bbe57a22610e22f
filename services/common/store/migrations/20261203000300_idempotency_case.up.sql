-- Idempotency keys are case-sensitive ("Nightly" and "nightly" are two keys, as the gateway's
-- idempotency_keys table, ascii_bin, has them), but these unique keys were on columns that compare
-- without case: a task whose key differed from another's only in case collided with it in the
-- writer's upsert (ON DUPLICATE KEY matched the other task's row), and such a workflow was
-- refused. Both ids are derived from (tenant, exact key), so the primary keys already make one
-- key one row; the unique keys go.
ALTER TABLE tasks DROP INDEX uk_tasks_tenant_idem;
ALTER TABLE workflows DROP INDEX uk_workflows_tenant_idem;
