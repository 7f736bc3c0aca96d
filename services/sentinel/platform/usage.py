"""Per-tenant usage counts: what each tenant's SLOs and the noisy-neighbour ranking are made of.

Prometheus labels never carry a tenant id (unbounded cardinality), so the metrics interceptor
also counts every call here, in memory, by (tenant, minute): requests, server errors, non-OK
answers, calls slower than the latency SLO, seconds spent handling them, and seconds their
transactions held a database connection (the tenant's load on Postgres). A background task
adds the counts to ``tenant_usage_minutes`` and ``tenant_usage_hours`` every
``SENTINEL_USAGE_FLUSH_SECONDS`` in one platform-scope transaction (an upsert that adds, so every
instance of every service contributes to the same rows). If the database is unreachable the
counts stay in memory and go with the next flush; past :data:`MAX_PENDING` keys new ones are
dropped and counted (``sentinel_tenant_usage_dropped_total``), never blocking a call.

The call's tenant is the one it ran in; a call that ran in none (a login) counts for the tenant
its handler resolved (the audit note's), and calls of no tenant at all are not counted.

The job worker counts each on-demand job's run as ``service = 'worker'`` work: handling and
database time, but no request (a job is not a call: it must not move the tenant's SLOs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
from prometheus_client import Counter
from sqlalchemy import text

from sentinel.platform import db, slo
from sentinel.platform.auth import PLATFORM_TENANT_ID

log = logging.getLogger("sentinel.usage")

#: Distinct (tenant, minute) keys held between flushes at most.
MAX_PENDING = 100_000

FLUSHED = Counter("sentinel_tenant_usage_flushed_total", "Per-tenant usage rows written", ["service"])
DROPPED = Counter("sentinel_tenant_usage_dropped_total",
                  "Calls not counted in per-tenant usage (too many pending keys while the database was away)",
                  ["service"])
FLUSH_FAILURES = Counter("sentinel_tenant_usage_flush_failures_total", "Usage flushes that failed", ["service"])


@dataclass(slots=True)
class Counts:
    requests: int = 0
    server_errors: int = 0
    errors: int = 0
    slow: int = 0
    busy_seconds: float = 0.0
    db_seconds: float = 0.0

    def add(self, other: Counts) -> None:
        self.requests += other.requests
        self.server_errors += other.server_errors
        self.errors += other.errors
        self.slow += other.slow
        self.busy_seconds += other.busy_seconds
        self.db_seconds += other.db_seconds


Key = tuple[uuid.UUID, int]  # tenant, minute (Unix time // 60)

_UPSERT = """
    INSERT INTO {table} AS u (tenant_id, service, bucket, requests, server_errors, errors, slow, busy_seconds,
                              db_seconds)
    SELECT t.tenant_id, :service, {bucket}, sum(t.requests), sum(t.server_errors), sum(t.errors),
           sum(t.slow), sum(t.busy_seconds), sum(t.db_seconds)
    FROM unnest(CAST(:tenants AS uuid[]), CAST(:minutes AS timestamptz[]), CAST(:requests AS bigint[]),
                CAST(:server_errors AS bigint[]), CAST(:errors AS bigint[]), CAST(:slow AS bigint[]),
                CAST(:busy AS double precision[]), CAST(:db AS double precision[]))
         AS t (tenant_id, minute, requests, server_errors, errors, slow, busy_seconds, db_seconds)
    -- Only tenants that exist (a token of a purged tenant is refused anyway; this keeps the FK).
    WHERE EXISTS (SELECT 1 FROM tenants WHERE tenants.id = t.tenant_id)
    GROUP BY 1, 3 ORDER BY 1, 3
    ON CONFLICT (tenant_id, service, bucket) DO UPDATE SET
      requests = u.requests + EXCLUDED.requests, server_errors = u.server_errors + EXCLUDED.server_errors,
      errors = u.errors + EXCLUDED.errors, slow = u.slow + EXCLUDED.slow,
      busy_seconds = u.busy_seconds + EXCLUDED.busy_seconds, db_seconds = u.db_seconds + EXCLUDED.db_seconds"""
_MINUTES = text(_UPSERT.format(table="tenant_usage_minutes", bucket="t.minute"))
_HOURS = text(_UPSERT.format(table="tenant_usage_hours", bucket="date_trunc('hour', t.minute)"))
#: Instances of one service flush one at a time: their upserts touch the same rows in any order.
_TURN = text("SELECT pg_advisory_xact_lock(hashtext('sentinel.tenant_usage.' || :service))")


class Recorder:
    """The counts of one process since its last flush."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.pending: dict[Key, Counts] = {}
        self._dropped = DROPPED.labels(service)
        self._lock = threading.Lock()  # the job worker records from several threads

    def _counts(self, tenant_id: uuid.UUID, now: float | None) -> Counts | None:
        key = (tenant_id, int((time.time() if now is None else now) // 60))
        counts = self.pending.get(key)
        if counts is None:
            if len(self.pending) >= MAX_PENDING:
                self._dropped.inc()
                return None
            counts = self.pending[key] = Counts()
        return counts

    def record(self, tenant_id: uuid.UUID | None, code: grpc.StatusCode, seconds: float,
               db_seconds: float = 0.0, now: float | None = None) -> None:
        """One call of ``tenant_id``: its outcome, handling time and database time."""
        if tenant_id is None:
            return
        with self._lock:
            counts = self._counts(tenant_id, now)
            if counts is None:
                return
            counts.requests += 1
            if code is not grpc.StatusCode.OK:
                counts.errors += 1
                if code in slo.SERVER_ERROR_CODES:
                    counts.server_errors += 1
            if seconds > slo.LATENCY_THRESHOLD_SECONDS:
                counts.slow += 1
            counts.busy_seconds += seconds
            counts.db_seconds += db_seconds

    def record_work(self, tenant_id: uuid.UUID, seconds: float, db_seconds: float, now: float | None = None) -> None:
        """Work done for ``tenant_id`` that is not a call (a job's run): time only, no request."""
        with self._lock:
            counts = self._counts(tenant_id, now)
            if counts is not None:
                counts.busy_seconds += seconds
                counts.db_seconds += db_seconds

    def take(self) -> dict[Key, Counts]:
        with self._lock:
            taken, self.pending = self.pending, {}
        return taken

    def give_back(self, taken: dict[Key, Counts]) -> None:
        """Counts a failed flush could not write, merged into what came in meanwhile."""
        with self._lock:
            for key, counts in taken.items():
                current = self.pending.get(key)
                if current is not None:
                    current.add(counts)
                elif len(self.pending) < MAX_PENDING:
                    self.pending[key] = counts
                else:
                    self._dropped.inc(counts.requests)

    async def flush(self) -> int:
        """Write what was counted; returns the minute rows written. On failure nothing is lost
        (the counts return to memory) and the error propagates."""
        taken = self.take()
        if not taken:
            return 0
        keys = sorted(taken)
        params = {
            "service": self.service,
            "tenants": [k[0] for k in keys],
            "minutes": [datetime.fromtimestamp(k[1] * 60, UTC) for k in keys],
            "requests": [taken[k].requests for k in keys],
            "server_errors": [taken[k].server_errors for k in keys],
            "errors": [taken[k].errors for k in keys],
            "slow": [taken[k].slow for k in keys],
            "busy": [taken[k].busy_seconds for k in keys],
            "db": [taken[k].db_seconds for k in keys],
        }
        try:
            async with db.unit_of_work(tenant_id=PLATFORM_TENANT_ID, platform=True) as session:
                await session.execute(_TURN, {"service": self.service})
                written = int((await session.execute(_MINUTES, params)).rowcount)  # type: ignore[attr-defined]
                await session.execute(_HOURS, params)
        except BaseException:
            self.give_back(taken)
            raise
        FLUSHED.labels(self.service).inc(written)
        return written


#: This process's recorder (one service per process); None until :func:`start` (tests, CLIs).
recorder: Recorder | None = None


def start(service: str) -> Recorder:
    global recorder
    recorder = Recorder(service)
    return recorder


async def run_flusher(rec: Recorder, every_seconds: float) -> None:
    """Flush every ``every_seconds``; on cancellation, one last flush (bounded) of what is left."""
    failures = FLUSH_FAILURES.labels(rec.service)
    try:
        while True:
            await asyncio.sleep(every_seconds)
            try:
                await rec.flush()
            except Exception:
                failures.inc()
                log.warning("tenant usage flush failed; the counts are kept for the next one", exc_info=True)
    finally:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(rec.flush(), timeout=5)
