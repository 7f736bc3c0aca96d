"""What only Sentinel knows about a call, on its server span: the request id (Envoy's
``x-request-id``, also in the access log), the tenant and the kind of caller. The span itself is
opened by OpenTelemetry's server interceptor in front of the chain (``sentinel.platform.tracing``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from opentelemetry import trace

from sentinel.platform.calls import Call


class TracingInterceptor:
    @contextlib.asynccontextmanager
    async def scope(self, call: Call) -> AsyncIterator[None]:
        span = trace.get_current_span()
        if not span.is_recording():  # tracing off, or this call is not sampled
            yield
            return
        span.set_attribute("sentinel.request_id", call.request_id)
        try:
            yield
        finally:
            if call.tenant_id is not None:
                span.set_attribute("sentinel.tenant_id", str(call.tenant_id))
            if call.principal is not None:
                span.set_attribute("sentinel.principal.kind", call.principal.kind)
