"""Signed checkpoints of each tenant's audit chain head (append-only like the events).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

from sentinel.platform.migrate import app_role, execute_script

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("""
    CREATE TABLE audit_checkpoints (
      tenant_id uuid NOT NULL REFERENCES tenants (id),
      sequence bigint NOT NULL,
      hash text NOT NULL,
      create_time timestamptz NOT NULL,
      key_id text NOT NULL,
      signature text NOT NULL,
      PRIMARY KEY (tenant_id, sequence),
      CONSTRAINT ck_audit_checkpoints_hash CHECK (hash ~ '^[0-9a-f]{64}$')
    );
    ALTER TABLE audit_checkpoints ENABLE ROW LEVEL SECURITY;
    ALTER TABLE audit_checkpoints FORCE ROW LEVEL SECURITY;
    CREATE POLICY audit_checkpoints_tenant ON audit_checkpoints
      USING (tenant_id = (SELECT sentinel_tenant_id()))
      WITH CHECK (tenant_id = (SELECT sentinel_tenant_id()));
    CREATE TRIGGER audit_checkpoints_keep_tenant_id BEFORE UPDATE OF tenant_id ON audit_checkpoints
      FOR EACH ROW EXECUTE FUNCTION sentinel_keep_tenant_id();
    CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
      FOR EACH ROW EXECUTE FUNCTION sentinel_audit_append_only();
    CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
      FOR EACH STATEMENT EXECUTE FUNCTION sentinel_audit_append_only();
    """)
    execute_script(f"GRANT SELECT, INSERT ON audit_checkpoints TO {app_role()};")


def downgrade() -> None:
    execute_script("DROP TABLE IF EXISTS audit_checkpoints;")
