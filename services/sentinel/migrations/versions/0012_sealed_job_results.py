"""Job results sealed with the tenant's data key.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04

``sealed`` rows hold AES-GCM ciphertext under the tenant's data key (sentinel.platform.datakeys),
which lives on the host, outside the database: when the purge destroys the key, every copy of the
tenant's exports (this table in any backup included) becomes unreadable. Rows written before this
revision, or with no key directory configured, stay plaintext (``sealed = false``).
"""

from __future__ import annotations

from sentinel.platform.migrate import execute_script

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("ALTER TABLE job_results ADD COLUMN sealed boolean NOT NULL DEFAULT false;")


def downgrade() -> None:
    execute_script("ALTER TABLE job_results DROP COLUMN sealed;")
