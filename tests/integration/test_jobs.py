"""On-demand jobs end to end: SchedulerService → Postgres → huey on Redis → the worker → results a
tenant downloads (its own only), retries, dead letters, cancellation and lost workers."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import bcrypt
import grpc
import httpx
import pytest
from google.protobuf import json_format, struct_pb2
from pydantic import SecretStr
from sentinel.platform import datakeys, db
from sentinel.platform.config import Settings
from sentinel.platform.ids import uuid7
from sentinel.scheduler import kinds, runner
from sentinel.scheduler.models import JobRow
from sentinel.scheduler.v1 import job_pb2
from sentinel.scheduler.v1 import scheduler_service_pb2 as ssp
from sentinel.scheduler.v1 import scheduler_service_pb2_grpc as ssg
from sentinel.tenant.v1 import tenant_pb2
from sentinel.tenant.v1 import tenant_service_pb2 as tsp
from sentinel.tenant.v1 import tenant_service_pb2_grpc as tsg
from sentinel.user.v1 import user_service_pb2 as usp
from sentinel.user.v1 import user_service_pb2_grpc as usg
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from tests.integration.conftest import Tenant, World, audit_settled, make_tenant

pytestmark = pytest.mark.integration


def jobs(world: World) -> Any:
    return ssg.SchedulerServiceStub(world.channels["scheduler"])


async def finished(world: World, t: Tenant, job_id: str, within: float = 30.0) -> job_pb2.Job:
    deadline = time.monotonic() + within
    while True:
        job = (await jobs(world).GetJob(ssp.GetJobRequest(id=job_id), metadata=t.owner.metadata)).job
        if job.state not in (job_pb2.JOB_STATE_PENDING, job_pb2.JOB_STATE_RUNNING):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job_pb2.JobState.Name(job.state)} after {within}s")
        await asyncio.sleep(0.1)


async def started(world: World, t: Tenant, job_id: str) -> None:
    deadline = time.monotonic() + 30
    while (await jobs(world).GetJob(ssp.GetJobRequest(id=job_id), metadata=t.owner.metadata)).job.state != \
            job_pb2.JOB_STATE_RUNNING:
        assert time.monotonic() < deadline, "the job never started"
        await asyncio.sleep(0.02)


async def create(world: World, t: Tenant, kind: int, **params: Any) -> job_pb2.Job:
    struct = struct_pb2.Struct()
    struct.update(params)
    return (await jobs(world).CreateJob(ssp.CreateJobRequest(kind=kind, params=struct),
                                        metadata=t.owner.metadata)).job


async def test_a_tenant_export_runs_and_only_its_tenant_can_download_it(world: World, stack: Any) -> None:
    t = await make_tenant(world.channels, world.admin, "jobexp")
    job = await create(world, t, job_pb2.JOB_KIND_TENANT_EXPORT)
    assert job.state == job_pb2.JOB_STATE_PENDING and job.creator_id == t.owner.user_id
    done = await finished(world, t, job.id)
    assert (done.state, done.attempts, done.progress_percent) == (job_pb2.JOB_STATE_SUCCEEDED, 1, 100)
    assert done.result_uri == f"/api/v1/jobs/{job.id}/result" and done.start_time.seconds and done.end_time.seconds
    async with httpx.AsyncClient(base_url=stack.rest_url, timeout=10) as http:
        r = await http.get(done.result_uri, headers=t.owner.headers)
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json"), r.text
        document = r.json()
        assert document["tenant"]["slug"] == t.slug
        assert sorted(u["id"] for u in document["users"]) == sorted(t.user_ids)
        assert "password_hash" not in r.text and "secret_hash" not in r.text and "token_hash" not in r.text
        # Another tenant's owner: the job and its result do not exist for them.
        for path in (f"/api/v1/jobs/{job.id}", done.result_uri):
            other = await http.get(path, headers=world.b.owner.headers)
            assert other.status_code == 404, (path, other.text)
        listed = await http.get("/api/v1/jobs", params={"state": "JOB_STATE_SUCCEEDED"}, headers=t.owner.headers)
        assert [j["id"] for j in listed.json()["jobs"]] == [job.id]
    # The run is in the tenant's trail, with what it exported.
    await audit_settled()
    from sentinel.audit.v1 import audit_service_pb2 as asp
    from sentinel.audit.v1 import audit_service_pb2_grpc as asg

    runs = (await asg.AuditServiceStub(world.channels["audit"]).ListAuditEvents(asp.ListAuditEventsRequest(
        filter=asp.AuditFilter(action="job.run", target_id=job.id)), metadata=t.owner.metadata)).events
    assert len(runs) == 1 and runs[0].diff["state"] == "succeeded" and runs[0].diff["users"] == 2


async def test_an_audit_export_job_verifies_offline(world: World, stack: Any, tmp_path: Path) -> None:
    t = await make_tenant(world.channels, world.admin, "jobaud")
    done = await finished(world, t, (await create(world, t, job_pb2.JOB_KIND_AUDIT_EXPORT)).id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
    async with httpx.AsyncClient(base_url=stack.rest_url, timeout=10) as http:
        r = await http.get(done.result_uri, headers=t.owner.headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    export = tmp_path / "audit.ndjson"
    export.write_bytes(r.content)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "sentinel", "audit", "verify", str(export),
                                                env={"PATH": "/usr/bin:/bin"}, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    # The chain as it stood when the job ran: the set-up's events (and job.create if delivered by then).
    assert proc.returncode == 0 and out.decode().startswith("OK: "), out
    assert int(out.decode().split()[1]) in (t.audit_base, t.audit_base + 1), out


def csv_of(*users: tuple[str, str]) -> str:
    lines = ["email,display_name,role,password_hash"]
    for email, password in users:
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        lines.append(f"{email},Imported,member,{hashed}")
    return "\n".join(lines) + "\n"


async def test_user_import_is_all_or_nothing_and_bad_files_are_refused_up_front(world: World) -> None:
    t = await make_tenant(world.channels, world.admin, "jobimp")
    with pytest.raises(grpc.aio.AioRpcError) as err:  # a malformed file never becomes a job
        await create(world, t, job_pb2.JOB_KIND_USER_IMPORT, csv="email,name\nx@y.z,X\n")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "header" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(world, t, job_pb2.JOB_KIND_USER_IMPORT, csv="x", surprise=1)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    done = await finished(world, t, (await create(world, t, job_pb2.JOB_KIND_USER_IMPORT, csv=csv_of(
        ("ada@jobimp.example.com", "ada's old password"), ("bob@jobimp.example.com", "bob's old password")))).id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
    auth = usg.AuthServiceStub(world.channels["user"])
    await auth.Login(usp.LoginRequest(tenant=t.slug, email="ada@jobimp.example.com", password="ada's old password"))
    # A file with one user who exists already fails as a whole (no retry: it cannot get better).
    again = await finished(world, t, (await create(world, t, job_pb2.JOB_KIND_USER_IMPORT, csv=csv_of(
        ("cy@jobimp.example.com", "c" * 12), ("bob@jobimp.example.com", "b" * 12)))).id)
    assert (again.state, again.attempts) == (job_pb2.JOB_STATE_FAILED, 1)
    assert "bob@jobimp.example.com: already a user" in again.error
    users = await usg.UserServiceStub(world.channels["user"]).ListUsers(usp.ListUsersRequest(),
                                                                        metadata=t.owner.metadata)
    assert "cy@jobimp.example.com" not in {u.email for u in users.users}


async def test_an_import_file_is_sealed_never_shown_and_gone_once_its_job_ends(world: World, stack: Any) -> None:
    t = await make_tenant(world.channels, world.admin, "jobseal")
    tenant = uuid.UUID(t.id)
    csv = csv_of(("eve@jobseal.example.com", "eve's old password"))
    password_hash = csv.splitlines()[1].rsplit(",", 1)[1]
    shown = {"csv": f"[csv, {len(csv.encode())} bytes]"}
    keys = settings_for(stack, data_key_dir=stack.data_keys_dir)
    stack.kill_service("worker")  # the jobs stay pending while the test looks at them
    try:
        kept = await create(world, t, job_pb2.JOB_KIND_USER_IMPORT, csv=csv)
        dropped = await create(world, t, job_pb2.JOB_KIND_USER_IMPORT,
                               csv=csv_of(("mal@jobseal.example.com", "mal's old password")))
        assert json_format.MessageToDict(kept.params) == shown  # the API shows the file's size only
        row = await job_row(t.id, uuid.UUID(kept.id))
        assert row.params == shown and row.input is not None and row.input_sealed
        assert password_hash.encode() not in row.input and b"eve@" not in row.input
        opened = await datakeys.open_record(keys, tenant, "job-input", uuid.UUID(kept.id), row.input, True)
        assert json.loads(opened) == {"csv": csv}
        with pytest.raises(datakeys.DataKeyError):  # bound to its job: moved onto another, it does not open
            await datakeys.open_record(keys, tenant, "job-input", uuid.UUID(dropped.id), row.input, True)
        await jobs(world).CancelJob(ssp.CancelJobRequest(id=dropped.id), metadata=t.owner.metadata)
        assert (await job_row(t.id, uuid.UUID(dropped.id))).input is None
    finally:
        await asyncio.to_thread(stack.start_worker)
    done = await finished(world, t, kept.id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error  # the worker opened the sealed file
    auth = usg.AuthServiceStub(world.channels["user"])
    await auth.Login(usp.LoginRequest(tenant=t.slug, email="eve@jobseal.example.com", password="eve's old password"))
    assert (await job_row(t.id, uuid.UUID(kept.id))).input is None
    # The database itself keeps a finished job from holding an input, whatever code path tries.
    with pytest.raises(IntegrityError, match="ck_jobs_input_until_finished"):
        async with db.unit_of_work(tenant_id=tenant, platform=False) as session:
            await session.execute(text("UPDATE jobs SET input = 'x' WHERE id = :id"), {"id": uuid.UUID(kept.id)})
    # The tenant's permanent audit chain describes the files; no copy of a hash or an address in it.
    await audit_settled()
    async with db.unit_of_work(tenant_id=tenant, platform=False) as session:
        diffs = (await session.scalars(text("SELECT diff::text FROM audit_events WHERE action = 'job.create'"))).all()
    assert len(diffs) == 2 and all('"[csv, ' in d for d in diffs), diffs
    assert not any("$2b$" in d or "@jobseal" in d for d in diffs), diffs


async def test_a_tenant_has_at_most_its_plans_active_jobs(world: World, stack: Any) -> None:
    tenant_id = (await tsg.TenantServiceStub(world.channels["tenant"]).CreateTenant(
        tsp.CreateTenantRequest(slug=f"jobcap-{uuid.uuid4().hex[:8]}", display_name="Job cap",
                                plan=tenant_pb2.TENANT_PLAN_STANDARD), metadata=world.admin.metadata)).tenant.id
    request = ssp.CreateJobRequest(tenant_id=tenant_id, kind=job_pb2.JOB_KIND_TENANT_EXPORT)
    stack.kill_service("worker")  # nothing finishes: every job created stays active
    try:
        results = await asyncio.gather(*(jobs(world).CreateJob(request, metadata=world.admin.metadata)
                                         for _ in range(5)), return_exceptions=True)
        made = [r.job for r in results if isinstance(r, ssp.CreateJobResponse)]
        refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(made) == 2 and len(refused) == 3, results  # the standard plan's 2, even all at once
        assert all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in refused)
        assert "allows 2 active jobs and it has 2; wait for one to finish, or cancel one" in str(refused[0].details())
        async with httpx.AsyncClient(base_url=stack.rest_url, timeout=10) as http:
            r = await http.post("/api/v1/jobs", headers=world.admin.headers,
                                json={"tenant_id": tenant_id, "kind": "JOB_KIND_TENANT_EXPORT"})
        assert r.status_code == 429 and r.json()["code"] == 8, r.text
        await jobs(world).CancelJob(ssp.CancelJobRequest(id=made[0].id, tenant_id=tenant_id),
                                    metadata=world.admin.metadata)
        await jobs(world).CreateJob(request, metadata=world.admin.metadata)  # a slot is free again
    finally:
        await asyncio.to_thread(stack.start_worker)


async def test_creation_is_idempotent(world: World) -> None:
    t = await make_tenant(world.channels, world.admin, "jobidem")
    request = ssp.CreateJobRequest(kind=job_pb2.JOB_KIND_TENANT_EXPORT, request_id=str(uuid.uuid4()))
    first = await jobs(world).CreateJob(request, metadata=t.owner.metadata)
    again = await jobs(world).CreateJob(request, metadata=t.owner.metadata)
    assert first.job.id == again.job.id
    listed = await jobs(world).ListJobs(ssp.ListJobsRequest(), metadata=t.owner.metadata)
    assert [j.id for j in listed.jobs] == [first.job.id]


async def test_cancel_a_pending_job_and_a_stopped_worker_loses_nothing(world: World, stack: Any) -> None:
    t = await make_tenant(world.channels, world.admin, "jobcan")
    stack.kill_service("worker")
    try:
        keep = await create(world, t, job_pb2.JOB_KIND_TENANT_EXPORT)
        drop = await create(world, t, job_pb2.JOB_KIND_TENANT_EXPORT)
        cancelled = (await jobs(world).CancelJob(ssp.CancelJobRequest(id=drop.id), metadata=t.owner.metadata)).job
        assert cancelled.state == job_pb2.JOB_STATE_CANCELLED
        again = (await jobs(world).CancelJob(ssp.CancelJobRequest(id=drop.id), metadata=t.owner.metadata)).job
        assert again.state == job_pb2.JOB_STATE_CANCELLED  # repeating it changes nothing
    finally:
        await asyncio.to_thread(stack.start_worker)
    # The signals waited in Redis: the kept job runs, the cancelled one never does.
    assert (await finished(world, t, keep.id)).state == job_pb2.JOB_STATE_SUCCEEDED
    dropped = (await jobs(world).GetJob(ssp.GetJobRequest(id=drop.id), metadata=t.owner.metadata)).job
    assert (dropped.state, dropped.attempts) == (job_pb2.JOB_STATE_CANCELLED, 0)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await jobs(world).CancelJob(ssp.CancelJobRequest(id=keep.id), metadata=t.owner.metadata)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await jobs(world).GetJobResult(ssp.GetJobResultRequest(id=drop.id), metadata=t.owner.metadata)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def big_csv(n: int, domain: str) -> str:
    hashed = bcrypt.hashpw(b"imported password", bcrypt.gensalt(rounds=4)).decode()
    return "email,display_name,role,password_hash\n" + "".join(
        f"u{i}@{domain},User {i},member,{hashed}\n" for i in range(n))


async def count_users(world: World, t: Tenant, domain: str) -> int:
    async with db.unit_of_work(tenant_id=uuid.UUID(t.id), platform=False) as session:
        return int(await session.scalar(text("SELECT count(*) FROM users WHERE email LIKE :d"),
                                        {"d": f"%@{domain}"}) or 0)


async def signal_due_jobs(stack: Any) -> int:
    """What every worker's minute tick does, now: re-signal due jobs, take back lost ones."""
    from sentinel.scheduler import queue

    queue.huey_for(Settings(redis_url=SecretStr(stack.redis_url)))
    return await runner.dispatch(queue.enqueue, lag_seconds=0)


async def test_a_worker_killed_mid_job_is_replaced_and_the_job_applies_once(world: World, stack: Any) -> None:
    t = await make_tenant(world.channels, world.admin, "jobkill")
    domain = "jobkill.example.com"
    job = await create(world, t, job_pb2.JOB_KIND_USER_IMPORT, csv=big_csv(20_000, domain))
    await started(world, t, job.id)
    stack.kill_service("worker")  # SIGKILL in the middle of the import's transaction
    try:
        assert await count_users(world, t, domain) == 0  # nothing of it committed
        # Its lease would run out after the time limit; let that moment come now.
        async with db.unit_of_work(tenant_id=uuid.UUID(t.id), platform=False) as session:
            await session.execute(text("UPDATE jobs SET lease_until = now() - interval '1 second' WHERE id = :id"),
                                  {"id": uuid.UUID(job.id)})
        assert await signal_due_jobs(stack) >= 1
    finally:
        await asyncio.to_thread(stack.start_worker)
    done = await finished(world, t, job.id, within=60)
    assert (done.state, done.attempts) == (job_pb2.JOB_STATE_SUCCEEDED, 2), done.error
    assert await count_users(world, t, domain) == 20_000  # every user once


async def test_sigterm_lets_the_running_job_finish(world: World, stack: Any) -> None:
    t = await make_tenant(world.channels, world.admin, "jobterm")
    domain = "jobterm.example.com"
    job = await create(world, t, job_pb2.JOB_KIND_USER_IMPORT, csv=big_csv(20_000, domain))
    await started(world, t, job.id)
    deadline = time.monotonic() + 10  # the file parsed, the users going in: progress shows while it runs
    while True:
        running = (await jobs(world).GetJob(ssp.GetJobRequest(id=job.id), metadata=t.owner.metadata)).job
        if running.progress_percent or running.state != job_pb2.JOB_STATE_RUNNING or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    assert running.progress_percent == 10 and running.state == job_pb2.JOB_STATE_RUNNING, running
    worker = next(p for p in stack.procs if p.name == "worker")
    worker.popen.terminate()  # SIGTERM: a graceful stop
    try:
        code = await asyncio.to_thread(worker.popen.wait, 60)
        stack.procs.remove(worker)
        assert code == 0
        done = (await jobs(world).GetJob(ssp.GetJobRequest(id=job.id), metadata=t.owner.metadata)).job
        assert (done.state, done.attempts) == (job_pb2.JOB_STATE_SUCCEEDED, 1), done.error  # finished first
        assert await count_users(world, t, domain) == 20_000
    finally:
        await asyncio.to_thread(stack.start_worker)


async def test_jobs_survive_a_redis_restart(world: World, stack: Any) -> None:
    t = await make_tenant(world.channels, world.admin, "jobredis")
    stack.kill_service("redis")
    try:
        # The job is recorded all the same; its signal cannot be sent.
        job = await create(world, t, job_pb2.JOB_KIND_TENANT_EXPORT)
    finally:
        await asyncio.to_thread(stack.start_redis)
    await asyncio.sleep(1)
    assert (await jobs(world).GetJob(ssp.GetJobRequest(id=job.id), metadata=t.owner.metadata)).job.state == \
        job_pb2.JOB_STATE_PENDING
    # The next tick signals it again; the worker, reconnected, runs it.
    assert await signal_due_jobs(stack) >= 1
    done = await finished(world, t, job.id, within=60)
    assert (done.state, done.attempts) == (job_pb2.JOB_STATE_SUCCEEDED, 1)
    # And new jobs flow as before.
    assert (await finished(world, t, (await create(world, t, job_pb2.JOB_KIND_TENANT_EXPORT)).id)).state == \
        job_pb2.JOB_STATE_SUCCEEDED


# --------------------------------------------------------------------------- the runner, in process


async def insert_job(tenant_id: str, kind: str = "tenant_export", *, max_attempts: int = 3,
                     timeout_seconds: int = 60) -> uuid.UUID:
    job_id = uuid7()
    async with db.unit_of_work(tenant_id=uuid.UUID(tenant_id), platform=False) as session:
        session.add(JobRow(tenant_id=uuid.UUID(tenant_id), id=job_id, kind=kind, params={}, state="pending",
                           attempts=0, max_attempts=max_attempts, timeout_seconds=timeout_seconds,
                           progress_percent=0, error="", summary={}, creator_id="test", version=1))
    return job_id


async def job_row(tenant_id: str, job_id: uuid.UUID) -> JobRow:
    async with db.unit_of_work(tenant_id=uuid.UUID(tenant_id), platform=False) as session:
        row = await session.scalar(select(JobRow).where(JobRow.id == job_id))
    assert row is not None
    return row


async def make_due(tenant_id: str, job_id: uuid.UUID) -> None:
    async with db.unit_of_work(tenant_id=uuid.UUID(tenant_id), platform=False) as session:
        await session.execute(text("UPDATE jobs SET next_attempt_time = now() WHERE id = :id"), {"id": job_id})


def settings_for(stack: Any, **overrides: Any) -> Settings:
    """This process's settings for running jobs as the worker does (the stack's plan limits)."""
    return Settings(database_url=SecretStr(stack.app_url), job_retry_base_seconds=0.5,
                    plan_max_users={"free": 100_000, "standard": 3}, **overrides)


async def test_a_failing_job_backs_off_then_succeeds_or_ends_as_a_dead_letter(
        world: World, stack: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    failures = {"left": 2}
    real = kinds.KINDS["tenant_export"]

    async def flaky(ctx: kinds.Context, session: Any) -> kinds.Output:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise ConnectionError("the export target went away")
        return await real.run(ctx, session)

    monkeypatch.setitem(kinds.KINDS, "tenant_export", kinds.Kind("tenant_export", {}, flaky))
    settings = settings_for(stack)
    retries: list[float] = []
    job_id = await insert_job(world.a.id)
    assert (await runner.run(settings, uuid.UUID(world.a.id), job_id, lambda t, j, d: retries.append(d))).state == \
        "pending"
    # Not due yet: a second signal (say, from the dispatcher) claims nothing.
    assert (await runner.run(settings, uuid.UUID(world.a.id), job_id)).state == "skipped"
    await make_due(world.a.id, job_id)
    assert (await runner.run(settings, uuid.UUID(world.a.id), job_id, lambda t, j, d: retries.append(d))).state == \
        "pending"
    assert retries == [0.5, 1.0]  # exponential backoff
    row = await job_row(world.a.id, job_id)
    assert (row.state, row.attempts, row.error) == ("pending", 2, "ConnectionError: the export target went away")
    await make_due(world.a.id, job_id)
    assert (await runner.run(settings, uuid.UUID(world.a.id), job_id)).state == "succeeded"
    assert (await job_row(world.a.id, job_id)).attempts == 3

    failures["left"] = 10
    doomed = await insert_job(world.a.id, max_attempts=2)
    assert (await runner.run(settings, uuid.UUID(world.a.id), doomed)).state == "pending"
    await make_due(world.a.id, doomed)
    assert (await runner.run(settings, uuid.UUID(world.a.id), doomed)).state == "dead_letter"
    row = await job_row(world.a.id, doomed)
    assert (row.state, row.attempts, row.end_time is not None) == ("dead_letter", 2, True)


async def test_a_job_over_its_time_limit_is_retried(world: World, stack: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    async def slow(ctx: kinds.Context, session: Any) -> kinds.Output:
        await asyncio.sleep(5)
        raise AssertionError("not reached")

    monkeypatch.setitem(kinds.KINDS, "tenant_export", kinds.Kind("tenant_export", {}, slow))
    job_id = await insert_job(world.a.id, timeout_seconds=1, max_attempts=1)
    started = time.monotonic()
    assert (await runner.run(settings_for(stack), uuid.UUID(world.a.id), job_id)).state == "dead_letter"
    assert time.monotonic() - started < 4
    assert (await job_row(world.a.id, job_id)).error == "timed out after 1s"


async def test_a_lost_worker_s_job_is_taken_back_and_run_once(world: World, stack: Any) -> None:
    job_id = await insert_job(world.a.id, timeout_seconds=60)
    tenant = uuid.UUID(world.a.id)
    # A worker claims it and dies: the row says running, with a lease that then runs out.
    async with db.unit_of_work(tenant_id=tenant, platform=False) as session:
        await session.execute(text("UPDATE jobs SET state = 'running', attempts = 1, "
                                   "lease_until = now() - interval '1 second' WHERE id = :id"), {"id": job_id})
    signalled: list[uuid.UUID] = []
    assert await runner.dispatch(lambda t, j, d: signalled.append(j), lag_seconds=3600) >= 1
    assert job_id in signalled
    row = await job_row(world.a.id, job_id)
    assert (row.state, row.lease_until) == ("pending", None) and "lease expired" in row.error
    # Two signals at once (the dispatcher's and a late original): one run.
    outcomes = await asyncio.gather(runner.run(settings_for(stack), tenant, job_id),
                                    runner.run(settings_for(stack), tenant, job_id))
    assert sorted(o.state for o in outcomes) == ["skipped", "succeeded"]
    assert (await job_row(world.a.id, job_id)).attempts == 2


async def test_an_input_survives_a_lost_worker_until_its_last_attempt(world: World) -> None:
    tenant = uuid.UUID(world.a.id)
    lost = [uuid7(), uuid7()]  # attempt 1 of 2, and the last attempt
    async with db.unit_of_work(tenant_id=tenant, platform=False) as session:
        for job_id, attempts in zip(lost, (1, 2), strict=True):
            session.add(JobRow(tenant_id=tenant, id=job_id, kind="user_import", state="running", attempts=attempts,
                               params={"csv": "[csv, 9 bytes]"}, input=b'{"csv": "x"}', input_sealed=False,
                               max_attempts=2, timeout_seconds=60, progress_percent=0, error="", summary={},
                               creator_id="t", version=1))
        await session.execute(text("UPDATE jobs SET lease_until = now() - interval '1 second' WHERE id = ANY(:ids)"),
                              {"ids": lost})
    await runner.dispatch(lambda t, j, d: None, lag_seconds=3600)
    retried, dead = await job_row(world.a.id, lost[0]), await job_row(world.a.id, lost[1])
    assert (retried.state, retried.input) == ("pending", b'{"csv": "x"}')  # the retry needs it
    assert (dead.state, dead.input) == ("dead_letter", None)
    async with db.unit_of_work(tenant_id=tenant, platform=False) as session:  # not left for the worker
        await session.execute(text("UPDATE jobs SET state = 'cancelled', input = NULL WHERE id = :id"), {"id": lost[0]})


async def test_a_job_cancelled_while_running_commits_nothing(world: World, stack: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    gate = asyncio.Event()
    real = kinds.KINDS["user_import"]

    async def held(ctx: kinds.Context, session: Any) -> kinds.Output:
        output = await real.run(ctx, session)  # the users are added in this transaction ...
        await gate.wait()  # ... and the job is cancelled before it commits
        return output

    monkeypatch.setitem(kinds.KINDS, "user_import", kinds.Kind("user_import", {"csv": True}, held))
    tenant = uuid.UUID(world.a.id)
    job_id = uuid7()
    async with db.unit_of_work(tenant_id=tenant, platform=False) as session:
        session.add(JobRow(tenant_id=tenant, id=job_id, kind="user_import", state="pending", attempts=0,
                           params={"csv": csv_of(("late@alpha.example.com", "l" * 12))}, max_attempts=3,
                           timeout_seconds=60, progress_percent=0, error="", summary={}, creator_id="t", version=1))
    run = asyncio.create_task(runner.run(settings_for(stack), tenant, job_id))
    await asyncio.sleep(0.5)
    assert (await job_row(world.a.id, job_id)).state == "running", (await job_row(world.a.id, job_id)).error
    await jobs(world).CancelJob(ssp.CancelJobRequest(id=str(job_id)), metadata=world.a.owner.metadata)
    gate.set()
    outcome = await run
    assert outcome.state == "superseded", (await job_row(world.a.id, job_id)).error
    users = await usg.UserServiceStub(world.channels["user"]).ListUsers(usp.ListUsersRequest(),
                                                                        metadata=world.a.owner.metadata)
    assert "late@alpha.example.com" not in {u.email for u in users.users}
    assert (await job_row(world.a.id, job_id)).state == "cancelled"


async def test_the_worker_exports_job_metrics(world: World, stack: Any) -> None:
    t = await make_tenant(world.channels, world.admin, "jobmet")
    await finished(world, t, (await create(world, t, job_pb2.JOB_KIND_TENANT_EXPORT)).id)
    async with httpx.AsyncClient(timeout=5) as http:
        body = (await http.get(stack.worker_metrics_url)).text
    line = next(x for x in body.splitlines() if x.startswith('sentinel_jobs_total{kind="tenant_export",outcome='
                                                               '"succeeded"}'))
    assert float(line.split()[-1]) >= 1
    assert 'sentinel_job_duration_seconds_bucket{kind="tenant_export"' in body
