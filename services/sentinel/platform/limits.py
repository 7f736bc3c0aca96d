"""Plan limits per tenant (users, API keys, active jobs), checked inside the creating transaction.

The count and the insert that follows are serialised per tenant and resource by a
transaction-scoped advisory lock, so concurrent creates cannot overshoot the limit.

A create that brings a tenant to 80 % or 100 % of a limit records a ``tenant.quota_threshold``
event in the tenant's own audit trail, in the same transaction (its admins can query, stream and
export it), and counts it in ``sentinel_plan_quota_thresholds_total`` for operators (no tenant
label: which tenant is in the event). It fires once per crossing: when the usage goes from below
the threshold to at or above it. No copy goes to the platform's trail: the transaction is bound to
the tenant, and RLS refuses it a row of another tenant.
"""

from __future__ import annotations

import math
from typing import Any

from prometheus_client import Counter
from sqlalchemy import Select, text

from sentinel.platform import auditlog, db
from sentinel.platform.errors import NotFound, ResourceExhausted

_PLAN = text("SELECT id, plan FROM tenants WHERE id = sentinel_tenant_id()")

#: Shares of a plan limit (percent) whose crossing is recorded.
THRESHOLDS = (80, 100)
QUOTA_ACTION = "tenant.quota_threshold"
QUOTA_ACTOR = "plan-limits"

THRESHOLDS_REACHED = Counter("sentinel_plan_quota_thresholds",
                             "Creates that brought a tenant to a share of a plan limit.", ["resource", "threshold"])
for _resource in ("users", "api_keys"):  # every series from the start (``metric_name`` of each resource)
    for _t in THRESHOLDS:
        THRESHOLDS_REACHED.labels(_resource, str(_t))


def metric_name(resource: str) -> str:
    return resource.lower().replace(" ", "_")


def crossed(limit: int, have: int, adding: int) -> list[int]:
    """The thresholds that ``have`` → ``have + adding`` reaches for the first time."""
    return [t for t in THRESHOLDS if have < math.ceil(limit * t / 100) <= have + adding]


async def enforce_plan_limit(session: Any, limits: dict[str, int], *, resource: str, count: Select[Any],
                             reason: str, adding: int = 1, remedy: str = "", record_thresholds: bool = True) -> None:
    """Refuse with RESOURCE_EXHAUSTED when ``adding`` more would exceed the bound tenant's plan.

    ``remedy`` ends the refusal's message (default: remove some or change the plan).
    ``record_thresholds`` False: no quota events, for a count that rises and falls all day
    (active jobs), where every crossing would be noise in the tenant's trail."""
    row = (await session.execute(_PLAN)).one_or_none()
    if row is None:
        raise NotFound("the tenant was not found", reason="TENANT_NOT_FOUND")
    tenant_id, plan = row
    limit = limits.get(plan)
    if limit is None:
        return
    await db.lock_in_tenant(session, f"sentinel.limit:{resource}")
    have = int(await session.scalar(count) or 0)
    if have + adding > limit:
        raise ResourceExhausted(f"the tenant's plan '{plan}' allows {limit} {resource} and it has {have}; "
                                f"{remedy or f'remove {resource} or change the plan'}", reason=reason)
    if not record_thresholds:
        return
    events = []
    for threshold in crossed(limit, have, adding):
        THRESHOLDS_REACHED.labels(metric_name(resource), str(threshold)).inc()
        diff = {"resource": metric_name(resource), "plan": plan, "limit": limit, "used": have + adding,
                "threshold_percent": threshold}
        events.append(auditlog.system_event(tenant_id, QUOTA_ACTION, actor=QUOTA_ACTOR,
                                            target=("tenant", str(tenant_id)), diff=diff))
    if events and auditlog.enabled:  # both thresholds at once (an import, a small limit): one insert
        await auditlog.write(session, events)
