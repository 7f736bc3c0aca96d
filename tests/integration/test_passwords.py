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


async def run_import(stack: Any, slug: str, csv_text: str, tmp_path: Any) -> tuple[int, str, str]:
    import asyncio
    import os
    import sys

    path = tmp_path / "users.csv"
    path.write_text(csv_text)
    env = {**os.environ, "SENTINEL_DATABASE_URL": stack.app_url,
           "SENTINEL_PLAN_MAX_USERS": '{"free": 1000, "standard": 3}'}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "sentinel", "admin", "import-users",
                                                "--tenant", slug, str(path), env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_import_users_with_old_hashes_all_or_nothing(world: World, stack: Any, tmp_path: Any) -> None:
    tag = uuid.uuid4().hex[:6]
    legacy = bcrypt.hashpw(b"my password from before", bcrypt.gensalt(rounds=4)).decode()
    good = (f"email,display_name,role,password_hash\n"
            f"old-{tag}@a.example.com,Old Timer,admin,{legacy}\n"
            f"older-{tag}@a.example.com,,member,{legacy}\n")
    # One bad row (and a duplicate) refuse the whole file, naming the lines.
    bad = good + f"broken,,member,plaintext\nOLD-{tag}@a.example.com,,member,{legacy}\n"
    code, _, err = await run_import(stack, world.a.slug, bad, tmp_path)
    assert code == 2 and "nothing imported" in err
    assert "line 4: email must be an e-mail address" in err and "line 4: password_hash" in err
    assert "line 5: email appears twice" in err
    with pytest.raises(grpc.aio.AioRpcError):
        await login(world, f"old-{tag}@a.example.com", "my password from before")

    code, out, err = await run_import(stack, world.a.slug, good, tmp_path)
    assert code == 0 and "imported 2 user(s)" in out, err
    reply = await login(world, f"old-{tag}@a.example.com", "my password from before")
    me = await usg.AuthServiceStub(world.channels["user"]).WhoAmI(
        usp.WhoAmIRequest(), metadata=(("authorization", f"Bearer {reply.access_token}"),))
    assert me.role == common_pb2.ROLE_ADMIN and me.tenant_id == world.a.id
    assert (await stored_hash(stack.owner_url, world.a.id, f"old-{tag}@a.example.com")).startswith("$argon2id$")
    # The same file again: they exist now, and nothing changes.
    code, _, err = await run_import(stack, world.a.slug, good, tmp_path)
    assert code == 2 and "already a user" in err
    code, _, err = await run_import(stack, "no-such-tenant", good, tmp_path)
    assert code == 2 and "no tenant" in err


async def test_import_respects_the_plan_limit(world: World, stack: Any, tmp_path: Any) -> None:
    from sentinel.tenant.v1 import tenant_pb2
    from sentinel.tenant.v1 import tenant_service_pb2 as tsp
    from sentinel.tenant.v1 import tenant_service_pb2_grpc as tsg

    slug = f"imp-{uuid.uuid4().hex[:8]}"
    await tsg.TenantServiceStub(world.channels["tenant"]).CreateTenant(tsp.CreateTenantRequest(
        slug=slug, display_name="Import", plan=tenant_pb2.TENANT_PLAN_STANDARD), metadata=world.admin.metadata)
    legacy = bcrypt.hashpw(b"x", bcrypt.gensalt(rounds=4)).decode()
    rows = "".join(f"u{i}@imp.example.com,,member,{legacy}\n" for i in range(4))
    code, _, err = await run_import(stack, slug, "email,display_name,role,password_hash\n" + rows, tmp_path)
    assert code == 2 and "allows 3 users and it has 0" in err, err
