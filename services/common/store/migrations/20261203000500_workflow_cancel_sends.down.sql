ALTER TABLE workflow_nodes DROP COLUMN cancel_sends;
