"""Periodic jobs driven with an injected clock (no waiting): each slot runs once however many
consumers tick; health changes, the SLO report and burn-rate alerts reach a real local webhook
and SMTP server; cleanup removes only what has expired; every run is recorded and audited."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from pydantic import SecretStr
from sentinel.platform import db
from sentinel.platform.auth import PLATFORM_TENANT_ID
from sentinel.platform.config import Settings
from sentinel.platform.ids import uuid7
from sentinel.scheduler import periodic
from sentinel.scheduler.models import PeriodicRunRow
from sentinel.scheduler.v1 import job_pb2
from sentinel.scheduler.v1 import scheduler_service_pb2 as ssp
from sentinel.scheduler.v1 import scheduler_service_pb2_grpc as ssg
from sqlalchemy import func, select, text

from tests.integration.clients import sentinel_cli
from tests.integration.conftest import PERIODIC_JOBS, World, audit_settled, bare_tenant
from tests.integration.test_notify import SmtpServer, WebhookServer, start_smtp
from tests.integration.test_slo_report import CRITICAL, HEALTHY, Prometheus, _start, _tools, blocks  # noqa: F401

pytestmark = pytest.mark.integration

#: Slots far from the real clock, one range per test, so no two tests share a slot.
EPOCH = dt.datetime(2031, 1, 6, 0, 0, tzinfo=dt.UTC)  # a Monday


def settings_for(stack: Any, *, only: tuple[str, ...] = (), **overrides: Any) -> Settings:
    """The stack's addresses and credentials, with every periodic job off except ``only``
    (those run every minute, so any injected time is a slot)."""
    schedules = {name: ("* * * * *" if name in only else "off") for name in PERIODIC_JOBS}
    peers = {f"{n}_addr": stack.service_target(n) for n in ("tenant", "user", "audit", "scheduler")}
    return Settings(database_url=SecretStr(stack.app_url), redis_url=SecretStr(stack.redis_url),
                    periodic_schedules=schedules, notify_retries=0, **peers, **overrides)


@pytest.fixture
def webhook() -> Iterator[WebhookServer]:
    server = WebhookServer()
    yield server
    server.close()


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = start_smtp()
    yield server
    server.controller.stop()


@pytest.fixture(scope="module")
def prom(blocks: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:  # noqa: F811
    import shutil

    prometheus, _ = _tools()
    data = tmp_path_factory.mktemp("periodic-prom") / "data"
    shutil.copytree(blocks, data)
    yield from _start(prometheus, data)


async def runs_of(name: str) -> list[PeriodicRunRow]:
    async with db.unit_of_work(tenant_id=PLATFORM_TENANT_ID, platform=False) as session:
        return list(await session.scalars(select(PeriodicRunRow).where(PeriodicRunRow.name == name)
                                          .order_by(PeriodicRunRow.start_time)))


def test_schedules_are_cron_and_checked() -> None:
    assert periodic.due("*/15 * * * *", dt.datetime(2031, 1, 6, 7, 45, 30, tzinfo=dt.UTC))
    assert not periodic.due("*/15 * * * *", dt.datetime(2031, 1, 6, 7, 46, tzinfo=dt.UTC))
    assert periodic.due("0 7 * * *", dt.datetime(2031, 1, 6, 8, 0, tzinfo=dt.timezone(dt.timedelta(hours=1))))
    assert periodic.next_run("0 7 * * *", dt.datetime(2031, 1, 6, 7, 0, tzinfo=dt.UTC)) == \
        dt.datetime(2031, 1, 7, 7, 0, tzinfo=dt.UTC)
    assert periodic.next_run("30 3 * * 1", dt.datetime(2031, 1, 6, 4, 0, tzinfo=dt.UTC)) == \
        dt.datetime(2031, 1, 13, 3, 30, tzinfo=dt.UTC)  # Mondays
    defaults = {name: job.schedule for name, job in periodic.JOBS_BY_NAME.items()}
    assert defaults["health_check"] == "*/15 * * * *" and set(defaults) == set(PERIODIC_JOBS)
    for bad in ({"health_check": "every 15 minutes"}, {"nope": "* * * * *"}, {"cleanup": "61 * * * *"}):
        with pytest.raises(ValueError):
            periodic.validate_schedules(Settings(periodic_schedules=bad))


async def test_a_slot_runs_once_however_many_consumers_tick(world: World, stack: Any) -> None:
    settings = settings_for(stack, only=("cleanup",))
    slot = EPOCH + dt.timedelta(minutes=1)
    before = len(await runs_of("cleanup"))
    ran = await asyncio.gather(*(periodic.run_due(settings, slot + dt.timedelta(seconds=s)) for s in (0, 5, 20, 59)))
    assert sorted(name for names in ran for name in names) == ["cleanup"]
    runs = (await runs_of("cleanup"))[before:]
    assert [(r.slot, r.state, r.manual) for r in runs] == [(slot, "succeeded", False)]
    # The next minute is a new slot; a job switched off never runs.
    assert await periodic.run_due(settings, slot + dt.timedelta(minutes=1)) == ["cleanup"]
    assert await periodic.run_due(settings_for(stack), slot + dt.timedelta(minutes=2)) == []
    # Each run is in the platform's trail.
    await audit_settled()
    from sentinel.audit import store

    events = [e async for page in store.events(PLATFORM_TENANT_ID) for e in page
              if e["action"] == "job.periodic" and e["target_id"] == "cleanup"]
    assert {e["diff"]["run_id"] for e in events} >= {str(r.id) for r in runs}


async def test_health_changes_are_notified_once_each(world: World, stack: Any, webhook: WebhookServer) -> None:
    settings = settings_for(stack, only=("health_check",), notify_slack_webhook_url=SecretStr(webhook.url))
    t0 = EPOCH + dt.timedelta(hours=1)
    assert await periodic.run_due(settings, t0) == ["health_check"]  # all up (or as before): nothing to say
    assert (await runs_of("health_check"))[-1].result["components"]["service:audit"] == "up"
    first = len(webhook.requests)
    stack.kill_service("audit")
    try:
        await periodic.run_due(settings, t0 + dt.timedelta(minutes=15))
        await periodic.run_due(settings, t0 + dt.timedelta(minutes=30))  # still down: no second message
    finally:
        await asyncio.to_thread(stack.start_service, "audit")
    await periodic.run_due(settings, t0 + dt.timedelta(minutes=45))
    sent = [r.body for r in webhook.requests[first:]]
    assert [m["text"] for m in sent] == ["Sentinel health: service:audit down",
                                         "Sentinel health: service:audit recovered"]
    assert sent[0]["attachments"][0]["color"] == "#a30200" and sent[1]["attachments"][0]["color"] == "#2eb886"
    from prometheus_client import REGISTRY

    for component in ("service:audit", "database", "redis"):
        assert REGISTRY.get_sample_value("sentinel_component_up", {"component": component}) == 1


async def test_the_slo_report_reaches_slack_and_email(world: World, stack: Any, prom: Prometheus,
                                                      webhook: WebhookServer, smtp: SmtpServer) -> None:
    settings = settings_for(stack, only=("slo_report",), prometheus_url=prom.url,
                            notify_slack_webhook_url=SecretStr(webhook.url), notify_smtp_host="127.0.0.1",
                            notify_smtp_port=smtp.port, notify_smtp_from="sentinel@example.com",
                            notify_smtp_to=["oncall@example.com"], notify_smtp_security="none")
    assert await periodic.run_due(settings, CRITICAL) == ["slo_report"]
    run = (await runs_of("slo_report"))[-1]
    assert (run.state, sorted(run.result["delivered"]), run.result["policy"]) == (
        "succeeded", ["slack", "smtp"], "critical")
    slack = webhook.requests[-1].body
    assert slack["text"].startswith(f"Sentinel SLO report {CRITICAL:%Y-%m-%d}") and "critical" in slack["text"]
    mail = smtp.recorder.received[-1]
    assert mail.rcpt_tos == ["oncall@example.com"] and str(mail.mail["Subject"]).strip().startswith(
        "[CRITICAL] Sentinel SLO")  # a long subject is folded
    assert "freeze releases" in mail.mail.get_content()
    # Prometheus down: the run fails, recorded with an error an operator can act on.
    down = settings_for(stack, only=("slo_report",), prometheus_url="http://127.0.0.1:9")
    await periodic.run_due(down, CRITICAL + dt.timedelta(minutes=1))
    failed = (await runs_of("slo_report"))[-1]
    assert failed.state == "failed" and "127.0.0.1:9" in failed.error


async def test_the_burn_rate_watch_speaks_only_above_30x(world: World, stack: Any, prom: Prometheus,
                                                         webhook: WebhookServer) -> None:
    settings = settings_for(stack, only=("burn_rate_watch",), prometheus_url=prom.url,
                            notify_slack_webhook_url=SecretStr(webhook.url))
    await periodic.run_due(settings, HEALTHY)
    assert webhook.requests == []
    assert (await runs_of("burn_rate_watch"))[-1].result == {"alerts": [], "multiwindow": []}
    await periodic.run_due(settings, CRITICAL)
    # The multiwindow pages (both windows over the factor; tenant's spike is over) and the 2 h > 30x rule.
    result = (await runs_of("burn_rate_watch"))[-1].result
    assert (result["alerts"], result["multiwindow"]) == (["user", "all"], ["user page-fast", "all page-slow"])
    assert webhook.requests[0].body["text"].startswith("Sentinel SLO: error budget burning fast in")
    # The page names the busiest tenants of the last hour (the suite's own tenants made calls).
    page = json.dumps(webhook.requests[0].body)
    assert "Busiest tenants over the last hour" in page
    assert 1 <= len(result["busiest_tenants"]) <= 3 and all(slug in page for slug in result["busiest_tenants"])
    assert set(result["noisy_tenants"]) <= set(result["busiest_tenants"])
    assert len(webhook.requests) == 2
    assert {r.body["attachments"][0]["color"] for r in webhook.requests} == {"#a30200"}


async def test_cleanup_removes_only_what_has_expired(world: World, stack: Any) -> None:
    tenant = uuid.UUID(world.a.id)
    user = uuid.UUID(world.a.member.user_id)
    old, fresh = uuid7(), uuid7()
    async with db.unit_of_work(tenant_id=tenant, platform=False) as session:
        for sid, days in ((old, -2), (fresh, 2)):
            await session.execute(text(
                "INSERT INTO sessions (id, tenant_id, user_id, refresh_token_hash, expire_time) "
                "VALUES (:id, :tenant, :user, 'x', now() + make_interval(days => :days))"),
                {"id": sid, "tenant": tenant, "user": user, "days": days})
        for key, hours in (("old-key", 48), ("fresh-key", 1)):
            await session.execute(text(
                "INSERT INTO idempotency_keys (tenant_id, method, key, request_hash, response, create_time) "
                "VALUES (:tenant, 'm', :key, 'h', '', now() - make_interval(hours => :hours))"),
                {"tenant": tenant, "key": key, "hours": hours})
    # Usage rows: minute rows past 48 h and hour rows past 35 days go; the rest stays.
    usage_tenant = uuid.UUID((await bare_tenant("usage-expiry"))[0])
    ages = {"tenant_usage_minutes": (dt.timedelta(days=3), dt.timedelta(hours=47)),
            "tenant_usage_hours": (dt.timedelta(days=36), dt.timedelta(days=34))}
    async with db.unit_of_work(tenant_id=PLATFORM_TENANT_ID, platform=True) as session:
        for table, (gone, kept) in ages.items():
            for age in (gone, kept):
                await session.execute(text(
                    f"INSERT INTO {table} (tenant_id, service, bucket, requests, busy_seconds) "  # noqa: S608
                    "VALUES (:t, 'user', date_trunc('minute', now() - CAST(:age AS interval)), 1, 0.1)"),
                    {"t": usage_tenant, "age": age})
    run_id = await periodic.start_manual("cleanup")
    assert await periodic.run_manual(settings_for(stack), "cleanup", run_id) == "succeeded"
    async with db.unit_of_work(tenant_id=tenant, platform=False) as session:
        sessions = set(await session.scalars(text("SELECT id FROM sessions WHERE id IN (:a, :b)"),
                                             {"a": old, "b": fresh}))
        keys = set(await session.scalars(text("SELECT key FROM idempotency_keys WHERE method = 'm'")))
    assert sessions == {fresh} and keys == {"fresh-key"}
    async with db.unit_of_work(tenant_id=usage_tenant, platform=False) as session:
        for table in ages:
            left = list(await session.scalars(text(f"SELECT now() - bucket FROM {table}")))  # noqa: S608
            assert len(left) == 1 and left[0] < dt.timedelta(days=35), table
    assert (await runs_of("cleanup"))[-1].result["deleted"]["sessions"] >= 1


async def test_audit_verify_finds_a_tampered_chain(world: World, stack: Any, webhook: WebhookServer) -> None:
    import asyncpg
    from prometheus_client import REGISTRY

    from tests.integration.conftest import append_audit_event

    key = sorted((stack.audit_keys_dir / "public").glob("*.pub.pem"))[-1]
    settings = settings_for(stack, audit_public_key_file=key, notify_slack_webhook_url=SecretStr(webhook.url))
    tenant_id, _ = await bare_tenant("verify")
    for i in range(3):
        await append_audit_event(tenant_id, action=f"v.{i}")
    assert await periodic.run_manual(settings, "audit_verify", await periodic.start_manual("audit_verify")) == \
        "succeeded"
    result = (await runs_of("audit_verify"))[-1].result
    assert result["authenticated"] and tenant_id not in {b["tenant_id"] for b in result["broken"]}
    conn = await asyncpg.connect(stack.owner_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        async with conn.transaction():  # the owner rewrites history
            await conn.execute("SELECT set_config('sentinel.tenant_id', $1, true)", tenant_id)
            await conn.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
            await conn.execute("UPDATE audit_events SET action = 'nothing' WHERE sequence = 2")
            await conn.execute("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only")
    finally:
        await conn.close()
    await periodic.run_manual(settings, "audit_verify", await periodic.start_manual("audit_verify"))
    result = (await runs_of("audit_verify"))[-1].result
    ours = [b for b in result["broken"] if b["tenant_id"] == tenant_id]
    assert [b["sequence"] for b in ours] == [2]
    assert REGISTRY.get_sample_value("sentinel_audit_chain_broken") == len(result["broken"]) >= 1
    assert "fail verification" in webhook.requests[-1].body["text"]
    await audit_settled()  # the tenant's own trail says so
    from sentinel.audit import store

    last = [e async for page in store.events(uuid.UUID(tenant_id)) for e in page][-1]
    assert (last["action"], last["outcome"], last["diff"]["first_broken_sequence"]) == ("audit.verify", "failure", 2)


async def test_tenant_purge_follows_the_injected_clock(world: World, stack: Any) -> None:
    from sentinel.tenant.v1 import tenant_service_pb2 as tsp
    from sentinel.tenant.v1 import tenant_service_pb2_grpc as tsg

    tenants = tsg.TenantServiceStub(world.channels["tenant"])
    doomed = (await tenants.CreateTenant(tsp.CreateTenantRequest(slug=f"doomed-{uuid.uuid4().hex[:6]}",
                                                                 display_name="Doomed"),
                                         metadata=world.admin.metadata)).tenant
    deleted = (await tenants.DeleteTenant(tsp.DeleteTenantRequest(id=doomed.id), metadata=world.admin.metadata)).tenant
    purge_at = deleted.purge_time.ToDatetime(tzinfo=dt.UTC)
    settings = settings_for(stack, only=("tenant_purge",))
    await periodic.run_due(settings, purge_at - dt.timedelta(days=1))
    assert doomed.id not in (await runs_of("tenant_purge"))[-1].result["purged"]
    await periodic.run_due(settings, purge_at + dt.timedelta(minutes=1))
    assert doomed.id in (await runs_of("tenant_purge"))[-1].result["purged"]


async def test_platform_admins_run_and_list_periodic_jobs(world: World) -> None:
    scheduler = ssg.SchedulerServiceStub(world.channels["scheduler"])
    run = await scheduler.RunPeriodicJob(ssp.RunPeriodicJobRequest(name="cleanup"), metadata=world.admin.metadata)
    deadline = time.monotonic() + 20
    while True:  # the worker runs it
        async with db.unit_of_work(tenant_id=PLATFORM_TENANT_ID, platform=False) as session:
            state = await session.scalar(select(PeriodicRunRow.state).where(PeriodicRunRow.id == uuid.UUID(
                run.job_run_id)))
        if state != "running" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert state == "succeeded"
    listed = {j.name: j for j in (await scheduler.ListPeriodicJobs(ssp.ListPeriodicJobsRequest(),
                                                                   metadata=world.admin.metadata)).jobs}
    assert set(listed) == set(PERIODIC_JOBS)
    assert listed["cleanup"].last_state == job_pb2.JOB_STATE_SUCCEEDED and listed["cleanup"].schedule == "off"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await scheduler.RunPeriodicJob(ssp.RunPeriodicJobRequest(name="nope"), metadata=world.admin.metadata)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    for who in (world.a.owner, world.a.member):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await scheduler.RunPeriodicJob(ssp.RunPeriodicJobRequest(name="cleanup"), metadata=who.metadata)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_operators_cli(world: World, stack: Any) -> None:
    async def cli(*args: str) -> tuple[int, str]:
        return await sentinel_cli(stack, "jobs", *args, SENTINEL_REDIS_URL=stack.redis_url)

    code, out = await cli("run-now", "cleanup")
    assert code == 0 and out.startswith("cleanup: succeeded"), out
    code, out = await cli("list", "--periodic")
    assert code == 0 and all(name in out for name in PERIODIC_JOBS), out
    code, out = await cli("list", "--tenant", world.a.slug)
    assert code == 0 and world.a.job_id in out, out
    code, out = await cli("cancel", str(uuid.uuid4()))
    assert code == 1 and "no pending or running job" in out
    async with db.unit_of_work(tenant_id=PLATFORM_TENANT_ID, platform=False) as session:
        manual = await session.scalar(select(func.count()).select_from(PeriodicRunRow).where(
            PeriodicRunRow.manual.is_(True), PeriodicRunRow.name == "cleanup"))
    assert manual is not None and manual >= 1
