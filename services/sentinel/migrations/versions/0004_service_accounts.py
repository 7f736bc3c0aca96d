"""Service accounts and API keys.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03

Keys are stored as the SHA-256 of their 24-byte random secret (high entropy: a slow hash
adds nothing). The tenant is part of the key's text, so authenticating a key is an ordinary
tenant-bound lookup under RLS, with no function that reads across tenants.
"""

from __future__ import annotations

from sentinel.platform.migrate import app_role, execute_script

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TABLES = ("service_accounts", "api_keys")


def upgrade() -> None:
    execute_script("""
    CREATE TABLE service_accounts (
      id uuid PRIMARY KEY,
      tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
      display_name text NOT NULL,
      role text NOT NULL,
      version integer NOT NULL DEFAULT 1,
      create_time timestamptz NOT NULL DEFAULT now(),
      CONSTRAINT uq_service_accounts_tenant_id_id UNIQUE (tenant_id, id),
      CONSTRAINT ck_service_accounts_display_name CHECK (char_length(display_name) BETWEEN 1 AND 200),
      CONSTRAINT ck_service_accounts_role CHECK (role IN ('viewer', 'member', 'admin'))
    );
    CREATE INDEX ix_service_accounts_tenant_id_create_time_id ON service_accounts (tenant_id, create_time, id);

    CREATE TABLE api_keys (
      id uuid PRIMARY KEY,
      tenant_id uuid NOT NULL,
      service_account_id uuid NOT NULL,
      display_name text NOT NULL DEFAULT '',
      prefix text NOT NULL,
      secret_hash bytea NOT NULL,
      scopes text[] NOT NULL,
      create_time timestamptz NOT NULL DEFAULT now(),
      expire_time timestamptz,
      last_used_time timestamptz,
      revoke_time timestamptz,
      -- A key's tenant is always its account's tenant.
      FOREIGN KEY (tenant_id, service_account_id) REFERENCES service_accounts (tenant_id, id) ON DELETE CASCADE,
      CONSTRAINT ck_api_keys_display_name CHECK (char_length(display_name) <= 200),
      CONSTRAINT ck_api_keys_secret_hash CHECK (octet_length(secret_hash) = 32),
      CONSTRAINT ck_api_keys_scopes CHECK (cardinality(scopes) BETWEEN 1 AND 64)
    );
    CREATE INDEX ix_api_keys_tenant_id_service_account_id ON api_keys (tenant_id, service_account_id, create_time, id);
    """)
    for table in TABLES:
        execute_script(f"""
        ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
        ALTER TABLE {table} FORCE ROW LEVEL SECURITY;
        CREATE POLICY {table}_tenant ON {table}
          USING (tenant_id = (SELECT sentinel_tenant_id()))
          WITH CHECK (tenant_id = (SELECT sentinel_tenant_id()));
        CREATE TRIGGER {table}_keep_tenant_id BEFORE UPDATE OF tenant_id ON {table}
          FOR EACH ROW EXECUTE FUNCTION sentinel_keep_tenant_id();
        """)
    role = app_role()
    execute_script(f"GRANT SELECT, INSERT, UPDATE, DELETE ON service_accounts, api_keys TO {role};")


def downgrade() -> None:
    execute_script("DROP TABLE IF EXISTS api_keys, service_accounts;")
