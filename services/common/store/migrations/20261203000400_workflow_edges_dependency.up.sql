-- The retention purge keeps a finished workflow node while a node that depends on it has not
-- finished; it looks its dependents up by `depends_on`.
ALTER TABLE workflow_edges ADD KEY ix_workflow_edges_depends_on (depends_on);
