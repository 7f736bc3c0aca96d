"""Job queue throughput (not a test).

    .venv/bin/python bench/jobs.py [--noop 5000] [--jobs 300] [--concurrency 8]

Starts its own stack (with one job worker) and measures two things on this machine:

1. huey on the stack's Redis with a no-op task: tasks/s enqueued, and completed by a consumer
   with 4 worker threads, i.e. the queue's own ceiling;
2. Sentinel jobs end to end with the cheapest real kind (a tenant export of a small tenant):
   CreateJob calls/s (row + audit event + signal), and jobs/s completed by the worker (claim,
   run, result, SUCCEEDED and its audit event, each a Postgres transaction).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import threading
import time
import uuid
from typing import Any

import grpc
from huey import RedisHuey
from sentinel.devstack.stack import temporary_stack
from sentinel.scheduler.v1 import job_pb2
from sentinel.scheduler.v1 import scheduler_service_pb2 as ssp
from sentinel.scheduler.v1 import scheduler_service_pb2_grpc as ssg
from sentinel.tenant.v1 import tenant_service_pb2 as tsp
from sentinel.tenant.v1 import tenant_service_pb2_grpc as tsg
from sentinel.user.v1 import user_service_pb2 as usp
from sentinel.user.v1 import user_service_pb2_grpc as usg


def noop_queue(redis_url: str, n: int) -> None:
    huey = RedisHuey(f"bench-{uuid.uuid4().hex[:6]}", url=redis_url, results=False)
    done = 0
    lock = threading.Lock()
    finished = threading.Event()

    def noop() -> None:
        nonlocal done
        with lock:
            done += 1
            if done == n:
                finished.set()

    task = huey.task(name="noop")(noop)
    start = time.perf_counter()
    for _ in range(n):
        task()
    enqueued = time.perf_counter() - start
    consumer = huey.create_consumer(workers=4, worker_type="thread", periodic=False, initial_delay=0.001,
                                    backoff=1.1, max_delay=0.01)
    start = time.perf_counter()
    consumer.start()  # worker threads; returns at once
    finished.wait(120)
    completed = time.perf_counter() - start
    consumer.stop(graceful=True)
    huey.flush()
    print(f"huey no-op: {n / enqueued:,.0f} tasks/s enqueued, {done / completed:,.0f} tasks/s completed "
          f"(4 threads, {done}/{n})")


async def sentinel_jobs(stack: Any, n: int, concurrency: int) -> None:
    async with grpc.aio.insecure_channel(stack.service_target("user")) as user_ch, \
            grpc.aio.insecure_channel(stack.service_target("tenant")) as tenant_ch, \
            grpc.aio.insecure_channel(stack.service_target("scheduler")) as sched_ch:
        login = await usg.AuthServiceStub(user_ch).Login(usp.LoginRequest(
            tenant="platform", email=stack.admin_email, password=stack.admin_password))
        md = (("authorization", f"Bearer {login.access_token}"),)
        tenant = (await tsg.TenantServiceStub(tenant_ch).CreateTenant(tsp.CreateTenantRequest(
            slug=f"bench-{uuid.uuid4().hex[:8]}", display_name="Bench"), metadata=md)).tenant
        jobs = ssg.SchedulerServiceStub(sched_ch)
        ids: list[str] = []

        async def creator(k: int) -> None:
            for _ in range(k, n, concurrency):
                reply = await jobs.CreateJob(ssp.CreateJobRequest(tenant_id=tenant.id,
                                                                  kind=job_pb2.JOB_KIND_TENANT_EXPORT), metadata=md)
                ids.append(reply.job.id)

        start = time.perf_counter()
        await asyncio.gather(*(creator(k) for k in range(concurrency)))
        created = time.perf_counter() - start
        while True:
            listed = await jobs.ListJobs(ssp.ListJobsRequest(tenant_id=tenant.id, state=job_pb2.JOB_STATE_SUCCEEDED,
                                                             page_size=1000), metadata=md)
            if len(listed.jobs) >= n:
                break
            if time.perf_counter() - start > 300:
                raise SystemExit(f"only {len(listed.jobs)} of {n} jobs succeeded after 300 s")
            await asyncio.sleep(0.1)
        completed = time.perf_counter() - start
        first = min(j.create_time.ToDatetime() for j in listed.jobs)
        last = max(j.end_time.ToDatetime() for j in listed.jobs)
        span = (last - first).total_seconds()
        print(f"sentinel jobs (tenant export): {n / created:,.0f} CreateJob/s ({concurrency} clients), "
              f"{n / span:,.0f} jobs/s completed by one worker ({n} in {span:.1f} s; all done {completed:.1f} s "
              "after the first create)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--noop", type=int, default=5000)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    ns = parser.parse_args()
    env = {"SENTINEL_BOOTSTRAP_ADMIN_EMAIL": "bench@platform.example.com",
           "SENTINEL_BOOTSTRAP_ADMIN_PASSWORD": secrets.token_urlsafe(18)}
    with temporary_stack(env=env) as stack:
        noop_queue(stack.redis_url, ns.noop)
        asyncio.run(sentinel_jobs(stack, ns.jobs, ns.concurrency))


if __name__ == "__main__":
    main()
