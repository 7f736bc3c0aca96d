"""Plan limits: a tenant cannot have more users than its plan allows, even under concurrency."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import httpx
import pytest
from sentinel.tenant.v1 import tenant_pb2
from sentinel.tenant.v1 import tenant_service_pb2 as tsp
from sentinel.tenant.v1 import tenant_service_pb2_grpc as tsg
from sentinel.user.v1 import user_service_pb2 as usp
from sentinel.user.v1 import user_service_pb2_grpc as usg

from tests.integration.conftest import PASSWORD, World

pytestmark = pytest.mark.integration
STANDARD_LIMIT = 3  # SENTINEL_PLAN_MAX_USERS in the test stack


async def standard_tenant(world: World) -> str:
    reply = await tsg.TenantServiceStub(world.channels["tenant"]).CreateTenant(
        tsp.CreateTenantRequest(slug=f"std-{uuid.uuid4().hex[:8]}", display_name="Standard",
                                plan=tenant_pb2.TENANT_PLAN_STANDARD), metadata=world.admin.metadata)
    return str(reply.tenant.id)


def create(world: World, tenant_id: str, i: int) -> Any:
    return usg.UserServiceStub(world.channels["user"]).CreateUser(
        usp.CreateUserRequest(tenant_id=tenant_id, email=f"u{i}-{uuid.uuid4().hex[:4]}@plan.example.com",
                              password=PASSWORD), metadata=world.admin.metadata)


async def count_users(world: World, tenant_id: str) -> int:
    reply = await usg.UserServiceStub(world.channels["user"]).ListUsers(
        usp.ListUsersRequest(tenant_id=tenant_id, page_size=100), metadata=world.admin.metadata)
    return len(reply.users)


async def test_user_limit_is_enforced(world: World, stack: Any) -> None:
    tenant_id = await standard_tenant(world)
    for i in range(STANDARD_LIMIT):
        await create(world, tenant_id, i)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(world, tenant_id, 99)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"allows {STANDARD_LIMIT} users" in str(err.value.details())
    assert await count_users(world, tenant_id) == STANDARD_LIMIT
    async with httpx.AsyncClient(base_url=stack.rest_url, timeout=10) as http:
        r = await http.post("/api/v1/users", headers=world.admin.headers,
                            json={"tenant_id": tenant_id, "email": "rest@plan.example.com", "password": PASSWORD})
    assert r.status_code == 429 and r.json()["code"] == 8


async def test_concurrent_creates_cannot_overshoot(world: World) -> None:
    tenant_id = await standard_tenant(world)
    results = await asyncio.gather(*(create(world, tenant_id, i) for i in range(8)), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(f, grpc.aio.AioRpcError) and f.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
               for f in failures), failures
    assert len(results) - len(failures) == STANDARD_LIMIT
    assert await count_users(world, tenant_id) == STANDARD_LIMIT


async def test_creates_serialise_on_the_tenant_lock(world: World, pg_stack: Any) -> None:
    """Deterministic proof of the serialisation the concurrency test relies on: while another
    transaction holds the tenant's user lock, CreateUser waits."""
    import asyncpg

    tenant_id = await standard_tenant(world)
    conn = await asyncpg.connect(pg_stack.app_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        tx = conn.transaction()
        await tx.start()
        # The key db.lock_in_tenant(session, "sentinel.limit:users") takes in the bound tenant.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('sentinel.limit:users' || $1::text))", tenant_id)
        pending = asyncio.ensure_future(create(world, tenant_id, 1))
        await asyncio.sleep(0.7)
        assert not pending.done(), "CreateUser did not wait for the tenant's user lock"
        await tx.commit()
        await asyncio.wait_for(pending, 10)
    finally:
        await conn.close()


async def quota_events(world: World, tenant_id: str) -> list[Any]:
    from sentinel.audit.v1 import audit_service_pb2 as asp
    from sentinel.audit.v1 import audit_service_pb2_grpc as asg

    from tests.integration.conftest import audit_settled

    await audit_settled()
    page = await asg.AuditServiceStub(world.channels["audit"]).ListAuditEvents(asp.ListAuditEventsRequest(
        tenant_id=tenant_id, page_size=50, order=asp.SORT_ORDER_OLDEST_FIRST,
        filter=asp.AuditFilter(action="tenant.quota_threshold")), metadata=world.admin.metadata)
    return list(page.events)


async def quota_counter(stack: Any, threshold: int) -> float:
    series = f'sentinel_plan_quota_thresholds_total{{resource="users",threshold="{threshold}"}} '
    total = 0.0
    async with httpx.AsyncClient(timeout=5) as http:
        for name in stack.instance_names("user"):  # summed over the user-service instances
            body = (await http.get(stack.metrics_url(name))).text
            total += sum(float(line.split()[-1]) for line in body.splitlines() if line.startswith(series))
    return total


async def test_reaching_80_and_100_percent_of_a_limit_is_recorded_once(world: World, stack: Any) -> None:
    from google.protobuf import json_format
    from sentinel.platform.auth import PLATFORM_TENANT_ID

    tenant_id = await standard_tenant(world)
    full_before = await quota_counter(stack, 100)
    await create(world, tenant_id, 0)
    await create(world, tenant_id, 1)
    assert await quota_events(world, tenant_id) == []  # 2 of 3: below 80 % (which is 3 users here)
    await create(world, tenant_id, 2)
    events = await quota_events(world, tenant_id)
    diffs = [json_format.MessageToDict(e.diff) for e in events]
    assert sorted(d["threshold_percent"] for d in diffs) == [80, 100]
    assert all(d["resource"] == "users" and d["plan"] == "standard" and d["used"] == 3 and d["limit"] == 3
               for d in diffs), diffs
    assert all(e.target.type == "tenant" and e.target.id == tenant_id and e.actor.id == "plan-limits"
               for e in events)
    # A refused create crosses nothing again.
    with pytest.raises(grpc.aio.AioRpcError):
        await create(world, tenant_id, 3)
    assert len(await quota_events(world, tenant_id)) == 2
    # The tenant's trail holds them, no other's (the platform's included).
    assert tenant_id not in {e.target.id for e in await quota_events(world, str(PLATFORM_TENANT_ID))}
    # Operators count them.
    assert await quota_counter(stack, 100) == full_before + 1
