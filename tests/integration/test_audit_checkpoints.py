"""Signed checkpoints of each chain head: made at an interval, listed, carried by exports, and
what catches a rewritten or truncated chain that every link alone would accept."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sentinel.audit import chain, checkpoints
from sentinel.audit.v1 import audit_service_pb2 as asp
from sentinel.audit.v1 import audit_service_pb2_grpc as asg

from tests.integration.conftest import World, append_audit_event, make_tenant

pytestmark = pytest.mark.integration


def audit(world: World) -> Any:
    return asg.AuditServiceStub(world.channels["audit"])


def public_key(stack: Any) -> Path:
    return sorted((stack.audit_keys_dir / "public").glob("*.pub.pem"))[-1]


async def tenant_with_checkpoint(world: World, events: int = 6) -> Any:
    t = await make_tenant(world.channels, world.admin, "cp")
    for i in range(events):
        await append_audit_event(t.id, action=f"e.{i}", diff={"i": i})
    for _ in range(100):  # the audit service signs every second in the test stack
        cps = (await audit(world).ListCheckpoints(asp.ListCheckpointsRequest(), metadata=t.owner.metadata)).checkpoints
        if cps and cps[-1].sequence == t.audit_base + events:
            return t
        await asyncio.sleep(0.1)
    raise AssertionError("no checkpoint of the head was signed")


async def as_owner(stack: Any, tenant: str, *statements: tuple[str, tuple[Any, ...]]) -> None:
    conn = await asyncpg.connect(stack.owner_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('sentinel.tenant_id', $1, true)", tenant)
            await conn.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
            for sql, args in statements:
                await conn.execute(sql, *args)
            await conn.execute("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only")
    finally:
        await conn.close()


async def test_checkpoints_are_signed_by_the_audit_service(world: World, stack: Any) -> None:
    t = await tenant_with_checkpoint(world)
    cps = (await audit(world).ListCheckpoints(asp.ListCheckpointsRequest(), metadata=t.owner.metadata)).checkpoints
    key = checkpoints.load_public_key(public_key(stack))
    head = cps[-1]
    as_dict = {"tenant_id": head.tenant_id, "sequence": head.sequence, "hash": head.hash,
               "create_time": head.create_time.ToDatetime(tzinfo=dt.UTC),
               "signature": head.signature}
    assert checkpoints.authentic(as_dict, key)
    assert not checkpoints.authentic(dict(as_dict, hash="0" * 64), key)
    events = (await audit(world).ListAuditEvents(asp.ListAuditEventsRequest(), metadata=t.owner.metadata)).events
    assert head.hash == events[0].hash  # the newest event
    # No role may rewrite a checkpoint.
    conn = await asyncpg.connect(stack.app_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with conn.transaction():
                await conn.execute("SELECT set_config('sentinel.tenant_id', $1, true)", t.id)
                await conn.execute("DELETE FROM audit_checkpoints")
    finally:
        await conn.close()


async def test_a_rewritten_chain_fails_against_its_checkpoint(world: World, stack: Any) -> None:
    t = await tenant_with_checkpoint(world)
    rows = (await audit(world).ListAuditEvents(asp.ListAuditEventsRequest(order=asp.SORT_ORDER_OLDEST_FIRST),
                                               metadata=t.owner.metadata)).events
    # The owner deletes event 3 and recomputes every later link: each link holds again.
    from sentinel.audit.convert import from_proto

    stored = [from_proto(e) for e in rows]
    del stored[2]
    prev = stored[1]["hash"]
    updates = [("DELETE FROM audit_events WHERE sequence = 3", ())]
    for new_sequence, event in enumerate(stored[2:], start=3):
        old_sequence = event["sequence"]
        event.update(sequence=new_sequence, prev_hash=prev)
        event["hash"] = prev = chain.link_hash(prev, event)
        updates.append(("UPDATE audit_events SET sequence = $1, prev_hash = $2, hash = $3 WHERE sequence = $4",
                        (new_sequence, event["prev_hash"], event["hash"], old_sequence)))
    await as_owner(stack, t.id, *updates)
    assert chain.verify(stored).ok  # the links alone are fooled ...
    reply = await audit(world).VerifyAuditChain(asp.VerifyAuditChainRequest(), metadata=t.owner.metadata)
    assert not reply.valid  # ... the signed head is not
    assert "checkpoint" in reply.reason, reply


async def test_a_truncated_chain_fails_against_its_checkpoint(world: World, stack: Any) -> None:
    t = await tenant_with_checkpoint(world)
    await as_owner(stack, t.id, ("DELETE FROM audit_events WHERE sequence >= 5", ()))
    reply = await audit(world).VerifyAuditChain(asp.VerifyAuditChainRequest(), metadata=t.owner.metadata)
    assert not reply.valid and reply.first_broken_sequence == 5 and "removed from the end" in reply.reason, reply


async def test_a_forged_checkpoint_is_reported(world: World, stack: Any) -> None:
    t = await tenant_with_checkpoint(world, events=2)
    conn = await asyncpg.connect(stack.owner_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('sentinel.tenant_id', $1, true)", t.id)
            await conn.execute("INSERT INTO audit_checkpoints VALUES ($1, 100, $2, now(), 'audit-x', 'AAAA')",
                               uuid.UUID(t.id), "f" * 64)
    finally:
        await conn.close()
    reply = await audit(world).VerifyAuditChain(asp.VerifyAuditChainRequest(), metadata=t.owner.metadata)
    assert not reply.valid and reply.first_broken_sequence == 100 and "not signed" in reply.reason


async def verify_cli(path: Path, *extra: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "sentinel", "audit", "verify", str(path),
                                                *extra, env={"PATH": "/usr/bin:/bin"},
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def test_an_export_carries_checkpoints_that_verify_offline_with_the_public_key(
        world: World, stack: Any, tmp_path: Path) -> None:
    t = await tenant_with_checkpoint(world)
    async with httpx.AsyncClient(base_url=stack.rest_url, timeout=10, headers=t.owner.headers) as http:
        text = (await http.get("/api/v1/audit/events:export")).text
    export = tmp_path / "export.ndjson"
    export.write_text(text)
    code, out = await verify_cli(export, "--public-key", str(public_key(stack)))
    assert code == 0 and f"OK: {t.audit_base + 6} event(s)" in out and "signed checkpoint(s) matched" in out, out
    code, out = await verify_cli(export)
    assert code == 0 and "NOT checked" in out, out
    # Dropping the last event from the file is caught by the checkpoint it carries.
    lines = text.splitlines()
    export.write_text("\n".join(lines[:-1]) + "\n")
    code, out = await verify_cli(export, "--public-key", str(public_key(stack)))
    assert code == 1 and "removed from the end" in out, out
    # A checkpoint edited to match a forged head fails its signature.
    forged = [line.replace('"hash":"', '"hash":"0', 1) if line.startswith('{"checkpoint":') else line
              for line in lines]
    export.write_text("\n".join(forged) + "\n")
    code, out = await verify_cli(export, "--public-key", str(public_key(stack)))
    assert code == 1 and "not signed by this key" in out, out
