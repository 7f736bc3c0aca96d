"""Migrations that move data, run forward and back on a scratch database of the stack's Postgres."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from sentinel.devstack.stack import DB_NAME, OWNER_ROLE
from sentinel.platform import migrate
from sentinel.platform.auth import PLATFORM_TENANT_ID

pytestmark = pytest.mark.integration

SCRATCH = "sentinel_migration_test"


@pytest.fixture
async def scratch(stack: Any) -> AsyncIterator[str]:
    """The owner's URL of a new, empty database (dropped afterwards)."""
    superuser = dict(host=stack.host, port=stack.ports.postgres, user="postgres",
                     password=(stack.secrets_dir / "db-superuser.password").read_text().strip())
    conn = await asyncpg.connect(**superuser, database="postgres")
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {SCRATCH} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {SCRATCH} OWNER {OWNER_ROLE}")
    finally:
        await conn.close()
    conn = await asyncpg.connect(**superuser, database=SCRATCH)
    try:
        await conn.execute(f"ALTER SCHEMA public OWNER TO {OWNER_ROLE}")
    finally:
        await conn.close()
    base, name = stack.owner_url.rsplit("/", 1)
    assert name == DB_NAME
    yield f"{base}/{SCRATCH}"
    conn = await asyncpg.connect(**superuser, database="postgres")
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {SCRATCH} WITH (FORCE)")
    finally:
        await conn.close()


async def in_platform_scope(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Run ``sql`` as the owner in platform scope (the tables force RLS on their owner too)."""
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('sentinel.tenant_id', $1, true), "
                               "set_config('sentinel.platform', 'on', true)", str(PLATFORM_TENANT_ID))
            return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def test_0014_takes_import_files_out_of_job_params_and_back(scratch: str) -> None:
    await asyncio.to_thread(migrate.upgrade, scratch, revision="0013")
    tenant, waiting, done, export = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    csv = "email,display_name,role,password_hash\nada@example.com,Ada,member,$2b$04$" + "x" * 53 + "\n"
    await in_platform_scope(scratch, "INSERT INTO tenants (id, slug, display_name) VALUES ($1, 'migrated', 'M')",
                            tenant)
    await in_platform_scope(scratch, """
        INSERT INTO jobs (tenant_id, id, kind, state, params) VALUES
          ($1, $2, 'user_import', 'pending', $5::jsonb), ($1, $3, 'user_import', 'succeeded', $5::jsonb),
          ($1, $4, 'tenant_export', 'succeeded', '{}')""", tenant, waiting, done, export, json.dumps({"csv": csv}))

    await asyncio.to_thread(migrate.upgrade, scratch)
    rows = {r["id"]: r for r in await in_platform_scope(
        scratch, "SELECT id, params, input, input_sealed FROM jobs")}
    described = {"csv": f"[csv, {len(csv.encode())} bytes]"}
    assert json.loads(rows[waiting]["params"]) == described
    assert json.loads(rows[waiting]["input"]) == {"csv": csv} and not rows[waiting]["input_sealed"]
    assert json.loads(rows[done]["params"]) == described and rows[done]["input"] is None  # finished: dropped
    assert json.loads(rows[export]["params"]) == {} and rows[export]["input"] is None
    with pytest.raises(asyncpg.CheckViolationError):  # from now on the database insists
        await in_platform_scope(scratch, "UPDATE jobs SET state = 'succeeded' WHERE id = $1", waiting)

    await asyncio.to_thread(migrate.downgrade, scratch, revision="0013")
    back = {r["id"]: json.loads(r["params"]) for r in await in_platform_scope(scratch, "SELECT id, params FROM jobs")}
    assert back == {waiting: {"csv": csv}, done: described, export: {}}
