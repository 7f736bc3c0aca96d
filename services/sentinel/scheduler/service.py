"""SchedulerService: a tenant's on-demand jobs, and the platform's periodic jobs.

A job is a row in Postgres (RLS: a tenant sees, cancels and downloads only its own) created in
the call's transaction; the huey signal that runs it is sent once that transaction has
committed (``db.after_commit``). If Redis is down then, the job waits for the dispatcher.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from typing import Any

import grpc
from google.api import httpbody_pb2
from google.protobuf import json_format, struct_pb2
from sqlalchemy import func, select, update

from sentinel.platform import datakeys, db
from sentinel.platform.calls import require_call
from sentinel.platform.convert import EnumText, timestamp
from sentinel.platform.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from sentinel.platform.ids import parse_uuid, uuid7
from sentinel.platform.limits import enforce_plan_limit
from sentinel.platform.pagination import check_etag, etag, page_size
from sentinel.platform.server import Runtime, ServiceSpec
from sentinel.scheduler import periodic, queue
from sentinel.scheduler.kinds import KINDS, split_input, validate
from sentinel.scheduler.models import JobResultRow, JobRow
from sentinel.scheduler.v1 import job_pb2, scheduler_service_pb2, scheduler_service_pb2_grpc

pb = scheduler_service_pb2
Context = grpc.aio.ServicerContext[Any, Any]
KIND = EnumText(job_pb2.JobKind, "JOB_KIND_")
STATE = EnumText(job_pb2.JobState, "JOB_STATE_")
MAX_ATTEMPTS = 10
DEFAULT_ATTEMPTS = 3
FINAL = ("succeeded", "failed", "cancelled", "dead_letter")
ACTIVE = ("pending", "running")


def to_proto(row: JobRow) -> job_pb2.Job:
    params = struct_pb2.Struct()
    params.update(row.params or {})  # confidential parameters are stored described (kinds.split_input)
    return job_pb2.Job(
        id=str(row.id), tenant_id=str(row.tenant_id), kind=KIND.value(row.kind), params=params,
        state=STATE.value(row.state), attempts=row.attempts, max_attempts=row.max_attempts,
        progress_percent=row.progress_percent,
        result_uri=f"/api/v1/jobs/{row.id}/result" if row.state == "succeeded" else "",
        error=row.error, create_time=timestamp(row.create_time), start_time=timestamp(row.start_time),
        end_time=timestamp(row.end_time), creator_id=row.creator_id, etag=etag(row.id, row.version))


def not_found(job_id: uuid.UUID) -> NotFound:
    return NotFound(f"job {job_id} not found", reason="JOB_NOT_FOUND")


class SchedulerApi(scheduler_service_pb2_grpc.SchedulerServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.settings = runtime.settings
        self.page_tokens = runtime.page_tokens

    async def CreateJob(self, request: pb.CreateJobRequest, context: Context) -> pb.CreateJobResponse:
        call = require_call()
        assert call.tenant_id is not None and call.principal is not None
        kind = KINDS[KIND.text(request.kind, "kind")]
        params = validate(kind, json_format.MessageToDict(request.params))
        attempts = request.max_attempts or DEFAULT_ATTEMPTS
        if not 1 <= attempts <= MAX_ATTEMPTS:
            raise InvalidArgument(f"max_attempts must be between 1 and {MAX_ATTEMPTS}",
                                  [FieldViolation("max_attempts", "out of range")])
        tenant_id, job_id = call.tenant_id, uuid7()
        shown, secret = split_input(kind, params)
        sealed_input, sealed = None, False
        if secret:
            sealed_input, sealed = await datakeys.seal_record(self.settings, tenant_id, "job-input", job_id,
                                                              json.dumps(secret).encode())
        async with db.unit_of_work() as session:
            await enforce_plan_limit(
                session, self.settings.plan_max_active_jobs, resource="active jobs", reason="PLAN_ACTIVE_JOBS",
                count=select(func.count()).select_from(JobRow).where(JobRow.state.in_(ACTIVE)),
                remedy="wait for one to finish, or cancel one", record_thresholds=False)
            row = JobRow(tenant_id=tenant_id, id=job_id, kind=kind.name, params=shown, input=sealed_input,
                         input_sealed=sealed, max_attempts=attempts,
                         timeout_seconds=self.settings.job_timeout_seconds, creator_id=call.principal.subject,
                         state="pending", attempts=0, progress_percent=0, error="", summary={}, version=1)
            session.add(row)
            await session.flush()
            await session.refresh(row)
            db.after_commit(lambda: queue.enqueue_soon(self.settings, tenant_id, job_id))
        return pb.CreateJobResponse(job=to_proto(row))

    async def GetJob(self, request: pb.GetJobRequest, context: Context) -> pb.GetJobResponse:
        job_id = parse_uuid(request.id, "id")
        async with db.unit_of_work() as session:
            row = await session.scalar(select(JobRow).where(JobRow.id == job_id))
        if row is None:
            raise not_found(job_id)
        return pb.GetJobResponse(job=to_proto(row))

    async def ListJobs(self, request: pb.ListJobsRequest, context: Context) -> pb.ListJobsResponse:
        call = require_call()
        size = page_size(request.page_size)
        kind = KIND.text(request.kind, "kind", default="")
        state = STATE.text(request.state, "state", default="")
        scope = f"ListJobs|{kind}|{state}"
        cursor = self.page_tokens.cursor_for(request.page_token, tenant=call.tenant_id, scope=scope)
        query = select(JobRow)
        if kind:
            query = query.where(JobRow.kind == kind)
        if state:
            query = query.where(JobRow.state == state)
        async with db.unit_of_work() as session:
            rows, token = await self.page_tokens.fetch_page(session, query, JobRow, size=size, cursor=cursor,
                                                            tenant=call.tenant_id, scope=scope)
        return pb.ListJobsResponse(jobs=[to_proto(r) for r in rows], next_page_token=token)

    async def CancelJob(self, request: pb.CancelJobRequest, context: Context) -> pb.CancelJobResponse:
        job_id = parse_uuid(request.id, "id")
        async with db.unit_of_work() as session:
            row = await session.scalar(select(JobRow).where(JobRow.id == job_id).with_for_update())
            if row is None:
                raise not_found(job_id)
            check_etag(request.etag, row.id, row.version, "job")
            if row.state == "cancelled":
                return pb.CancelJobResponse(job=to_proto(row))  # already: nothing changes
            if row.state in FINAL:
                raise FailedPrecondition(f"the job has already {row.state.replace('_', ' ')}; it cannot be cancelled",
                                         reason="JOB_FINISHED")
            # A running job's worker commits nothing once the row is no longer running (runner).
            await session.execute(update(JobRow).where(JobRow.tenant_id == row.tenant_id, JobRow.id == job_id).values(
                state="cancelled", end_time=dt.datetime.now(dt.UTC), lease_until=None, input=None,
                update_time=dt.datetime.now(dt.UTC), version=JobRow.version + 1))
            await session.refresh(row)
        return pb.CancelJobResponse(job=to_proto(row))

    async def GetJobResult(self, request: pb.GetJobResultRequest, context: Context) -> httpbody_pb2.HttpBody:
        job_id = parse_uuid(request.id, "id")
        async with db.unit_of_work() as session:
            row = await session.scalar(select(JobRow).where(JobRow.id == job_id))
            if row is None:
                raise not_found(job_id)
            if row.state != "succeeded":
                raise FailedPrecondition(f"the job is {row.state.replace('_', ' ')}; a result exists once it "
                                         "has succeeded", reason="JOB_NOT_SUCCEEDED")
            result = await session.scalar(select(JobResultRow).where(JobResultRow.job_id == job_id))
        if result is None:
            raise not_found(job_id)
        try:
            data = await datakeys.open_record(self.settings, result.tenant_id, "job-result", job_id, result.content,
                                              result.sealed)
        except datakeys.DataKeyError as e:
            # The key is gone (the tenant was purged) or the scheduler lacks the key directory.
            raise FailedPrecondition(f"the result cannot be decrypted: {e}", reason="DATA_KEY_UNAVAILABLE") from None
        return httpbody_pb2.HttpBody(content_type=result.content_type, data=data)

    async def ListPeriodicJobs(self, request: pb.ListPeriodicJobsRequest,
                               context: Context) -> pb.ListPeriodicJobsResponse:
        page_size(request.page_size)  # validates; the list is short and fixed
        last = await periodic.last_runs()
        now = dt.datetime.now(dt.UTC)
        out = []
        for job in periodic.JOBS_BY_NAME.values():
            cron = periodic.schedule_of(self.settings, job)
            run = last.get(job.name)
            next_time = periodic.next_run(cron, now) if cron else None
            out.append(job_pb2.PeriodicJob(
                name=job.name, schedule=cron or "off",
                last_run_time=timestamp(run.start_time) if run else None,
                last_state=STATE.value(run.state) if run else job_pb2.JOB_STATE_UNSPECIFIED,
                next_run_time=timestamp(next_time)))
        return pb.ListPeriodicJobsResponse(jobs=out)

    async def RunPeriodicJob(self, request: pb.RunPeriodicJobRequest,
                             context: Context) -> pb.RunPeriodicJobResponse:
        if request.name not in periodic.JOBS_BY_NAME:
            raise NotFound(f"no periodic job '{request.name}' (known: {', '.join(periodic.JOBS_BY_NAME)})",
                           reason="PERIODIC_JOB_NOT_FOUND")
        run_id = await periodic.start_manual(request.name)
        await asyncio.to_thread(queue.enqueue_periodic, request.name, run_id)
        return pb.RunPeriodicJobResponse(job_run_id=str(run_id))


def spec() -> ServiceSpec:
    def register(server: grpc.aio.Server, runtime: Runtime) -> None:
        periodic.validate_schedules(runtime.settings)
        queue.huey_for(runtime.settings)
        scheduler_service_pb2_grpc.add_SchedulerServiceServicer_to_server(SchedulerApi(runtime), server)

    return ServiceSpec(
        name="scheduler",
        implements=[scheduler_service_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name],
        register=register,
    )
