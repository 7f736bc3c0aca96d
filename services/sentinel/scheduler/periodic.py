"""The periodic jobs, defined here once: name, default schedule, what they do.

Schedules are cron strings (minute hour day month weekday, UTC), overridable per deployment
with ``SENTINEL_PERIODIC_SCHEDULES`` (JSON: name → cron, or "off"). Every consumer ticks each
minute and calls :func:`run_due` with the time; a job whose schedule matches claims that
minute's slot by inserting its ``periodic_runs`` row (unique per name and slot), so it runs
once however many consumers tick. The time is passed down to the jobs (the SLO queries ask
Prometheus about that instant, the purge compares grace periods with it), so tests drive
:func:`run_due` with any clock they like.

Every run is recorded (``periodic_runs``, listed by ListPeriodicJobs), counted
(``sentinel_jobs_total{kind=<name>}``) and audited in the platform's trail (``job.periodic``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from huey import crontab
from prometheus_client import Gauge
from sqlalchemy import select, text

from sentinel.platform import auditlog, db
from sentinel.platform.auth import PLATFORM_TENANT_ID
from sentinel.platform.config import Settings
from sentinel.platform.ids import uuid7
from sentinel.scheduler.models import PeriodicRunRow
from sentinel.scheduler.runner import DURATION, JOBS

log = logging.getLogger("sentinel.periodic")
ACTOR = "sentinel scheduler"
AUDIT_CHAIN_BROKEN = Gauge("sentinel_audit_chain_broken",
                           "Tenant audit chains that failed their last verification (audit_verify)")
COMPONENT_UP = Gauge("sentinel_component_up", "1 when the last health check reached the component",
                     ["component"])

Run = Callable[[Settings, dt.datetime], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class PeriodicJob:
    name: str
    schedule: str
    run: Run
    description: str


# --------------------------------------------------------------------------- the jobs


async def health_check(settings: Settings, now: dt.datetime) -> dict[str, Any]:
    """Every service (gRPC health), Postgres and Redis; a notification when any changes state."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from sentinel.platform import kv
    from sentinel.platform.server import PEERS

    status: dict[str, str] = {}
    for name in PEERS:
        try:
            async with grpc.aio.insecure_channel(settings.peer(name)) as channel:
                reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            status[f"service:{name}"] = "up" if reply.status == health_pb2.HealthCheckResponse.SERVING else \
                f"down: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
        except grpc.aio.AioRpcError as e:
            status[f"service:{name}"] = f"down: {e.code().name}"
    try:
        async with db.unit_of_work(tenant_id=None, platform=False) as session:
            await session.execute(text("SELECT 1"))
        status["database"] = "up"
    except Exception as e:
        status["database"] = f"down: {type(e).__name__}"
    redis = kv.client(settings)
    try:
        status["redis"] = "up" if redis is not None and await redis.ping() else "down: not configured"
    except Exception as e:
        status["redis"] = f"down: {type(e).__name__}"
    for component, state in status.items():
        COMPONENT_UP.labels(component).set(1 if state == "up" else 0)
    previous = await _last_result("health_check")
    before = previous.get("components", {}) if previous else {}
    changed = sorted(c for c, s in status.items() if before and (before.get(c) == "up") != (s == "up"))
    if changed:
        from sentinel.scheduler.notify import Message, from_settings

        down = [c for c in changed if status[c] != "up"]
        await from_settings(settings).notify(Message(
            subject=f"Sentinel health: {', '.join(changed)} {'down' if down else 'recovered'}",
            text="\n".join(f"{c}: {before.get(c, 'unknown')} → {status[c]}" for c in changed),
            fields=tuple(sorted(status.items())), severity="critical" if down else "ok"))
    return {"components": status, "changed": changed}


async def slo_report(settings: Settings, now: dt.datetime) -> dict[str, Any]:
    """The daily SLO report (Prometheus recording rules) to Slack and/or e-mail."""
    from sentinel.scheduler import slo
    from sentinel.scheduler.notify import from_settings

    snapshot = await slo.fetch(settings.prometheus_url, at=now)
    deliveries = await from_settings(settings).notify(slo.report(snapshot))
    return {"delivered": [d.channel for d in deliveries if d.ok], "failed": [d.channel for d in deliveries if not d.ok],
            "policy": snapshot.overall.policy}


async def burn_rate_watch(settings: Settings, now: dt.datetime) -> dict[str, Any]:
    """Notifications when the budget burns fast: the generated multiwindow page pairs (14.4x over
    1 h and 5 m, 6x over 6 h and 30 m), and the original system's 2 h > 30x rule."""
    from sentinel.scheduler import slo
    from sentinel.scheduler.notify import from_settings

    alerts = slo.burn_alerts(await slo.fetch(settings.prometheus_url, at=now))
    paging = slo.multiwindow_alerts(await slo.fetch_windows(settings.prometheus_url, at=now))
    notifier = from_settings(settings)
    result: dict[str, Any] = {"alerts": [a.service for a in alerts],
                              "multiwindow": [f"{a.service} {a.pair}" for a in paging]}
    if paging:
        lines = await _busiest_tenants(settings, result)
        await notifier.notify(slo.window_message(paging, lines))
    if alerts:
        await notifier.notify(slo.burn_message(alerts, slo.BURN_THRESHOLD))
    return result


async def _busiest_tenants(settings: Settings, result: dict[str, Any]) -> list[str]:
    """Who is using the capacity while the budget burns (tenant SLO usage, last hour): the page
    says whether one tenant's load explains it. Never holds the page back."""
    from sentinel.scheduler import slo
    from sentinel.tenant import servicelevel

    try:
        ranking = await servicelevel.busiest_tenants(minutes=60, limit=3, noisy_share=settings.noisy_neighbour_share)
    except Exception as e:
        log.warning("tenant attribution for the burn page failed", exc_info=True)
        return [f"Tenant attribution unavailable: {type(e).__name__}"]
    result["busiest_tenants"] = [t.slug for t in ranking.tenants]
    result["noisy_tenants"] = [t.slug for t in ranking.tenants if t.noisy]
    return slo.tenant_lines(ranking)


async def audit_retention(settings: Settings, now: dt.datetime) -> dict[str, Any]:
    from sentinel.audit import retention

    report = await retention.apply(actor=f"{ACTOR} audit_retention")
    return {"deleted": report.deleted, "tenants": len(report.cut_through)}


async def tenant_purge(settings: Settings, now: dt.datetime) -> dict[str, Any]:
    from sentinel.tenant import purge

    report = await purge.purge_due(settings, now=now)
    return {"purged": [str(t) for t in report.tenants], "rows": report.rows}


async def audit_verify(settings: Settings, now: dt.datetime) -> dict[str, Any]:
    """Verify every tenant's chain against its signed checkpoints; a broken one is counted
    (``sentinel_audit_chain_broken``, alerted on), notified, and recorded in that tenant's trail."""
    from sentinel.audit import checkpoints, store
    from sentinel.scheduler.notify import Message, from_settings

    key = checkpoints.load_public_key(settings.audit_public_key_file) if settings.audit_public_key_file else None
    async with db.unit_of_work(tenant_id=PLATFORM_TENANT_ID, platform=True) as session:
        tenants = list(await session.scalars(text("SELECT id FROM tenants ORDER BY id")))
    broken: list[dict[str, Any]] = []
    checked = 0
    for tenant_id in tenants:
        cps = await checkpoints.list_for(tenant_id)
        forged = [cp for cp in cps if key is not None and not checkpoints.authentic(cp, key)]
        verdict = await store.verify_tenant(tenant_id, checkpoints=checkpoints.trusted_heads(cps, key))
        checked += verdict.checked
        if forged or not verdict.ok:
            problem = {"tenant_id": str(tenant_id),
                       "sequence": int(forged[0]["sequence"]) if forged else verdict.broken_sequence,
                       "problem": "a checkpoint is not signed by the audit key" if forged else verdict.problem}
            broken.append(problem)
            async with db.unit_of_work(tenant_id=tenant_id, platform=False) as session:
                await auditlog.write(session, [auditlog.system_event(
                    tenant_id, "audit.verify", actor=f"{ACTOR} audit_verify", target=("tenant", str(tenant_id)),
                    outcome="FAILURE", diff={"first_broken_sequence": problem["sequence"],
                                             "problem": problem["problem"]})])
    AUDIT_CHAIN_BROKEN.set(len(broken))
    if broken:
        await from_settings(settings).notify(Message(
            subject=f"Sentinel audit: {len(broken)} tenant chain(s) fail verification",
            text="\n".join(f"tenant {b['tenant_id']}: first broken at sequence {b['sequence']}: {b['problem']}"
                           for b in broken[:20]), severity="critical"))
    return {"tenants": len(tenants), "events": checked, "broken": broken, "authenticated": key is not None}


_CLEANUPS = (
    ("sessions", "DELETE FROM sessions WHERE ctid = ANY (ARRAY(SELECT ctid FROM sessions WHERE expire_time < now() "
                 "- interval '1 day' OR revoke_time < now() - interval '7 days' LIMIT 5000))"),
    ("invitations", "DELETE FROM invitations WHERE ctid = ANY (ARRAY(SELECT ctid FROM invitations WHERE state <> "
                    "'accepted' AND expire_time < now() - interval '30 days' LIMIT 5000))"),
    ("idempotency_keys", "DELETE FROM idempotency_keys WHERE ctid = ANY (ARRAY(SELECT ctid FROM idempotency_keys "
                         "WHERE create_time < now() - interval '24 hours' LIMIT 5000))"),
)


#: Usage rows past their retention, every tenant's at once (platform scope), in batches.
_USAGE_EXPIRY = {
    table: text(f"DELETE FROM {table} WHERE ctid = ANY (ARRAY(SELECT ctid FROM {table} "  # noqa: S608 (fixed names)
                "WHERE bucket < :before LIMIT 5000))")
    for table in ("tenant_usage_minutes", "tenant_usage_hours")
}


async def cleanup(settings: Settings, now: dt.datetime) -> dict[str, Any]:
    """Expired sessions (a day after expiry, a week after revocation), invitations a month past
    expiry that nobody accepted, idempotency records past their 24 h window: per tenant, in batches.
    Per-tenant usage past SENTINEL_USAGE_MINUTE_RETENTION_HOURS / _HOUR_RETENTION_DAYS."""
    async with db.unit_of_work(tenant_id=PLATFORM_TENANT_ID, platform=True) as session:
        tenants = list(await session.scalars(text("SELECT id FROM tenants ORDER BY id")))
    deleted = dict.fromkeys((name for name, _ in _CLEANUPS), 0)
    for tenant_id in tenants:
        for name, sql in _CLEANUPS:
            while True:
                async with db.unit_of_work(tenant_id=tenant_id, platform=False) as session:
                    count = int((await session.execute(text(sql))).rowcount)  # type: ignore[attr-defined]
                deleted[name] += count
                if count < 5000:
                    break
    keep = {"tenant_usage_minutes": dt.timedelta(hours=settings.usage_minute_retention_hours),
            "tenant_usage_hours": dt.timedelta(days=settings.usage_hour_retention_days)}
    for table, statement in _USAGE_EXPIRY.items():
        deleted[table] = 0
        while True:
            async with db.unit_of_work(tenant_id=PLATFORM_TENANT_ID, platform=True) as session:
                count = int((await session.execute(statement, {"before": now - keep[table]})).rowcount)  # type: ignore[attr-defined]
            deleted[table] += count
            if count < 5000:
                break
    return {"deleted": deleted}


JOBS_BY_NAME: dict[str, PeriodicJob] = {j.name: j for j in (
    PeriodicJob("health_check", "*/15 * * * *", health_check, "every service, Postgres and Redis; notifies changes"),
    PeriodicJob("slo_report", "0 7 * * *", slo_report, "the daily SLO report to Slack and/or e-mail"),
    PeriodicJob("burn_rate_watch", "*/5 * * * *", burn_rate_watch,
                "notifies multiwindow page burns (14.4x 1h+5m, 6x 6h+30m) and 2 h burns over 30x"),
    PeriodicJob("audit_retention", "30 3 * * *", audit_retention, "cuts audit events past each tenant's retention"),
    PeriodicJob("audit_verify", "0 4 * * *", audit_verify, "verifies every tenant's chain and its checkpoints"),
    PeriodicJob("tenant_purge", "0 * * * *", tenant_purge, "purges tenants past their deletion grace period"),
    PeriodicJob("cleanup", "15 * * * *", cleanup, "expired sessions, invitations, idempotency records, old usage"),
)}


# --------------------------------------------------------------------------- schedules


def schedule_of(settings: Settings, job: PeriodicJob) -> str | None:
    """The job's cron schedule in this deployment, or None when switched off."""
    value = settings.periodic_schedules.get(job.name, job.schedule).strip()
    return None if value == "off" else value


def validate_schedules(settings: Settings) -> None:
    unknown = set(settings.periodic_schedules) - set(JOBS_BY_NAME)
    if unknown:
        raise ValueError(f"SENTINEL_PERIODIC_SCHEDULES names unknown jobs: {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(JOBS_BY_NAME)})")
    for job in JOBS_BY_NAME.values():
        cron = schedule_of(settings, job)
        if cron is not None:
            matcher(cron)


def matcher(cron: str) -> Callable[[dt.datetime], bool]:
    fields = cron.split()
    if len(fields) != 5:
        raise ValueError(f"'{cron}' is not a cron schedule (minute hour day month weekday)")
    try:
        check: Callable[[dt.datetime], bool] = crontab(*fields)
        check(dt.datetime(2026, 1, 1))
    except Exception as e:
        raise ValueError(f"'{cron}' is not a valid cron schedule: {e}") from None
    return check


def _naive_minute(when: dt.datetime) -> dt.datetime:
    return when.replace(second=0, microsecond=0, tzinfo=None)  # huey's crontab compares naive UTC


def due(cron: str, when: dt.datetime) -> bool:
    return matcher(cron)(_naive_minute(when.astimezone(dt.UTC)))


def next_run(cron: str, after: dt.datetime, *, horizon_days: int = 32) -> dt.datetime | None:
    check = matcher(cron)
    minute = _naive_minute(after.astimezone(dt.UTC)) + dt.timedelta(minutes=1)
    for _ in range(horizon_days * 24 * 60):
        if check(minute):
            return minute.replace(tzinfo=dt.UTC)
        minute += dt.timedelta(minutes=1)
    return None


# --------------------------------------------------------------------------- running

_CLAIM = text("""
    INSERT INTO periodic_runs (tenant_id, id, name, slot) VALUES (:tenant, :id, :name, :slot)
    ON CONFLICT (tenant_id, name, slot) WHERE NOT manual DO NOTHING RETURNING id""")


async def run_due(settings: Settings, now: dt.datetime) -> list[str]:
    """Run every job whose schedule matches ``now``'s minute and whose slot nobody took yet."""
    slot = now.astimezone(dt.UTC).replace(second=0, microsecond=0)
    ran = []
    for job in JOBS_BY_NAME.values():
        cron = schedule_of(settings, job)
        if cron is None or not due(cron, slot):
            continue
        async with db.unit_of_work(tenant_id=PLATFORM_TENANT_ID, platform=False) as session:
            claimed = (await session.execute(_CLAIM, {"tenant": PLATFORM_TENANT_ID, "id": uuid7(), "name": job.name,
                                                      "slot": slot})).scalar()
        if claimed is None:
            continue  # another consumer has this slot
        await execute(settings, job, claimed, slot)
        ran.append(job.name)
    return ran


async def start_manual(name: str) -> uuid.UUID:
    """Record an on-demand run (RunPeriodicJob, ``sentinel jobs run-now``); the caller runs it."""
    if name not in JOBS_BY_NAME:
        raise KeyError(name)
    run_id = uuid7()
    async with db.unit_of_work(tenant_id=PLATFORM_TENANT_ID, platform=False) as session:
        session.add(PeriodicRunRow(tenant_id=PLATFORM_TENANT_ID, id=run_id, name=name, manual=True))
    return run_id


async def run_manual(settings: Settings, name: str, run_id: uuid.UUID) -> str:
    return await execute(settings, JOBS_BY_NAME[name], run_id, dt.datetime.now(dt.UTC))


_FINISH = text("""
    UPDATE periodic_runs SET state = :state, end_time = now(), error = :error, result = CAST(:result AS jsonb)
    WHERE tenant_id = :tenant AND id = :id""")


async def execute(settings: Settings, job: PeriodicJob, run_id: uuid.UUID, when: dt.datetime) -> str:
    started = time.perf_counter()
    try:
        result, state, error = await job.run(settings, when), "succeeded", ""
    except Exception as e:  # recorded, counted and audited; the next slot tries again
        log.exception("periodic job failed", extra={"job": job.name})
        result, state, error = {}, "failed", f"{type(e).__name__}: {str(e)[:500]}"
    event = auditlog.system_event(PLATFORM_TENANT_ID, "job.periodic", actor=ACTOR, target=("periodic_job", job.name),
                                  outcome="SUCCESS" if state == "succeeded" else "FAILURE",
                                  diff={"run_id": str(run_id), "state": state, **({"error": error} if error else {}),
                                        **{k: v for k, v in result.items() if k != "components"}})
    async with db.unit_of_work(tenant_id=PLATFORM_TENANT_ID, platform=False) as session:
        await session.execute(_FINISH, {"tenant": PLATFORM_TENANT_ID, "id": run_id, "state": state, "error": error,
                                        "result": json.dumps(result, default=str)})
        await auditlog.write(session, [event])
    JOBS.labels(job.name, state).inc()
    DURATION.labels(job.name).observe(time.perf_counter() - started)
    return state


async def _last_result(name: str) -> dict[str, Any] | None:
    async with db.unit_of_work(tenant_id=PLATFORM_TENANT_ID, platform=False) as session:
        row = await session.scalar(select(PeriodicRunRow).where(
            PeriodicRunRow.name == name, PeriodicRunRow.state == "succeeded")
            .order_by(PeriodicRunRow.start_time.desc()).limit(1))
    return row.result if row is not None else None


async def last_runs() -> dict[str, PeriodicRunRow]:
    out: dict[str, PeriodicRunRow] = {}
    async with db.unit_of_work(tenant_id=PLATFORM_TENANT_ID, platform=False) as session:
        for name in JOBS_BY_NAME:
            row = await session.scalar(select(PeriodicRunRow).where(PeriodicRunRow.name == name)
                                       .order_by(PeriodicRunRow.start_time.desc()).limit(1))
            if row is not None:
                out[name] = row
    return out
