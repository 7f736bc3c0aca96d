"""Tenant lifecycle: ACTIVE → SUSPENDED → PENDING_DELETION → DELETED, enforced in every service.

A suspended or pending-deletion tenant's users, sessions and tokens are refused by every
service within a second, over gRPC and REST; platform admins still read it but change
nothing in it; resume and restore give it back; the purge after the grace period deletes its
data and leaves a tombstone.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys
import time
import uuid
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
from sentinel.tenant.v1 import tenant_pb2
from sentinel.tenant.v1 import tenant_service_pb2 as tsp
from sentinel.tenant.v1 import tenant_service_pb2_grpc as tsg
from sentinel.user.v1 import user_service_pb2 as usp
from sentinel.user.v1 import user_service_pb2_grpc as usg

from tests.integration.clients import Principal, status_of
from tests.integration.conftest import PASSWORD, Tenant, World, make_tenant

pytestmark = pytest.mark.integration
WITHIN = 1.0  # seconds
REASON = "invoice 2026-117 overdue"


def tenants(world: World) -> Any:
    return tsg.TenantServiceStub(world.channels["tenant"])


def users(world: World) -> Any:
    return usg.UserServiceStub(world.channels["user"])


async def fresh_tenant(world: World) -> Tenant:
    return await make_tenant(world.channels, world.admin, "life")


async def access(world: World, stack: Any, who: Principal) -> dict[str, Any]:
    """What each service (and the REST edge) answers this tenant principal."""
    md = who.metadata
    out: dict[str, Any] = {
        "tenant": await status_of(tenants(world).GetTenant(tsp.GetTenantRequest(id=who.tenant_id), metadata=md)),
        "user": await status_of(users(world).ListUsers(usp.ListUsersRequest(), metadata=md)),
        "whoami": await status_of(usg.AuthServiceStub(world.channels["user"]).WhoAmI(usp.WhoAmIRequest(),
                                                                                   metadata=md)),
    }
    async with httpx.AsyncClient(base_url=stack.rest_url, timeout=5) as http:
        out["rest"] = (await http.get("/api/v1/users", headers=who.headers)).status_code
    return out


ALLOWED = {"tenant": grpc.StatusCode.OK, "user": grpc.StatusCode.OK, "whoami": grpc.StatusCode.OK, "rest": 200}
REFUSED = {"tenant": grpc.StatusCode.FAILED_PRECONDITION, "user": grpc.StatusCode.FAILED_PRECONDITION,
           "whoami": grpc.StatusCode.FAILED_PRECONDITION, "rest": 400}


async def becomes(world: World, stack: Any, who: Principal, expected: dict[str, Any]) -> float:
    start = time.monotonic()
    while True:
        state = await access(world, stack, who)
        elapsed = time.monotonic() - start
        if state == expected:
            return elapsed
        assert elapsed < WITHIN, f"after {elapsed:.2f} s: {state}, expected {expected}"
        await asyncio.sleep(0.02)


async def test_suspension_stops_the_tenant_everywhere_at_once_and_resume_restores_it(
        world: World, stack: Any) -> None:
    t = await fresh_tenant(world)
    refresh = (await usg.AuthServiceStub(world.channels["user"]).Login(
        usp.LoginRequest(tenant=t.slug, email=f"member@{t.slug}.example.com", password=PASSWORD))).refresh_token
    assert await access(world, stack, t.owner) == ALLOWED

    suspended = (await tenants(world).SuspendTenant(tsp.SuspendTenantRequest(id=t.id, reason=REASON),
                                                    metadata=world.admin.metadata)).tenant
    assert suspended.state == tenant_pb2.TENANT_STATE_SUSPENDED and suspended.suspension_reason == REASON
    for who in (t.owner, t.member):
        assert await becomes(world, stack, who, REFUSED) < WITHIN

    # The refusal says why, to the tenant's own users, over gRPC and REST.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await users(world).ListUsers(usp.ListUsersRequest(), metadata=t.owner.metadata)
    assert err.value.details() == f"your tenant is suspended ({REASON}); contact your platform administrator"
    async with httpx.AsyncClient(base_url=stack.rest_url, timeout=5) as http:
        r = await http.get("/api/v1/users", headers=t.owner.headers)
        assert r.status_code == 400
        assert r.json()["message"] == err.value.details()
        assert r.json()["details"][0]["reason"] == "TENANT_NOT_ACTIVE"
        # Neither a new login nor a refresh gets around it.
        r = await http.post("/api/v1/auth/login", json={"tenant": t.slug, "email": f"owner@{t.slug}.example.com",
                                                        "password": PASSWORD})
        assert r.status_code == 400 and "suspended" in r.json()["message"], r.text
        r = await http.post("/api/v1/auth/refresh", json={"refresh_token": refresh})
        assert r.status_code == 400 and "suspended" in r.json()["message"], r.text

    # Platform admins still read it (and its users), but change nothing in it.
    admin = world.admin.metadata
    assert (await tenants(world).GetTenant(tsp.GetTenantRequest(id=t.id), metadata=admin)).tenant.state == \
        tenant_pb2.TENANT_STATE_SUSPENDED
    listed = await users(world).ListUsers(usp.ListUsersRequest(tenant_id=t.id), metadata=admin)
    assert {u.id for u in listed.users} == set(t.user_ids)
    for change in (
        users(world).CreateUser(usp.CreateUserRequest(tenant_id=t.id, email=f"new@{t.slug}.example.com",
                                                      password=PASSWORD), metadata=admin),
        tenants(world).UpdateTenant(tsp.UpdateTenantRequest(tenant=tenant_pb2.Tenant(id=t.id, display_name="x")),
                                    metadata=admin),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await change
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.value.details() == f"tenant {t.id} is suspended; resume it first"
    assert len((await users(world).ListUsers(usp.ListUsersRequest(tenant_id=t.id), metadata=admin)).users) == 2

    # Suspending again changes nothing; resuming lets the same sessions back in.
    again = (await tenants(world).SuspendTenant(tsp.SuspendTenantRequest(id=t.id, reason="other"),
                                                metadata=admin)).tenant
    assert again.etag == suspended.etag and again.suspension_reason == REASON
    resumed = (await tenants(world).ResumeTenant(tsp.ResumeTenantRequest(id=t.id, etag=again.etag),
                                                 metadata=admin)).tenant
    assert resumed.state == tenant_pb2.TENANT_STATE_ACTIVE and resumed.suspension_reason == ""
    for who in (t.owner, t.member):
        assert await becomes(world, stack, who, ALLOWED) < WITHIN


async def test_other_tenants_are_untouched_by_a_suspension(world: World, stack: Any) -> None:
    t = await fresh_tenant(world)
    await tenants(world).SuspendTenant(tsp.SuspendTenantRequest(id=t.id, reason=REASON),
                                       metadata=world.admin.metadata)
    assert await becomes(world, stack, t.owner, REFUSED) < WITHIN
    assert await access(world, stack, world.a.owner) == ALLOWED
    assert await access(world, stack, world.b.member) == ALLOWED


async def test_deletion_is_pending_for_the_grace_period_and_can_be_restored(world: World, stack: Any) -> None:
    t = await fresh_tenant(world)
    admin = world.admin.metadata
    pending = (await tenants(world).DeleteTenant(tsp.DeleteTenantRequest(id=t.id), metadata=admin)).tenant
    assert pending.state == tenant_pb2.TENANT_STATE_PENDING_DELETION
    grace = pending.purge_time.ToDatetime() - pending.delete_time.ToDatetime()
    assert grace == dt.timedelta(days=30)
    assert await becomes(world, stack, t.owner, REFUSED) < WITHIN
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await users(world).ListUsers(usp.ListUsersRequest(), metadata=t.member.metadata)
    assert err.value.details() == "your tenant is pending deletion; contact your platform administrator"

    # Deleting again keeps the first purge time; resuming is not how a deletion is undone.
    again = (await tenants(world).DeleteTenant(tsp.DeleteTenantRequest(id=t.id), metadata=admin)).tenant
    assert again.purge_time == pending.purge_time and again.etag == pending.etag
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tenants(world).ResumeTenant(tsp.ResumeTenantRequest(id=t.id), metadata=admin)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "restore it first" in str(err.value.details())
    with pytest.raises(grpc.aio.AioRpcError) as err:  # a stale etag is refused
        await tenants(world).RestoreTenant(tsp.RestoreTenantRequest(id=t.id, etag='"stale"'), metadata=admin)
    assert err.value.code() == grpc.StatusCode.ABORTED

    restored = (await tenants(world).RestoreTenant(tsp.RestoreTenantRequest(id=t.id, etag=pending.etag),
                                                   metadata=admin)).tenant
    assert restored.state == tenant_pb2.TENANT_STATE_ACTIVE
    assert not restored.HasField("purge_time") and not restored.HasField("delete_time")
    assert await becomes(world, stack, t.owner, ALLOWED) < WITHIN


async def test_a_suspension_survives_delete_and_restore(world: World) -> None:
    t = await fresh_tenant(world)
    admin = world.admin.metadata
    await tenants(world).SuspendTenant(tsp.SuspendTenantRequest(id=t.id, reason=REASON), metadata=admin)
    await tenants(world).DeleteTenant(tsp.DeleteTenantRequest(id=t.id), metadata=admin)
    restored = (await tenants(world).RestoreTenant(tsp.RestoreTenantRequest(id=t.id), metadata=admin)).tenant
    assert restored.state == tenant_pb2.TENANT_STATE_SUSPENDED and restored.suspension_reason == REASON
    assert await status_of(users(world).ListUsers(usp.ListUsersRequest(), metadata=t.owner.metadata)) == \
        grpc.StatusCode.FAILED_PRECONDITION


async def test_lifecycle_is_for_platform_admins_and_validated(world: World) -> None:
    admin = world.admin.metadata
    from sentinel.platform.auth import PLATFORM_TENANT_ID

    for call in (tenants(world).SuspendTenant(tsp.SuspendTenantRequest(id=str(PLATFORM_TENANT_ID), reason="x"),
                                              metadata=admin),
                 tenants(world).DeleteTenant(tsp.DeleteTenantRequest(id=str(PLATFORM_TENANT_ID)), metadata=admin)):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "platform tenant" in str(err.value.details())
    for reason in ("", "x" * 501):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await tenants(world).SuspendTenant(tsp.SuspendTenantRequest(id=world.a.id, reason=reason), metadata=admin)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:  # a tenant's own owner cannot suspend or restore it
        await tenants(world).SuspendTenant(tsp.SuspendTenantRequest(id=world.a.id, reason=REASON),
                                           metadata=world.a.owner.metadata)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tenants(world).SuspendTenant(tsp.SuspendTenantRequest(id=str(uuid.uuid4()), reason=REASON),
                                           metadata=admin)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert (await tenants(world).GetTenant(tsp.GetTenantRequest(id=world.a.id), metadata=admin)).tenant.state == \
        tenant_pb2.TENANT_STATE_ACTIVE


async def test_lifecycle_over_rest(world: World, stack: Any) -> None:
    t = await fresh_tenant(world)
    async with httpx.AsyncClient(base_url=stack.rest_url, headers=world.admin.headers, timeout=5) as http:
        r = await http.post(f"/api/v1/tenants/{t.id}:suspend", json={"reason": REASON})
        assert r.status_code == 200 and r.json()["tenant"]["state"] == "TENANT_STATE_SUSPENDED", r.text
        r = await http.post(f"/api/v1/tenants/{t.id}:suspend", json={})
        assert r.status_code == 400 and "reason" in r.text
        r = await http.post(f"/api/v1/tenants/{t.id}:resume", json={})
        assert r.status_code == 200 and r.json()["tenant"]["state"] == "TENANT_STATE_ACTIVE", r.text
        r = await http.delete(f"/api/v1/tenants/{t.id}")
        assert r.status_code == 200 and r.json()["tenant"]["state"] == "TENANT_STATE_PENDING_DELETION", r.text
        assert r.json()["tenant"]["purge_time"] > r.json()["tenant"]["delete_time"]
        r = await http.post(f"/api/v1/tenants/{t.id}:resume", json={})
        assert r.status_code == 400 and "restore it first" in r.json()["message"], r.text
        r = await http.post(f"/api/v1/tenants/{t.id}:restore", json={})
        assert r.status_code == 200 and r.json()["tenant"]["state"] == "TENANT_STATE_ACTIVE", r.text
        r = await http.post(f"/api/v1/tenants/{t.id}:suspend", json={"reason": REASON},
                            headers=t.owner.headers)
        assert r.status_code == 403, r.text


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def test_purge_after_the_grace_period_deletes_the_data_and_keeps_a_tombstone(
        world: World, stack: Any) -> None:
    t = await fresh_tenant(world)
    admin = world.admin.metadata
    await tenants(world).DeleteTenant(tsp.DeleteTenantRequest(id=t.id), metadata=admin)
    keep = await fresh_tenant(world)  # pending deletion too, but not yet due
    await tenants(world).DeleteTenant(tsp.DeleteTenantRequest(id=keep.id), metadata=admin)
    owner = await asyncpg.connect(_dsn(stack.owner_url))
    try:
        async with owner.transaction():  # time travel: t's grace period has passed
            await owner.execute("SELECT set_config('sentinel.tenant_id', $1, true)", t.id)
            await owner.execute("UPDATE tenants SET delete_time = now() - interval '31 days', "
                                "purge_time = now() - interval '1 day' WHERE id = $1", uuid.UUID(t.id))
        env = {**os.environ, "SENTINEL_DATABASE_URL": stack.app_url, "SENTINEL_REDIS_URL": stack.redis_url}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sentinel", "admin", "purge-tenants", "--batch", "1", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err_out = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err_out.decode()
        assert f"  {t.id}" in out.decode() and keep.id not in out.decode(), out.decode()

        async def rows(tenant: str) -> int:
            async with owner.transaction():
                await owner.execute("SELECT set_config('sentinel.tenant_id', $1, true)", tenant)
                return int(await owner.fetchval(
                    "SELECT (SELECT count(*) FROM users) + (SELECT count(*) FROM sessions)"))

        assert await rows(t.id) == 0
        assert await rows(keep.id) > 0
    finally:
        await owner.close()

    gone = (await tenants(world).GetTenant(tsp.GetTenantRequest(id=t.id), metadata=admin)).tenant
    assert gone.state == tenant_pb2.TENANT_STATE_DELETED and gone.slug == t.slug
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tenants(world).RestoreTenant(tsp.RestoreTenantRequest(id=t.id), metadata=admin)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "purged" in str(err.value.details())
    with pytest.raises(grpc.aio.AioRpcError) as err:  # the slug is never handed out again
        await tenants(world).CreateTenant(tsp.CreateTenantRequest(slug=t.slug, display_name="squatter"),
                                          metadata=admin)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await usg.AuthServiceStub(world.channels["user"]).Login(
            usp.LoginRequest(tenant=t.slug, email=f"owner@{t.slug}.example.com", password=PASSWORD))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED  # the account no longer exists
    assert await status_of(users(world).ListUsers(usp.ListUsersRequest(), metadata=t.owner.metadata)) == \
        grpc.StatusCode.FAILED_PRECONDITION
