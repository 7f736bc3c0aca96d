"""Remember each session's previous refresh-token hash (the concurrent-refresh grace).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

from sentinel.platform.migrate import execute_script

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("ALTER TABLE sessions ADD COLUMN previous_refresh_token_hash text;")


def downgrade() -> None:
    execute_script("ALTER TABLE sessions DROP COLUMN IF EXISTS previous_refresh_token_hash;")
