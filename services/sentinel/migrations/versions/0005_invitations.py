"""Invitations by e-mail with a single-use token.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

Like API keys, the token names its tenant and only the SHA-256 of its secret is stored.
At most one pending invitation per tenant and e-mail (case-insensitive).
"""

from __future__ import annotations

from sentinel.platform.migrate import app_role, execute_script

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("""
    CREATE TABLE invitations (
      id uuid PRIMARY KEY,
      tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
      email text NOT NULL,
      role text NOT NULL,
      state text NOT NULL DEFAULT 'pending',
      token_hash bytea NOT NULL,
      inviter_id uuid,
      create_time timestamptz NOT NULL DEFAULT now(),
      expire_time timestamptz NOT NULL,
      accept_time timestamptz,
      user_id uuid,
      CONSTRAINT ck_invitations_email CHECK (char_length(email) BETWEEN 3 AND 320),
      CONSTRAINT ck_invitations_role CHECK (role IN ('viewer', 'member', 'admin', 'owner')),
      CONSTRAINT ck_invitations_state CHECK (state IN ('pending', 'accepted', 'revoked')),
      CONSTRAINT ck_invitations_token_hash CHECK (octet_length(token_hash) = 32),
      CONSTRAINT ck_invitations_accepted CHECK ((state = 'accepted') = (accept_time IS NOT NULL))
    );
    CREATE UNIQUE INDEX uq_invitations_pending_email ON invitations (tenant_id, lower(email))
      WHERE state = 'pending';
    CREATE INDEX ix_invitations_tenant_id_create_time_id ON invitations (tenant_id, create_time, id);

    ALTER TABLE invitations ENABLE ROW LEVEL SECURITY;
    ALTER TABLE invitations FORCE ROW LEVEL SECURITY;
    CREATE POLICY invitations_tenant ON invitations
      USING (tenant_id = (SELECT sentinel_tenant_id()))
      WITH CHECK (tenant_id = (SELECT sentinel_tenant_id()));
    CREATE TRIGGER invitations_keep_tenant_id BEFORE UPDATE OF tenant_id ON invitations
      FOR EACH ROW EXECUTE FUNCTION sentinel_keep_tenant_id();
    """)
    execute_script(f"GRANT SELECT, INSERT, UPDATE, DELETE ON invitations TO {app_role()};")


def downgrade() -> None:
    execute_script("DROP TABLE IF EXISTS invitations;")
