"""Service accounts and API keys end to end: shown once, stored hashed, scoped, usable as
``Authorization: Bearer`` or ``x-api-key`` over gRPC and REST, revocable within a second."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import time
import uuid
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
from google.protobuf import timestamp_pb2
from sentinel.common.v1 import common_pb2
from sentinel.platform import apikeys
from sentinel.tenant.v1 import tenant_pb2
from sentinel.tenant.v1 import tenant_service_pb2 as tsp
from sentinel.tenant.v1 import tenant_service_pb2_grpc as tsg
from sentinel.user.v1 import service_account_pb2 as sa
from sentinel.user.v1 import service_account_service_pb2 as sap
from sentinel.user.v1 import service_account_service_pb2_grpc as sag
from sentinel.user.v1 import user_service_pb2 as usp
from sentinel.user.v1 import user_service_pb2_grpc as usg

from tests.integration.clients import status_of
from tests.integration.conftest import PASSWORD, World

pytestmark = pytest.mark.integration
WITHIN = 1.0


def accounts(world: World) -> Any:
    return sag.ServiceAccountServiceStub(world.channels["user"])


async def new_key(world: World, *scopes: str, role: int = common_pb2.ROLE_MEMBER,
                  expire_in: float | None = None) -> tuple[str, sap.CreateApiKeyResponse]:
    owner = world.a.owner.metadata
    account = (await accounts(world).CreateServiceAccount(sap.CreateServiceAccountRequest(
        display_name="ci pipeline", role=role), metadata=owner)).service_account
    request = sap.CreateApiKeyRequest(service_account_id=account.id, display_name="deploy", scopes=list(scopes))
    if expire_in is not None:
        request.expire_time.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=expire_in))
    return account.id, await accounts(world).CreateApiKey(request, metadata=owner)


def as_bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def as_header(key: str) -> tuple[tuple[str, str], ...]:
    return (("x-api-key", key),)


async def uses(world: World, stack: Any, key: str) -> dict[str, Any]:
    """What the user service, the tenant service and REST (both header forms) answer this key."""
    async with httpx.AsyncClient(base_url=stack.rest_url, timeout=5) as http:
        return {
            "user": await status_of(usg.UserServiceStub(world.channels["user"]).ListUsers(
                usp.ListUsersRequest(), metadata=as_bearer(key))),
            "tenant": await status_of(tsg.TenantServiceStub(world.channels["tenant"]).GetTenant(
                tsp.GetTenantRequest(id=world.a.id), metadata=as_header(key))),
            "rest_bearer": (await http.get("/api/v1/users", headers={"authorization": f"Bearer {key}"})).status_code,
            "rest_header": (await http.get(f"/api/v1/tenants/{world.a.id}", headers={"x-api-key": key})).status_code,
        }


WORKS = {"user": grpc.StatusCode.OK, "tenant": grpc.StatusCode.OK, "rest_bearer": 200, "rest_header": 200}
REFUSED = {"user": grpc.StatusCode.UNAUTHENTICATED, "tenant": grpc.StatusCode.UNAUTHENTICATED,
           "rest_bearer": 401, "rest_header": 401}


async def becomes(world: World, stack: Any, key: str, expected: dict[str, Any], within: float = WITHIN) -> float:
    start = time.monotonic()
    while True:
        state = await uses(world, stack, key)
        elapsed = time.monotonic() - start
        if state == expected:
            return elapsed
        assert elapsed < within, f"after {elapsed:.2f} s: {state}"
        await asyncio.sleep(0.02)


async def test_a_key_works_everywhere_is_shown_once_and_stored_hashed(world: World, stack: Any) -> None:
    account_id, created = await new_key(world, "users.read", "tenants.read")
    key = created.secret
    assert key.startswith("snt_") and created.api_key.prefix == key[:12]
    assert created.api_key.state == sa.API_KEY_STATE_ACTIVE and list(created.api_key.scopes) == \
        ["tenants.read", "users.read"]
    assert await uses(world, stack, key) == WORKS

    listed = (await accounts(world).ListApiKeys(sap.ListApiKeysRequest(service_account_id=account_id),
                                                metadata=world.a.owner.metadata)).api_keys
    assert [k.id for k in listed] == [created.api_key.id] and key not in str(listed)
    assert listed[0].HasField("last_used_time")  # it was just used
    # Postgres holds the SHA-256 of the secret, nothing from which the key could be rebuilt.
    owner = await asyncpg.connect(stack.owner_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        async with owner.transaction():
            await owner.execute("SELECT set_config('sentinel.tenant_id', $1, true)", world.a.id)
            row = await owner.fetchrow("SELECT * FROM api_keys WHERE id = $1", uuid.UUID(created.api_key.id))
            dump = str(await owner.fetch("SELECT * FROM idempotency_keys"))
    finally:
        await owner.close()
    secret_part = key[4:]
    assert row is not None and secret_part not in str(dict(row))
    assert bytes(row["secret_hash"]) == apikeys.parse(key).secret_hash
    assert bytes(row["secret_hash"]) != hashlib.sha256(key.encode()).digest()
    assert secret_part not in dump


async def test_a_replayed_create_returns_the_same_key_without_its_secret(world: World) -> None:
    owner = world.a.owner.metadata
    account = (await accounts(world).CreateServiceAccount(sap.CreateServiceAccountRequest(
        display_name="replay", role=common_pb2.ROLE_VIEWER), metadata=owner)).service_account
    request = sap.CreateApiKeyRequest(service_account_id=account.id, scopes=["users.read"],
                                      request_id=uuid.uuid4().hex)
    # Two at once with one request_id: one key.
    replies = await asyncio.gather(accounts(world).CreateApiKey(request, metadata=owner),
                                   accounts(world).CreateApiKey(request, metadata=owner))
    assert replies[0].api_key.id == replies[1].api_key.id
    assert sorted(bool(r.secret) for r in replies) == [False, True]  # exactly one saw the secret ...
    replay = await accounts(world).CreateApiKey(request, metadata=owner)
    assert replay.api_key.id == replies[0].api_key.id and replay.secret == ""  # ... and never again
    keys = (await accounts(world).ListApiKeys(sap.ListApiKeysRequest(service_account_id=account.id),
                                              metadata=owner)).api_keys
    assert len(keys) == 1


async def test_scopes_limit_what_a_key_can_do(world: World) -> None:
    _, created = await new_key(world, "users.read")
    key = created.secret
    users = usg.UserServiceStub(world.channels["user"])
    assert await status_of(users.ListUsers(usp.ListUsersRequest(), metadata=as_bearer(key))) == grpc.StatusCode.OK
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tsg.TenantServiceStub(world.channels["tenant"]).GetTenant(tsp.GetTenantRequest(id=world.a.id),
                                                                        metadata=as_bearer(key))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "tenants.read" in str(err.value.details())
    assert await status_of(users.CreateUser(usp.CreateUserRequest(email="k@a.example.com", password=PASSWORD),
                                          metadata=as_bearer(key))) == grpc.StatusCode.PERMISSION_DENIED
    # A key has no session: WhoAmI, Logout and password changes are for people.
    assert await status_of(usg.AuthServiceStub(world.channels["user"]).WhoAmI(
        usp.WhoAmIRequest(), metadata=as_bearer(key))) == grpc.StatusCode.PERMISSION_DENIED


async def test_a_key_with_write_scope_creates_users_in_its_own_tenant_only(world: World) -> None:
    _, created = await new_key(world, "users.read", "users.write", role=common_pb2.ROLE_ADMIN)
    users = usg.UserServiceStub(world.channels["user"])
    email = f"via-key-{uuid.uuid4().hex[:6]}@a.example.com"
    made = (await users.CreateUser(usp.CreateUserRequest(tenant_id=world.b.id, email=email, password=PASSWORD),
                                   metadata=as_header(created.secret))).user
    assert made.tenant_id == world.a.id  # the tenant_id of B was ignored: a key is bound to its tenant
    with pytest.raises(grpc.aio.AioRpcError) as err:  # and cannot grant above its account's role
        await users.CreateUser(usp.CreateUserRequest(email=f"o-{email}", password=PASSWORD,
                                                     role=common_pb2.ROLE_OWNER), metadata=as_header(created.secret))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_creating_keys_is_validated(world: World) -> None:
    owner = world.a.owner.metadata
    account_id, _ = await new_key(world, "users.read")
    cases = {
        "a member account cannot carry users.write": sap.CreateApiKeyRequest(
            service_account_id=account_id, scopes=["users.write"]),
        "no scopes": sap.CreateApiKeyRequest(service_account_id=account_id),
        "unknown permission": sap.CreateApiKeyRequest(service_account_id=account_id, scopes=["root"]),
        "session permission": sap.CreateApiKeyRequest(service_account_id=account_id, scopes=["session.self"]),
        "expiry in the past": sap.CreateApiKeyRequest(service_account_id=account_id, scopes=["users.read"],
                                                      expire_time=timestamp_pb2.Timestamp(seconds=1)),
        "bad account id": sap.CreateApiKeyRequest(service_account_id="nope", scopes=["users.read"]),
    }
    for name, request in cases.items():
        assert await status_of(accounts(world).CreateApiKey(request, metadata=owner)) == \
            grpc.StatusCode.INVALID_ARGUMENT, name
    for role in (common_pb2.ROLE_OWNER, common_pb2.ROLE_PLATFORM_ADMIN, common_pb2.ROLE_UNSPECIFIED):
        assert await status_of(accounts(world).CreateServiceAccount(sap.CreateServiceAccountRequest(
            display_name="x", role=role), metadata=owner)) == grpc.StatusCode.INVALID_ARGUMENT, role
    # Members manage no service accounts.
    assert await status_of(accounts(world).CreateServiceAccount(sap.CreateServiceAccountRequest(
        display_name="x", role=common_pb2.ROLE_VIEWER), metadata=world.a.member.metadata)) == \
        grpc.StatusCode.PERMISSION_DENIED


async def test_revoked_and_deleted_keys_stop_everywhere_within_a_second(world: World, stack: Any) -> None:
    account_id, created = await new_key(world, "users.read", "tenants.read")
    assert await uses(world, stack, created.secret) == WORKS
    revoked = (await accounts(world).RevokeApiKey(sap.RevokeApiKeyRequest(
        service_account_id=account_id, id=created.api_key.id), metadata=world.a.owner.metadata)).api_key
    assert revoked.state == sa.API_KEY_STATE_REVOKED and revoked.HasField("revoke_time")
    assert await becomes(world, stack, created.secret, REFUSED) < WITHIN
    async with httpx.AsyncClient(base_url=stack.rest_url, timeout=5) as http:
        r = await http.get("/api/v1/users", headers={"x-api-key": created.secret})
        assert r.json()["message"] == "this API key has been revoked", r.text

    account_id, created = await new_key(world, "users.read", "tenants.read")
    assert await uses(world, stack, created.secret) == WORKS
    await accounts(world).DeleteServiceAccount(sap.DeleteServiceAccountRequest(id=account_id),
                                               metadata=world.a.owner.metadata)
    assert await becomes(world, stack, created.secret, REFUSED) < WITHIN


async def test_an_expired_key_is_refused(world: World, stack: Any) -> None:
    _, created = await new_key(world, "users.read", "tenants.read", expire_in=2)
    assert await uses(world, stack, created.secret) == WORKS
    await asyncio.sleep(2)
    assert await becomes(world, stack, created.secret, REFUSED) < WITHIN
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await usg.UserServiceStub(world.channels["user"]).ListUsers(usp.ListUsersRequest(),
                                                                    metadata=as_bearer(created.secret))
    assert "expired" in str(err.value.details())


async def test_bad_keys_get_a_clear_401(world: World, stack: Any) -> None:
    _, created = await new_key(world, "users.read")
    good = created.secret
    parsed = apikeys.parse(good)
    forged, _ = apikeys.generate(parsed.tenant_id, parsed.record_id)  # right ids, wrong secret
    other_tenant, _ = apikeys.generate(uuid.UUID(world.b.id), parsed.record_id)  # A's key id, B's tenant
    cases = {
        "truncated": (good[:-3], "malformed"),
        "typo": (good[:20] + ("A" if good[20] != "A" else "B") + good[21:], "malformed"),
        "forged secret": (forged, "not valid"),
        "moved tenant": (other_tenant, "not valid"),
    }
    async with httpx.AsyncClient(base_url=stack.rest_url, timeout=5) as http:
        for name, (key, words) in cases.items():
            for headers in ({"x-api-key": key}, {"authorization": f"Bearer {key}"}):
                r = await http.get("/api/v1/users", headers=headers)
                assert r.status_code == 401 and words in r.json()["message"], (name, r.text)
        r = await http.get("/api/v1/users", headers={"x-api-key": good, "authorization": f"Bearer {good}"})
        assert r.status_code == 401 and "not both" in r.json()["message"], r.text


async def test_keys_count_against_the_plan(world: World) -> None:
    admin = world.admin.metadata
    tenant = (await tsg.TenantServiceStub(world.channels["tenant"]).CreateTenant(tsp.CreateTenantRequest(
        slug=f"keys-{uuid.uuid4().hex[:8]}", display_name="Keys", plan=tenant_pb2.TENANT_PLAN_STANDARD),
        metadata=admin)).tenant
    account = (await accounts(world).CreateServiceAccount(sap.CreateServiceAccountRequest(
        tenant_id=tenant.id, display_name="bot", role=common_pb2.ROLE_VIEWER), metadata=admin)).service_account

    def create() -> Any:
        return accounts(world).CreateApiKey(sap.CreateApiKeyRequest(
            tenant_id=tenant.id, service_account_id=account.id, scopes=["users.read"]), metadata=admin)

    results = await asyncio.gather(*(create() for _ in range(4)), return_exceptions=True)
    made = [r for r in results if isinstance(r, sap.CreateApiKeyResponse)]
    errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(made) == 2 and len(errors) == 2  # the standard plan allows 2 here, even at once
    assert all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "allows 2 API keys" in str(e.details())
               for e in errors)
    await accounts(world).RevokeApiKey(sap.RevokeApiKeyRequest(
        tenant_id=tenant.id, service_account_id=account.id, id=made[0].api_key.id), metadata=admin)
    assert (await create()).secret  # a revoked key no longer counts


async def test_a_suspended_tenants_keys_stop(world: World, stack: Any) -> None:
    from tests.integration.conftest import make_tenant

    t = await make_tenant(world.channels, world.admin, "keysusp")
    assert t.api_key is not None
    md = as_bearer(t.api_key.token)
    users = usg.UserServiceStub(world.channels["user"])
    assert await status_of(users.ListUsers(usp.ListUsersRequest(), metadata=md)) == grpc.StatusCode.OK
    await tsg.TenantServiceStub(world.channels["tenant"]).SuspendTenant(
        tsp.SuspendTenantRequest(id=t.id, reason="audit"), metadata=world.admin.metadata)
    start = time.monotonic()
    while await status_of(users.ListUsers(usp.ListUsersRequest(), metadata=md)) != grpc.StatusCode.FAILED_PRECONDITION:
        assert time.monotonic() - start < WITHIN
        await asyncio.sleep(0.02)
