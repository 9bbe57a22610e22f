-- ListTasks reads a tenant's tasks newest id first (ORDER BY task_id DESC LIMIT n, keyset
-- pagination below a cursor id). Without an index on (tenant, task_id) an unfiltered list read
-- every row of the tenant through ix_tasks_tenant_key and sorted them all before the LIMIT; with
-- it the page is read in order and stops after n rows. The task_type filter gets the same.
-- (A business_key filter is served by ix_tasks_tenant_key, whose entries end with the primary
-- key.)
CREATE INDEX IF NOT EXISTS ix_tasks_tenant_id ON tasks (tenant, task_id);
CREATE INDEX IF NOT EXISTS ix_tasks_tenant_type_id ON tasks (tenant, task_type, task_id);
