"""Audit retention: cut each tenant's events older than its retention, in batches.

The cut goes through ``sentinel_audit_cut`` (migration 0009), the only way audit rows are ever
deleted: it stops at the newest signed checkpoint whose events are all past retention and
keeps that checkpoint, so the remaining chain verifies from it. Each batch is its own short
transaction; a run stopped midway resumes at the next one. The scheduler (issue 4) runs it
daily; ``sentinel admin audit-retention`` runs it by hand.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from sqlalchemy import text

from sentinel.platform import auditlog, db
from sentinel.platform.auth import PLATFORM_TENANT_ID

_TENANTS = text("SELECT id FROM tenants ORDER BY id")
_CUT = text("SELECT cut_through, deleted FROM sentinel_audit_cut(:batch)")


@dataclass
class RetentionReport:
    deleted: int = 0
    cut_through: dict[uuid.UUID, int] = field(default_factory=dict)


async def apply(*, batch: int = 5000, actor: str = "sentinel admin audit-retention") -> RetentionReport:
    """Cut every tenant's chain; each batch records an ``audit.retention`` event in the tenant's
    trail in the same transaction (what was cut, up to which checkpoint)."""
    report = RetentionReport()
    async with db.unit_of_work(tenant_id=PLATFORM_TENANT_ID, platform=True) as session:
        tenants = list(await session.scalars(_TENANTS))
    for tenant_id in tenants:
        while True:
            async with db.unit_of_work(tenant_id=tenant_id, platform=False) as session:
                row = (await session.execute(_CUT, {"batch": batch})).one()
                if row.deleted:
                    await auditlog.write(session, [auditlog.system_event(
                        tenant_id, "audit.retention", actor=actor, target=("tenant", str(tenant_id)),
                        diff={"cut_through_sequence": int(row.cut_through), "events_deleted": int(row.deleted)})])
            report.deleted += int(row.deleted)
            if row.deleted:
                report.cut_through[tenant_id] = int(row.cut_through)
            if int(row.deleted) < batch:
                break
    return report
