"""Per-tenant usage: the counts behind each tenant's SLOs and the noisy-neighbour ranking.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04

Every service process counts its calls per tenant in memory (sentinel.platform.usage) and adds
them here every few seconds, in platform scope: requests, server errors, non-OK answers, calls
slower than the latency SLO's threshold, and the seconds spent handling them. Minute rows serve
the burn-rate windows and the ranking (kept two days); hour rows serve the 30-day error budget
(kept 35 days). A tenant reads only its own rows; only the platform scope writes, ranks and
expires them.
"""

from __future__ import annotations

from sentinel.platform.migrate import app_role, execute_script

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

TABLES = ("tenant_usage_minutes", "tenant_usage_hours")


def upgrade() -> None:
    role = app_role()
    for table in TABLES:
        execute_script(f"""
        CREATE TABLE {table} (
          tenant_id uuid NOT NULL REFERENCES tenants (id),
          service text NOT NULL,
          bucket timestamptz NOT NULL,
          requests bigint NOT NULL DEFAULT 0,
          server_errors bigint NOT NULL DEFAULT 0,
          errors bigint NOT NULL DEFAULT 0,
          slow bigint NOT NULL DEFAULT 0,
          busy_seconds double precision NOT NULL DEFAULT 0,
          PRIMARY KEY (tenant_id, service, bucket),
          CONSTRAINT ck_{table}_counts CHECK (
            requests >= 0 AND server_errors BETWEEN 0 AND errors AND errors <= requests
            AND slow BETWEEN 0 AND requests AND busy_seconds >= 0)
        );
        -- The ranking and the expiry scan every tenant's rows of a time range.
        CREATE INDEX ix_{table}_bucket ON {table} (bucket);

        ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
        ALTER TABLE {table} FORCE ROW LEVEL SECURITY;
        CREATE POLICY {table}_tenant_read ON {table} FOR SELECT
          USING (tenant_id = (SELECT sentinel_tenant_id()));
        CREATE POLICY {table}_tenant_purge ON {table} FOR DELETE
          USING (tenant_id = (SELECT sentinel_tenant_id()));
        CREATE POLICY {table}_platform ON {table}
          USING ((SELECT sentinel_platform_scope())) WITH CHECK ((SELECT sentinel_platform_scope()));
        CREATE TRIGGER {table}_keep_tenant_id BEFORE UPDATE OF tenant_id ON {table}
          FOR EACH ROW EXECUTE FUNCTION sentinel_keep_tenant_id();
        GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {role};
        """)


def downgrade() -> None:
    execute_script(" ".join(f"DROP TABLE IF EXISTS {t};" for t in TABLES))
