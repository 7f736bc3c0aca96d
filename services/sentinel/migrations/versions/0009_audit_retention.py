"""Audit retention per tenant: events older than the tenant's retention are cut at a checkpoint.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03

The service role still cannot DELETE audit rows. ``sentinel_audit_cut(batch)`` (SECURITY
DEFINER, owner) is the one way: it deletes, in the bound tenant only, at most ``batch`` events
up to the newest signed checkpoint whose events are all older than the tenant's
``audit_retention_days`` (floor 90). That checkpoint is kept, so the rest of the chain still
verifies from it. The append-only trigger lets a DELETE through only inside this function.
"""

from __future__ import annotations

from sentinel.platform.migrate import app_role, execute_script

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("""
    ALTER TABLE tenants ADD COLUMN audit_retention_days integer NOT NULL DEFAULT 365,
      ADD CONSTRAINT ck_tenants_audit_retention_days CHECK (audit_retention_days BETWEEN 90 AND 36500);

    CREATE OR REPLACE FUNCTION sentinel_audit_append_only() RETURNS trigger
      LANGUAGE plpgsql AS $$
      BEGIN
        IF TG_OP = 'DELETE' AND TG_TABLE_NAME = 'audit_events'
           AND current_setting('sentinel.audit_cut', true) = 'on' THEN
          RETURN OLD;  -- only sentinel_audit_cut sets this, and only for its own statement
        END IF;
        RAISE EXCEPTION 'audit events are append-only: % refused', TG_OP
          USING ERRCODE = 'insufficient_privilege';
      END $$;

    CREATE FUNCTION sentinel_audit_cut(p_batch integer) RETURNS TABLE (cut_through bigint, deleted bigint)
      LANGUAGE plpgsql VOLATILE SECURITY DEFINER
      SET search_path = public, pg_temp
      AS $$
      DECLARE
        tenant uuid := sentinel_tenant_id();
        keep_days integer;
        cut bigint;
        n bigint;
      BEGIN
        IF tenant IS NULL THEN
          RAISE EXCEPTION 'no tenant bound' USING ERRCODE = 'insufficient_privilege';
        END IF;
        SELECT t.audit_retention_days INTO keep_days FROM tenants t WHERE t.id = tenant;
        -- The newest checkpoint all of whose events are past retention.
        SELECT max(c.sequence) INTO cut FROM audit_checkpoints c
          WHERE c.tenant_id = tenant
            AND NOT EXISTS (SELECT 1 FROM audit_events e WHERE e.tenant_id = tenant AND e.sequence <= c.sequence
                            AND e.event_time >= now() - make_interval(days => keep_days));
        IF cut IS NULL THEN
          RETURN QUERY SELECT 0::bigint, 0::bigint;
          RETURN;
        END IF;
        PERFORM set_config('sentinel.audit_cut', 'on', true);
        DELETE FROM audit_events e WHERE e.tenant_id = tenant AND e.sequence IN (
          SELECT x.sequence FROM audit_events x WHERE x.tenant_id = tenant AND x.sequence <= cut
          ORDER BY x.sequence LIMIT p_batch);
        GET DIAGNOSTICS n = ROW_COUNT;
        PERFORM set_config('sentinel.audit_cut', '', true);
        RETURN QUERY SELECT cut, n;
      END $$;
    REVOKE ALL ON FUNCTION sentinel_audit_cut(integer) FROM PUBLIC;
    """)
    execute_script(f"GRANT EXECUTE ON FUNCTION sentinel_audit_cut(integer) TO {app_role()};")


def downgrade() -> None:
    execute_script("""
    DROP FUNCTION IF EXISTS sentinel_audit_cut(integer);
    CREATE OR REPLACE FUNCTION sentinel_audit_append_only() RETURNS trigger
      LANGUAGE plpgsql AS $$
      BEGIN
        RAISE EXCEPTION 'audit events are append-only: % refused', TG_OP
          USING ERRCODE = 'insufficient_privilege';
      END $$;
    ALTER TABLE tenants DROP CONSTRAINT IF EXISTS ck_tenants_audit_retention_days,
      DROP COLUMN IF EXISTS audit_retention_days;
    """)
