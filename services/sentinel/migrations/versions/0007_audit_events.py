"""The audit trail: one append-only, hash-chained sequence of events per tenant.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03

Append-only twice over: the service role is granted SELECT and INSERT only, and a trigger
refuses UPDATE and DELETE for every role, the owner included (retention, issue 3 item 5,
will cut the chain through a dedicated function). ``(tenant_id, sequence)`` is the primary
key, so two appends can never claim the same link.
"""

from __future__ import annotations

from sentinel.platform.migrate import app_role, execute_script

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("""
    CREATE TABLE audit_events (
      tenant_id uuid NOT NULL REFERENCES tenants (id),
      sequence bigint NOT NULL,
      id uuid NOT NULL,
      event_time timestamptz NOT NULL,
      actor_type text NOT NULL DEFAULT '',
      actor_id text NOT NULL DEFAULT '',
      actor_tenant_id text NOT NULL DEFAULT '',
      action text NOT NULL,
      target_type text NOT NULL DEFAULT '',
      target_id text NOT NULL DEFAULT '',
      outcome text NOT NULL DEFAULT '',
      status_code text NOT NULL DEFAULT '',
      request_id text NOT NULL DEFAULT '',
      trace_id text NOT NULL DEFAULT '',
      source_ip text NOT NULL DEFAULT '',
      user_agent text NOT NULL DEFAULT '',
      diff jsonb NOT NULL DEFAULT '{}',
      prev_hash text NOT NULL,
      hash text NOT NULL,
      record_time timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (tenant_id, sequence),
      CONSTRAINT uq_audit_events_tenant_id_id UNIQUE (tenant_id, id),
      CONSTRAINT ck_audit_events_sequence CHECK (sequence >= 1),
      CONSTRAINT ck_audit_events_hashes CHECK (prev_hash ~ '^[0-9a-f]{64}$' AND hash ~ '^[0-9a-f]{64}$')
    );
    CREATE INDEX ix_audit_events_tenant_id_event_time ON audit_events (tenant_id, event_time);

    ALTER TABLE audit_events ENABLE ROW LEVEL SECURITY;
    ALTER TABLE audit_events FORCE ROW LEVEL SECURITY;
    CREATE POLICY audit_events_tenant ON audit_events
      USING (tenant_id = (SELECT sentinel_tenant_id()))
      WITH CHECK (tenant_id = (SELECT sentinel_tenant_id()));
    CREATE TRIGGER audit_events_keep_tenant_id BEFORE UPDATE OF tenant_id ON audit_events
      FOR EACH ROW EXECUTE FUNCTION sentinel_keep_tenant_id();

    CREATE FUNCTION sentinel_audit_append_only() RETURNS trigger
      LANGUAGE plpgsql AS $$
      BEGIN
        RAISE EXCEPTION 'audit events are append-only: % refused', TG_OP
          USING ERRCODE = 'insufficient_privilege';
      END $$;
    CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
      FOR EACH ROW EXECUTE FUNCTION sentinel_audit_append_only();
    CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
      FOR EACH STATEMENT EXECUTE FUNCTION sentinel_audit_append_only();
    """)
    execute_script(f"GRANT SELECT, INSERT ON audit_events TO {app_role()};")


def downgrade() -> None:
    execute_script("""
    DROP TABLE IF EXISTS audit_events;
    DROP FUNCTION IF EXISTS sentinel_audit_append_only();
    """)
