ALTER TABLE workflow_edges DROP KEY ix_workflow_edges_depends_on;
