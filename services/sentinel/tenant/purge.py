"""Purging tenants whose deletion grace period has passed.

A due tenant first becomes DELETED (one guarded UPDATE: from then on RestoreTenant refuses,
so a restore can never race with a half-done purge), then its rows are deleted in batches,
one short transaction per batch bound to that tenant (RLS applies as everywhere). A purge
stopped at any point resumes where it left off: DELETED tenants without a
``purge_complete_time`` are picked up again. The tenant row stays as a tombstone: its slug
is never handed to someone else (old links and e-mails keep pointing nowhere), and the audit
trail keeps its subject.

Then the tenant's data key is destroyed (sentinel.platform.datakeys: every sealed copy of its
exports, in backups too, becomes unreadable) and ``tenant.purge`` is recorded in the tenant's own
chain with the rows deleted per table and the key's fingerprint: once a signed checkpoint covers
that event, AuditService.GetPurgeReceipt hands it out as a receipt anyone can verify offline.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass, field

from sqlalchemy import text

from sentinel.platform import auditlog, datakeys, db, revocation
from sentinel.platform.auth import PLATFORM_TENANT_ID
from sentinel.platform.config import Settings

log = logging.getLogger("sentinel.tenant.purge")

_DUE = text("""
    SELECT id, state FROM tenants
    WHERE (state = 'pending_deletion' AND purge_time <= :now)
       OR (state = 'deleted' AND purge_complete_time IS NULL)
    ORDER BY purge_time LIMIT :limit""")
_FINAL = text("""
    UPDATE tenants SET state = 'deleted', version = version + 1, update_time = now()
    WHERE id = :id AND state = 'pending_deletion' AND purge_time <= :now""")
#: Children before parents; ``ctid`` batches keep each transaction short.
PURGED_TABLES = ("sessions", "api_keys", "service_accounts", "invitations", "users", "idempotency_keys",
                 "job_results", "jobs", "tenant_usage_minutes", "tenant_usage_hours")
_BATCHES = {
    table: text(f"DELETE FROM {table} WHERE ctid = ANY (ARRAY(SELECT ctid FROM {table} LIMIT :batch))")  # noqa: S608 (fixed names)
    for table in PURGED_TABLES
}
_COMPLETE = text("UPDATE tenants SET purge_complete_time = now() WHERE id = :id AND state = 'deleted'")


PURGE_ACTOR = "sentinel admin purge-tenants"


@dataclass
class PurgeReport:
    tenants: list[uuid.UUID] = field(default_factory=list)
    rows: int = 0


async def _due(now: dt.datetime, limit: int) -> list[tuple[uuid.UUID, str]]:
    async with db.unit_of_work(tenant_id=PLATFORM_TENANT_ID, platform=True) as session:
        return [(r.id, r.state) for r in (await session.execute(_DUE, {"now": now, "limit": limit}))]


async def _finalise(settings: Settings, tenant_id: uuid.UUID, now: dt.datetime) -> bool:
    async with db.unit_of_work(tenant_id=tenant_id, platform=False) as session:
        changed = (await session.execute(_FINAL, {"id": tenant_id, "now": now})).rowcount  # type: ignore[attr-defined]
    if changed:
        await revocation.announce_tenant_state(settings, tenant_id, "deleted")
    return bool(changed)


async def _purge_data(settings: Settings, tenant_id: uuid.UUID, batch: int) -> int:
    rows: dict[str, int] = {}
    for table, statement in _BATCHES.items():
        rows[table] = 0
        while True:
            async with db.unit_of_work(tenant_id=tenant_id, platform=False) as session:
                count: int = (await session.execute(statement, {"batch": batch})).rowcount  # type: ignore[attr-defined]
            rows[table] += count
            if count < batch:
                break
    deleted = sum(rows.values())
    # After the rows: a purge that stops here is resumed, and its data (job results) is gone first.
    store = datakeys.store_for(settings)
    destroyed = store.destroy(tenant_id) if store else None
    # The receipt's substance (GetPurgeReceipt): what went, and which data key was destroyed.
    diff = {"rows_deleted": deleted, "rows": rows,
            "data_key": {"destroyed": destroyed.destroyed, "fingerprint": destroyed.fingerprint}
            if destroyed else {"destroyed": False, "fingerprint": "", "configured": False}}
    purged = auditlog.system_event(tenant_id, "tenant.purge", actor=PURGE_ACTOR, target=("tenant", str(tenant_id)),
                                   diff=diff)
    async with db.unit_of_work(tenant_id=tenant_id, platform=False) as session:
        await session.execute(_COMPLETE, {"id": tenant_id})
        await auditlog.write(session, [purged])  # the tenant's trail outlives it
    platform_copy = auditlog.system_event(PLATFORM_TENANT_ID, "tenant.purge", actor=PURGE_ACTOR,
                                          target=("tenant", str(tenant_id)), diff=diff)
    await auditlog.write_now([platform_copy])
    return deleted


async def purge_due(settings: Settings, *, now: dt.datetime | None = None, batch: int = 1000,
                    limit: int = 100) -> PurgeReport:
    """Purge every tenant whose purge_time has passed (the scheduler runs this periodically)."""
    now = now or dt.datetime.now(dt.UTC)
    report = PurgeReport()
    seen: set[uuid.UUID] = set()
    while due := [(t, s) for t, s in await _due(now, limit) if t not in seen]:
        for tenant_id, state in due:
            seen.add(tenant_id)  # each at most once per run, whatever happens to it
            if state == "pending_deletion" and not await _finalise(settings, tenant_id, now):
                continue  # restored (or purged by another worker) since the query
            report.rows += await _purge_data(settings, tenant_id, batch)
            report.tenants.append(tenant_id)
            log.info("tenant purged", extra={"tenant": str(tenant_id)})
    return report
