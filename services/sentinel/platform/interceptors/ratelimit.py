"""Tenant and principal rate limits, counted where the principal is known: in the service.

Runs after authentication, before the policy: a verified user or API key is counted against
its tenant's and its own limit for the call's class (auth, write, read; from the contracts), by
the tenant's plan, in the Redis every instance shares (``sentinel.ratelimit.limiter``). Over a
limit the call is refused with RESOURCE_EXHAUSTED (HTTP 429 through Envoy), ``Retry-After`` and
``RateLimit-*``. An admitted call carries ``RateLimit-*`` in its trailing metadata, and in its
response headers too once a counter is half used (Envoy shows REST clients the tightest of
these and its own address tier's).

Not counted: calls without a principal (login, refresh; Envoy's address tier covers them),
services calling each other, and platform administrators (operators must be able to act
during an incident whatever the tenants' limits are; every call of theirs is audited).

Why here and not in a rate-limit service Envoy asks per request: the services already hold the
verified principal, its tenant and its API key, so counting costs at most one Redis call (leases
make it rare); the extra gRPC hop per request cost more CPU than the call it guarded
(bench/README.md, "The rate-limit hop").
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from sentinel.platform.auth import PLATFORM_TENANT_ID
from sentinel.platform.calls import Call
from sentinel.platform.errors import ResourceExhausted
from sentinel.ratelimit.limiter import Limiter
from sentinel.ratelimit.rules import REFUSED_MESSAGE, class_of


class RateLimitInterceptor:
    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter

    @contextlib.asynccontextmanager
    async def scope(self, call: Call) -> AsyncIterator[None]:
        principal = call.principal
        if principal is None or principal.is_service or principal.tenant_id == PLATFORM_TENANT_ID:
            yield
            return
        # An API key is its own principal, whichever account it belongs to.
        who = f"k:{principal.session_id}" if principal.kind == "service_account" else f"u:{principal.subject}"
        decision = await self.limiter.decide(principal.tenant_id, who, class_of(call.method))
        headers = decision.headers()
        if decision.over_limit:
            refused = next(c for c in decision.counted if c.over)
            raise ResourceExhausted(REFUSED_MESSAGE, retry_after_seconds=float(headers["retry-after"]),
                                    reason="RATE_LIMITED", headers=headers,
                                    metadata={"tier": refused.tier, "class": refused.klass,
                                              "limit": str(refused.limit)})
        if headers:
            # Trailing metadata costs nothing (it goes with the status). Response headers (what
            # REST clients see) need an extra send, about 8 % of a GetUser's CPU, so they are
            # sent only once a counter is half used: then the client needs them.
            call.context.set_trailing_metadata(tuple(headers.items()))
            if decision.half_used:
                try:
                    await call.context.send_initial_metadata(tuple(headers.items()))
                except Exception:
                    if call.context.cancelled():  # the client left meanwhile: not a server error
                        raise asyncio.CancelledError from None
                    raise
        yield
