"""The kernel's read-only path (db.read_only): bound to one tenant by RLS like every unit of
work, unable to write, and never handing a connection back to the pool inside a transaction."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from sentinel.platform import db
from sentinel.platform.auth import PLATFORM_TENANT_ID
from sentinel.user.models import User
from sqlalchemy import bindparam, func, select, text

from tests.integration.conftest import World

pytestmark = pytest.mark.integration

USER = db.Query(select(User).where(User.id == bindparam("id")))
EVERY_USER = db.Query(select(User.id, User.tenant_id))
COUNT = db.Query(select(func.count().label("count")).select_from(User))
SETTING = db.Query(select(func.current_setting("sentinel.tenant_id", True).label("tenant")))


async def test_reads_only_the_bound_tenant(world: World) -> None:
    a, b = uuid.UUID(world.a.id), uuid.UUID(world.b.id)
    async with db.read_only(tenant_id=a, platform=False) as reader:
        mine = await reader.one(USER, id=uuid.UUID(world.a.owner.user_id))
        theirs = await reader.one(USER, id=uuid.UUID(world.b.owner.user_id))
        tenants = {row.tenant_id for row in await reader.all(EVERY_USER)}
    assert mine is not None and mine.email.startswith("owner@")
    assert theirs is None  # another tenant's row is invisible, as if it did not exist
    assert tenants == {a}
    async with db.read_only(tenant_id=b, platform=False) as reader:
        assert {row.tenant_id for row in await reader.all(EVERY_USER)} == {b}


async def test_no_tenant_sees_nothing() -> None:
    async with db.read_only(tenant_id=None, platform=False) as reader:
        row = await reader.one(COUNT)
    assert row is not None and row.count == 0  # fail closed


async def test_cannot_write(world: World) -> None:
    update = db.Query(text("UPDATE users SET display_name = 'x' WHERE id = :id").bindparams(bindparam("id")))
    with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
        async with db.read_only(tenant_id=uuid.UUID(world.a.id), platform=False) as reader:
            await reader.one(update, id=uuid.UUID(world.a.member.user_id))
    async with db.read_only(tenant_id=uuid.UUID(world.a.id), platform=False) as reader:
        row = await reader.one(USER, id=uuid.UUID(world.a.member.user_id))
    assert row is not None and row.display_name != "x"


async def test_missing_parameter_is_refused_before_the_database() -> None:
    with pytest.raises(TypeError, match="missing query parameters: id"):
        async with db.read_only(tenant_id=PLATFORM_TENANT_ID, platform=True) as reader:
            await reader.one(USER)


async def test_the_binding_ends_with_the_transaction(world: World) -> None:
    """After a read (committed, failed or cancelled), the next transaction on any pooled
    connection starts unbound: nothing of the tenant is carried over."""
    a = uuid.UUID(world.a.id)

    async def slow_read() -> None:
        async with db.read_only(tenant_id=a, platform=False) as reader:
            await reader.one(db.Query(select(func.pg_sleep(5))))

    for _ in range(3):
        async with db.read_only(tenant_id=a, platform=False) as reader:
            row = await reader.one(SETTING)
            assert row is not None and row.tenant == str(a)
        with pytest.raises(ZeroDivisionError):
            async with db.read_only(tenant_id=a, platform=False) as reader:
                await reader.one(SETTING)
                raise ZeroDivisionError
        task = asyncio.create_task(slow_read())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # Every connection the pool now holds, checked out at once: none is inside a transaction
    # and none carries a tenant.
    pool = db.engine().sync_engine.pool
    connections = [await db.engine().connect() for _ in range(max(pool.checkedin(), 1))]
    try:
        for connection in connections:
            raw = (await connection.get_raw_connection()).driver_connection
            assert not raw.is_in_transaction()
            assert await raw.fetchval("SELECT coalesce(current_setting('sentinel.tenant_id', true), '')") == ""
    finally:
        for connection in connections:
            await connection.close()


async def test_inside_a_unit_of_work_it_joins_that_transaction(world: World) -> None:
    a = uuid.UUID(world.a.id)

    class RollBack(Exception):
        pass

    with pytest.raises(RollBack):
        async with db.unit_of_work(tenant_id=a, platform=False) as session:
            await session.execute(text("UPDATE users SET display_name = 'joined' WHERE id = :id"),
                                  {"id": uuid.UUID(world.a.member.user_id)})
            async with db.read_only() as reader:  # sees the uncommitted change: same transaction
                row = await reader.one(USER, id=uuid.UUID(world.a.member.user_id))
                assert row is not None and row.display_name == "joined"
            # A change still pending in the ORM session is flushed first, as autoflush would.
            orm_user = await session.get(User, uuid.UUID(world.a.member.user_id))
            assert orm_user is not None
            orm_user.display_name = "pending"
            async with db.read_only() as reader:
                row = await reader.one(USER, id=uuid.UUID(world.a.member.user_id))
                assert row is not None and row.display_name == "pending"
            raise RollBack
    async with db.read_only(tenant_id=a, platform=False) as reader:
        row = await reader.one(USER, id=uuid.UUID(world.a.member.user_id))
    assert row is not None and row.display_name != "joined"
