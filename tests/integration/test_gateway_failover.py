"""Two user-service instances behind Envoy; one is SIGKILLed in the middle of a stream of REST calls.

The session stack runs two user instances (``user`` and ``user-2``, conftest), so every test goes
through Envoy's load balancing. This one kills ``user-2`` (the extra instance: peers and the
suite's direct gRPC channels use ``user``) while readers and a writer are busy, and checks that

* both instances served reads before the kill;
* no read fails, before, during or after (Envoy retries a read whose connection was refused or
  reset on the other instance, and outlier detection takes the dead one out);
* a write either succeeds or fails with a retryable status (UNAVAILABLE), and retrying it with its
  ``Idempotency-Key`` never applies it twice;
* once restarted, the instance gets traffic again (the active health check brings it back).
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest

from tests.integration.conftest import PASSWORD, Tenant, World, make_tenant

pytestmark = pytest.mark.integration

KILLED = "user-2"
READERS = 12
RETRYABLE = {503: 14, 504: 4}  # HTTP status -> gRPC code of a write that may be tried again


def served_reads(metrics: str) -> float:
    """GetUser and ListUsers calls an instance answered OK (its own counters)."""
    total = 0.0
    for line in metrics.splitlines():
        m = re.match(r'sentinel_requests_total\{(.*)\} (\S+)$', line)
        if m and re.search(r'method="[^"]*(GetUser|ListUsers)"', m[1]) and 'code="OK"' in m[1]:
            total += float(m[2])
    return total


async def instance_reads(http: httpx.AsyncClient, stack: Any, name: str) -> float:
    return served_reads((await http.get(stack.metrics_url(name))).text)


async def envoy_stats(http: httpx.AsyncClient, stack: Any) -> dict[str, int]:
    r = await http.get(f"http://{stack.host}:{stack.ports.envoy_admin}/stats",
                       params={"filter": r"^cluster\.user\.(upstream_rq_retry|upstream_cx_connect_fail|"
                                         r"upstream_rq_pending_overflow|upstream_rq_5|outlier_detection\.ej)"})
    out = {}
    for line in r.text.splitlines():
        key, _, value = line.partition(": ")
        if value.strip().isdigit():
            out[key.removeprefix("cluster.user.")] = int(value)
    return out


@pytest.fixture
async def tenant(world: World) -> Tenant:
    return await make_tenant(world.channels, world.admin, "failover")


async def test_reads_survive_killing_one_user_instance(stack: Any, tenant: Tenant) -> None:
    assert stack.instance_names("user") == ["user", KILLED], "conftest runs two user instances"
    owner, member = tenant.owner, tenant.member
    users = {owner.user_id: f"owner@{tenant.slug}.example.com", member.user_id: f"member@{tenant.slug}.example.com"}
    failures: list[str] = []
    reads: Counter[str] = Counter()
    phase = "warm-up"
    stop = asyncio.Event()

    async def reader(k: int, http: httpx.AsyncClient) -> None:
        i = k
        while not stop.is_set():
            i += 1
            try:
                if i % 3:
                    uid = list(users)[i % 2]
                    r = await http.get(f"/api/v1/users/{uid}", headers=owner.headers)
                    got = r.json().get("user", {}) if r.status_code == 200 else {}
                    ok = got.get("id") == uid and got.get("email") == users[uid]
                else:
                    r = await http.get("/api/v1/users", params={"page_size": 1000}, headers=owner.headers)
                    ok = r.status_code == 200 and set(users) <= {u["id"] for u in r.json()["users"]}
                if not ok:
                    failures.append(f"{phase}: {r.request.method} {r.request.url.path} -> {r.status_code} "
                                    f"{r.text[:200]}")
            except httpx.HTTPError as e:
                failures.append(f"{phase}: {type(e).__name__} {e}")
            reads[phase] += 1

    writes: dict[str, str] = {}  # idempotency key -> email
    write_attempts: Counter[str] = Counter()  # HTTP status of every attempt

    async def writer(http: httpx.AsyncClient) -> None:
        while not stop.is_set() and len(writes) < 80:
            key, email = uuid.uuid4().hex, f"w-{uuid.uuid4().hex[:10]}@{tenant.slug}.example.com"
            writes[key] = email
            body = {"email": email, "password": PASSWORD, "role": "ROLE_VIEWER"}
            for _attempt in range(20):
                r = await http.post("/api/v1/users", json=body, headers={**owner.headers, "idempotency-key": key})
                write_attempts[str(r.status_code)] += 1
                if r.status_code == 200:
                    assert r.json()["user"]["email"] == email
                    break
                # Anything else must be a clean, retryable failure, never a half-applied one.
                assert RETRYABLE.get(r.status_code) == r.json().get("code"), (phase, r.status_code, r.text)
                await asyncio.sleep(0.2)
            else:
                raise AssertionError(f"write {key} never succeeded")
            await asyncio.sleep(0.1)

    limits = httpx.Limits(max_connections=READERS + 2)
    async with httpx.AsyncClient(base_url=stack.rest_url, timeout=15, limits=limits) as http, \
            httpx.AsyncClient(timeout=5) as probe:
        before_stats = await envoy_stats(probe, stack)
        base = {n: await instance_reads(probe, stack, n) for n in ("user", KILLED)}
        tasks = [asyncio.create_task(reader(k, http)) for k in range(READERS)]
        tasks.append(asyncio.create_task(writer(http)))
        restarted = False
        try:
            await asyncio.sleep(3)
            served = {n: await instance_reads(probe, stack, n) - base[n] for n in ("user", KILLED)}
            assert all(v > 0 for v in served.values()), f"both instances serve reads before the kill: {served}"

            phase = "kill"
            killed_at = time.monotonic()
            stack.kill_service(KILLED)  # SIGKILL: calls in flight on it are cut
            await asyncio.sleep(4)

            phase = "restart"
            await asyncio.to_thread(stack.start_service, KILLED)
            restarted = True
            # Envoy health-checks every 5 s (+ jitter): the new process gets reads within a few seconds.
            for _ in range(60):
                if (back := await instance_reads(probe, stack, KILLED)) > 0:
                    break
                await asyncio.sleep(0.5)
            assert back > 0, f"{KILLED} got no reads within 30 s of its restart"
            phase = "after"
            await asyncio.sleep(1)
        finally:
            stop.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            if not restarted and KILLED not in {p.name for p in stack.procs}:
                stack.start_service(KILLED)  # leave the session stack as it was
        stats = await envoy_stats(probe, stack)
        listed = (await http.get("/api/v1/users", params={"page_size": 1000}, headers=owner.headers)).json()["users"]

    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    delta = {k: v - before_stats.get(k, 0) for k, v in stats.items() if v != before_stats.get(k, 0)}
    print(f"\nreads by phase {dict(reads)}, write attempts {dict(write_attempts)} for {len(writes)} writes, "
          f"{time.monotonic() - killed_at:.1f} s from kill to end; Envoy cluster.user deltas {delta}")
    assert not failures, f"{len(failures)} failed reads of {sum(reads.values())}: {failures[:10]}"
    assert reads["kill"] > 100, reads  # a real stream of reads went on while the instance was dead
    # Every write applied exactly once, retried or not.
    emails = Counter(u["email"] for u in listed)
    assert writes and all(emails[e] == 1 for e in writes.values()), {
        e: emails[e] for e in writes.values() if emails[e] != 1}
