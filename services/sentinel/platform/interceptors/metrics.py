"""RED metrics per RPC: requests, errors and duration, labelled by service/method/code; and the
same call counted for its tenant (sentinel.platform.usage), which no Prometheus label may carry."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import grpc

from sentinel.platform import db, metrics, usage
from sentinel.platform.calls import Call


def method_label(call: Call) -> str:
    # Unknown methods collapse into one label value so clients cannot inflate cardinality.
    return call.method.rsplit(".", 1)[-1] if call.rpc else "unknown"


def final_code(call: Call, exc: BaseException | None) -> grpc.StatusCode:
    code = call.context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(exc, asyncio.CancelledError):
        # The client went away (reset the stream, or its deadline passed) and grpc cancelled the
        # handler: CANCELLED, not UNKNOWN, which the SLOs count as a server error.
        return grpc.StatusCode.CANCELLED
    if exc is not None:
        return grpc.StatusCode.UNKNOWN
    return grpc.StatusCode.OK


class MetricsInterceptor:
    def __init__(self, service: str) -> None:
        self.service = service
        self.in_flight = metrics.IN_FLIGHT.labels(service)

    @contextlib.asynccontextmanager
    async def scope(self, call: Call) -> AsyncIterator[None]:
        method = method_label(call)
        self.in_flight.inc()
        exc: BaseException | None = None
        with db.transaction_time() as spent:
            try:
                yield
            except BaseException as e:
                exc = e
                raise
            finally:
                self._record(call, method, exc, spent.seconds)

    def _record(self, call: Call, method: str, exc: BaseException | None, db_seconds: float) -> None:
        self.in_flight.dec()
        code = final_code(call, exc)
        call.code = code
        elapsed = time.perf_counter() - call.start
        metrics.DURATION.labels(self.service, method).observe(elapsed)
        if usage.recorder is not None:
            usage.recorder.record(call.db_tenant_id or call.audit.tenant_id, code, elapsed, db_seconds)
        metrics.REQUESTS.labels(self.service, method, code.name).inc()
        if code is not grpc.StatusCode.OK:
            metrics.ERRORS.labels(self.service, method, code.name).inc()
