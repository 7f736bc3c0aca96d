"""AuditService queries: typed filters, both orders, cursor pagination, chain verification over
gRPC and REST; admins of a tenant see their tenant only, platform admins the tenant they name."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
from sentinel.audit.v1 import audit_pb2
from sentinel.audit.v1 import audit_service_pb2 as asp
from sentinel.audit.v1 import audit_service_pb2_grpc as asg
from sentinel.platform.auth import PLATFORM_TENANT_ID

from tests.integration.conftest import World, append_audit_event, audit_settled, make_tenant

pytestmark = pytest.mark.integration


def audit(world: World) -> Any:
    return asg.AuditServiceStub(world.channels["audit"])


async def seeded(world: World) -> Any:
    t = await make_tenant(world.channels, world.admin, "audq")
    for i in range(7):
        await append_audit_event(t.id, action="user.create" if i % 2 == 0 else "user.delete", actor_type="user",
                                 actor_id=t.owner.user_id, target_type="user", target_id=f"u{i}",
                                 outcome="success" if i != 3 else "failure", diff={"i": i})
    return t


async def test_list_filters_orders_and_pages(world: World) -> None:
    t = await seeded(world)
    md = t.owner.metadata
    newest = (await audit(world).ListAuditEvents(asp.ListAuditEventsRequest(), metadata=md)).events
    sequences = [e.sequence for e in newest]
    assert sequences == list(range(t.audit_base + 7, 0, -1))
    oldest = (await audit(world).ListAuditEvents(asp.ListAuditEventsRequest(order=asp.SORT_ORDER_OLDEST_FIRST),
                                                 metadata=md)).events
    assert [e.sequence for e in oldest] == sorted(sequences)
    deletes = (await audit(world).ListAuditEvents(asp.ListAuditEventsRequest(
        filter=asp.AuditFilter(action="user.delete")), metadata=md)).events
    assert {e.action for e in deletes} == {"user.delete"} and len(deletes) == 3
    failed = (await audit(world).ListAuditEvents(asp.ListAuditEventsRequest(
        filter=asp.AuditFilter(outcome=audit_pb2.OUTCOME_FAILURE)), metadata=md)).events
    assert [e.target.id for e in failed] == ["u3"] and failed[0].diff["i"] == 3
    # Pages of 3 walk every event once, newest first.
    seen, token = [], ""
    while True:
        page = await audit(world).ListAuditEvents(asp.ListAuditEventsRequest(page_size=3, page_token=token),
                                                  metadata=md)
        seen += [e.sequence for e in page.events]
        token = page.next_page_token
        if not token:
            break
    assert seen == sequences
    with pytest.raises(grpc.aio.AioRpcError) as err:  # a token is bound to its filter
        await audit(world).ListAuditEvents(asp.ListAuditEventsRequest(
            page_size=3, page_token=(await audit(world).ListAuditEvents(
                asp.ListAuditEventsRequest(page_size=3), metadata=md)).next_page_token,
            filter=asp.AuditFilter(action="user.create")), metadata=md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_who_sees_what(world: World) -> None:
    t = await seeded(world)
    with pytest.raises(grpc.aio.AioRpcError) as err:  # members do not read the audit trail
        await audit(world).ListAuditEvents(asp.ListAuditEventsRequest(), metadata=t.member.metadata)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # The owner of another tenant naming this one sees their own tenant's events, not these.
    other = (await audit(world).ListAuditEvents(asp.ListAuditEventsRequest(tenant_id=t.id),
                                                metadata=world.b.owner.metadata)).events
    assert {e.tenant_id for e in other} == {world.b.id}
    # A platform administrator reads the tenant they name.
    named = (await audit(world).ListAuditEvents(asp.ListAuditEventsRequest(tenant_id=t.id),
                                                metadata=world.admin.metadata)).events
    assert {e.tenant_id for e in named} == {t.id} and len(named) == t.audit_base + 7
    one = (await audit(world).GetAuditEvent(asp.GetAuditEventRequest(id=named[0].id, tenant_id=t.id),
                                            metadata=world.admin.metadata)).event
    assert one == named[0]
    # Both reads by the platform administrator are in the tenant's own trail; the owner's
    # and the other tenant's reads (their own business) are not.
    await audit_settled()
    access = (await audit(world).ListAuditEvents(asp.ListAuditEventsRequest(
        filter=asp.AuditFilter(action="platform.access")), metadata=t.owner.metadata)).events
    assert [e.diff["method"] for e in access] == ["/sentinel.audit.v1.AuditService/GetAuditEvent",
                                                  "/sentinel.audit.v1.AuditService/ListAuditEvents"]
    assert {(e.actor.type, e.actor.id, e.actor.tenant_id, e.target.type, e.target.id) for e in access} == {
        (audit_pb2.ACTOR_TYPE_USER, world.admin.user_id, str(PLATFORM_TENANT_ID), "tenant", t.id)}
    assert access[0].diff["id"] == named[0].id  # what was read


async def test_verification_over_grpc_and_rest_finds_tampering(world: World, stack: Any) -> None:
    t = await seeded(world)
    reply = await audit(world).VerifyAuditChain(asp.VerifyAuditChainRequest(), metadata=t.owner.metadata)
    assert reply.valid and reply.events_checked == t.audit_base + 7 and reply.head.sequence == t.audit_base + 7
    conn = await asyncpg.connect(stack.owner_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        async with conn.transaction():  # the owner role rewrites history
            await conn.execute("SELECT set_config('sentinel.tenant_id', $1, true)", t.id)
            await conn.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
            await conn.execute("UPDATE audit_events SET outcome = 'success' WHERE target_id = 'u3'")
            await conn.execute("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only")
    finally:
        await conn.close()
    async with httpx.AsyncClient(base_url=stack.rest_url, timeout=10) as http:
        r = await http.get("/api/v1/audit:verify", headers=t.owner.headers)
        assert r.status_code == 200, r.text
        body = r.json()
    assert body["valid"] is False and body["reason"] == "hash does not match the event's contents"
    u3 = (await audit(world).ListAuditEvents(asp.ListAuditEventsRequest(
        filter=asp.AuditFilter(target_id="u3")), metadata=t.owner.metadata)).events[0]
    assert int(body["first_broken_sequence"]) == u3.sequence
    # Other tenants' chains are untouched.
    assert (await audit(world).VerifyAuditChain(asp.VerifyAuditChainRequest(),
                                                metadata=world.b.owner.metadata)).valid


async def test_bad_queries_are_400(world: World, stack: Any) -> None:
    async with httpx.AsyncClient(base_url=stack.rest_url, timeout=10, headers=world.a.owner.headers) as http:
        for query in ("filter.start_time=2026-12-03T00:00:00Z&filter.end_time=2026-12-02T00:00:00Z",
                      "page_token=forged", "page_size=-1"):
            r = await http.get(f"/api/v1/audit/events?{query}")
            assert r.status_code == 400, (query, r.text)
        r = await http.get(f"/api/v1/audit/events/{uuid.uuid4()}")
        assert r.status_code == 404


async def test_an_export_over_rest_is_ndjson_and_verifies_offline(world: World, stack: Any, tmp_path: Any,
                                                                  kernel_db: None) -> None:
    import asyncio
    import sys

    from sentinel.audit import store
    from sentinel.platform import db

    t = await seeded(world)
    tenant = uuid.UUID(t.id)
    async with db.unit_of_work(tenant_id=tenant, platform=False) as session:  # more than one export page
        await store.append(session, tenant, [{"action": "bulk.event", "diff": {"i": i}} for i in range(1200)])
    async with httpx.AsyncClient(base_url=stack.rest_url, timeout=30, headers=t.owner.headers) as http:
        async with http.stream("GET", "/api/v1/audit/events:export") as r:
            assert r.status_code == 200
            lines = [line async for line in r.aiter_lines() if line.strip()]
        # Signed checkpoints come first (the verifier needs them before the events).
        checkpoint_lines = [line for line in lines if line.startswith('{"checkpoint":')]
        assert lines[:len(checkpoint_lines)] == checkpoint_lines
        # Another tenant's owner naming this tenant exports their own trail.
        other = await http.get("/api/v1/audit/events:export", params={"tenant_id": t.id},
                               headers=world.b.owner.headers)
        assert t.id not in other.text and world.b.id in other.text
    total = t.audit_base + 1207
    assert len(lines) - len(checkpoint_lines) == total
    assert all(line.startswith('{"event":') for line in lines[len(checkpoint_lines):])
    export = tmp_path / "export.ndjson"
    export.write_text("\n".join(lines) + "\n")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "sentinel", "audit", "verify", str(export),
                                                env={"PATH": "/usr/bin:/bin"}, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0 and f"OK: {total} event(s)" in out.decode(), out
    # gRPC: the same stream; a filter narrows it.
    stream = audit(world).ExportAuditEvents(asp.ExportAuditEventsRequest(filter=asp.AuditFilter(action="bulk.event")),
                                            metadata=t.owner.metadata)
    assert [m.event.action async for m in stream if m.HasField("event")] == ["bulk.event"] * 1200


async def test_a_stream_follows_new_events_and_ends_when_the_session_does(world: World, kernel_db: None) -> None:
    import asyncio

    from sentinel.user.v1 import user_service_pb2 as usp
    from sentinel.user.v1 import user_service_pb2_grpc as usg

    t = await seeded(world)  # 7 old events: not sent with after_sequence=0
    stream = audit(world).StreamAuditEvents(asp.StreamAuditEventsRequest(), metadata=t.owner.metadata)
    received: list[str] = []
    three = asyncio.Event()

    async def follow() -> grpc.StatusCode:
        try:
            async for message in stream:
                received.append(message.event.action)
                if len(received) == 3:
                    three.set()
        except grpc.aio.AioRpcError as err:
            return err.code()
        return grpc.StatusCode.OK

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.5)  # the stream has taken its starting point
    for i in range(3):
        await append_audit_event(t.id, action=f"live.{i}")
    await asyncio.wait_for(three.wait(), 5)
    assert received == ["live.0", "live.1", "live.2"]
    await usg.AuthServiceStub(world.channels["user"]).Logout(usp.LogoutRequest(), metadata=t.owner.metadata)
    assert await asyncio.wait_for(task, 3) == grpc.StatusCode.UNAUTHENTICATED


async def test_a_suspended_tenants_trail_stays_readable_to_platform_admins(world: World) -> None:
    import asyncio

    from sentinel.tenant.v1 import tenant_service_pb2 as tsp
    from sentinel.tenant.v1 import tenant_service_pb2_grpc as tsg

    t = await seeded(world)
    tenants = tsg.TenantServiceStub(world.channels["tenant"])
    await tenants.SuspendTenant(tsp.SuspendTenantRequest(id=t.id, reason="audit review"), metadata=world.admin.metadata)
    for _ in range(50):  # the tenant's own owner is out within a second ...
        try:
            await audit(world).ListAuditEvents(asp.ListAuditEventsRequest(), metadata=t.owner.metadata)
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the suspended tenant's owner still reads the trail")
    # ... while a platform administrator still reads and verifies it, the suspension in it.
    await audit_settled()
    events = (await audit(world).ListAuditEvents(asp.ListAuditEventsRequest(tenant_id=t.id),
                                                 metadata=world.admin.metadata)).events
    assert len(events) == t.audit_base + 8
    assert (events[0].action, events[0].actor.id, events[0].diff["reason"]) == (
        "tenant.suspend", world.admin.user_id, "audit review")
    assert (await audit(world).VerifyAuditChain(asp.VerifyAuditChainRequest(tenant_id=t.id),
                                                metadata=world.admin.metadata)).valid
