-- The W3C trace context (JSON object of traceparent/tracestate) a task was submitted with, kept
-- while it waits SCHEDULED, so the scheduler publishes it later within the submit's trace. An
-- appended nullable column: an instant ALTER on MariaDB 10.3+ and MySQL 8.0.29+.
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS trace_context VARCHAR(1024) NULL;
