ALTER TABLE workflows ADD UNIQUE KEY uk_workflows_tenant_idem (tenant, idempotency_key);
ALTER TABLE tasks ADD UNIQUE KEY uk_tasks_tenant_idem (tenant, idempotency_key);
