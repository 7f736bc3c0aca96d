"""Passwords end to end: bcrypt hashes imported from the old stack, change-password."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import bcrypt
import grpc
import httpx
import pytest
from sentinel.common.v1 import common_pb2
from sentinel.user.v1 import user_service_pb2 as usp
from sentinel.user.v1 import user_service_pb2_grpc as usg

from tests.integration.conftest import PASSWORD, World

pytestmark = pytest.mark.integration


async def new_user(world: World, email_prefix: str) -> str:
    email = f"{email_prefix}-{uuid.uuid4().hex[:6]}@{world.a.slug}.example.com"
    await usg.UserServiceStub(world.channels["user"]).CreateUser(
        usp.CreateUserRequest(email=email, password=PASSWORD, role=common_pb2.ROLE_MEMBER),
        metadata=world.a.owner.metadata)
    return email


async def login(world: World, email: str, password: str) -> usp.LoginResponse:
    return await usg.AuthServiceStub(world.channels["user"]).Login(  # type: ignore[no-any-return]
        usp.LoginRequest(tenant=world.a.slug, email=email, password=password))


async def stored_hash(owner_url: str, tenant_id: str, email: str, new: str | None = None) -> str:
    """Read (and optionally replace) a user's hash as the owner role, inside the tenant."""
    conn = await asyncpg.connect(owner_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('sentinel.tenant_id', $1, true)", tenant_id)
            if new is not None:
                await conn.execute("UPDATE users SET password_hash = $1 WHERE email = $2", new, email)
            return str(await conn.fetchval("SELECT password_hash FROM users WHERE email = $1", email))
    finally:
        await conn.close()


async def test_bcrypt_hash_logs_in_and_is_replaced_by_argon2(world: World, pg_stack: Any) -> None:
    email = await new_user(world, "legacy")
    legacy = bcrypt.hashpw(b"imported from the old stack", bcrypt.gensalt(rounds=4)).decode()
    await stored_hash(pg_stack.owner_url, world.a.id, email, new=legacy)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await login(world, email, PASSWORD)  # the old password is gone with the import
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert await stored_hash(pg_stack.owner_url, world.a.id, email) == legacy  # a failure rehashes nothing

    assert (await login(world, email, "imported from the old stack")).access_token
    rehashed = await stored_hash(pg_stack.owner_url, world.a.id, email)
    assert rehashed.startswith("$argon2id$")
    assert (await login(world, email, "imported from the old stack")).access_token


async def test_change_password_ends_other_sessions_only(world: World) -> None:
    email = await new_user(world, "changer")
    auth = usg.AuthServiceStub(world.channels["user"])
    here, elsewhere = await login(world, email, PASSWORD), await login(world, email, PASSWORD)
    md = (("authorization", f"Bearer {here.access_token}"),)

    for current, new, field in ((PASSWORD + "x", "a brand new passphrase", "current_password"),
                                (PASSWORD, "Password1234", "new_password"),
                                (PASSWORD, PASSWORD, "new_password")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await auth.ChangePassword(usp.ChangePasswordRequest(current_password=current, new_password=new),
                                      metadata=md)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in str(err.value.details())
    assert (await login(world, email, PASSWORD)).access_token  # refused changes changed nothing

    reply = await auth.ChangePassword(usp.ChangePasswordRequest(current_password=PASSWORD,
                                                                new_password="a brand new passphrase"), metadata=md)
    assert reply.revoked_sessions == 2  # `elsewhere` and the login just above
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await auth.RefreshToken(usp.RefreshTokenRequest(refresh_token=elsewhere.refresh_token))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (await auth.RefreshToken(usp.RefreshTokenRequest(refresh_token=here.refresh_token))).access_token
    with pytest.raises(grpc.aio.AioRpcError):
        await login(world, email, PASSWORD)
    assert (await login(world, email, "a brand new passphrase")).access_token


async def test_change_password_over_rest(world: World, stack: Any) -> None:
    email = await new_user(world, "rest-changer")
    token = (await login(world, email, PASSWORD)).access_token
    async with httpx.AsyncClient(base_url=stack.rest_url, timeout=10) as http:
        headers = {"authorization": f"Bearer {token}"}
        bad = await http.post("/api/v1/auth/password:change", headers=headers,
                              json={"current_password": PASSWORD, "new_password": "short"})
        assert bad.status_code == 400 and bad.json()["code"] == 3 and "new_password" in bad.text
        unknown = await http.post("/api/v1/auth/password:change", headers=headers,
                                  json={"current_password": PASSWORD, "new_pasword": "typo in the key"})
        assert unknown.status_code == 400 and "new_pasword" in unknown.text
        ok = await http.post("/api/v1/auth/password:change", headers=headers,
                             json={"current_password": PASSWORD, "new_password": "rest changed passphrase"})
        assert ok.status_code == 200, ok.text
        assert ok.json() == {"revoked_sessions": 0}
        assert (await http.post("/api/v1/auth/password:change",
                                json={"current_password": "x", "new_password": "y"})).status_code == 401
