-- How many CANCELs were produced for a WAITING node: each resend waits twice as long as the one
-- before (up to 16 x workflows.resend_after_ms), so a consumer lagging behind a node's partition
-- is not fed a fresh CANCEL for it every resend_after_ms.
ALTER TABLE workflow_nodes ADD COLUMN cancel_sends INT UNSIGNED NOT NULL DEFAULT 0;
