"""Tenants, users, sessions and idempotency keys, isolated by row-level security.

Revision ID: 0001
Revises:
Create Date: 2026-12-02

RLS: every table is ENABLE + FORCE (the owner is bound too) with policies on
``sentinel_tenant_id()``, which is NULL, so matches nothing, when the transaction set no
tenant (the empty-string pitfall: ``nullif(..., '')``). Platform-wide reads of ``tenants``
need both the platform scope and the platform tenant, which only the kernel's unit of work
sets for platform administrators.
"""

from __future__ import annotations

from sentinel.platform.migrate import app_role, execute_script

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

PLATFORM_TENANT = "00000000-0000-7000-8000-000000000001"
TENANT_TABLES = ("users", "sessions", "idempotency_keys")


def upgrade() -> None:
    execute_script("""
    CREATE FUNCTION sentinel_tenant_id() RETURNS uuid
      LANGUAGE sql STABLE PARALLEL SAFE
      AS $$ SELECT nullif(current_setting('sentinel.tenant_id', true), '')::uuid $$;
    CREATE FUNCTION sentinel_platform_scope() RETURNS boolean
      LANGUAGE sql STABLE PARALLEL SAFE
      AS $$ SELECT coalesce(current_setting('sentinel.platform', true), '') = 'on'
                   AND sentinel_tenant_id() IS NOT DISTINCT FROM '""" + PLATFORM_TENANT + """'::uuid $$;
    """)
    execute_script(r"""
    CREATE TABLE tenants (
      id uuid PRIMARY KEY,
      slug text NOT NULL,
      display_name text NOT NULL,
      plan text NOT NULL DEFAULT 'free',
      state text NOT NULL DEFAULT 'active',
      version integer NOT NULL DEFAULT 1,
      create_time timestamptz NOT NULL DEFAULT now(),
      update_time timestamptz NOT NULL DEFAULT now(),
      CONSTRAINT uq_tenants_slug UNIQUE (slug),
      CONSTRAINT ck_tenants_slug CHECK (slug ~ '^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$'),
      CONSTRAINT ck_tenants_display_name CHECK (char_length(display_name) BETWEEN 1 AND 200),
      CONSTRAINT ck_tenants_plan CHECK (plan IN ('free', 'standard', 'enterprise')),
      CONSTRAINT ck_tenants_state CHECK (state IN ('active', 'suspended', 'pending_deletion', 'deleted'))
    );
    CREATE INDEX ix_tenants_create_time_id ON tenants (create_time, id);

    CREATE TABLE users (
      id uuid PRIMARY KEY,
      tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
      email text NOT NULL,
      display_name text NOT NULL DEFAULT '',
      role text NOT NULL,
      state text NOT NULL DEFAULT 'active',
      password_hash text NOT NULL,
      version integer NOT NULL DEFAULT 1,
      create_time timestamptz NOT NULL DEFAULT now(),
      update_time timestamptz NOT NULL DEFAULT now(),
      last_login_time timestamptz,
      CONSTRAINT uq_users_tenant_id_id UNIQUE (tenant_id, id),
      CONSTRAINT ck_users_email CHECK (char_length(email) BETWEEN 3 AND 320),
      CONSTRAINT ck_users_display_name CHECK (char_length(display_name) <= 200),
      CONSTRAINT ck_users_role CHECK (role IN ('viewer', 'member', 'admin', 'owner', 'platform_admin')),
      CONSTRAINT ck_users_state CHECK (state IN ('active', 'locked', 'disabled')),
      CONSTRAINT ck_users_platform_admin CHECK (role <> 'platform_admin' OR tenant_id = '""" + PLATFORM_TENANT + r"""')
    );
    CREATE UNIQUE INDEX uq_users_tenant_id_email ON users (tenant_id, lower(email));
    CREATE INDEX ix_users_tenant_id_create_time_id ON users (tenant_id, create_time, id);

    CREATE TABLE sessions (
      id uuid PRIMARY KEY,
      tenant_id uuid NOT NULL,
      user_id uuid NOT NULL,
      refresh_token_hash text NOT NULL,
      create_time timestamptz NOT NULL DEFAULT now(),
      last_refresh_time timestamptz NOT NULL DEFAULT now(),
      expire_time timestamptz NOT NULL,
      revoke_time timestamptz,
      source_ip text NOT NULL DEFAULT '',
      user_agent text NOT NULL DEFAULT '',
      -- A session's tenant is always its user's tenant.
      FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
    );
    CREATE INDEX ix_sessions_tenant_id_user_id ON sessions (tenant_id, user_id);

    CREATE TABLE idempotency_keys (
      tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
      method text NOT NULL,
      key text NOT NULL,
      request_hash text NOT NULL,
      response bytea NOT NULL,
      create_time timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (tenant_id, method, key)
    );
    """)
    execute_script("""
    ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
    ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
    CREATE POLICY tenants_own ON tenants
      USING (id = (SELECT sentinel_tenant_id())) WITH CHECK (id = (SELECT sentinel_tenant_id()));
    CREATE POLICY tenants_platform ON tenants
      USING ((SELECT sentinel_platform_scope())) WITH CHECK ((SELECT sentinel_platform_scope()));
    """)
    for table in TENANT_TABLES:
        execute_script(f"""
        ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
        ALTER TABLE {table} FORCE ROW LEVEL SECURITY;
        CREATE POLICY {table}_tenant ON {table}
          USING (tenant_id = (SELECT sentinel_tenant_id()))
          WITH CHECK (tenant_id = (SELECT sentinel_tenant_id()));
        """)
    # Login needs a tenant's id from its slug before any tenant is known: a narrow definer
    # function that takes the platform scope only while it runs and restores the caller's.
    execute_script(f"""
    CREATE FUNCTION sentinel_resolve_tenant(p_slug text) RETURNS TABLE (id uuid, state text)
      LANGUAGE plpgsql VOLATILE SECURITY DEFINER
      SET search_path = public, pg_temp
      AS $$
      DECLARE
        prev_tenant text := coalesce(current_setting('sentinel.tenant_id', true), '');
        prev_platform text := coalesce(current_setting('sentinel.platform', true), '');
      BEGIN
        PERFORM set_config('sentinel.tenant_id', '{PLATFORM_TENANT}', true);
        PERFORM set_config('sentinel.platform', 'on', true);
        RETURN QUERY SELECT t.id, t.state FROM tenants t WHERE t.slug = p_slug;
        PERFORM set_config('sentinel.tenant_id', prev_tenant, true);
        PERFORM set_config('sentinel.platform', prev_platform, true);
      END $$;
    REVOKE ALL ON FUNCTION sentinel_resolve_tenant(text) FROM PUBLIC;
    """)
    role = app_role()
    execute_script(f"""
    GRANT USAGE ON SCHEMA public TO {role};
    GRANT SELECT, INSERT, UPDATE, DELETE ON tenants, users, sessions, idempotency_keys TO {role};
    GRANT EXECUTE ON FUNCTION sentinel_tenant_id(), sentinel_platform_scope(),
      sentinel_resolve_tenant(text) TO {role};
    """)
    # The reserved platform tenant that holds platform administrators.
    execute_script(f"""
    SELECT set_config('sentinel.tenant_id', '{PLATFORM_TENANT}', true);
    INSERT INTO tenants (id, slug, display_name, plan) VALUES
      ('{PLATFORM_TENANT}', 'platform', 'Sentinel platform', 'enterprise');
    """)


def downgrade() -> None:
    execute_script("""
    DROP FUNCTION IF EXISTS sentinel_resolve_tenant(text);
    DROP TABLE IF EXISTS idempotency_keys, sessions, users, tenants;
    DROP FUNCTION IF EXISTS sentinel_platform_scope(), sentinel_tenant_id();
    """)
