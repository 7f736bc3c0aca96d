"""Audit figures (not a test).

Append throughput: sustained events/s with hash chaining, as the audit service stores them
(tenant-bound transactions, per-tenant lock, batched INSERT)::

    .venv/bin/python bench/audit.py [--seconds 10] [--batch 100] [--writers 4] [--tenants 1] [--via-grpc]

Starts its own stack; writers append batches concurrently, spread over ``--tenants`` chains
(one tenant: every writer queues on the same chain lock). Prints events/s and batch latency,
then verifies every chain written. ``--via-grpc`` appends through AuditService.AppendEvents
as the outbox drainers do (service token, protobuf, the duplicate check by event id).

What recording costs CreateUser::

    .venv/bin/python bench/audit.py --create-user [--calls 300] [--cheap-hashing]

Starts two stacks at once, one recording (the default) and one with SENTINEL_AUDIT_RECORDING
off, and alternates rounds of CreateUser calls between them, so both see the same machine
load; prints p50/p90 of each and the ratio. ``--cheap-hashing`` uses the test suite's argon2
parameters, so the database path, where the outbox write happens, dominates the latency.
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
from sentinel.audit.v1 import audit_pb2, audit_service_pb2, audit_service_pb2_grpc
from sentinel.devstack.stack import temporary_stack
from sentinel.platform import db
from sentinel.platform.config import Settings
from sentinel.platform.ids import uuid7
from sentinel.platform.service_identity import ServiceTokens
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


def proto_event(tenant: uuid.UUID, i: int) -> audit_pb2.AuditEvent:
    e = event(i)
    out = audit_pb2.AuditEvent(
        id=str(uuid7()), tenant_id=str(tenant), action=e["action"], outcome=audit_pb2.OUTCOME_SUCCESS,
        actor=audit_pb2.Actor(type=audit_pb2.ACTOR_TYPE_USER, id=e["actor_id"]),
        target=audit_pb2.Target(type="user", id=e["target_id"]), request_id=e["request_id"],
        source_ip=e["source_ip"], user_agent=e["user_agent"])
    out.event_time.GetCurrentTime()
    out.diff.update(e["diff"])
    return out


async def measure(stack: Any, seconds: float, batch: int, writers: int, n_tenants: int, via_grpc: bool) -> None:
    chains = await tenants(stack, n_tenants)
    db.init(Settings(database_url=SecretStr(stack.app_url), database_pool_size=writers + 2))
    latencies: list[float] = []
    appended = 0
    deadline = time.perf_counter() + seconds
    channel = grpc.aio.insecure_channel(stack.service_target("audit"))
    stub = audit_service_pb2_grpc.AuditServiceStub(channel)
    tokens = ServiceTokens.from_file(stack.service_keys_dir / "user.key.pem", issuer="sentinel")

    async def writer(k: int) -> None:
        nonlocal appended
        tenant = chains[k % len(chains)]
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            if via_grpc:  # what the services' outbox drainers do: AppendEvents, deduplicated by id
                await stub.AppendEvents(audit_service_pb2.AppendEventsRequest(
                    events=[proto_event(tenant, i) for i in range(batch)]), metadata=tokens.metadata())
            else:
                async with db.unit_of_work(tenant_id=tenant, platform=False) as session:
                    await store.append(session, tenant, [event(i) for i in range(batch)])
            latencies.append(time.perf_counter() - start)
            appended += batch

    start = time.perf_counter()
    await asyncio.gather(*(writer(k) for k in range(writers)))
    elapsed = time.perf_counter() - start
    ms = sorted(x * 1000 for x in latencies)
    await channel.close()
    path = "AppendEvents over gRPC" if via_grpc else "store.append in process"
    print(f"{path}, tenants={n_tenants} writers={writers} batch={batch}: {appended / elapsed:,.0f} events/s "
          f"({appended} in {elapsed:.1f} s); batch p50 {statistics.median(ms):.1f} ms, "
          f"p99 {ms[int(len(ms) * 0.99)]:.1f} ms")
    for tenant in chains:
        verdict = await store.verify_tenant(tenant)
        assert verdict.ok, verdict
    print(f"  every chain verifies ({sum([(await store.verify_tenant(t)).checked for t in chains])} events)")
    await db.dispose()


async def create_user_overhead(recording: Any, silent: Any, calls: int) -> None:
    async def prepare(stack: Any) -> tuple[Any, Any, list[float]]:
        ch = grpc.aio.insecure_channel(stack.service_target("user"))
        tenant = (await tenants(stack, 1))[0]
        login = await usg.AuthServiceStub(ch).Login(usp.LoginRequest(
            tenant="platform", email=stack.admin_email, password=stack.admin_password))
        md = (("authorization", f"Bearer {login.access_token}"),)
        return ch, (usg.UserServiceStub(ch), str(tenant), md), []

    on, off = await prepare(recording), await prepare(silent)
    rounds, per_round = max(calls // 20, 1), 20
    for r in range(rounds + 1):  # round 0 warms both up and is not counted
        for _, (stub, tenant, md), samples in (on, off) if r % 2 else (off, on):
            for _ in range(per_round):
                start = time.perf_counter()
                await stub.CreateUser(usp.CreateUserRequest(
                    tenant_id=tenant, email=f"{uuid.uuid4().hex[:12]}@bench.example.com",
                    password=secrets.token_urlsafe(16)), metadata=md)
                if r:
                    samples.append((time.perf_counter() - start) * 1000)
    p50_on, p50_off = statistics.median(on[2]), statistics.median(off[2])
    for name, samples in (("recording on ", on[2]), ("recording off", off[2])):
        ms = sorted(samples)
        print(f"CreateUser {name}: p50 {statistics.median(ms):.2f} ms, p90 {ms[int(len(ms) * 0.9)]:.2f} ms "
              f"({len(ms)} calls)")
    print(f"audit adds {(p50_on / p50_off - 1) * 100:+.1f}% to CreateUser p50 (target: at most +20%)")
    for ch, _, _ in (on, off):
        await ch.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--tenants", type=int, default=1)
    parser.add_argument("--via-grpc", action="store_true", help="append through AuditService.AppendEvents")
    parser.add_argument("--create-user", action="store_true", help="measure what recording adds to CreateUser")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--cheap-hashing", action="store_true", help="argon2 t=1 m=1 MiB (the test suite's)")
    ns = parser.parse_args()
    env = {"SENTINEL_BOOTSTRAP_ADMIN_EMAIL": "bench@platform.example.com",
           "SENTINEL_BOOTSTRAP_ADMIN_PASSWORD": secrets.token_urlsafe(18)}
    if ns.create_user:
        if ns.cheap_hashing:
            env |= {"SENTINEL_ARGON2_TIME_COST": "1", "SENTINEL_ARGON2_MEMORY_COST_KIB": "1024",
                    "SENTINEL_ARGON2_PARALLELISM": "1"}
        env |= {"SENTINEL_PLAN_MAX_USERS": '{"free": 1000000}'}
        with temporary_stack(env=env) as recording, \
                temporary_stack(env={**env, "SENTINEL_AUDIT_RECORDING": "false"}) as silent:
            asyncio.run(create_user_overhead(recording, silent, ns.calls))
        return
    with temporary_stack(env=env) as stack:
        asyncio.run(measure(stack, ns.seconds, ns.batch, ns.writers, ns.tenants, ns.via_grpc))


if __name__ == "__main__":
    main()
