"""Audit append throughput (not a test): sustained events/s with hash chaining, as the audit
service stores them (tenant-bound transactions, per-tenant lock, batched INSERT).

    .venv/bin/python bench/audit.py [--seconds 10] [--batch 100] [--writers 4] [--tenants 1]

Starts its own stack; writers append batches concurrently, spread over ``--tenants`` chains
(one tenant: every writer queues on the same chain lock). Prints events/s and batch latency,
then verifies every chain written.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time
import uuid
from typing import Any

import grpc
from pydantic import SecretStr
from sentinel.audit import store
from sentinel.devstack.stack import temporary_stack
from sentinel.platform import db
from sentinel.platform.config import Settings
from sentinel.tenant.v1 import tenant_service_pb2 as tsp
from sentinel.tenant.v1 import tenant_service_pb2_grpc as tsg
from sentinel.user.v1 import user_service_pb2 as usp
from sentinel.user.v1 import user_service_pb2_grpc as usg


def event(i: int) -> dict[str, Any]:
    return {"actor_type": "user", "actor_id": str(uuid.uuid4()), "action": "user.create", "target_type": "user",
            "target_id": str(uuid.uuid4()), "outcome": "success", "request_id": uuid.uuid4().hex,
            "source_ip": "203.0.113.7", "user_agent": "bench/1.0", "diff": {"email": f"u{i}@example.com",
                                                                          "role": "member"}}


async def tenants(stack: Any, n: int) -> list[uuid.UUID]:
    async with grpc.aio.insecure_channel(stack.service_target("user")) as user_ch, \
            grpc.aio.insecure_channel(stack.service_target("tenant")) as tenant_ch:
        login = await usg.AuthServiceStub(user_ch).Login(usp.LoginRequest(
            tenant="platform", email=stack.admin_email, password=stack.admin_password))
        md = (("authorization", f"Bearer {login.access_token}"),)
        out = []
        for _ in range(n):
            reply = await tsg.TenantServiceStub(tenant_ch).CreateTenant(tsp.CreateTenantRequest(
                slug=f"bench-{uuid.uuid4().hex[:8]}", display_name="Bench"), metadata=md)
            out.append(uuid.UUID(reply.tenant.id))
        return out


async def measure(stack: Any, seconds: float, batch: int, writers: int, n_tenants: int) -> None:
    chains = await tenants(stack, n_tenants)
    db.init(Settings(database_url=SecretStr(stack.app_url), database_pool_size=writers + 2))
    latencies: list[float] = []
    appended = 0
    deadline = time.perf_counter() + seconds

    async def writer(k: int) -> None:
        nonlocal appended
        tenant = chains[k % len(chains)]
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            async with db.unit_of_work(tenant_id=tenant, platform=False) as session:
                await store.append(session, tenant, [event(i) for i in range(batch)])
            latencies.append(time.perf_counter() - start)
            appended += batch

    start = time.perf_counter()
    await asyncio.gather(*(writer(k) for k in range(writers)))
    elapsed = time.perf_counter() - start
    ms = sorted(x * 1000 for x in latencies)
    print(f"tenants={n_tenants} writers={writers} batch={batch}: {appended / elapsed:,.0f} events/s "
          f"({appended} in {elapsed:.1f} s); batch p50 {statistics.median(ms):.1f} ms, "
          f"p99 {ms[int(len(ms) * 0.99)]:.1f} ms")
    for tenant in chains:
        verdict = await store.verify_tenant(tenant)
        assert verdict.ok, verdict
    print(f"  every chain verifies ({sum([(await store.verify_tenant(t)).checked for t in chains])} events)")
    await db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--tenants", type=int, default=1)
    ns = parser.parse_args()
    env = {"SENTINEL_BOOTSTRAP_ADMIN_EMAIL": "bench@platform.example.com",
           "SENTINEL_BOOTSTRAP_ADMIN_PASSWORD": secrets.token_urlsafe(18)}
    with temporary_stack(env=env) as stack:
        asyncio.run(measure(stack, ns.seconds, ns.batch, ns.writers, ns.tenants))


if __name__ == "__main__":
    main()
