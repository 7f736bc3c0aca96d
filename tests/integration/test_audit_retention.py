"""Audit retention: events past a tenant's retention are cut at a signed checkpoint, which is
kept, so the rest of the chain still verifies, in the service and offline."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
from sentinel.audit.v1 import audit_service_pb2 as asp
from sentinel.audit.v1 import audit_service_pb2_grpc as asg
from sentinel.tenant.v1 import tenant_pb2
from sentinel.tenant.v1 import tenant_service_pb2 as tsp
from sentinel.tenant.v1 import tenant_service_pb2_grpc as tsg

from tests.integration.conftest import World, append_audit_event, make_tenant

pytestmark = pytest.mark.integration


def audit(world: World) -> Any:
    return asg.AuditServiceStub(world.channels["audit"])


async def checkpoint_at(world: World, t: Any, sequence: int) -> None:
    for _ in range(100):
        cps = (await audit(world).ListCheckpoints(asp.ListCheckpointsRequest(), metadata=t.owner.metadata)).checkpoints
        if any(c.sequence == sequence for c in cps):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"no checkpoint at {sequence}")


async def cli(stack: Any, *args: str) -> tuple[int, str]:
    env = {**os.environ, "SENTINEL_DATABASE_URL": stack.app_url}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "sentinel", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


async def test_retention_cuts_at_a_checkpoint_and_the_rest_still_verifies(world: World, stack: Any,
                                                                          tmp_path: Path) -> None:
    t = await make_tenant(world.channels, world.admin, "ret")
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=400)
    for i in range(10):
        await append_audit_event(t.id, action=f"old.{i}", event_time=long_ago + dt.timedelta(minutes=i))
    await checkpoint_at(world, t, 10)
    for i in range(3):
        await append_audit_event(t.id, action=f"new.{i}")
    await checkpoint_at(world, t, 13)

    code, out = await cli(stack, "admin", "audit-retention", "--batch", "4")  # several batches
    assert code == 0 and f"{t.id}: the chain now starts after the checkpoint at 10" in out, out
    events = (await audit(world).ListAuditEvents(asp.ListAuditEventsRequest(order=asp.SORT_ORDER_OLDEST_FIRST),
                                                 metadata=t.owner.metadata)).events
    assert [e.action for e in events] == ["new.0", "new.1", "new.2"] and events[0].sequence == 11
    reply = await audit(world).VerifyAuditChain(asp.VerifyAuditChainRequest(), metadata=t.owner.metadata)
    assert reply.valid and reply.events_checked == 3, reply
    # Offline too: the export carries the checkpoint at the cut.
    async with httpx.AsyncClient(base_url=stack.rest_url, timeout=10, headers=t.owner.headers) as http:
        (tmp_path / "e.ndjson").write_text((await http.get("/api/v1/audit/events:export")).text)
    key = sorted((stack.audit_keys_dir / "public").glob("*.pub.pem"))[-1]
    code, out = await cli(stack, "audit", "verify", str(tmp_path / "e.ndjson"), "--public-key", str(key))
    assert code == 0 and "OK: 3 event(s)" in out, out
    # A second run finds nothing more to cut; recent events are never cut.
    code, out = await cli(stack, "admin", "audit-retention")
    assert code == 0 and t.id not in out


async def test_retention_is_per_tenant_with_a_floor(world: World, stack: Any) -> None:
    t = await make_tenant(world.channels, world.admin, "retfloor")
    tenants = tsg.TenantServiceStub(world.channels["tenant"])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tenants.UpdateTenant(tsp.UpdateTenantRequest(tenant=tenant_pb2.Tenant(id=t.id, audit_retention_days=30)),
                                   metadata=t.owner.metadata)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "90" in str(err.value.details())
    updated = (await tenants.UpdateTenant(tsp.UpdateTenantRequest(
        tenant=tenant_pb2.Tenant(id=t.id, audit_retention_days=120)), metadata=t.owner.metadata)).tenant
    assert updated.audit_retention_days == 120
    # Events 100 days old are kept under 120 days of retention, even with a checkpoint over them.
    for i in range(3):
        await append_audit_event(t.id, action=f"mid.{i}",
                                 event_time=dt.datetime.now(dt.UTC) - dt.timedelta(days=100))
    await checkpoint_at(world, t, 3)
    code, out = await cli(stack, "admin", "audit-retention")
    assert code == 0 and t.id not in out
    assert len((await audit(world).ListAuditEvents(asp.ListAuditEventsRequest(),
                                                   metadata=t.owner.metadata)).events) == 3
    # The service role still cannot delete audit rows itself, even setting the cut flag.
    conn = await asyncpg.connect(stack.app_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with conn.transaction():
                await conn.execute("SELECT set_config('sentinel.tenant_id', $1, true), "
                                   "set_config('sentinel.audit_cut', 'on', true)", t.id)
                await conn.execute("DELETE FROM audit_events")
    finally:
        await conn.close()
