-- What a workflow was submitted with (SHA-256 of its nodes as sent), so a repeated submit with the
-- same idempotency key and other nodes, tasks or edges is refused (ALREADY_EXISTS), not taken for
-- a duplicate. NULL for workflows stored before it existed (their names are compared instead).
-- CancelWorkflow's reason is kept as long as CancelTask's (512).
ALTER TABLE workflows
    ADD COLUMN fingerprint BINARY(32) NULL,
    MODIFY cancel_reason VARCHAR(512) NOT NULL DEFAULT '';
