"""Tenant lifecycle (suspension, pending deletion with a grace period) and immovable rows.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03

A row's tenant never changes: ``tenant_id`` is immutable on every tenant table, enforced by
a trigger, so no UPDATE (buggy or malicious, under any role) can move a user or a session
into another tenant.
"""

from __future__ import annotations

from sentinel.platform.migrate import execute_script

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TENANT_TABLES = ("users", "sessions", "idempotency_keys")


def upgrade() -> None:
    execute_script("""
    ALTER TABLE tenants
      ADD COLUMN suspension_reason text NOT NULL DEFAULT '',
      ADD COLUMN delete_time timestamptz,
      ADD COLUMN purge_time timestamptz,
      -- Set when a DELETED tenant's data is all gone (a purge interrupted midway resumes).
      ADD COLUMN purge_complete_time timestamptz,
      ADD CONSTRAINT ck_tenants_suspension_reason CHECK (char_length(suspension_reason) <= 500),
      ADD CONSTRAINT ck_tenants_suspended_has_reason
        CHECK (state <> 'suspended' OR suspension_reason <> ''),
      ADD CONSTRAINT ck_tenants_deletion_times
        CHECK ((state IN ('pending_deletion', 'deleted')) = (delete_time IS NOT NULL AND purge_time IS NOT NULL));
    CREATE INDEX ix_tenants_purge_time ON tenants (purge_time)
      WHERE state = 'pending_deletion' OR (state = 'deleted' AND purge_complete_time IS NULL);

    CREATE FUNCTION sentinel_keep_tenant_id() RETURNS trigger
      LANGUAGE plpgsql AS $$
      BEGIN
        IF NEW.tenant_id IS DISTINCT FROM OLD.tenant_id THEN
          RAISE EXCEPTION 'the tenant of a % row cannot change', TG_TABLE_NAME
            USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
      END $$;
    """)
    for table in TENANT_TABLES:
        execute_script(f"""
        CREATE TRIGGER {table}_keep_tenant_id BEFORE UPDATE OF tenant_id ON {table}
          FOR EACH ROW EXECUTE FUNCTION sentinel_keep_tenant_id();
        """)


def downgrade() -> None:
    for table in TENANT_TABLES:
        execute_script(f"DROP TRIGGER IF EXISTS {table}_keep_tenant_id ON {table};")
    execute_script("""
    DROP FUNCTION IF EXISTS sentinel_keep_tenant_id();
    DROP INDEX IF EXISTS ix_tenants_purge_time;
    ALTER TABLE tenants
      DROP CONSTRAINT IF EXISTS ck_tenants_deletion_times,
      DROP CONSTRAINT IF EXISTS ck_tenants_suspended_has_reason,
      DROP CONSTRAINT IF EXISTS ck_tenants_suspension_reason,
      DROP COLUMN IF EXISTS purge_complete_time,
      DROP COLUMN IF EXISTS purge_time,
      DROP COLUMN IF EXISTS delete_time,
      DROP COLUMN IF EXISTS suspension_reason;
    """)
