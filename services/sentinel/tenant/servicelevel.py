"""Per-tenant SLOs and error budgets, and the noisy-neighbour ranking, from the usage tables.

The counts come from sentinel.platform.usage (every service's calls per tenant and minute); the
objectives, burn-rate pairs and budget policy from sentinel.platform.slo, which match the
platform-wide Prometheus rules. Windows up to 6 h are summed from minute rows, longer ones
(1 d, 3 d, the 30-day period) from hour rows.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from sentinel.platform import db, slo
from sentinel.platform.auth import PLATFORM_TENANT_ID
from sentinel.platform.convert import timestamp
from sentinel.platform.errors import FieldViolation, require
from sentinel.platform.usage import Counts
from sentinel.tenant.v1 import tenant_service_pb2

#: Windows summed from minute rows (no longer than the minute retention's minimum, 7 h).
MINUTE_WINDOWS = tuple(sorted({w for p in slo.BURN_PAIRS for w in (p.long, p.short) if w <= dt.timedelta(hours=6)}))
HOUR_WINDOWS = tuple(sorted({w for p in slo.BURN_PAIRS for w in (p.long, p.short)} - set(MINUTE_WINDOWS)))
#: Where usage is counted: the four services' calls, and the job worker's runs (time only).
SERVICES = ("tenant", "user", "audit", "scheduler", "worker")
WINDOW_MINUTES = (1, 2880)
LIMIT = (1, 100)
#: A tenant counts as impacted by a neighbour only with at least this many requests in the window:
#: one failed call of a quiet tenant is not a neighbour's doing.
MIN_IMPACTED_REQUESTS = 10
#: The policy text of an objective with no requests (the platform's "unknown" is about Prometheus).
NO_REQUESTS = "no requests in the period: nothing to measure yet"

_SUMS = ("sum(requests)::bigint AS requests, sum(server_errors)::bigint AS server_errors, "
         "sum(errors)::bigint AS errors, sum(slow)::bigint AS slow, sum(busy_seconds) AS busy_seconds, "
         "sum(db_seconds) AS db_seconds")
# The explicit tenant filter repeats what RLS enforces: a wrong binding returns nothing, not another's rows.
_TENANT_BUCKETS = {
    table: text(f"SELECT bucket, {_SUMS} FROM {table} WHERE tenant_id = :tenant AND bucket >= :since "  # noqa: S608
                "GROUP BY bucket")
    for table in ("tenant_usage_minutes", "tenant_usage_hours")
}
_TENANT_SERVICES = text(f"SELECT service, {_SUMS} FROM tenant_usage_hours "  # noqa: S608
                        "WHERE tenant_id = :tenant AND bucket >= :since GROUP BY service ORDER BY service")
_RANKING = text(f"""
    SELECT u.tenant_id, t.slug, {_SUMS}
    FROM tenant_usage_minutes u JOIN tenants t ON t.id = u.tenant_id
    WHERE u.bucket >= :since AND (:service = '' OR u.service = :service)
    GROUP BY u.tenant_id, t.slug""")  # noqa: S608


def window_text(window: dt.timedelta) -> str:
    """``timedelta(minutes=30)`` -> ``"30m"``, ``timedelta(days=3)`` -> ``"3d"`` (as in alerts/slo.yaml)."""
    seconds = int(window.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _counts(row: object) -> Counts:
    return Counts(int(row.requests or 0), int(row.server_errors or 0), int(row.errors or 0),  # type: ignore[attr-defined]
                  int(row.slow or 0), float(row.busy_seconds or 0.0),  # type: ignore[attr-defined]
                  float(row.db_seconds or 0.0))  # type: ignore[attr-defined]


def _sum_since(buckets: Iterable[tuple[dt.datetime, Counts]], since: dt.datetime) -> Counts:
    total = Counts()
    for bucket, counts in buckets:
        if bucket >= since:
            total.add(counts)
    return total


def _bad(counts: Counts, objective: slo.Objective) -> int:
    return int(getattr(counts, objective.bad))


@dataclass
class TenantWindows:
    """One tenant's counts over the period and every burn window."""

    period: Counts
    windows: dict[dt.timedelta, Counts] = field(default_factory=dict)


async def tenant_windows(session: AsyncSession, tenant_id: uuid.UUID, now: dt.datetime) -> TenantWindows:
    minute_since = (now - max(MINUTE_WINDOWS)).replace(second=0, microsecond=0)
    hour_since = (now - slo.PERIOD).replace(minute=0, second=0, microsecond=0)
    minutes = [(r.bucket, _counts(r)) for r in await session.execute(
        _TENANT_BUCKETS["tenant_usage_minutes"], {"tenant": tenant_id, "since": minute_since})]
    hours = [(r.bucket, _counts(r)) for r in await session.execute(
        _TENANT_BUCKETS["tenant_usage_hours"], {"tenant": tenant_id, "since": hour_since})]
    result = TenantWindows(period=_sum_since(hours, hour_since))
    for window in MINUTE_WINDOWS:  # the current, partial minute included
        result.windows[window] = _sum_since(minutes, (now - window).replace(second=0, microsecond=0))
    for window in HOUR_WINDOWS:
        result.windows[window] = _sum_since(hours, (now - window).replace(minute=0, second=0, microsecond=0))
    return result


def _firing(windows: dict[dt.timedelta, Counts], objective: slo.Objective) -> list[str]:
    firing = []
    for pair in slo.BURN_PAIRS:
        long, short = windows[pair.long], windows[pair.short]
        if long.requests <= slo.MIN_REQUEST_RATE * pair.long.total_seconds():
            continue  # too quiet for this pair to mean anything
        rates = [slo.burn_rate(_bad(c, objective), c.requests, objective.target) for c in (long, short)]
        if all(r is not None and r > pair.factor for r in rates):
            firing.append(pair.name)
    return firing


def service_level(tenant_id: uuid.UUID, now: dt.datetime, counts: TenantWindows,
                  services: Sequence[tuple[str, Counts]]) -> tenant_service_pb2.ServiceLevel:
    out = tenant_service_pb2.ServiceLevel(
        tenant_id=str(tenant_id), compute_time=timestamp(now), period=window_text(slo.PERIOD),
        requests=counts.period.requests,
        services=[tenant_service_pb2.ServiceUsage(service=name, requests=c.requests, busy_seconds=c.busy_seconds,
                                                   db_seconds=c.db_seconds)
                  for name, c in services])
    for objective in slo.OBJECTIVES:
        bad, total = _bad(counts.period, objective), counts.period.requests
        remaining = slo.budget_remaining(bad, total, objective.target)
        state = slo.budget_policy(remaining)
        status = out.objectives.add(
            name=objective.name, description=objective.what, target=objective.target, bad_requests=bad,
            budget_state=state, policy=NO_REQUESTS if state == "unknown" else slo.POLICY_MEANING[state],
            firing=_firing(counts.windows, objective))
        if total:
            status.attained = 1 - bad / total
        if remaining is not None:
            status.budget_remaining = remaining
        for window in (*MINUTE_WINDOWS, *HOUR_WINDOWS):
            c = counts.windows[window]
            burn = status.burn_rates.add(window=window_text(window), requests=c.requests)
            rate = slo.burn_rate(_bad(c, objective), c.requests, objective.target)
            if rate is not None:
                burn.rate = rate
    return out


async def get_service_level(session: AsyncSession, tenant_id: uuid.UUID,
                            now: dt.datetime) -> tenant_service_pb2.ServiceLevel:
    counts = await tenant_windows(session, tenant_id, now)
    since = (now - slo.PERIOD).replace(minute=0, second=0, microsecond=0)
    services = [(r.service, _counts(r)) for r in await session.execute(
        _TENANT_SERVICES, {"tenant": tenant_id, "since": since})]
    return service_level(tenant_id, now, counts, services)


# --------------------------------------------------------------------------- noisy neighbours


def check_ranking(request: tenant_service_pb2.RankTenantUsageRequest) -> tuple[int, str, int]:
    violations: list[FieldViolation] = []
    minutes = request.window_minutes or 60
    if not WINDOW_MINUTES[0] <= minutes <= WINDOW_MINUTES[1]:
        violations.append(FieldViolation("window_minutes", f"must be {WINDOW_MINUTES[0]}-{WINDOW_MINUTES[1]}"))
    if request.service and request.service not in SERVICES:
        violations.append(FieldViolation("service", f"must be one of {', '.join(SERVICES)} (or empty for all)"))
    limit = request.limit or 20
    if not LIMIT[0] <= limit <= LIMIT[1]:
        violations.append(FieldViolation("limit", f"must be {LIMIT[0]}-{LIMIT[1]}"))
    require(violations)
    return minutes, request.service, limit


def _burn(counts: Counts, name: str) -> float | None:
    objective = slo.BY_NAME[name]
    return slo.burn_rate(_bad(counts, objective), counts.requests, objective.target)


def _burning(counts: Counts) -> bool:
    if counts.requests < MIN_IMPACTED_REQUESTS:
        return False
    return any((rate or 0.0) > 1.0 for rate in (_burn(counts, "availability"), _burn(counts, "latency")))


def rank(rows: Sequence[tuple[uuid.UUID, str, Counts]], *, noisy_share: float,
         limit: int) -> tuple[Counts, int, list[tenant_service_pb2.TenantUsage]]:
    """Totals, the number of impacted tenants and the busiest ``limit`` tenants, each marked
    noisy when it took at least ``noisy_share`` of the handling time while another tenant (one
    below that share) burned its availability or latency budget faster than 1x."""
    total = Counts()
    for _, _, counts in rows:
        total.add(counts)
    busy, database = total.busy_seconds or 1.0, total.db_seconds or 1.0
    # Heavy on the services or on Postgres: a tenant whose transactions hold the shared pool is
    # a neighbour's problem even when its handling time is unremarkable.
    heavy = {tenant for tenant, _, c in rows
             if c.busy_seconds / busy >= noisy_share or c.db_seconds / database >= noisy_share}
    impacted = {tenant for tenant, _, c in rows if tenant not in heavy and _burning(c)}
    ordered = sorted(rows, key=lambda r: (-r[2].busy_seconds, -r[2].requests, str(r[0])))
    out = []
    for tenant, slug, c in ordered[:limit]:
        usage = tenant_service_pb2.TenantUsage(
            tenant_id=str(tenant), slug=slug, requests=c.requests, server_errors=c.server_errors, errors=c.errors,
            slow_requests=c.slow, busy_seconds=c.busy_seconds,
            request_share=c.requests / total.requests if total.requests else 0.0,
            busy_share=c.busy_seconds / busy if total.busy_seconds else 0.0,
            db_seconds=c.db_seconds, db_share=c.db_seconds / database if total.db_seconds else 0.0,
            noisy=tenant in heavy and bool(impacted))
        for attribute, name in (("availability_burn_rate", "availability"), ("latency_burn_rate", "latency")):
            rate = _burn(c, name)
            if rate is not None:
                setattr(usage, attribute, rate)
        out.append(usage)
    return total, len(impacted), out


async def rank_tenant_usage(session: AsyncSession, now: dt.datetime, *, minutes: int, service: str, limit: int,
                            noisy_share: float) -> tenant_service_pb2.RankTenantUsageResponse:
    start = (now - dt.timedelta(minutes=minutes)).replace(second=0, microsecond=0)
    rows = [(r.tenant_id, r.slug, _counts(r))
            for r in await session.execute(_RANKING, {"since": start, "service": service})]
    total, impacted, tenants = rank(rows, noisy_share=noisy_share, limit=limit)
    return tenant_service_pb2.RankTenantUsageResponse(
        start_time=timestamp(start), end_time=timestamp(now), requests=total.requests,
        busy_seconds=total.busy_seconds, db_seconds=total.db_seconds, impacted_tenants=impacted, tenants=tenants)


async def busiest_tenants(*, minutes: int, limit: int,
                          noisy_share: float) -> tenant_service_pb2.RankTenantUsageResponse:
    """The ranking outside an RPC (the burn-rate watch names the busiest tenants in its page)."""
    async with db.unit_of_work(tenant_id=PLATFORM_TENANT_ID, platform=True) as session:
        return await rank_tenant_usage(session, dt.datetime.now(dt.UTC), minutes=minutes, service="",
                                       limit=limit, noisy_share=noisy_share)
