"""Audit retention: events past a tenant's retention are cut at a signed checkpoint, which is
kept, so the rest of the chain still verifies, in the service and offline."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from sentinel.audit import checkpoints, store
from sentinel.audit.v1 import audit_service_pb2 as asp
from sentinel.audit.v1 import audit_service_pb2_grpc as asg
from sentinel.tenant.v1 import tenant_pb2
from sentinel.tenant.v1 import tenant_service_pb2 as tsp
from sentinel.tenant.v1 import tenant_service_pb2_grpc as tsg

from tests.integration.clients import sentinel_cli
from tests.integration.conftest import World, append_audit_event, audit_settled, bare_tenant

pytestmark = pytest.mark.integration


def audit(world: World) -> Any:
    return asg.AuditServiceStub(world.channels["audit"])


async def checkpoint_at(tenant_id: str, sequence: int) -> None:
    for _ in range(100):  # the audit service signs every second in the test stack
        if any(c["sequence"] == sequence for c in await checkpoints.list_for(uuid.UUID(tenant_id))):
            return
        await asyncio.sleep(0.1)
    chain = [(e["sequence"], e["action"]) for e in await chain_of(tenant_id)]
    raise AssertionError(f"no checkpoint at {sequence}; the chain: {chain}")


async def chain_of(tenant_id: str) -> list[dict[str, Any]]:
    return [e async for page in store.events(uuid.UUID(tenant_id)) for e in page]


async def test_retention_cuts_at_a_checkpoint_and_the_rest_still_verifies(world: World, stack: Any,
                                                                          tmp_path: Path) -> None:
    tenant_id, slug = await bare_tenant("ret")  # its chain starts with the old events below
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=400)
    for i in range(10):
        await append_audit_event(tenant_id, action=f"old.{i}", event_time=long_ago + dt.timedelta(minutes=i))
    await checkpoint_at(tenant_id, 10)
    for i in range(3):
        await append_audit_event(tenant_id, action=f"new.{i}")
    await checkpoint_at(tenant_id, 13)

    code, out = await sentinel_cli(stack, "admin", "audit-retention", "--batch", "4")  # several batches
    assert code == 0 and f"{tenant_id}: the chain now starts after the checkpoint at 10" in out, out
    await audit_settled()
    events = await chain_of(tenant_id)
    # Each batch cut is itself recorded in the trail it cut.
    assert [e["action"] for e in events] == ["new.0", "new.1", "new.2", *["audit.retention"] * 3]
    assert events[0]["sequence"] == 11
    assert [(e["diff"]["cut_through_sequence"], e["diff"]["events_deleted"]) for e in events[3:]] == [
        (10, 4), (10, 4), (10, 2)]
    # The service verifies from the kept checkpoint ...
    reply = await audit(world).VerifyAuditChain(asp.VerifyAuditChainRequest(tenant_id=tenant_id),
                                                metadata=world.admin.metadata)
    assert reply.valid and reply.events_checked == 6, reply
    # ... and so does the offline verifier, from an export that carries it.
    code, out = await sentinel_cli(stack, "audit", "export", "--tenant", slug, "-o", str(tmp_path / "e.ndjson"))
    assert code == 0, out
    key = sorted((stack.audit_keys_dir / "public").glob("*.pub.pem"))[-1]
    code, out = await sentinel_cli(stack, "audit", "verify", str(tmp_path / "e.ndjson"), "--public-key", str(key))
    assert code == 0 and "OK: " in out and "signed checkpoint(s) matched" in out, out
    # A second run finds nothing more to cut; recent events are never cut.
    code, out = await sentinel_cli(stack, "admin", "audit-retention")
    assert code == 0 and tenant_id not in out


async def test_retention_is_per_tenant_with_a_floor(world: World, stack: Any) -> None:
    tenant_id, _ = await bare_tenant("retfloor")
    tenants = tsg.TenantServiceStub(world.channels["tenant"])
    # Events 100 days old are kept under 120 days of retention, even with a checkpoint over them ...
    for i in range(3):
        await append_audit_event(tenant_id, action=f"mid.{i}",
                                 event_time=dt.datetime.now(dt.UTC) - dt.timedelta(days=100))
    await checkpoint_at(tenant_id, 3)
    updated = (await tenants.UpdateTenant(tsp.UpdateTenantRequest(
        tenant=tenant_pb2.Tenant(id=tenant_id, audit_retention_days=120)), metadata=world.admin.metadata)).tenant
    assert updated.audit_retention_days == 120
    code, out = await sentinel_cli(stack, "admin", "audit-retention")
    assert code == 0 and tenant_id not in out
    assert [e["action"] for e in await chain_of(tenant_id)][:3] == ["mid.0", "mid.1", "mid.2"]
    # ... and cut once the tenant lowers its retention to the 90-day floor ...
    await tenants.UpdateTenant(tsp.UpdateTenantRequest(tenant=tenant_pb2.Tenant(
        id=tenant_id, audit_retention_days=90)), metadata=world.admin.metadata)
    code, out = await sentinel_cli(stack, "admin", "audit-retention")
    assert code == 0 and f"{tenant_id}: the chain now starts after the checkpoint at 3" in out, out
    assert "mid.0" not in [e["action"] for e in await chain_of(tenant_id)]
    # ... which is as low as it goes.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tenants.UpdateTenant(tsp.UpdateTenantRequest(tenant=tenant_pb2.Tenant(
            id=tenant_id, audit_retention_days=30)), metadata=world.admin.metadata)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "90" in str(err.value.details())
    # The service role still cannot delete audit rows itself, even setting the cut flag.
    conn = await asyncpg.connect(stack.app_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with conn.transaction():
                await conn.execute("SELECT set_config('sentinel.tenant_id', $1, true), "
                                   "set_config('sentinel.audit_cut', 'on', true)", tenant_id)
                await conn.execute("DELETE FROM audit_events")
    finally:
        await conn.close()
