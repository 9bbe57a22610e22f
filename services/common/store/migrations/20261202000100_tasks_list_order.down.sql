DROP INDEX IF EXISTS ix_tasks_tenant_type_id ON tasks;
DROP INDEX IF EXISTS ix_tasks_tenant_id ON tasks;
