"""AuditService handlers: append other services' events, and query, verify, export and follow
a tenant's chain.

RLS binds every query to the call's tenant (a platform administrator may name one with
``tenant_id``). AppendEvents is internal: only other Sentinel services, presenting their own
service token, deliver events, drained from their outboxes (sentinel.platform.outbox).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from sqlalchemy import Select, func, select, text

from sentinel.audit import checkpoints, receipts, store
from sentinel.audit.convert import OUTCOME, checkpoint_proto, from_proto, to_proto
from sentinel.audit.models import AuditEventRow
from sentinel.audit.v1 import audit_pb2, audit_service_pb2, audit_service_pb2_grpc
from sentinel.platform import db, revocation
from sentinel.platform.auth import PLATFORM_TENANT_ID
from sentinel.platform.calls import require_call
from sentinel.platform.errors import FieldViolation, InvalidArgument, NotFound, Unauthenticated
from sentinel.platform.ids import parse_uuid
from sentinel.platform.pagination import page_size
from sentinel.platform.server import Runtime, ServiceSpec

pb = audit_service_pb2
log = logging.getLogger("sentinel.audit")
Context = grpc.aio.ServicerContext[Any, Any]
def filtered(query: Select[Any], f: pb.AuditFilter) -> Select[Any]:
    for column, value in ((AuditEventRow.actor_id, f.actor_id), (AuditEventRow.action, f.action),
                          (AuditEventRow.target_type, f.target_type), (AuditEventRow.target_id, f.target_id)):
        if value:
            query = query.where(column == value)
    if f.outcome:
        query = query.where(AuditEventRow.outcome == OUTCOME.text(f.outcome, "filter.outcome"))
    if f.HasField("start_time"):
        query = query.where(AuditEventRow.event_time >= f.start_time.ToDatetime(tzinfo=dt.UTC))
    if f.HasField("end_time"):
        query = query.where(AuditEventRow.event_time < f.end_time.ToDatetime(tzinfo=dt.UTC))
    both = f.HasField("start_time") and f.HasField("end_time")
    if both and f.end_time.ToNanoseconds() <= f.start_time.ToNanoseconds():
        raise InvalidArgument("filter.end_time must be after filter.start_time",
                              [FieldViolation("filter.end_time", "not after start_time")])
    return query


def load_signer(runtime: Runtime) -> checkpoints.CheckpointSigner | None:
    path = runtime.settings.audit_signing_key_file
    return checkpoints.CheckpointSigner.from_file(path) if path else None


class AuditApi(audit_service_pb2_grpc.AuditServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.page_tokens = runtime.page_tokens
        self.signer = load_signer(runtime)
        self.checkpoint_seconds = runtime.settings.audit_checkpoint_seconds

    async def ListAuditEvents(self, request: pb.ListAuditEventsRequest, context: Context) -> pb.ListAuditEventsResponse:
        call = require_call()
        size = page_size(request.page_size)
        oldest_first = request.order == pb.SORT_ORDER_OLDEST_FIRST
        scope = "ListAuditEvents|" + request.filter.SerializeToString(deterministic=True).hex() + f"|{oldest_first}"
        after = self.page_tokens.decode_position(request.page_token, tenant=call.tenant_id, scope=scope)
        query = filtered(select(AuditEventRow), request.filter)
        column = AuditEventRow.sequence
        if after is not None:
            query = query.where(column > after if oldest_first else column < after)
        query = query.order_by(column if oldest_first else column.desc()).limit(size + 1)
        async with db.unit_of_work() as session:
            rows = list((await session.scalars(query)).all())
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            token = self.page_tokens.encode_position(rows[-1].sequence, tenant=call.tenant_id, scope=scope)
        return pb.ListAuditEventsResponse(events=[to_proto(r) for r in rows], next_page_token=token)

    async def GetAuditEvent(self, request: pb.GetAuditEventRequest, context: Context) -> pb.GetAuditEventResponse:
        event_id = parse_uuid(request.id, "id")
        async with db.unit_of_work() as session:
            row = await session.scalar(select(AuditEventRow).where(AuditEventRow.id == event_id))
        if row is None:
            raise NotFound(f"audit event {event_id} not found", reason="AUDIT_EVENT_NOT_FOUND")
        return pb.GetAuditEventResponse(event=to_proto(row))

    async def VerifyAuditChain(self, request: pb.VerifyAuditChainRequest,
                               context: Context) -> pb.VerifyAuditChainResponse:
        call = require_call()
        assert call.tenant_id is not None
        if request.from_sequence < 0:
            raise InvalidArgument("from_sequence must not be negative", [FieldViolation("from_sequence", "negative")])
        cps = await checkpoints.list_for(call.tenant_id)
        key = self.signer.public_key() if self.signer else None
        forged = [cp for cp in cps if key is not None and not checkpoints.authentic(cp, key)]
        if forged:
            return pb.VerifyAuditChainResponse(
                valid=False, first_broken_sequence=int(forged[0]["sequence"]),
                reason="the checkpoint at this sequence is not signed by the audit service's key")
        verdict = await store.verify_tenant(call.tenant_id, from_sequence=request.from_sequence,
                                            checkpoints=checkpoints.trusted_heads(cps, key))
        return pb.VerifyAuditChainResponse(
            valid=verdict.ok, events_checked=verdict.checked, first_broken_sequence=verdict.broken_sequence,
            reason=verdict.problem,
            head=audit_pb2.Checkpoint(tenant_id=str(call.tenant_id), sequence=verdict.head_sequence,
                                      hash=verdict.head_hash))


    async def GetPurgeReceipt(self, request: pb.GetPurgeReceiptRequest,
                              context: Context) -> pb.GetPurgeReceiptResponse:
        call = require_call()
        assert call.tenant_id is not None
        receipt = await receipts.build(call.tenant_id, self.checkpoint_seconds)
        return pb.GetPurgeReceiptResponse(receipt=receipt)

    async def AppendEvents(self, request: pb.AppendEventsRequest, context: Context) -> pb.AppendEventsResponse:
        """Link a batch of other services' events onto their tenants' chains (one transaction per
        tenant), skipping events already appended: a drainer that lost our answer sends them again."""
        if len(request.events) > MAX_APPEND:
            raise InvalidArgument(f"at most {MAX_APPEND} events per call", [FieldViolation("events", "too many")])
        by_tenant: dict[uuid.UUID, list[dict[str, Any]]] = {}
        for i, event in enumerate(request.events):
            by_tenant.setdefault(checked_tenant(event, i), []).append(from_proto(event))
        async with db.unit_of_work(tenant_id=PLATFORM_TENANT_ID, platform=True) as session:
            known = set(await session.scalars(_TENANTS, {"ids": list(by_tenant)}))
        if unknown := [t for t in by_tenant if t not in known]:
            raise InvalidArgument(f"tenant {unknown[0]} does not exist",
                                  [FieldViolation("events.tenant_id", "unknown tenant")])
        appended = 0
        for tenant_id, events in by_tenant.items():  # one transaction per tenant chain
            async with db.unit_of_work(tenant_id=tenant_id, platform=False) as session:
                appended += len(await store.append(session, tenant_id, events, skip_known=True))
        return pb.AppendEventsResponse(appended=appended, duplicates=len(request.events) - appended)

    async def ListCheckpoints(self, request: pb.ListCheckpointsRequest,
                              context: Context) -> pb.ListCheckpointsResponse:
        call = require_call()
        assert call.tenant_id is not None
        size = page_size(request.page_size)
        after = self.page_tokens.decode_position(request.page_token, tenant=call.tenant_id,
                                                 scope="ListCheckpoints") or 0
        rows = [cp for cp in await checkpoints.list_for(call.tenant_id) if int(cp["sequence"]) > after]
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            token = self.page_tokens.encode_position(int(rows[-1]["sequence"]), tenant=call.tenant_id,
                                                     scope="ListCheckpoints")
        return pb.ListCheckpointsResponse(checkpoints=[checkpoint_proto(cp) for cp in rows], next_page_token=token)

    async def ExportAuditEvents(self, request: pb.ExportAuditEventsRequest,
                                context: Context) -> AsyncIterator[pb.ExportAuditEventsResponse]:
        """Oldest first, a page per short transaction: any size streams in constant memory."""
        call = require_call()
        assert call.tenant_id is not None
        for cp in await checkpoints.list_for(call.tenant_id):  # first: a verifier needs them up front
            yield pb.ExportAuditEventsResponse(checkpoint=checkpoint_proto(cp))
        query = filtered(select(AuditEventRow), request.filter).order_by(AuditEventRow.sequence)
        after = 0
        while True:
            async with db.unit_of_work() as session:
                rows = list((await session.scalars(
                    query.where(AuditEventRow.sequence > after).limit(EXPORT_PAGE))).all())
            for row in rows:
                yield pb.ExportAuditEventsResponse(event=to_proto(row))
            if len(rows) < EXPORT_PAGE:
                return
            after = rows[-1].sequence

    async def StreamAuditEvents(self, request: pb.StreamAuditEventsRequest,
                                context: Context) -> AsyncIterator[pb.StreamAuditEventsResponse]:
        """Follow the chain: poll for events after the last one sent (short transactions).

        The caller's credential is re-checked on every round, so a revoked session or key, or a
        suspended tenant, ends the stream within a poll interval instead of following forever.
        """
        call = require_call()
        if request.after_sequence < 0:
            raise InvalidArgument("after_sequence must not be negative",
                                  [FieldViolation("after_sequence", "negative")])
        column = AuditEventRow.sequence
        after = request.after_sequence
        if after == 0:  # only new events
            async with db.unit_of_work() as session:
                after = int(await session.scalar(select(func.coalesce(func.max(column), 0))) or 0)
        while True:
            still_allowed(call)
            async with db.unit_of_work() as session:
                rows = list((await session.scalars(
                    select(AuditEventRow).where(column > after).order_by(column).limit(STREAM_BATCH))).all())
            for row in rows:
                yield pb.StreamAuditEventsResponse(event=to_proto(row))
            if rows:
                after = rows[-1].sequence
            if len(rows) < STREAM_BATCH:
                await asyncio.sleep(STREAM_POLL_SECONDS)


def checked_tenant(event: audit_pb2.AuditEvent, i: int) -> uuid.UUID:
    """Refuse an event that cannot be a faithful record: the whole batch, before any write."""
    where = f"events[{i}]"
    tenant_id = parse_uuid(event.tenant_id, f"{where}.tenant_id")
    parse_uuid(event.id, f"{where}.id")
    problems = [FieldViolation(f"{where}.{name}", problem) for name, problem, bad in (
        ("action", "is required (at most 100 characters)", not event.action or len(event.action) > 100),
        ("event_time", "is required", not event.HasField("event_time")),
        ("outcome", "is required", not event.outcome),
        ("sequence", "is assigned by the audit service", event.sequence != 0),
        ("hash", "is computed by the audit service", bool(event.hash or event.prev_hash)),
    ) if bad]
    if problems:
        raise InvalidArgument(f"{where} is not a valid audit event: {problems[0].field} {problems[0].description}",
                              problems)
    return tenant_id


def still_allowed(call: Any) -> None:
    principal = call.principal
    if principal.session_id and revocation.revoked.is_revoked(principal.session_id):
        raise Unauthenticated("the session or key behind this stream has been revoked", reason="SESSION_REVOKED")
    blocked = None if principal.is_service else revocation.tenants.blocked(principal.tenant_id)
    if blocked is not None:
        raise blocked.refusal(principal.tenant_id, own=True)


MAX_APPEND = 5000
_TENANTS = text("SELECT id FROM tenants WHERE id = ANY(:ids)")
EXPORT_PAGE = 1000
STREAM_BATCH = 500
STREAM_POLL_SECONDS = 0.25


async def sign_checkpoints(runtime: Runtime) -> None:
    """Every audit_checkpoint_seconds, sign the head of each chain that grew."""
    signer = load_signer(runtime)
    if signer is None:
        log.warning("no SENTINEL_AUDIT_SIGNING_KEY_FILE: audit checkpoints are not signed")
        return
    while True:
        try:
            made = await checkpoints.checkpoint_all(signer)
            if made:
                log.info("audit checkpoints signed", extra={"tenants": made})
        except Exception:  # a database hiccup: try again next round
            log.exception("audit checkpoints not signed this round")
        await asyncio.sleep(runtime.settings.audit_checkpoint_seconds)


def spec() -> ServiceSpec:
    def register(server: grpc.aio.Server, runtime: Runtime) -> None:
        audit_service_pb2_grpc.add_AuditServiceServicer_to_server(AuditApi(runtime), server)

    return ServiceSpec(
        name="audit",
        implements=[audit_service_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name],
        register=register,
        background=sign_checkpoints,
    )
