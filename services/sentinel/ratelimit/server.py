"""The rate-limit service: Envoy's ``envoy.service.ratelimit.v3.RateLimitService`` over gRPC.

Why a service of our own rather than Envoy's ``local_ratelimit``: local buckets live in one
Envoy process, so with two Envoys (or a restart) every client gets twice the budget; tenant
and principal limits must hold for the whole deployment. The global rate-limit API lets every
Envoy ask one decision point backed by one Redis. Why not Envoy's reference Go service: limits
depend on the tenant's *plan* (a database fact) and on API keys only Sentinel can verify, and
this one reuses the kernel's plan table, API-key check and configuration.

Envoy calls it after ``jwt_authn`` with descriptors built from the verified token (see
``sentinel.gateway.envoy.rate_limit_actions``) and fails open if it is unreachable.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from sqlalchemy import text

from sentinel.platform import apikeys, db, metrics, redis_metrics
from sentinel.platform import logging as json_logging
from sentinel.platform.config import Settings, get_settings
from sentinel.platform.errors import SentinelError
from sentinel.ratelimit import rules
from sentinel.ratelimit.limiter import Decision, Limiter, redis_client
from sentinel.ratelimit.wire import METHOD, SERVICE, RateLimitRequest, RateLimitResponse

log = logging.getLogger("sentinel.ratelimit")
NAME = "ratelimit"
DOMAIN = "sentinel"

_PLAN = text("SELECT plan FROM tenants WHERE id = :id")
_UNITS = {1: RateLimitResponse.RateLimit.SECOND, 60: RateLimitResponse.RateLimit.MINUTE,
          3600: RateLimitResponse.RateLimit.HOUR, 86400: RateLimitResponse.RateLimit.DAY}
OK, OVER = RateLimitResponse.OK, RateLimitResponse.OVER_LIMIT


async def plan_of(tenant_id: uuid.UUID) -> str | None:
    # Bound to the tenant itself (its own row is all RLS shows): no platform scope needed.
    async with db.unit_of_work(tenant_id=tenant_id, platform=False) as session:
        plan = (await session.execute(_PLAN, {"id": tenant_id})).scalar_one_or_none()
    return None if plan is None else str(plan)


async def resolve_api_key(value: str) -> tuple[uuid.UUID, str] | None:
    """The same check the services make (format, checksum, tenant-bound lookup, cached)."""
    try:
        principal = await apikeys.authenticator.authenticate(value)
    except SentinelError:
        return None
    return principal.tenant_id, principal.session_id


def response(decision: Decision) -> Any:
    out = RateLimitResponse(overall_code=OVER if decision.over_limit else OK)
    for counted in decision.per_descriptor:
        status = out.statuses.add(code=OK)
        if counted is not None:
            status.code = OVER if counted.over else OK
            status.current_limit.requests_per_unit = counted.limit.requests
            status.current_limit.unit = _UNITS[counted.limit.seconds]
            status.limit_remaining = counted.remaining
            status.duration_until_reset.FromMilliseconds(int(counted.reset_seconds * 1000))
    # Envoy adds these to the response, the 429 as well as a success.
    for key, value in decision.headers().items():
        out.response_headers_to_add.add(key=key, value=value)
    return out


class RateLimitApi:
    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter

    def handler(self) -> grpc.GenericRpcHandler:
        """``/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`` with the wire messages."""
        return grpc.method_handlers_generic_handler(SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(
            self.should_rate_limit, request_deserializer=RateLimitRequest.FromString,
            response_serializer=RateLimitResponse.SerializeToString)})

    async def should_rate_limit(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if request.domain != DOMAIN:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown rate-limit domain {request.domain!r}")
        descriptors = [{e.key: e.value for e in d.entries} for d in request.descriptors]
        return response(await self.limiter.decide(descriptors, hits=request.hits_addend or 1))


async def serve(settings: Settings) -> None:
    limits = rules.load(settings.rate_limits)  # a bad configuration stops the start, naming the key
    url = settings.redis_url.get_secret_value()
    if not url:
        raise RuntimeError("SENTINEL_REDIS_URL (or _FILE) is not set: the rate-limit service counts in Redis")
    redis = redis_client(url)
    db.init(settings)
    limiter = Limiter(limits, redis, plan_of=plan_of, resolve=resolve_api_key,
                      cache_seconds=settings.rate_limit_cache_seconds)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((RateLimitApi(limiter).handler(),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{settings.grpc_host}:{settings.resolved_grpc_port}"
    if server.add_insecure_port(address) == 0:
        raise RuntimeError(f"cannot listen on {address}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    metrics.BUILD_INFO.labels(NAME, settings.version).set(1)
    metrics.serve_metrics(settings.metrics_host, settings.resolved_metrics_port)
    log.info("serving", extra={"grpc": address, "metrics_port": settings.resolved_metrics_port,
                               "ip_limits": {k: str(v) for k, v in limits.ip.items()}})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace=5)
    await redis.aclose()
    await db.dispose()
    log.info("stopped")


def run() -> int:
    settings = get_settings()
    json_logging.configure(NAME, settings.log_level)
    redis_metrics.instrument(NAME)  # sentinel_redis_* for its counting (up: as of the last decision)
    import uvloop

    uvloop.run(serve(settings))
    return 0
