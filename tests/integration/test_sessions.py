"""Sessions: rotating refresh tokens, reuse detection, concurrent refreshes, logout."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from sentinel.common.v1 import common_pb2
from sentinel.user.v1 import user_service_pb2 as usp
from sentinel.user.v1 import user_service_pb2_grpc as usg

from tests.integration.conftest import PASSWORD, World
from tests.integration.test_revocation import WITHIN, refused_everywhere_within

pytestmark = pytest.mark.integration
GRACE = 1.0  # SENTINEL_REFRESH_REUSE_GRACE_SECONDS in the test stack


async def fresh_login(world: World, http: httpx.AsyncClient) -> dict[str, Any]:
    email = f"s-{uuid.uuid4().hex[:8]}@{world.a.slug}.example.com"
    await usg.UserServiceStub(world.channels["user"]).CreateUser(
        usp.CreateUserRequest(email=email, password=PASSWORD, role=common_pb2.ROLE_MEMBER),
        metadata=world.a.owner.metadata)
    r = await http.post("/api/v1/auth/login", json={"tenant": world.a.slug, "email": email, "password": PASSWORD})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def refresh(http: httpx.AsyncClient, token: str) -> httpx.Response:
    return await http.post("/api/v1/auth/refresh", json={"refresh_token": token})


async def test_refresh_rotates_and_a_reused_token_ends_the_session(world: World, stack: Any) -> None:
    async with httpx.AsyncClient(base_url=stack.rest_url, timeout=10) as http:
        first = await fresh_login(world, http)
        r = await refresh(http, first["refresh_token"])
        assert r.status_code == 200, r.text
        second = r.json()
        assert second["refresh_token"] != first["refresh_token"] and second["token_type"] == "Bearer"
        me = await http.get("/api/v1/auth/whoami", headers={"authorization": f"Bearer {second['access_token']}"})
        assert me.status_code == 200
        await asyncio.sleep(GRACE + 0.2)
        # The spent token comes back later: a copy is out there, so the whole session ends.
        stolen = await refresh(http, first["refresh_token"])
        assert stolen.status_code == 401 and "already used" in stolen.json()["message"], stolen.text
        assert (await refresh(http, second["refresh_token"])).status_code == 401
    assert await refused_everywhere_within(world, stack, second["access_token"]) < WITHIN


async def test_two_refreshes_at_once_one_wins_and_the_session_lives(world: World, stack: Any) -> None:
    async with httpx.AsyncClient(base_url=stack.rest_url, timeout=10) as http:
        login = await fresh_login(world, http)
        replies = await asyncio.gather(refresh(http, login["refresh_token"]), refresh(http, login["refresh_token"]))
        codes = sorted(r.status_code for r in replies)
        assert codes == [200, 401], [r.text for r in replies]
        loser = next(r for r in replies if r.status_code == 401)
        assert "just used" in loser.json()["message"]
        winner = next(r for r in replies if r.status_code == 200).json()
        # The race cost nothing: the winner's tokens keep working.
        me = await http.get("/api/v1/auth/whoami", headers={"authorization": f"Bearer {winner['access_token']}"})
        assert me.status_code == 200
        assert (await refresh(http, winner["refresh_token"])).status_code == 200


async def test_logout_ends_the_session_everywhere(world: World, stack: Any) -> None:
    async with httpx.AsyncClient(base_url=stack.rest_url, timeout=10) as http:
        login = await fresh_login(world, http)
        r = await http.post("/api/v1/auth/logout", json={},
                            headers={"authorization": f"Bearer {login['access_token']}"})
        assert r.status_code == 200, r.text
        assert (await refresh(http, login["refresh_token"])).status_code == 401
    assert await refused_everywhere_within(world, stack, login["access_token"]) < WITHIN
