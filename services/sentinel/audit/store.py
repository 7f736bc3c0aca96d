"""Appending to and reading a tenant's audit chain in Postgres (under RLS, tenant-bound).

Appends to one tenant are serialised by a transaction-scoped advisory lock: the head is read,
the batch is linked onto it and inserted, all in the caller's transaction. Other tenants
append in parallel. Reading for verification goes page by page, so a long chain is checked
in constant memory.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from sentinel.audit import chain
from sentinel.platform import db
from sentinel.platform.ids import uuid7

_HEAD = text("SELECT sequence, hash FROM audit_events WHERE tenant_id = sentinel_tenant_id() "
             "ORDER BY sequence DESC LIMIT 1")
_KNOWN = text("SELECT id FROM audit_events WHERE tenant_id = sentinel_tenant_id() AND id = ANY(:ids)")
COLUMNS = [*chain.FIELDS, "prev_hash", "hash"]
_INSERT = text(f"INSERT INTO audit_events ({', '.join(COLUMNS)}) VALUES "  # noqa: S608 (fixed names)
               f"({', '.join(':' + c for c in COLUMNS)})")
_PAGE = text(f"SELECT {', '.join(COLUMNS)} FROM audit_events "  # noqa: S608 (fixed names)
             "WHERE tenant_id = sentinel_tenant_id() AND sequence > :after ORDER BY sequence LIMIT :limit")


async def head(session: AsyncSession) -> tuple[int, str]:
    """The bound tenant's chain head: (sequence, hash), or (0, GENESIS) for an empty chain."""
    row = (await session.execute(_HEAD)).first()
    return (int(row.sequence), str(row.hash)) if row else (0, chain.GENESIS)


async def append(session: AsyncSession, tenant_id: uuid.UUID, events: Iterable[Mapping[str, Any]], *,
                 skip_known: bool = False) -> list[dict[str, Any]]:
    """Link ``events`` onto the tenant's chain inside the session's (tenant-bound) transaction.

    Each event is a mapping of ``chain.FIELDS`` minus ``tenant_id``/``sequence`` (``id`` and
    ``event_time`` are filled in when absent). With ``skip_known``, events whose id is already
    in the chain (or earlier in the batch) are left out. Returns the stored rows, hashes included.
    """
    await db.lock_in_tenant(session, "sentinel.audit:append")
    if skip_known:
        events = list(events)
        ids = [uuid.UUID(str(e["id"])) for e in events]
        seen = {str(i) for i in (await session.scalars(_KNOWN, {"ids": ids})).all()}
        fresh = []
        for event in events:
            if str(event["id"]) not in seen:
                seen.add(str(event["id"]))
                fresh.append(event)
        events = fresh
    sequence, prev = await head(session)
    rows = []
    for event in events:
        sequence += 1
        row: dict[str, Any] = {name: event.get(name, "") for name in chain.FIELDS}
        row.update(tenant_id=str(tenant_id), sequence=sequence, id=str(event.get("id") or uuid7()),
                   event_time=event.get("event_time") or dt.datetime.now(dt.UTC),
                   diff=chain.normalise_diff(event.get("diff") or {}), prev_hash=prev)
        row["hash"] = prev = chain.link_hash(prev, row)
        rows.append(row)
    if rows:
        await session.execute(_INSERT, [dict(r, tenant_id=uuid.UUID(r["tenant_id"]), id=uuid.UUID(r["id"]),
                                             diff=json.dumps(r["diff"])) for r in rows])
    return rows


def as_event(row: Any) -> dict[str, Any]:
    event = dict(row._mapping)
    event["tenant_id"], event["id"] = str(event["tenant_id"]), str(event["id"])
    if isinstance(event["diff"], str):  # jsonb through a textual query
        event["diff"] = json.loads(event["diff"])
    return event


async def events(tenant_id: uuid.UUID, *, after: int = 0, page: int = 1000) -> AsyncIterator[list[dict[str, Any]]]:
    """The tenant's chain in sequence order, one page (list) at a time."""
    while True:
        async with db.unit_of_work(tenant_id=tenant_id, platform=False) as session:
            rows = [as_event(r) for r in await session.execute(_PAGE, {"after": after, "limit": page})]
        if not rows:
            return
        yield rows
        after = rows[-1]["sequence"]


async def verify_tenant(tenant_id: uuid.UUID, *, page: int = 1000, from_sequence: int = 0,
                        checkpoints: Mapping[int, str] | None = None) -> chain.Verdict:
    """Verify a tenant's chain from the database, page by page.

    From ``from_sequence`` on (when > 1), that event's ``prev_hash`` is taken as given: pass the
    sequence of a trusted checkpoint.
    """
    start_sequence, start_hash, checked = max(from_sequence, 1), "", 0
    async for rows in events(tenant_id, page=page, after=start_sequence - 1):
        if not start_hash:
            start_hash = chain.GENESIS if start_sequence == 1 else str(rows[0]["prev_hash"])
        verdict = chain.verify(rows, start_sequence=start_sequence, start_hash=start_hash, checkpoints=checkpoints)
        checked += verdict.checked
        if not verdict.ok:
            return chain.Verdict(False, checked, verdict.head_sequence, verdict.head_hash,
                                 verdict.broken_sequence, verdict.problem)
        start_sequence, start_hash = verdict.head_sequence + 1, verdict.head_hash
    return chain.reaches_checkpoints(chain.Verdict(True, checked, start_sequence - 1, start_hash or chain.GENESIS),
                                     checkpoints)
