"""Idempotency on every mutating RPC: ``request_id`` or ``Idempotency-Key`` replays the first
response for 24 hours; the same key with another request is ABORTED / 409; failures record nothing."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
from sentinel.common.v1 import common_pb2
from sentinel.user.v1 import user_pb2
from sentinel.user.v1 import user_service_pb2 as usp
from sentinel.user.v1 import user_service_pb2_grpc as usg

from tests.integration.conftest import PASSWORD, World

pytestmark = pytest.mark.integration


async def new_user(world: World) -> user_pb2.User:
    users = usg.UserServiceStub(world.channels["user"])
    reply = await users.CreateUser(usp.CreateUserRequest(
        email=f"idem-{uuid.uuid4().hex[:8]}@a.example.com", password=PASSWORD, role=common_pb2.ROLE_VIEWER),
        metadata=world.a.owner.metadata)
    return reply.user


async def test_a_repeated_update_over_rest_replays_and_a_changed_one_is_409(world: World, stack: Any) -> None:
    user = await new_user(world)
    key = {"idempotency-key": uuid.uuid4().hex, **world.a.owner.headers}
    async with httpx.AsyncClient(base_url=stack.rest_url, timeout=10) as http:
        first = await http.patch(f"/api/v1/users/{user.id}", json={"display_name": "Once"}, headers=key)
        again = await http.patch(f"/api/v1/users/{user.id}", json={"display_name": "Once"}, headers=key)
        assert first.status_code == again.status_code == 200, (first.text, again.text)
        assert first.json() == again.json()  # the same etag: applied once
        other = await http.patch(f"/api/v1/users/{user.id}", json={"display_name": "Twice"}, headers=key)
        assert other.status_code == 409 and other.json()["code"] == 10, other.text
        assert "already used for a different request" in other.json()["message"]
        now = await http.get(f"/api/v1/users/{user.id}", headers=world.a.owner.headers)
        assert now.json()["user"]["display_name"] == "Once"
        assert now.json()["user"]["etag"] == first.json()["user"]["etag"]


async def test_a_repeated_delete_replays_instead_of_not_found(world: World) -> None:
    user = await new_user(world)
    users = usg.UserServiceStub(world.channels["user"])
    request = usp.DeleteUserRequest(id=user.id, request_id=uuid.uuid4().hex)
    await users.DeleteUser(request, metadata=world.a.owner.metadata)
    await users.DeleteUser(request, metadata=world.a.owner.metadata)  # a retry after a lost reply
    with pytest.raises(grpc.aio.AioRpcError) as err:  # without the key it is gone
        await users.DeleteUser(usp.DeleteUserRequest(id=user.id), metadata=world.a.owner.metadata)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_concurrent_repeats_apply_once(world: World) -> None:
    user = await new_user(world)
    users = usg.UserServiceStub(world.channels["user"])
    request = usp.UpdateUserRequest(user=user_pb2.User(id=user.id, display_name="Concurrent"),
                                    request_id=uuid.uuid4().hex)
    replies = await asyncio.gather(*(users.UpdateUser(request, metadata=world.a.owner.metadata) for _ in range(5)))
    assert len({r.user.etag for r in replies}) == 1
    now = (await users.GetUser(usp.GetUserRequest(id=user.id), metadata=world.a.owner.metadata)).user
    assert now.etag == replies[0].user.etag != user.etag


async def test_a_failed_call_records_nothing(world: World) -> None:
    user = await new_user(world)
    users = usg.UserServiceStub(world.channels["user"])
    key = uuid.uuid4().hex
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await users.UpdateUser(usp.UpdateUserRequest(user=user_pb2.User(id=user.id, display_name="x", etag='"stale"'),
                                                     request_id=key), metadata=world.a.owner.metadata)
    assert err.value.code() == grpc.StatusCode.ABORTED
    # The key was not spent on the failure: the corrected request succeeds with it.
    fixed = await users.UpdateUser(usp.UpdateUserRequest(
        user=user_pb2.User(id=user.id, display_name="x", etag=user.etag), request_id=key),
        metadata=world.a.owner.metadata)
    assert fixed.user.display_name == "x"


async def test_keys_expire_after_24_hours(world: World, stack: Any) -> None:
    user = await new_user(world)
    users = usg.UserServiceStub(world.channels["user"])
    key = uuid.uuid4().hex
    await users.UpdateUser(usp.UpdateUserRequest(user=user_pb2.User(id=user.id, display_name="Day one"),
                                                 request_id=key), metadata=world.a.owner.metadata)
    owner = await asyncpg.connect(stack.owner_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        async with owner.transaction():  # a day and an hour later
            await owner.execute("SELECT set_config('sentinel.tenant_id', $1, true)", world.a.id)
            moved = await owner.execute("UPDATE idempotency_keys SET create_time = now() - interval '25 hours' "
                                        "WHERE key = $1", key)
            assert moved == "UPDATE 1"
    finally:
        await owner.close()
    later = await users.UpdateUser(usp.UpdateUserRequest(user=user_pb2.User(id=user.id, display_name="Day two"),
                                                         request_id=key), metadata=world.a.owner.metadata)
    assert later.user.display_name == "Day two"  # a new request, not ABORTED and not a replay
    replay = await users.UpdateUser(usp.UpdateUserRequest(user=user_pb2.User(id=user.id, display_name="Day two"),
                                                          request_id=key), metadata=world.a.owner.metadata)
    assert replay.user.etag == later.user.etag
