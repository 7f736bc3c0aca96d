"""Running one on-demand job: claim, run with a time limit, then succeed, retry or give up.

Postgres decides, Redis only signals. A claim is one guarded UPDATE (``pending`` and due →
``running`` with a lease), so a job signalled twice, or by the dispatcher too, still runs once
at a time. The kind's work, its result and the SUCCEEDED state commit in one transaction that
checks the claim still holds (same attempt, still running): a job cancelled meanwhile, or
taken back from a worker that seemed dead, commits nothing. A failure is retried after an
exponential backoff until ``max_attempts``, then DEAD_LETTER; a bad input fails at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import Counter, Histogram
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert

from sentinel.platform import auditlog, datakeys, db, usage
from sentinel.platform.config import Settings
from sentinel.platform.errors import SentinelError
from sentinel.scheduler.kinds import KINDS, Context, JobFailed
from sentinel.scheduler.models import JobResultRow

log = logging.getLogger("sentinel.jobs")

JOBS = Counter("sentinel_jobs_total", "Job runs by kind and outcome (periodic jobs by their name)",
               ["kind", "outcome"])
DURATION = Histogram("sentinel_job_duration_seconds", "Job run time by kind", ["kind"],
                     buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600))
#: How long past its time limit a running job's lease lasts before the dispatcher takes it back.
LEASE_GRACE_SECONDS = 5
ACTOR = "sentinel scheduler"

_CLAIM = text("""
    UPDATE jobs SET state = 'running', attempts = attempts + 1, start_time = coalesce(start_time, now()),
           lease_until = now() + make_interval(secs => timeout_seconds + :grace), update_time = now(),
           version = version + 1, error = ''
    WHERE tenant_id = :tenant AND id = :id AND state = 'pending' AND next_attempt_time <= now()
    RETURNING kind, params, input, input_sealed, attempts, max_attempts, timeout_seconds""")
# Every transition that ends a job clears its input (a CHECK of the table insists).
_SUCCEED = text("""
    UPDATE jobs SET state = 'succeeded', progress_percent = 100, end_time = now(), lease_until = NULL, input = NULL,
           summary = CAST(:summary AS jsonb), update_time = now(), version = version + 1
    WHERE tenant_id = :tenant AND id = :id AND state = 'running' AND attempts = :attempt""")
_RETRY = text("""
    UPDATE jobs SET state = 'pending', lease_until = NULL, error = :error, update_time = now(),
           next_attempt_time = now() + make_interval(secs => :delay), version = version + 1
    WHERE tenant_id = :tenant AND id = :id AND state = 'running' AND attempts = :attempt""")
_GIVE_UP = text("""
    UPDATE jobs SET state = :state, lease_until = NULL, input = NULL, error = :error, end_time = now(),
           update_time = now(), version = version + 1
    WHERE tenant_id = :tenant AND id = :id AND state = 'running' AND attempts = :attempt""")


#: Errors no retry can cure: the job fails at once (its input or the tenant's plan is the problem).
PERMANENT = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                       grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ALREADY_EXISTS,
                       grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED})


class Superseded(Exception):
    """The claim no longer holds (cancelled, or taken back after the lease ran out)."""


@dataclass(frozen=True)
class Outcome:
    state: str  # succeeded | pending (retry) | failed | dead_letter | skipped | superseded
    retry_in: float = 0.0


def backoff(settings: Settings, attempt: int) -> float:
    return float(settings.job_retry_base_seconds * 2 ** (attempt - 1))


def _event(tenant_id: uuid.UUID, job_id: uuid.UUID, kind: str, attempt: int, outcome: str,
           **diff: Any) -> Any:
    return auditlog.system_event(tenant_id, "job.run", actor=ACTOR, target=("job", str(job_id)),
                                 outcome="SUCCESS" if outcome == "succeeded" else "FAILURE",
                                 diff={"kind": kind, "attempt": attempt, "state": outcome, **diff})


async def run(settings: Settings, tenant_id: uuid.UUID, job_id: uuid.UUID,
              enqueue_retry: Callable[[uuid.UUID, uuid.UUID, float], None] | None = None) -> Outcome:
    async with db.unit_of_work(tenant_id=tenant_id, platform=False) as session:
        claimed = (await session.execute(_CLAIM, {"tenant": tenant_id, "id": job_id,
                                                  "grace": LEASE_GRACE_SECONDS})).first()
    if claimed is None:  # taken, cancelled, finished, not due yet, or not committed yet
        return Outcome("skipped")
    kind, attempt = str(claimed.kind), int(claimed.attempts)
    where = {"tenant": tenant_id, "id": job_id, "attempt": attempt}
    started = time.perf_counter()
    with db.transaction_time() as spent:  # the job's load on Postgres, for the tenant's usage
        outcome = await _attempt(settings, tenant_id, job_id, claimed, where, enqueue_retry)
    elapsed = time.perf_counter() - started
    JOBS.labels(kind, outcome.state).inc()
    DURATION.labels(kind).observe(elapsed)
    if usage.recorder is not None:  # the worker's: the run counts as the tenant's work, not as a call
        usage.recorder.record_work(tenant_id, elapsed, spent.seconds)
    log.info("job run", extra={"job_id": str(job_id), "kind": kind, "attempt": attempt, "state": outcome.state})
    return outcome


async def _attempt(settings: Settings, tenant_id: uuid.UUID, job_id: uuid.UUID, claimed: Any, where: dict[str, Any],
                   enqueue_retry: Callable[[uuid.UUID, uuid.UUID, float], None] | None) -> Outcome:
    """One run of a claimed job: its work, result and success in one transaction, or its failure."""
    kind, attempt = str(claimed.kind), int(claimed.attempts)
    try:
        params = {**(claimed.params or {}), **await _input(settings, tenant_id, job_id, claimed)}
        ctx = Context(tenant_id, job_id, params, settings, attempt)
        async with asyncio.timeout(claimed.timeout_seconds):
            async with db.unit_of_work(tenant_id=tenant_id, platform=False) as session:
                output = await KINDS[kind].run(ctx, session)
                content, sealed = await datakeys.seal_record(settings, tenant_id, "job-result", job_id, output.content)
                result = insert(JobResultRow).values(tenant_id=tenant_id, job_id=job_id, sealed=sealed,
                                                     content_type=output.content_type, content=content)
                await session.execute(result.on_conflict_do_update(
                    index_elements=["tenant_id", "job_id"],
                    set_={"content": result.excluded.content, "content_type": result.excluded.content_type,
                          "sealed": result.excluded.sealed}))
                done = await session.execute(_SUCCEED, {**where, "summary": json.dumps(output.summary)})
                if not done.rowcount:  # type: ignore[attr-defined]
                    raise Superseded()
                # The digest in the tenant's signed chain attests the result: a downloaded export
                # whose sha256 matches it is the one the platform produced (docs/offboarding.md).
                await auditlog.write(session, [_event(tenant_id, job_id, kind, attempt, "succeeded",
                                                      **output.summary, result_bytes=len(output.content),
                                                      result_sha256=hashlib.sha256(output.content).hexdigest())])
        outcome = Outcome("succeeded")
    except Superseded:
        outcome = Outcome("superseded")
    except JobFailed as e:
        outcome = await _finish(tenant_id, job_id, kind, attempt, where, "failed", str(e))
    except Exception as e:
        if isinstance(e, SentinelError) and e.code in PERMANENT:  # e.g. a plan limit: no retry helps
            outcome = await _finish(tenant_id, job_id, kind, attempt, where, "failed", f"{e.code.name}: {e.message}")
        else:  # transient (or a timeout): retry with backoff, then give up
            outcome = await _retry_or_give_up(settings, tenant_id, job_id, kind, attempt, claimed, where, e,
                                              enqueue_retry)
    return outcome


async def _input(settings: Settings, tenant_id: uuid.UUID, job_id: uuid.UUID, claimed: Any) -> dict[str, Any]:
    """The job's confidential parameters, opened (a key destroyed or a blob moved: the job fails)."""
    if claimed.input is None:
        return {}
    try:
        data = await datakeys.open_record(settings, tenant_id, "job-input", job_id, claimed.input,
                                          claimed.input_sealed)
    except datakeys.DataKeyError as e:
        raise JobFailed(f"the job's input cannot be opened: {e}") from None
    value: dict[str, Any] = json.loads(data)
    return value


async def _retry_or_give_up(settings: Settings, tenant_id: uuid.UUID, job_id: uuid.UUID, kind: str, attempt: int,
                            claimed: Any, where: dict[str, Any], e: Exception,
                            enqueue_retry: Callable[[uuid.UUID, uuid.UUID, float], None] | None) -> Outcome:
    error = f"timed out after {claimed.timeout_seconds}s" if isinstance(e, TimeoutError) else (
        f"{type(e).__name__}: {str(e)[:500]}")
    log.warning("job attempt failed", extra={"job_id": str(job_id), "kind": kind, "attempt": attempt, "error": error})
    if attempt >= claimed.max_attempts:
        return await _finish(tenant_id, job_id, kind, attempt, where, "dead_letter", error)
    delay = backoff(settings, attempt)
    async with db.unit_of_work(tenant_id=tenant_id, platform=False) as session:
        await session.execute(_RETRY, {**where, "error": error, "delay": delay})
        await auditlog.write(session, [_event(tenant_id, job_id, kind, attempt, "retrying", error=error,
                                              retry_in_seconds=delay)])
    if enqueue_retry is not None:
        enqueue_retry(tenant_id, job_id, delay)
    return Outcome("pending", delay)


async def _finish(tenant_id: uuid.UUID, job_id: uuid.UUID, kind: str, attempt: int, where: dict[str, Any],
                  state: str, error: str) -> Outcome:
    async with db.unit_of_work(tenant_id=tenant_id, platform=False) as session:
        await session.execute(_GIVE_UP, {**where, "state": state, "error": error[:2000]})
        await auditlog.write(session, [_event(tenant_id, job_id, kind, attempt, state, error=error[:500])])
    return Outcome(state)


_DUE = text("""
    SELECT tenant_id, id FROM jobs WHERE state = 'pending' AND next_attempt_time <= now() - make_interval(secs => :lag)
    ORDER BY next_attempt_time LIMIT :limit""")
_LEASE_EXPIRED = text("""
    UPDATE jobs SET state = CASE WHEN attempts >= max_attempts THEN 'dead_letter' ELSE 'pending' END,
           end_time = CASE WHEN attempts >= max_attempts THEN now() END,
           input = CASE WHEN attempts >= max_attempts THEN NULL ELSE input END,
           error = 'the worker running it stopped before finishing (lease expired)', lease_until = NULL,
           next_attempt_time = now(), update_time = now(), version = version + 1
    WHERE state = 'running' AND lease_until < now()
    RETURNING tenant_id, id, state, kind, attempts""")


async def dispatch(enqueue: Callable[[uuid.UUID, uuid.UUID, float], None], *, lag_seconds: float = 10.0,
                   limit: int = 1000) -> int:
    """Signal every due job again and take back jobs whose worker died: what makes a lost Redis
    message or a killed consumer cost a delay, never a job. Returns the number signalled."""
    from sentinel.platform.auth import PLATFORM_TENANT_ID

    async with db.unit_of_work(tenant_id=PLATFORM_TENANT_ID, platform=True) as session:
        expired = (await session.execute(_LEASE_EXPIRED)).all()
        due = (await session.execute(_DUE, {"lag": lag_seconds, "limit": limit})).all()
    for row in expired:
        log.warning("job taken back from a lost worker", extra={"job_id": str(row.id), "state": row.state})
        async with db.unit_of_work(tenant_id=row.tenant_id, platform=False) as session:
            await auditlog.write(session, [_event(row.tenant_id, row.id, row.kind, row.attempts, row.state,
                                                  error="the worker running it stopped (lease expired)")])
        if row.state == "dead_letter":
            JOBS.labels(row.kind, "dead_letter").inc()
    signalled = {(r.tenant_id, r.id) for r in due} | {(r.tenant_id, r.id) for r in expired if r.state == "pending"}
    for tenant_id, job_id in signalled:
        enqueue(tenant_id, job_id, 0.0)
    return len(signalled)
