"""Verifiable offboarding: exports sealed with the tenant's data key and attested in its chain;
the purge destroys the key (every sealed copy, backups included, stops opening) and leaves a
signed receipt that verifies offline with the audit service's public key."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sentinel.audit.v1 import audit_service_pb2 as asp
from sentinel.audit.v1 import audit_service_pb2_grpc as asg
from sentinel.platform import datakeys, db
from sentinel.scheduler.models import JobResultRow
from sentinel.scheduler.v1 import job_pb2
from sentinel.tenant.v1 import tenant_service_pb2 as tsp
from sentinel.tenant.v1 import tenant_service_pb2_grpc as tsg
from sqlalchemy import select, update

from tests.integration.clients import sentinel_cli
from tests.integration.conftest import Tenant, World, audit_settled, make_tenant
from tests.integration.test_jobs import create, finished

pytestmark = pytest.mark.integration


def audit(world: World) -> Any:
    return asg.AuditServiceStub(world.channels["audit"])


async def stored_result(tenant_id: str, job_id: str) -> JobResultRow:
    async with db.unit_of_work(tenant_id=uuid.UUID(tenant_id), platform=False) as session:
        row = await session.scalar(select(JobResultRow).where(JobResultRow.job_id == uuid.UUID(job_id)))
    assert row is not None
    return row


async def exported(world: World, stack: Any, t: Tenant) -> tuple[str, bytes]:
    job = await finished(world, t, (await create(world, t, job_pb2.JOB_KIND_TENANT_EXPORT)).id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job.error
    async with httpx.AsyncClient(base_url=stack.rest_url, timeout=10, headers=t.owner.headers) as http:
        r = await http.get(job.result_uri)
    assert r.status_code == 200, r.text
    return job.id, r.content


async def test_an_export_is_sealed_at_rest_and_its_digest_is_in_the_signed_chain(world: World, stack: Any) -> None:
    t = await make_tenant(world.channels, world.admin, "seal")
    job_id, content = await exported(world, stack, t)
    assert t.slug.encode() in content  # the download is the plain export...
    row = await stored_result(t.id, job_id)
    assert row.sealed and t.slug.encode() not in row.content and b"owner@" not in row.content  # ...the row is not
    assert (stack.data_keys_dir / f"{t.id}.key").exists()
    await audit_settled()
    runs = (await audit(world).ListAuditEvents(asp.ListAuditEventsRequest(
        filter=asp.AuditFilter(action="job.run", target_id=job_id)), metadata=t.owner.metadata)).events
    assert runs[0].diff["result_sha256"] == hashlib.sha256(content).hexdigest()
    assert runs[0].diff["result_bytes"] == len(content)

    # A sealed result copied onto another job's row (or another tenant's) does not open.
    other_id, _ = await exported(world, stack, t)
    async with db.unit_of_work(tenant_id=uuid.UUID(t.id), platform=False) as session:
        await session.execute(update(JobResultRow).where(JobResultRow.job_id == uuid.UUID(other_id))
                              .values(content=row.content))
    async with httpx.AsyncClient(base_url=stack.rest_url, timeout=10, headers=t.owner.headers) as http:
        r = await http.get(f"/api/v1/jobs/{other_id}/result")
    assert r.status_code == 400 and "cannot be decrypted" in r.json()["message"], r.text
    assert "Traceback" not in r.text


async def purge_now(stack: Any, tenant_id: str) -> str:
    """Put the tenant's purge time in the past and run the operators' purge command."""
    owner = await asyncpg.connect(stack.owner_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        async with owner.transaction():
            await owner.execute("SELECT set_config('sentinel.tenant_id', $1, true)", tenant_id)
            await owner.execute("UPDATE tenants SET delete_time = now() - interval '31 days', "
                                "purge_time = now() - interval '1 day' WHERE id = $1", uuid.UUID(tenant_id))
    finally:
        await owner.close()
    code, out = await sentinel_cli(stack, "admin", "purge-tenants", SENTINEL_REDIS_URL=stack.redis_url,
                                   SENTINEL_DATA_KEY_DIR=str(stack.data_keys_dir))
    assert code == 0, out
    return out


async def receipt_when_signed(world: World, tenant_id: str, within: float = 30.0) -> asp.PurgeReceipt:
    deadline = time.monotonic() + within
    while True:
        try:
            reply = await audit(world).GetPurgeReceipt(asp.GetPurgeReceiptRequest(tenant_id=tenant_id),
                                                       metadata=world.admin.metadata)
            return reply.receipt
        except grpc.aio.AioRpcError as e:  # recorded and signed within seconds (checkpoints every 1 s here)
            assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e.details()  # not NOT_FOUND: it is purged
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.2)


async def verify_receipt_cli(stack: Any, path: Path, *extra: str) -> tuple[int, str]:
    """Offline: the command gets a database URL that leads nowhere."""
    return await sentinel_cli(stack, "audit", "verify-receipt", str(path), *extra,
                              SENTINEL_DATABASE_URL="postgresql+asyncpg://nobody@db.invalid/none")


async def test_the_purge_destroys_the_data_key_and_leaves_a_receipt_that_verifies_offline(
        world: World, stack: Any, tmp_path: Path) -> None:
    t = await make_tenant(world.channels, world.admin, "offb")
    job_id, _ = await exported(world, stack, t)
    backup = (await stored_result(t.id, job_id)).content  # what a database backup keeps
    key = (stack.data_keys_dir / f"{t.id}.key").read_bytes()
    admin = world.admin.metadata

    # No receipt for a live tenant: not for its owner, not for the platform admin.
    for md, named in ((t.owner.metadata, ""), (admin, t.id)):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await audit(world).GetPurgeReceipt(asp.GetPurgeReceiptRequest(tenant_id=named), metadata=md)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "no purge receipt (it is active)" in \
            str(err.value.details())

    await tsg.TenantServiceStub(world.channels["tenant"]).DeleteTenant(tsp.DeleteTenantRequest(id=t.id),
                                                                        metadata=admin)
    assert t.id in await purge_now(stack, t.id)

    # The key is gone: the backup's sealed export no longer opens, and no new key is made.
    store = datakeys.DataKeyStore(stack.data_keys_dir)
    assert not (stack.data_keys_dir / f"{t.id}.key").exists() and store.destroyed(uuid.UUID(t.id))
    with pytest.raises(datakeys.DataKeyDestroyed):
        store.open(uuid.UUID(t.id), backup, datakeys.associated_data(uuid.UUID(t.id), "job-result", job_id))

    receipt = await receipt_when_signed(world, t.id)
    purge = receipt.events[0]
    assert purge.action == "tenant.purge" and purge.target.id == t.id and receipt.checkpoint.sequence >= purge.sequence
    assert purge.diff["data_key"]["destroyed"] is True
    assert purge.diff["data_key"]["fingerprint"] == datakeys.fingerprint(key)
    rows = purge.diff["rows"]
    assert rows["users"] == 2 and rows["jobs"] == 1 and rows["job_results"] == 1, rows
    assert purge.diff["rows_deleted"] == sum(rows.values())

    # Over REST as a client would fetch it, then checked offline with the audit service's public key.
    async with httpx.AsyncClient(base_url=stack.rest_url, timeout=10, headers=world.admin.headers) as http:
        r = await http.get("/api/v1/audit/purge-receipt", params={"tenant_id": t.id})
    assert r.status_code == 200, r.text
    path = tmp_path / "receipt.json"
    path.write_text(r.text)
    public_key = sorted((stack.audit_keys_dir / "public").glob("*.pub.pem"))[-1]
    code, out = await verify_receipt_cli(stack, path, "--public-key", str(public_key))
    assert code == 0 and f"OK: tenant {t.id} purged" in out and datakeys.fingerprint(key) in out, out
    assert "signature checked" in out
    code, out = await verify_receipt_cli(stack, path)
    assert code == 0 and "NOT checked" in out, out

    # A receipt that claims fewer rows, or one checked against another key, does not verify.
    forged = json.loads(r.text)
    forged["receipt"]["events"][0]["diff"]["rows_deleted"] = 1
    path.write_text(json.dumps(forged))
    code, out = await verify_receipt_cli(stack, path, "--public-key", str(public_key))
    assert code == 1 and "INVALID" in out and "hash does not match" in out, out
    path.write_text(r.text)
    stranger = tmp_path / "stranger.pub.pem"
    stranger.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    code, out = await verify_receipt_cli(stack, path, "--public-key", str(stranger))
    assert code == 1 and "not signed by this key" in out, out
    path.write_text("[1, 2]")
    code, out = await verify_receipt_cli(stack, path)
    assert code == 2 and "not a JSON object" in out, out

    # Only a platform admin names another tenant; a tenant's own owner cannot fetch someone else's.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await audit(world).GetPurgeReceipt(asp.GetPurgeReceiptRequest(tenant_id=t.id), metadata=world.b.owner.metadata)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND  # bound to their own (live) tenant: nothing of t
    await audit_settled()
