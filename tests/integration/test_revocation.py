"""Revoked sessions are refused by every service within a second (Postgres state + Redis feed)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import grpc
import httpx
import pytest
from redis.asyncio import Redis
from sentinel.common.v1 import common_pb2
from sentinel.platform.revocation import AccessFeed, publish
from sentinel.tenant.v1 import tenant_service_pb2 as tsp
from sentinel.tenant.v1 import tenant_service_pb2_grpc as tsg
from sentinel.user.v1 import user_service_pb2 as usp
from sentinel.user.v1 import user_service_pb2_grpc as usg

from tests.integration.conftest import PASSWORD, World

pytestmark = pytest.mark.integration
WITHIN = 1.0  # seconds: the promise


async def member_with_sessions(world: World, n: int) -> tuple[str, list[usp.LoginResponse]]:
    email = f"sess-{uuid.uuid4().hex[:6]}@{world.a.slug}.example.com"
    user = (await usg.UserServiceStub(world.channels["user"]).CreateUser(
        usp.CreateUserRequest(email=email, password=PASSWORD, role=common_pb2.ROLE_MEMBER),
        metadata=world.a.owner.metadata)).user
    auth = usg.AuthServiceStub(world.channels["user"])
    logins = [await auth.Login(usp.LoginRequest(tenant=world.a.slug, email=email, password=PASSWORD))
              for _ in range(n)]
    return user.id, logins


async def accepted(world: World, stack: Any, token: str) -> dict[str, bool]:
    """Whether each service (and the REST edge) still accepts this access token."""
    md = (("authorization", f"Bearer {token}"),)
    out = {}
    for name, call in (("user", usg.AuthServiceStub(world.channels["user"]).WhoAmI(usp.WhoAmIRequest(), metadata=md)),
                       ("tenant", tsg.TenantServiceStub(world.channels["tenant"]).GetTenant(
                           tsp.GetTenantRequest(id=world.a.id), metadata=md))):
        try:
            await call
            out[name] = True
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err
            assert "session has ended" in str(err.details())
            out[name] = False
    async with httpx.AsyncClient(base_url=stack.rest_url, timeout=5) as http:
        r = await http.get("/api/v1/users", headers={"authorization": f"Bearer {token}"})
        assert r.status_code in (200, 401), r.text
        out["rest"] = r.status_code == 200
    return out


async def refused_everywhere_within(world: World, stack: Any, token: str) -> float:
    start = time.monotonic()
    while True:
        state = await accepted(world, stack, token)
        elapsed = time.monotonic() - start
        if not any(state.values()):
            return elapsed
        assert elapsed < WITHIN, f"still accepted after {elapsed:.2f} s: {state}"
        await asyncio.sleep(0.02)


async def test_admin_revokes_every_session_of_a_user(world: World, stack: Any) -> None:
    user_id, logins = await member_with_sessions(world, 2)
    for login in logins:
        assert all((await accepted(world, stack, login.access_token)).values())
    reply = await usg.UserServiceStub(world.channels["user"]).RevokeUserSessions(
        usp.RevokeUserSessionsRequest(id=user_id), metadata=world.a.owner.metadata)
    assert reply.revoked_sessions == 2
    for login in logins:
        assert await refused_everywhere_within(world, stack, login.access_token) < WITHIN
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await usg.AuthServiceStub(world.channels["user"]).RefreshToken(
                usp.RefreshTokenRequest(refresh_token=login.refresh_token))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # A new login works: the user is not locked out, only the old sessions ended.
    again = await usg.AuthServiceStub(world.channels["user"]).WhoAmI(
        usp.WhoAmIRequest(), metadata=world.a.owner.metadata)
    assert again.tenant_id == world.a.id


async def test_logout_ends_the_session_everywhere(world: World, stack: Any) -> None:
    _, (mine, other) = await member_with_sessions(world, 2)
    await usg.AuthServiceStub(world.channels["user"]).Logout(
        usp.LogoutRequest(), metadata=(("authorization", f"Bearer {mine.access_token}"),))
    assert await refused_everywhere_within(world, stack, mine.access_token) < WITHIN
    assert all((await accepted(world, stack, other.access_token)).values())  # only that session


async def test_revocation_needs_rank_and_permission(world: World) -> None:
    users = usg.UserServiceStub(world.channels["user"])
    with pytest.raises(grpc.aio.AioRpcError) as err:  # members hold no users.write
        await users.RevokeUserSessions(usp.RevokeUserSessionsRequest(id=world.a.owner.user_id),
                                       metadata=world.a.member.metadata)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as err:  # another tenant's user does not exist
        await users.RevokeUserSessions(usp.RevokeUserSessionsRequest(id=world.b.member.user_id),
                                       metadata=world.a.owner.metadata)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_restarted_service_loads_earlier_revocations(stack: Any) -> None:
    redis = Redis.from_url(stack.redis_url)
    sid = str(uuid.uuid4())
    await publish(redis, [sid], ttl_seconds=30)
    fresh = AccessFeed()  # what a service starting now would build
    fresh.start(redis)
    try:
        await asyncio.wait_for(fresh.ready.wait(), 5)
        assert fresh.sessions.is_revoked(sid) and not fresh.sessions.is_revoked(str(uuid.uuid4()))
        later = str(uuid.uuid4())
        await publish(redis, [later], ttl_seconds=30)  # and follows the feed afterwards
        for _ in range(50):
            if fresh.sessions.is_revoked(later):
                break
            await asyncio.sleep(0.02)
        assert fresh.sessions.is_revoked(later)
    finally:
        await fresh.stop()
        await redis.aclose()


@pytest.mark.parametrize("change", ["disable", "role", "delete"])
async def test_disabling_demoting_or_deleting_a_user_ends_their_sessions(world: World, stack: Any,
                                                                        change: str) -> None:
    """Tokens carry the role and prove an account: none may outlive the change by a second."""
    from sentinel.user.v1 import user_pb2

    user_id, logins = await member_with_sessions(world, 1)
    token = logins[0].access_token
    assert all((await accepted(world, stack, token)).values())
    users = usg.UserServiceStub(world.channels["user"])
    md = world.a.owner.metadata
    if change == "delete":
        await users.DeleteUser(usp.DeleteUserRequest(id=user_id), metadata=md)
    else:
        user = user_pb2.User(id=user_id)
        if change == "disable":
            user.state = user_pb2.USER_STATE_DISABLED
        else:
            user.role = common_pb2.ROLE_VIEWER
        await users.UpdateUser(usp.UpdateUserRequest(user=user), metadata=md)
    assert await refused_everywhere_within(world, stack, token) < WITHIN
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await usg.AuthServiceStub(world.channels["user"]).RefreshToken(
            usp.RefreshTokenRequest(refresh_token=logins[0].refresh_token))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
