"""The audit chain in Postgres: append-only for every role, one linear chain under parallel
appends, tampering by the owner found by verification, exports verified offline."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sentinel.audit import store
from sentinel.platform import db

from tests.integration.clients import sentinel_cli
from tests.integration.conftest import World, bare_tenant

pytestmark = pytest.mark.integration


def dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


@pytest.fixture
def audit_db(kernel_db: None) -> None:
    """The kernel's database layer in this process (conftest's session-wide one)."""


async def new_tenant(world: World) -> tuple[uuid.UUID, str]:
    """A tenant with an empty chain: these tests control every event in it."""
    tenant_id, slug = await bare_tenant("audit")
    return uuid.UUID(tenant_id), slug


def event(i: int) -> dict[str, Any]:
    return {"actor_type": "user", "actor_id": str(uuid.uuid4()), "action": "user.create", "target_type": "user",
            "target_id": str(uuid.uuid4()), "outcome": "success", "request_id": f"req-{i}",
            "diff": {"email": f"u{i}@example.com", "role": "member", "n": i}}


async def append(tenant: uuid.UUID, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    async with db.unit_of_work(tenant_id=tenant, platform=False) as session:
        return await store.append(session, tenant, events)


async def test_parallel_appends_keep_one_linear_chain(world: World, audit_db: None) -> None:
    tenant, _ = await new_tenant(world)
    other, _ = await new_tenant(world)
    batches = [[event(i * 10 + j) for j in range(5)] for i in range(20)]
    await asyncio.gather(*(append(tenant, b) for b in batches), *(append(other, b[:1]) for b in batches))
    verdict = await store.verify_tenant(tenant, page=7)  # pages that do not divide the chain evenly
    assert verdict.ok and verdict.checked == 100 and verdict.head_sequence == 100, verdict
    assert (await store.verify_tenant(other)).checked == 20  # another tenant's chain is its own


async def test_no_role_can_change_or_delete_audit_rows(world: World, stack: Any, audit_db: None) -> None:
    tenant, _ = await new_tenant(world)
    await append(tenant, [event(1)])
    for url in (stack.app_url, stack.owner_url):
        conn = await asyncpg.connect(dsn(url))
        try:
            for sql in ("UPDATE audit_events SET action = 'nothing.happened'", "DELETE FROM audit_events",
                        "TRUNCATE audit_events"):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    async with conn.transaction():
                        await conn.execute("SELECT set_config('sentinel.tenant_id', $1, true)", str(tenant))
                        await conn.execute(sql)
        finally:
            await conn.close()
    assert (await store.verify_tenant(tenant)).checked == 1


async def tamper(stack: Any, tenant: uuid.UUID, *statements: str) -> None:
    """An attacker with the owner role: switches the guard off, edits, switches it back on."""
    conn = await asyncpg.connect(dsn(stack.owner_url))
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('sentinel.tenant_id', $1, true)", str(tenant))
            await conn.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
            for sql in statements:
                await conn.execute(sql)
            await conn.execute("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only")
    finally:
        await conn.close()


TAMPERING = {
    "altered": (["UPDATE audit_events SET diff = '{\"role\": \"owner\"}' WHERE sequence = 3"], 3),
    "deleted": (["DELETE FROM audit_events WHERE sequence = 2"], 2),
    "reordered": (["UPDATE audit_events SET sequence = 1000 WHERE sequence = 2",
                   "UPDATE audit_events SET sequence = 2 WHERE sequence = 3",
                   "UPDATE audit_events SET sequence = 3 WHERE sequence = 1000"], 2),
    "inserted": (["UPDATE audit_events SET sequence = sequence + 100 WHERE sequence >= 3",
                  "UPDATE audit_events SET sequence = sequence - 99 WHERE sequence >= 103",
                  "INSERT INTO audit_events (tenant_id, sequence, id, event_time, action, prev_hash, hash) "
                  "SELECT tenant_id, 3, gen_random_uuid(), now(), 'tenant.delete', hash, hash "
                  "FROM audit_events WHERE sequence = 2"], 3),
}


@pytest.mark.parametrize("kind", TAMPERING)
async def test_verification_finds_tampering_by_the_owner(world: World, stack: Any, audit_db: None,
                                                         kind: str) -> None:
    tenant, _ = await new_tenant(world)
    await append(tenant, [event(i) for i in range(5)])
    assert (await store.verify_tenant(tenant)).ok
    statements, first_broken = TAMPERING[kind]
    await tamper(stack, tenant, *statements)
    verdict = await store.verify_tenant(tenant)
    assert not verdict.ok and verdict.broken_sequence == first_broken, verdict
    assert verdict.checked == first_broken - 1


async def test_an_export_verifies_offline_and_an_edited_one_does_not(world: World, stack: Any, audit_db: None,
                                                                    tmp_path: Path) -> None:
    tenant, slug = await new_tenant(world)
    await append(tenant, [dict(event(i), user_agent="curl/8 «ünïcode»") for i in range(25)])
    export = tmp_path / "audit.ndjson"
    code, out = await sentinel_cli(stack, "audit", "export", "--tenant", slug, "-o", str(export))
    assert code == 0, out
    lines = export.read_text().splitlines()
    checkpoint_lines = [n for n, line in enumerate(lines) if line.startswith('{"checkpoint"')]
    assert checkpoint_lines == list(range(len(checkpoint_lines)))  # the signed heads come first
    assert len(lines) - len(checkpoint_lines) == 25
    env_free = {"PATH": "/usr/bin:/bin"}  # offline: no database settings at all
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "sentinel", "audit", "verify", str(export),
                                                env=env_free, stdout=asyncio.subprocess.PIPE)
    out_b, _ = await proc.communicate()
    assert proc.returncode == 0 and "OK: 25 event(s)" in out_b.decode(), out_b
    tenth = len(checkpoint_lines) + 9
    lines[tenth] = lines[tenth].replace('"outcome":"success"', '"outcome":"failure"')
    export.write_text("\n".join(lines) + "\n")
    code, out = await sentinel_cli(stack, "audit", "verify", str(export))
    assert code == 1 and "BROKEN at sequence 10" in out, out
