"""Row-level security, proven in the database itself, below any application code.

The catalog lint fails when a tenant table lacks ENABLE/FORCE RLS, has a ``USING (true)``
policy, or is owned by the service role. The behaviour tests connect as the service role
and try to read and write across tenants with raw SQL.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

pytestmark = pytest.mark.integration

APP_ROLE = "sentinel_app"


def dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


@pytest.fixture
async def owner(pg_stack: Any) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn(pg_stack.owner_url))
    yield conn
    await conn.close()


@pytest.fixture
async def app(pg_stack: Any) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn(pg_stack.app_url))
    yield conn
    await conn.close()


async def test_catalog_lint(owner: asyncpg.Connection) -> None:
    tables = await owner.fetch("""
        SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, pg_get_userbyid(c.relowner) AS owner,
               EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id'
                       AND NOT a.attisdropped) AS has_tenant_id,
               EXISTS (SELECT 1 FROM pg_trigger g JOIN pg_proc f ON f.oid = g.tgfoid
                       WHERE g.tgrelid = c.oid AND f.proname = 'sentinel_keep_tenant_id'
                       AND g.tgenabled <> 'D') AS keeps_tenant
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relname <> 'alembic_version'""")
    assert {t["relname"] for t in tables} >= {"tenants", "users", "sessions", "idempotency_keys"}
    problems = []
    for t in tables:
        if t["has_tenant_id"] or t["relname"] == "tenants":
            if not (t["relrowsecurity"] and t["relforcerowsecurity"]):
                problems.append(f"{t['relname']}: RLS not enabled and forced")
            if t["has_tenant_id"] and not t["keeps_tenant"]:
                problems.append(f"{t['relname']}: tenant_id can change (no sentinel_keep_tenant_id trigger)")
        else:
            problems.append(f"{t['relname']}: no tenant_id column; every table must be tenant-scoped")
        if t["owner"] == APP_ROLE:
            problems.append(f"{t['relname']}: owned by the service role")
    policies = await owner.fetch("SELECT tablename, policyname, qual, with_check FROM pg_policies "
                                 "WHERE schemaname = 'public'")
    for p in policies:
        for expr in (p["qual"], p["with_check"]):
            if expr is not None and expr.strip("() ").lower() == "true":
                problems.append(f"{p['tablename']}.{p['policyname']}: USING (true)")
    covered = {p["tablename"] for p in policies}
    problems += [f"{t['relname']}: no policy" for t in tables if t["relname"] not in covered]
    assert problems == []


async def test_service_role_is_least_privilege(owner: asyncpg.Connection) -> None:
    role = await owner.fetchrow("SELECT rolsuper, rolbypassrls, rolcreatedb, rolcreaterole FROM pg_roles "
                                "WHERE rolname = $1", APP_ROLE)
    assert role is not None and not any(role.values())
    db_owner = await owner.fetchval(
        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()")
    assert db_owner != APP_ROLE
    # The migration bookkeeping is not the service's business.
    assert not await owner.fetchval("SELECT has_table_privilege($1, 'alembic_version', 'SELECT')", APP_ROLE)


async def _seed(owner: asyncpg.Connection) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    a, b, user_a = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with owner.transaction():
        for tenant in (a, b):
            await owner.execute("SELECT set_config('sentinel.tenant_id', $1, true)", str(tenant))
            await owner.execute("INSERT INTO tenants (id, slug, display_name) VALUES ($1, $2, 'rls test')",
                                tenant, f"rls-{tenant.hex[:12]}")
        await owner.execute("SELECT set_config('sentinel.tenant_id', $1, true)", str(a))
        await owner.execute("INSERT INTO users (id, tenant_id, email, role, password_hash) "
                            "VALUES ($1, $2, 'victim@example.com', 'member', 'x')", user_a, a)
    return a, b, user_a


async def in_tenant(conn: asyncpg.Connection, tenant: uuid.UUID | None, sql: str, *args: Any) -> Any:
    async with conn.transaction():
        await conn.execute("SELECT set_config('sentinel.tenant_id', $1, true)", str(tenant) if tenant else "")
        return await conn.fetch(sql, *args)


async def test_unset_tenant_fails_closed(owner: asyncpg.Connection, app: asyncpg.Connection) -> None:
    await _seed(owner)
    # Never set on this connection: NULL.
    assert await app.fetch("SELECT * FROM users") == []
    assert await app.fetch("SELECT * FROM tenants") == []
    # The pitfall: after a transaction that set it, the setting reads back as '' (not NULL).
    await in_tenant(app, uuid.uuid4(), "SELECT 1")
    assert await app.fetchval("SELECT current_setting('sentinel.tenant_id', true)") == ""
    assert await app.fetch("SELECT * FROM users") == []
    assert await app.fetch("SELECT * FROM sessions") == []


async def test_reads_and_writes_stay_in_tenant(owner: asyncpg.Connection, app: asyncpg.Connection) -> None:
    a, b, user_a = await _seed(owner)
    assert len(await in_tenant(app, a, "SELECT id FROM users WHERE id = $1", user_a)) == 1
    assert await in_tenant(app, b, "SELECT id FROM users WHERE id = $1", user_a) == []
    assert await in_tenant(app, b, "SELECT id FROM tenants WHERE id = $1", a) == []
    # Updates and deletes of A's rows from B affect nothing.
    assert await in_tenant(app, b, "UPDATE users SET display_name = 'pwned' WHERE id = $1 RETURNING id",
                           user_a) == []
    assert await in_tenant(app, b, "DELETE FROM users WHERE id = $1 RETURNING id", user_a) == []
    # Writing a row into another tenant is refused by WITH CHECK.
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await in_tenant(app, b, "INSERT INTO users (id, tenant_id, email, role, password_hash) "
                                "VALUES ($1, $2, 'x@example.com', 'member', 'x')", uuid.uuid4(), a)
    # Moving A's user into B from A's side is refused too: by the trigger that keeps every
    # row's tenant (it fires before RLS's WITH CHECK, and binds roles that bypass RLS as well).
    with pytest.raises(asyncpg.CheckViolationError, match="tenant of a users row cannot change"):
        await in_tenant(app, a, "UPDATE users SET tenant_id = $2 WHERE id = $1", user_a, b)
    row = await in_tenant(app, a, "SELECT display_name, tenant_id FROM users WHERE id = $1", user_a)
    assert row[0]["tenant_id"] == a and row[0]["display_name"] == ""


async def test_platform_flag_alone_grants_nothing(owner: asyncpg.Connection, app: asyncpg.Connection) -> None:
    a, b, _ = await _seed(owner)
    async with app.transaction():
        await app.execute("SELECT set_config('sentinel.tenant_id', $1, true), "
                          "set_config('sentinel.platform', 'on', true)", str(b))
        assert await app.fetch("SELECT id FROM tenants WHERE id = $1", a) == []
        # Users are never visible platform-wide, even in the platform tenant.
        await app.execute("SELECT set_config('sentinel.tenant_id', '00000000-0000-7000-8000-000000000001', true)")
        assert await app.fetch("SELECT id FROM users WHERE tenant_id = $1", a) == []
        assert len(await app.fetch("SELECT id FROM tenants WHERE id = $1", a)) == 1


async def test_resolve_tenant_is_narrow_and_restores_scope(owner: asyncpg.Connection,
                                                           app: asyncpg.Connection) -> None:
    a, _, _ = await _seed(owner)
    slug = f"rls-{a.hex[:12]}"
    async with app.transaction():
        rows = await app.fetch("SELECT * FROM sentinel_resolve_tenant($1)", slug)
        assert [tuple(r.keys()) for r in rows] == [("id", "state")] and rows[0]["id"] == a
        assert await app.fetchval("SELECT current_setting('sentinel.platform', true)") in ("", None)
        assert await app.fetch("SELECT * FROM tenants") == []
    assert await app.fetch("SELECT * FROM sentinel_resolve_tenant('no-such-tenant')") == []


async def test_service_role_cannot_change_policies(app: asyncpg.Connection) -> None:
    for sql in ("ALTER TABLE users DISABLE ROW LEVEL SECURITY", "DROP POLICY users_tenant ON users",
                "ALTER TABLE users NO FORCE ROW LEVEL SECURITY"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.execute(sql)
