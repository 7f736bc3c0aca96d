"""The audit outbox drainer: sends recorded events to AuditService.AppendEvents in batches.

Every service with a database runs one. One at a time drains (a transaction-scoped advisory
lock: the others stand by), so events reach each chain in the order they were recorded. It
claims the oldest pending rows (``FOR UPDATE SKIP LOCKED`` as a second guard), sends them
in one AppendEvents call, and deletes them in the same transaction once the audit service has
answered. If the audit service is down the transaction rolls back and the rows wait; if it
appended but the answer was lost, the rows are sent again and the audit service skips them by
event id. So no event is lost and none is recorded twice.

It wakes at once when its own process has committed events, and polls every
``SENTINEL_AUDIT_OUTBOX_POLL_SECONDS`` for the rest (other processes, CLI tools, retries).
A batch the audit service refuses as invalid is split; each refused event is marked with the
error (a dead letter for an operator, counted in metrics) and the others go through.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from google.protobuf import json_format
from prometheus_client import Counter, Gauge
from sqlalchemy import text

from sentinel.audit.v1 import audit_pb2, audit_service_pb2, audit_service_pb2_grpc
from sentinel.platform import auditlog, clients, db, tracing
from sentinel.platform.auth import PLATFORM_TENANT_ID
from sentinel.platform.service_identity import ServiceTokens

log = logging.getLogger("sentinel.outbox")

#: One drainer at a time across all processes: events reach each chain in the order recorded.
_TURN = text("SELECT pg_try_advisory_xact_lock(hashtext('sentinel.audit_outbox'))")
_CLAIM = text("SELECT id, event FROM audit_outbox WHERE error IS NULL ORDER BY id LIMIT :limit "
              "FOR UPDATE SKIP LOCKED")
_DELETE = text("DELETE FROM audit_outbox WHERE id = ANY(:ids)")
_DEAD = text("UPDATE audit_outbox SET error = :error WHERE id = :id")
_PENDING = text("SELECT count(*) FROM audit_outbox WHERE error IS NULL")

SENT = Counter("sentinel_audit_outbox_sent_total", "Audit events delivered to the audit service", ["service"])
FAILURES = Counter("sentinel_audit_outbox_failures_total",
                   "Outbox drain attempts that failed (audit service unreachable or erroring)", ["service"])
DEAD = Counter("sentinel_audit_outbox_dead_letters_total",
               "Audit events the audit service refused as invalid (left in the outbox with the error)",
               ["service"])
PENDING = Gauge("sentinel_audit_outbox_pending", "Audit events waiting in the outbox (last drain)", ["service"])

Send = Callable[[Sequence[audit_pb2.AuditEvent]], Awaitable[None]]
MAX_BACKOFF_SECONDS = 5.0
BUSY_RETRIES, BUSY_RETRY_SECONDS = 20, 0.05
LINGER_SECONDS = 0.1


def _event(raw: Any) -> audit_pb2.AuditEvent:
    data = json.loads(raw) if isinstance(raw, str) else raw
    return json_format.ParseDict(data, audit_pb2.AuditEvent())


class Drainer:
    def __init__(self, service: str, send: Send, *, batch: int, poll_seconds: float) -> None:
        self.service = service
        self.send = send
        self.batch = batch
        self.poll_seconds = poll_seconds
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def drain_once(self) -> int | None:
        """Send one batch: the number of rows it settled (0: the outbox is empty), None when
        another process has the turn."""
        async with db.unit_of_work(tenant_id=PLATFORM_TENANT_ID, platform=True) as session:
            if not await session.scalar(_TURN):
                return None
            rows = (await session.execute(_CLAIM, {"limit": self.batch})).all()
            if not rows:
                PENDING.labels(self.service).set(0)
                return 0
            PENDING.labels(self.service).set(len(rows))
            events = [_event(r.event) for r in rows]
            # A trace per batch (the polling before it starts none): AppendEvents and the audit
            # service's work are its children. Each event names the trace of its own call.
            with tracing.span("audit outbox send", attributes={"sentinel.audit.events": len(events)}):
                try:
                    await self.send(events)
                    done = [r.id for r in rows]
                except grpc.aio.AioRpcError as err:
                    if err.code() != grpc.StatusCode.INVALID_ARGUMENT:
                        raise
                    done = await self._one_by_one(session, rows, events)
                await session.execute(_DELETE, {"ids": done})
            SENT.labels(self.service).inc(len(done))
            return len(rows)

    async def _one_by_one(self, session: Any, rows: Sequence[Any], events: Sequence[audit_pb2.AuditEvent]) -> list[Any]:
        done = []
        for row, event in zip(rows, events, strict=True):
            try:
                await self.send([event])
                done.append(row.id)
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.INVALID_ARGUMENT:
                    raise
                log.error("audit event refused; left in the outbox", extra={"event_id": event.id,
                                                                           "error": err.details()})
                await session.execute(_DEAD, {"id": row.id, "error": (err.details() or "")[:1000]})
                DEAD.labels(self.service).inc()
        return done

    async def _count_pending(self) -> None:
        try:
            async with db.unit_of_work(tenant_id=PLATFORM_TENANT_ID, platform=True) as session:
                PENDING.labels(self.service).set(int(await session.scalar(_PENDING) or 0))
        except Exception:  # the database is down too: the failure counter already tells
            log.debug("outbox not counted", exc_info=True)

    async def _drain(self) -> None:
        busy = 0
        while True:
            settled = await self.drain_once()
            if settled is None:  # another drainer's turn: it may be finishing just before our rows
                busy += 1
                if busy > BUSY_RETRIES:
                    return
                await asyncio.sleep(BUSY_RETRY_SECONDS)
            elif settled < self.batch:
                return

    async def run(self) -> None:
        backoff = 0.0
        while True:
            try:
                await self._drain()
                backoff = 0.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                FAILURES.labels(self.service).inc()
                backoff = min(max(backoff * 2, 0.2), MAX_BACKOFF_SECONDS)
                log.warning("audit outbox not drained; retrying", extra={"error": repr(exc)[:300],
                                                                        "retry_in_seconds": backoff})
                await self._count_pending()
                await asyncio.sleep(backoff)
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_seconds)
                # Woken by a commit: linger a moment so the events of the calls right behind it go
                # in the same batch (fewer round trips, less work beside the calls being served).
                await asyncio.sleep(LINGER_SECONDS)


def grpc_sender(target: str, tokens: ServiceTokens, *, timeout: float = 10.0) -> Send:
    """AppendEvents on the audit service, as this service."""
    async def send(events: Sequence[audit_pb2.AuditEvent]) -> None:
        stub = audit_service_pb2_grpc.AuditServiceStub(clients.channel(target))
        await stub.AppendEvents(audit_service_pb2.AppendEventsRequest(events=list(events)),
                                metadata=tokens.metadata(), timeout=timeout)
    return send


async def run_drainer(service: str, send: Send, *, batch: int, poll_seconds: float) -> None:
    drainer = Drainer(service, send, batch=batch, poll_seconds=poll_seconds)
    auditlog.on_recorded.append(drainer.wake)
    try:
        await drainer.run()
    finally:
        auditlog.on_recorded.remove(drainer.wake)
