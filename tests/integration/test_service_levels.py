"""Per-tenant SLOs and noisy-neighbour attribution, against the running stack.

Real calls of a fresh tenant are counted by the services and flushed to the usage tables; the
tenant reads its own service level over gRPC and REST. The ranking is checked on usage rows
written directly (a hog and a victim), since making one tenant really slow another down on a
shared CI machine would be neither quick nor deterministic.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from sentinel.platform import db, usage
from sentinel.platform.auth import PLATFORM_TENANT_ID
from sentinel.scheduler.v1 import job_pb2
from sentinel.scheduler.v1 import scheduler_service_pb2 as ssp
from sentinel.scheduler.v1 import scheduler_service_pb2_grpc as ssg
from sentinel.tenant.v1 import tenant_service_pb2 as tsp
from sentinel.tenant.v1 import tenant_service_pb2_grpc as tsg
from sentinel.user.v1 import user_service_pb2 as usp
from sentinel.user.v1 import user_service_pb2_grpc as usg
from sqlalchemy import text

from tests.integration.conftest import World, bare_tenant, make_tenant

pytestmark = pytest.mark.integration


@pytest.fixture
async def rest(stack: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.rest_url, timeout=15) as client:
        yield client


def objective(level: tsp.ServiceLevel, name: str) -> tsp.ObjectiveStatus:
    return next(o for o in level.objectives if o.name == name)


async def insert_usage(tenant_id: str, *, requests: int, server_errors: int = 0, errors: int = 0, slow: int = 0,
                       busy_seconds: float, db_seconds: float = 0.0, service: str = "user") -> None:
    async with db.unit_of_work(tenant_id=PLATFORM_TENANT_ID, platform=True) as session:
        for table, bucket in (("tenant_usage_minutes", "minute"), ("tenant_usage_hours", "hour")):
            await session.execute(text(
                f"INSERT INTO {table} (tenant_id, service, bucket, requests, server_errors, errors, slow, "  # noqa: S608
                f"busy_seconds, db_seconds) VALUES (:t, :service, date_trunc('{bucket}', now()), :r, :se, :e, :s, "
                ":b, :db)"),
                {"t": uuid.UUID(tenant_id), "service": service, "r": requests, "se": server_errors,
                 "e": max(errors, server_errors), "s": slow, "b": busy_seconds, "db": db_seconds})


async def test_a_tenants_own_calls_make_its_service_level(world: World, rest: httpx.AsyncClient) -> None:
    t = await make_tenant(world.channels, world.admin, "slo")
    tenants = tsg.TenantServiceStub(world.channels["tenant"])
    users = usg.UserServiceStub(world.channels["user"])

    async def level() -> tsp.ServiceLevel:
        return (await tenants.GetServiceLevel(tsp.GetServiceLevelRequest(tenant_id=t.id),
                                              metadata=t.member.metadata)).service_level

    await asyncio.sleep(1.2)  # the set-up's own calls are flushed
    before = await level()
    for _ in range(20):
        await tenants.GetTenant(tsp.GetTenantRequest(id=t.id), metadata=t.member.metadata)
    for _ in range(5):  # client errors: they count against the error-rate SLO, not availability
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await users.GetUser(usp.GetUserRequest(id=str(uuid.uuid4())), metadata=t.member.metadata)
        assert e.value.code() is grpc.StatusCode.NOT_FOUND
    deadline = time.monotonic() + 15
    while True:
        after = await level()
        if after.requests - before.requests >= 26 and \
                objective(after, "error-rate").bad_requests - objective(before, "error-rate").bad_requests >= 5:
            break
        assert time.monotonic() < deadline, f"usage not flushed: {before.requests} -> {after.requests}"
        await asyncio.sleep(0.3)

    assert after.tenant_id == t.id and after.period == "30d"
    availability, error_rate, latency = (objective(after, n) for n in ("availability", "error-rate", "latency"))
    assert (availability.target, error_rate.target, latency.target) == (0.999, 0.99, 0.95)
    assert availability.bad_requests == 0 and availability.attained == 1.0
    assert availability.budget_state == "green" and availability.budget_remaining == 1.0
    # The error-rate budget: the 404s (and only client errors here) over every request.
    assert error_rate.bad_requests >= 5
    assert error_rate.attained == pytest.approx(1 - error_rate.bad_requests / after.requests)
    assert error_rate.budget_remaining == pytest.approx(1 - (error_rate.bad_requests / after.requests) / 0.01)
    five = next(b for b in error_rate.burn_rates if b.window == "5m")
    assert five.requests >= 26 and five.rate > 0
    assert [b.window for b in error_rate.burn_rates] == ["5m", "30m", "1h", "2h", "6h", "1d", "3d"]
    assert {s.service for s in after.services} >= {"tenant", "user"}
    assert sum(s.requests for s in after.services) == after.requests
    assert all(s.busy_seconds > 0 for s in after.services)
    # Database time is part of handling time; the user service's GetUser reads always touch Postgres.
    assert all(0 <= s.db_seconds <= s.busy_seconds for s in after.services)
    assert next(s for s in after.services if s.service == "user").db_seconds > 0

    # REST, as the tenant's member: the same figures in snake_case JSON.
    r = await rest.get(f"/api/v1/tenants/{t.id}/service-level", headers=t.member.headers)
    assert r.status_code == 200, r.text
    body = r.json()["service_level"]
    assert body["tenant_id"] == t.id and int(body["requests"]) >= after.requests
    assert {o["name"]: o["budget_state"] for o in body["objectives"]}["availability"] == "green"
    assert "budget_remaining" in body["objectives"][0] and "burn_rates" in body["objectives"][0]


async def test_a_tenants_jobs_count_as_its_work_not_as_requests(world: World) -> None:
    t = await make_tenant(world.channels, world.admin, "slojob")
    tenants = tsg.TenantServiceStub(world.channels["tenant"])
    scheduler = ssg.SchedulerServiceStub(world.channels["scheduler"])
    job = (await scheduler.CreateJob(ssp.CreateJobRequest(kind=job_pb2.JOB_KIND_TENANT_EXPORT),
                                     metadata=t.owner.metadata)).job
    deadline = time.monotonic() + 30
    while True:  # the worker runs it, then flushes what the run cost the tenant
        ranking = await tenants.RankTenantUsage(tsp.RankTenantUsageRequest(window_minutes=10, service="worker",
                                                                           limit=100), metadata=world.admin.metadata)
        mine = [u for u in ranking.tenants if u.tenant_id == t.id]
        if mine:
            break
        assert time.monotonic() < deadline, f"no worker usage for the tenant (job {job.id})"
        await asyncio.sleep(0.3)
    done = (await scheduler.GetJob(ssp.GetJobRequest(id=job.id), metadata=t.owner.metadata)).job
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
    work = mine[0]
    assert work.requests == 0 and work.busy_seconds > 0 and 0 < work.db_seconds <= work.busy_seconds, work
    assert not work.HasField("availability_burn_rate")  # no requests: nothing to burn
    level = (await tenants.GetServiceLevel(tsp.GetServiceLevelRequest(tenant_id=t.id),
                                           metadata=t.owner.metadata)).service_level
    worker = next(s for s in level.services if s.service == "worker")
    assert worker.requests == 0 and worker.busy_seconds > 0
    assert level.requests == sum(s.requests for s in level.services)  # the SLOs count calls only


async def test_another_tenants_service_level_does_not_exist(world: World, rest: httpx.AsyncClient) -> None:
    for tenant_id in (world.a.id, str(uuid.uuid4())):
        r = await rest.get(f"/api/v1/tenants/{tenant_id}/service-level", headers=world.b.owner.headers)
        assert r.status_code == 404, r.text
        assert r.json()["message"] == f"tenant {tenant_id} not found"
    r = await rest.get(f"/api/v1/tenants/{world.b.id}/service-level", headers=world.b.member.headers)
    assert r.status_code == 200 and r.json()["service_level"]["tenant_id"] == world.b.id
    bad = await rest.get("/api/v1/tenants/not-a-uuid/service-level", headers=world.b.owner.headers)
    assert bad.status_code == 400


async def test_a_burning_budget_shows_its_state_and_firing_pair(world: World, admin_headers: dict[str, str],
                                                               rest: httpx.AsyncClient) -> None:
    victim, _ = await bare_tenant("victim")
    # 80 % of 1000 requests slower than 1 s in this minute: 16x the latency budget over 5 m and 1 h
    # (page-fast fires at 14.4x); 6 h holds fewer than 0.1 req/s, so page-slow stays quiet.
    await insert_usage(victim, requests=1000, slow=800, errors=2, server_errors=2, busy_seconds=900)
    r = await rest.get(f"/api/v1/tenants/{victim}/service-level", headers=admin_headers)
    assert r.status_code == 200, r.text
    objectives = {o["name"]: o for o in r.json()["service_level"]["objectives"]}
    latency, availability = objectives["latency"], objectives["availability"]
    assert latency["budget_state"] == "critical" and latency["budget_remaining"] < 0
    assert latency["firing"] == ["page-fast"]
    assert "freeze releases" in latency["policy"]
    # 2 server errors in ~1000 requests: 2x the availability budget, firing nothing.
    assert availability["bad_requests"] == "2" and availability.get("firing", []) == []
    assert availability["budget_state"] == "critical"


async def test_the_noisy_neighbour_is_named(world: World, admin_headers: dict[str, str],
                                            rest: httpx.AsyncClient) -> None:
    hog, hog_slug = await bare_tenant("hog")
    victim, _ = await bare_tenant("neighbour")
    await insert_usage(hog, requests=50_000, busy_seconds=100_000)
    await insert_usage(victim, requests=200, slow=40, busy_seconds=60)
    r = await rest.get("/api/v1/tenant-usage", params={"window_minutes": 10, "limit": 100}, headers=admin_headers)
    assert r.status_code == 200, r.text
    body = r.json()
    ranked = {t["tenant_id"]: t for t in body["tenants"]}
    first = body["tenants"][0]
    assert first["tenant_id"] == hog and first["slug"] == hog_slug and first["noisy"] is True
    assert first["busy_share"] > 0.9 and float(body["busy_seconds"]) >= 100_060
    assert ranked[victim]["noisy"] is False and ranked[victim]["latency_burn_rate"] == pytest.approx(4.0)
    assert body["impacted_tenants"] >= 1
    shares = [t["busy_share"] for t in body["tenants"]]
    assert shares == sorted(shares, reverse=True)
    # Filtered to another service, the hog's user-service time is not there.
    r = await rest.get("/api/v1/tenant-usage", params={"service": "audit", "limit": 100}, headers=admin_headers)
    assert hog not in {t["tenant_id"] for t in r.json().get("tenants", [])}


async def sentinel_cli(stack: Any, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "SENTINEL_DATABASE_URL": stack.app_url}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "sentinel", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_on_call_ranks_tenants_from_the_command_line(world: World, stack: Any) -> None:
    hog, hog_slug = await bare_tenant("clihog")
    victim, victim_slug = await bare_tenant("clivictim")
    await insert_usage(hog, requests=40_000, busy_seconds=1_000_000, db_seconds=600_000, service="scheduler")
    await insert_usage(victim, requests=300, server_errors=30, busy_seconds=5, db_seconds=2, service="scheduler")
    code, out, err = await sentinel_cli(stack, "admin", "tenant-usage", "--minutes", "5", "--service", "scheduler")
    assert code == 0, err
    lines = out.splitlines()
    assert "(scheduler service)" in lines[0] and lines[1].split()[:2] == ["tenant", "calls"]
    assert lines[2].startswith(hog_slug) and lines[2].endswith("NOISY"), out  # the busiest, marked
    mine = next(line for line in lines if line.startswith(victim_slug))
    assert mine.split()[1] == "300" and "100.0x" in mine and "NOISY" not in mine, out  # 10 % 5xx: 100x burn
    code, out, _ = await sentinel_cli(stack, "admin", "tenant-usage", "--service", "scheduler", "--json")
    ranked = {t["tenant_id"]: t for t in json.loads(out)["tenants"]}
    assert code == 0 and ranked[hog]["noisy"] is True and ranked[victim]["server_errors"] == "30"
    assert ranked[hog]["db_share"] > 0.99 and ranked[victim]["db_seconds"] >= 2
    code, _, err = await sentinel_cli(stack, "admin", "tenant-usage", "--minutes", "99999")
    assert code == 2 and "window_minutes: must be 1-2880" in err, err  # the RPC's limits, the RPC's words


@pytest.mark.parametrize("params", [{"window_minutes": 2881}, {"window_minutes": -1}, {"limit": 101},
                                    {"service": "billing"}])
async def test_ranking_refuses_bad_parameters(rest: httpx.AsyncClient, admin_headers: dict[str, str],
                                              params: dict[str, Any]) -> None:
    r = await rest.get("/api/v1/tenant-usage", params=params, headers=admin_headers)
    assert r.status_code == 400, r.text
    assert next(iter(params)) in r.text


async def test_only_platform_admins_rank_tenants(world: World, rest: httpx.AsyncClient) -> None:
    r = await rest.get("/api/v1/tenant-usage", headers=world.a.owner.headers)
    assert r.status_code == 403, r.text


async def test_flushes_of_several_instances_add_up(world: World) -> None:
    tenant, _ = await bare_tenant("instances")
    now = time.time()
    one, two = usage.Recorder("scheduler"), usage.Recorder("scheduler")
    for rec in (one, two):
        rec.record(uuid.UUID(tenant), grpc.StatusCode.OK, 0.5, 0.25, now=now)
        rec.record(uuid.UUID(tenant), grpc.StatusCode.UNAVAILABLE, 1.5, now=now)
        rec.record(uuid.uuid4(), grpc.StatusCode.OK, 0.1, now=now)  # no such tenant: skipped
    assert await asyncio.gather(one.flush(), two.flush()) == [1, 1]
    async with db.unit_of_work(tenant_id=uuid.UUID(tenant), platform=False) as session:
        rows = (await session.execute(text(
            "SELECT requests, server_errors, errors, slow, busy_seconds, db_seconds FROM tenant_usage_minutes"))).all()
        hours = (await session.execute(text("SELECT requests, db_seconds FROM tenant_usage_hours"))).all()
    assert [tuple(r) for r in rows] == [(4, 2, 2, 2, 4.0, 0.5)] and [tuple(h) for h in hours] == [(4, 0.5)]
    assert one.pending == {} and two.pending == {}
