"""Background jobs: on-demand jobs of a tenant, their results, and the runs of periodic jobs.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03

Postgres is the record of every job; Redis (huey) only carries the "run this now" signal. A
worker claims a job with one guarded UPDATE (``pending`` → ``running`` with a lease), so two
workers never run one job at once, and a job whose signal was lost (Redis restarted) or whose
worker died (lease expired) is found again by the dispatcher. Results live in ``job_results``
under the same RLS as everything else: a tenant downloads only its own.

``periodic_runs`` belong to the platform tenant. A scheduled run claims its (name, slot) with an
INSERT on a unique index, so several consumers ticking at the same minute run it once.
"""

from __future__ import annotations

from sentinel.platform.migrate import app_role, execute_script

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script("""
    CREATE TABLE jobs (
      tenant_id uuid NOT NULL REFERENCES tenants (id),
      id uuid NOT NULL,
      kind text NOT NULL,
      state text NOT NULL DEFAULT 'pending',
      params jsonb NOT NULL DEFAULT '{}',
      attempts integer NOT NULL DEFAULT 0,
      max_attempts integer NOT NULL DEFAULT 3,
      timeout_seconds integer NOT NULL DEFAULT 600,
      progress_percent integer NOT NULL DEFAULT 0,
      error text NOT NULL DEFAULT '',
      summary jsonb NOT NULL DEFAULT '{}',
      creator_id text NOT NULL DEFAULT '',
      create_time timestamptz NOT NULL DEFAULT now(),
      update_time timestamptz NOT NULL DEFAULT now(),
      start_time timestamptz,
      end_time timestamptz,
      next_attempt_time timestamptz NOT NULL DEFAULT now(),
      lease_until timestamptz,
      version integer NOT NULL DEFAULT 1,
      PRIMARY KEY (tenant_id, id),
      CONSTRAINT ck_jobs_kind CHECK (kind IN ('audit_export', 'tenant_export', 'user_import')),
      CONSTRAINT ck_jobs_state CHECK (state IN ('pending', 'running', 'succeeded', 'failed', 'cancelled',
                                                'dead_letter')),
      CONSTRAINT ck_jobs_attempts CHECK (attempts >= 0 AND max_attempts BETWEEN 1 AND 10),
      CONSTRAINT ck_jobs_timeout CHECK (timeout_seconds BETWEEN 1 AND 86400),
      CONSTRAINT ck_jobs_progress CHECK (progress_percent BETWEEN 0 AND 100)
    );
    CREATE INDEX ix_jobs_tenant_id_create_time ON jobs (tenant_id, create_time DESC, id DESC);
    -- The dispatcher's scan: due pending jobs and expired leases, across tenants (platform scope).
    CREATE INDEX ix_jobs_due ON jobs (next_attempt_time) WHERE state = 'pending';
    CREATE INDEX ix_jobs_leased ON jobs (lease_until) WHERE state = 'running';

    CREATE TABLE job_results (
      tenant_id uuid NOT NULL,
      job_id uuid NOT NULL,
      content_type text NOT NULL,
      content bytea NOT NULL,
      create_time timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (tenant_id, job_id),
      FOREIGN KEY (tenant_id, job_id) REFERENCES jobs (tenant_id, id) ON DELETE CASCADE
    );

    CREATE TABLE periodic_runs (
      tenant_id uuid NOT NULL REFERENCES tenants (id),
      id uuid NOT NULL,
      name text NOT NULL,
      slot timestamptz,
      manual boolean NOT NULL DEFAULT false,
      state text NOT NULL DEFAULT 'running',
      start_time timestamptz NOT NULL DEFAULT now(),
      end_time timestamptz,
      error text NOT NULL DEFAULT '',
      result jsonb NOT NULL DEFAULT '{}',
      PRIMARY KEY (tenant_id, id),
      CONSTRAINT ck_periodic_runs_state CHECK (state IN ('running', 'succeeded', 'failed'))
    );
    CREATE UNIQUE INDEX uq_periodic_runs_slot ON periodic_runs (tenant_id, name, slot) WHERE NOT manual;
    CREATE INDEX ix_periodic_runs_name_start ON periodic_runs (tenant_id, name, start_time DESC);
    """)
    for table in ("jobs", "job_results", "periodic_runs"):
        execute_script(f"""
        ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
        ALTER TABLE {table} FORCE ROW LEVEL SECURITY;
        CREATE POLICY {table}_tenant ON {table}
          USING (tenant_id = (SELECT sentinel_tenant_id()))
          WITH CHECK (tenant_id = (SELECT sentinel_tenant_id()));
        CREATE TRIGGER {table}_keep_tenant_id BEFORE UPDATE OF tenant_id ON {table}
          FOR EACH ROW EXECUTE FUNCTION sentinel_keep_tenant_id();
        """)
    # The dispatcher finds due jobs of every tenant; it runs in platform scope.
    execute_script("""
    CREATE POLICY jobs_dispatch ON jobs
      USING ((SELECT sentinel_platform_scope())) WITH CHECK ((SELECT sentinel_platform_scope()));
    """)
    role = app_role()
    execute_script(f"""
    GRANT SELECT, INSERT, UPDATE, DELETE ON jobs TO {role};  -- DELETE: the tenant purge only
    GRANT SELECT, INSERT, UPDATE, DELETE ON job_results TO {role};
    GRANT SELECT, INSERT, UPDATE ON periodic_runs TO {role};
    """)


def downgrade() -> None:
    execute_script("DROP TABLE IF EXISTS job_results; DROP TABLE IF EXISTS jobs; DROP TABLE IF EXISTS periodic_runs;")
