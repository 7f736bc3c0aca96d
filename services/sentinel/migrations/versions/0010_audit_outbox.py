"""The audit outbox: events written in the same transaction as the change they describe.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03

Every service inserts here, bound to the event's tenant (or, in platform scope, for any tenant:
a platform action on a tenant is recorded in that tenant's trail too). Only the kernel's
drainer, in platform scope, reads and deletes rows once the audit service has appended them;
no tenant can read its outbox. ``id`` is the event's UUIDv7, so claiming in ``id`` order sends
events in the order they happened. A row the audit service refuses gets ``error`` set and is
left for an operator (a dead letter), never dropped.
"""

from __future__ import annotations

from sentinel.platform.migrate import app_role, execute_script

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("""
    CREATE TABLE audit_outbox (
      id uuid PRIMARY KEY,
      tenant_id uuid NOT NULL REFERENCES tenants (id),
      event jsonb NOT NULL,
      create_time timestamptz NOT NULL DEFAULT now(),
      error text
    );
    CREATE INDEX ix_audit_outbox_tenant_id ON audit_outbox (tenant_id);
    CREATE INDEX ix_audit_outbox_pending ON audit_outbox (id) WHERE error IS NULL;

    ALTER TABLE audit_outbox ENABLE ROW LEVEL SECURITY;
    ALTER TABLE audit_outbox FORCE ROW LEVEL SECURITY;
    CREATE POLICY audit_outbox_record ON audit_outbox FOR INSERT
      WITH CHECK (tenant_id = (SELECT sentinel_tenant_id()) OR (SELECT sentinel_platform_scope()));
    CREATE POLICY audit_outbox_drain ON audit_outbox
      USING ((SELECT sentinel_platform_scope())) WITH CHECK ((SELECT sentinel_platform_scope()));
    CREATE TRIGGER audit_outbox_keep_tenant_id BEFORE UPDATE OF tenant_id ON audit_outbox
      FOR EACH ROW EXECUTE FUNCTION sentinel_keep_tenant_id();
    """)
    execute_script(f"GRANT SELECT, INSERT, DELETE, UPDATE (error) ON audit_outbox TO {app_role()};")


def downgrade() -> None:
    execute_script("DROP TABLE IF EXISTS audit_outbox;")
