"""Per-tenant database time beside handling time.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04

``db_seconds``: how long the tenant's calls held a database connection in a transaction (from
asking the pool to giving the connection back), summed like ``busy_seconds``. Handling time says
who keeps the services busy; database time says who loads Postgres, which every tenant shares
and whose pool a heavy tenant can drain. Rows written before this revision count 0.
"""

from __future__ import annotations

from sentinel.platform.migrate import execute_script

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

TABLES = ("tenant_usage_minutes", "tenant_usage_hours")


def upgrade() -> None:
    for table in TABLES:
        execute_script(f"ALTER TABLE {table} ADD COLUMN db_seconds double precision NOT NULL DEFAULT 0 "
                       f"CONSTRAINT ck_{table}_db_seconds CHECK (db_seconds >= 0);")


def downgrade() -> None:
    for table in TABLES:
        execute_script(f"ALTER TABLE {table} DROP COLUMN db_seconds;")
