"""A job's confidential input lives apart from its parameters, sealed, and only until the job ends.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04

A user import's CSV carries password hashes. Until now it sat in ``jobs.params`` for as long as
the job row was kept (its retention, or the tenant's purge), in every backup taken meanwhile.
Now ``params`` keeps only a description (``"[csv, 1234 bytes]"``) and the CSV goes to ``input``:
sealed with the tenant's data key when a key directory is configured (``input_sealed``), and
cleared by the transition that ends the job. A CHECK makes that a rule of the database: no
finished job holds an input, whichever code path finished it.

Existing rows: the input of a pending or running job moves to ``input`` unsealed (a migration has
no data keys); a finished job's is dropped.
"""

from __future__ import annotations

from sentinel.platform.auth import PLATFORM_TENANT_ID
from sentinel.platform.migrate import execute_script

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script(f"""
    ALTER TABLE jobs ADD COLUMN input bytea, ADD COLUMN input_sealed boolean NOT NULL DEFAULT false;
    -- jobs has FORCE ROW LEVEL SECURITY: the owner, too, rewrites every tenant's rows in platform scope.
    SELECT set_config('sentinel.tenant_id', '{PLATFORM_TENANT_ID}', true), set_config('sentinel.platform', 'on', true);
    UPDATE jobs
       SET input = CASE WHEN state IN ('pending', 'running')
                        THEN convert_to(jsonb_build_object('csv', params->'csv')::text, 'UTF8') END,
           params = jsonb_set(params, '{{csv}}', to_jsonb(format('[csv, %s bytes]', octet_length(params->>'csv'))))
     WHERE kind = 'user_import' AND jsonb_typeof(params->'csv') = 'string';
    SELECT set_config('sentinel.platform', '', true);
    ALTER TABLE jobs ADD CONSTRAINT ck_jobs_input_until_finished
      CHECK (input IS NULL OR state IN ('pending', 'running'));
    """)


def downgrade() -> None:
    # The inputs of pending jobs go back into their parameters only when unsealed (no keys here).
    execute_script(f"""
    SELECT set_config('sentinel.tenant_id', '{PLATFORM_TENANT_ID}', true), set_config('sentinel.platform', 'on', true);
    UPDATE jobs SET params = params || convert_from(input, 'UTF8')::jsonb
     WHERE input IS NOT NULL AND NOT input_sealed;
    SELECT set_config('sentinel.platform', '', true);
    ALTER TABLE jobs DROP CONSTRAINT ck_jobs_input_until_finished;
    ALTER TABLE jobs DROP COLUMN input, DROP COLUMN input_sealed;
    """)
