"""Temporary account lock after repeated failed logins (``users.locked_until``).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

from sentinel.platform.migrate import execute_script

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("""
    ALTER TABLE users ADD COLUMN locked_until timestamptz;
    ALTER TABLE users ADD CONSTRAINT ck_users_locked_until CHECK (state = 'locked' OR locked_until IS NULL);
    """)


def downgrade() -> None:
    execute_script("""
    ALTER TABLE users DROP CONSTRAINT IF EXISTS ck_users_locked_until;
    ALTER TABLE users DROP COLUMN IF EXISTS locked_until;
    """)
