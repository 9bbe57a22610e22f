ALTER TABLE dead_letters DROP KEY ix_dead_letters_tenant_dead;
DROP TABLE IF EXISTS retention_horizons;
