"""One JSON access-log line per RPC."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator

from sentinel.platform.calls import Call
from sentinel.platform.interceptors.metrics import final_code

log = logging.getLogger("sentinel.access")


class LoggingInterceptor:
    def __init__(self, service: str) -> None:
        self.service = service

    @contextlib.asynccontextmanager
    async def scope(self, call: Call) -> AsyncIterator[None]:
        exc: BaseException | None = None
        try:
            yield
        except BaseException as e:
            exc = e
            raise
        finally:
            code = final_code(call, exc)
            principal = call.principal
            log.info(
                "rpc",
                extra={
                    "method": call.method,
                    "code": code.name,
                    "duration_ms": round((time.perf_counter() - call.start) * 1000, 3),
                    "request_id": call.request_id,
                    "tenant_id": str(call.tenant_id) if call.tenant_id else None,
                    "principal": principal.subject if principal else None,
                    "peer": call.peer_ip,
                },
            )
