"""Brute-force protection: per-account and per-IP locks with backoff, LOCKED state, no enumeration."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import grpc
import httpx
import pytest
from google.rpc import status_pb2
from sentinel.common.v1 import common_pb2
from sentinel.platform.config import Settings
from sentinel.platform.errors import ResourceExhausted
from sentinel.user.throttle import LoginThrottle, account_key
from sentinel.user.v1 import user_pb2
from sentinel.user.v1 import user_service_pb2 as usp
from sentinel.user.v1 import user_service_pb2_grpc as usg

from tests.integration.conftest import PASSWORD, World

pytestmark = pytest.mark.integration
LIMIT = 5  # SENTINEL_LOGIN_MAX_FAILURES default
LOCK = 2.0  # SENTINEL_LOGIN_LOCK_SECONDS in the test stack


def fake_ip() -> str:
    """A client address of this test's own, so its counters touch no other test."""
    return f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"


async def attempt(world: World, email: str, password: str, ip: str) -> tuple[str, str, list[str]]:
    """One login from ``ip`` (as Envoy would forward it); the outcome as (code, message, detail types)."""
    try:
        await usg.AuthServiceStub(world.channels["user"]).Login(
            usp.LoginRequest(tenant=world.a.slug, email=email, password=password),
            metadata=(("x-forwarded-for", ip),))
    except grpc.aio.AioRpcError as err:
        details = []
        for key, value in err.trailing_metadata() or ():
            if key == "grpc-status-details-bin":
                details = [d.type_url.rsplit(".", 1)[-1] for d in status_pb2.Status.FromString(value).details]
        return err.code().name, str(err.details()), details
    return "OK", "", []


async def new_user(world: World) -> str:
    email = f"victim-{uuid.uuid4().hex[:6]}@{world.a.slug}.example.com"
    await usg.UserServiceStub(world.channels["user"]).CreateUser(
        usp.CreateUserRequest(email=email, password=PASSWORD, role=common_pb2.ROLE_MEMBER),
        metadata=world.a.owner.metadata)
    return email


async def user_state(world: World, email: str) -> int:
    users = await usg.UserServiceStub(world.channels["user"]).ListUsers(
        usp.ListUsersRequest(page_size=1000), metadata=world.a.owner.metadata)
    return next(u.state for u in users.users if u.email == email)


async def test_account_lock_backoff_and_unlock(world: World) -> None:
    email, ip = await new_user(world), fake_ip()
    outcomes = [await attempt(world, email, "wrong password here", ip) for _ in range(LIMIT)]
    assert all(o[0] == "UNAUTHENTICATED" for o in outcomes)  # the limit-th failure still says only that
    assert await user_state(world, email) == user_pb2.USER_STATE_LOCKED  # visible to the tenant's admins
    code, message, details = await attempt(world, email, PASSWORD, ip)  # even the right password
    assert code == "RESOURCE_EXHAUSTED" and "too many failed logins" in message
    assert "RetryInfo" in details
    await asyncio.sleep(LOCK + 0.3)
    assert (await attempt(world, email, PASSWORD, ip))[0] == "OK"  # lock over: unlocked, counter reset
    assert await user_state(world, email) == user_pb2.USER_STATE_ACTIVE
    assert await attempt(world, email, "wrong password here", ip) == outcomes[0]


async def test_unknown_and_existing_accounts_answer_alike(world: World) -> None:
    real, ghost = await new_user(world), f"ghost-{uuid.uuid4().hex[:6]}@{world.a.slug}.example.com"
    ip = fake_ip()
    seen = {}
    for email in (real, ghost):
        seen[email] = [await attempt(world, email, "wrong password here", ip) for _ in range(LIMIT + 1)]
    strip = [[(c, m.split(" (about")[0], d) for c, m, d in seq] for seq in seen.values()]
    assert strip[0] == strip[1], "a lock must look the same whether or not the account exists"
    assert strip[0][-1][0] == "RESOURCE_EXHAUSTED"


async def test_ip_lock_across_accounts(world: World) -> None:
    settings = Settings()
    ip = fake_ip()
    for i in range(settings.login_max_failures_per_ip):
        code, _, _ = await attempt(world, f"spray-{i}-{uuid.uuid4().hex[:4]}@example.com", "guess", ip)
        assert code == "UNAUTHENTICATED"
    assert (await attempt(world, f"spray-x@{world.a.slug}.example.com", "guess", ip))[0] == "RESOURCE_EXHAUSTED"
    # Another address is unaffected.
    assert (await attempt(world, world.a.owner.name + "@nowhere.example.com", "guess", fake_ip()))[0] == \
        "UNAUTHENTICATED"


async def test_rest_answers_429_with_retry_after(world: World, stack: Any) -> None:
    email = await new_user(world)
    async with httpx.AsyncClient(base_url=stack.rest_url, timeout=10) as http:
        body = {"tenant": world.a.slug, "email": email, "password": "wrong password here"}
        for _ in range(LIMIT):
            assert (await http.post("/api/v1/auth/login", json=body)).status_code == 401
        r = await http.post("/api/v1/auth/login", json={**body, "password": PASSWORD})
        assert r.status_code == 429, r.text
        assert 1 <= int(r.headers["retry-after"]) <= LOCK + 1
        payload = r.json()
        assert payload["code"] == 8 and "too many failed logins" in payload["message"]
        assert any(d["@type"].endswith("RetryInfo") for d in payload["details"])


async def test_throttle_backoff_doubles(stack: Any) -> None:
    from redis.asyncio import Redis

    redis = Redis.from_url(stack.redis_url)
    settings = Settings(login_max_failures=2, login_lock_seconds=0.5, login_max_lock_seconds=1.5)
    throttle = LoginThrottle(redis, settings)
    slug, email, ip = "t-" + uuid.uuid4().hex[:6], "x@example.com", fake_ip()
    locks = [await throttle.failed(slug, email, ip) for _ in range(5)]
    assert locks == [0.0, 0.5, 1.0, 1.5, 1.5]  # doubling, capped
    with pytest.raises(ResourceExhausted, match="too many failed logins") as err:
        await throttle.check(slug, email, ip)
    assert err.value.retry_after == 2  # ceil(1.5 s)
    await throttle.succeeded(slug, email)  # clears the counter, not the running lock
    assert await redis.exists(account_key(slug, email)) == 0
    assert await redis.exists(account_key(slug, email) + ":lock") == 1
    with pytest.raises(ResourceExhausted):
        await throttle.check(slug, email, ip)
    await redis.aclose()
