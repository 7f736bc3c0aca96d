"""Plan limits per tenant (users, API keys), checked inside the creating transaction.

The count and the insert that follows are serialised per tenant and resource by a
transaction-scoped advisory lock, so concurrent creates cannot overshoot the limit.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, text

from sentinel.platform import db
from sentinel.platform.errors import NotFound, ResourceExhausted

_PLAN = text("SELECT plan FROM tenants WHERE id = sentinel_tenant_id()")


async def enforce_plan_limit(session: Any, limits: dict[str, int], *, resource: str, count: Select[Any],
                             reason: str, adding: int = 1) -> None:
    """Refuse with RESOURCE_EXHAUSTED when ``adding`` more would exceed the bound tenant's plan."""
    plan = await session.scalar(_PLAN)
    if plan is None:
        raise NotFound("the tenant was not found", reason="TENANT_NOT_FOUND")
    limit = limits.get(plan)
    if limit is None:
        return
    await db.lock_in_tenant(session, f"sentinel.limit:{resource}")
    have = int(await session.scalar(count) or 0)
    if have + adding > limit:
        raise ResourceExhausted(f"the tenant's plan '{plan}' allows {limit} {resource} and it has {have}; "
                                f"remove {resource} or change the plan", reason=reason)
