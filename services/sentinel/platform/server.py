"""grpc.aio server bootstrap shared by every service.

Builds the server with the interceptor chain (behind the tracing interceptor when tracing is on),
``grpc.health.v1``, reflection, the public HealthService and an HTTP endpoint (``/metrics``,
``/healthz``, ``/readyz``); drains gracefully on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sentinel.common.v1 import common_pb2, common_pb2_grpc
from sentinel.platform import auditlog, clients, contracts, db, kv, metrics, outbox, redis_metrics, revocation, tracing
from sentinel.platform import logging as json_logging
from sentinel.platform import usage as tenant_usage
from sentinel.platform.auth import TokenVerifier
from sentinel.platform.config import Settings, get_settings
from sentinel.platform.health import HealthApi, SelfStatus, database_check, peer_check, redis_check
from sentinel.platform.interceptors import default_chain
from sentinel.platform.pagination import PageTokens
from sentinel.platform.probes import LoopProbes
from sentinel.platform.probes import serve as serve_http
from sentinel.platform.service_identity import ServiceTokens, ServiceVerifier
from sentinel.ratelimit import rules as ratelimit_rules
from sentinel.ratelimit.limiter import Limiter, redis_client

log = logging.getLogger("sentinel.server")

PEERS = ("tenant", "user", "audit", "scheduler")
SERVER_OPTIONS = [
    ("grpc.so_reuseport", 0),  # one process per port; Envoy balances across instances
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
]


@dataclass
class Runtime:
    """What a service's handlers get at start-up."""

    settings: Settings
    verifier: TokenVerifier | None
    page_tokens: PageTokens
    #: Verifies other services' tokens (internal RPCs); None: this process accepts none.
    service_verifier: ServiceVerifier | None = None
    #: This service's own identity for internal calls (e.g. draining the audit outbox).
    service_tokens: ServiceTokens | None = None
    #: Counts the tenant and principal rate limits; None: not limited here (no Redis, or off).
    limiter: Limiter | None = None


@dataclass
class ServiceSpec:
    """How one service plugs into the shared bootstrap."""

    name: str
    #: Full names of the proto services this process implements.
    implements: Sequence[str]
    register: Callable[[grpc.aio.Server, Runtime], None]
    needs_database: bool = True
    #: Shown in GetHealth; e.g. DEGRADED with a reason for a health-only service.
    status: common_pb2.ServingStatus.ValueType = common_pb2.SERVING_STATUS_SERVING
    detail: str = ""
    #: A periodic task of the service (e.g. signing audit checkpoints), run while it serves.
    background: Callable[[Runtime], Coroutine[Any, Any, None]] | None = None


def load_spec(name: str) -> ServiceSpec:
    module = importlib.import_module(f"sentinel.{name}.service")
    spec: ServiceSpec = module.spec()
    return spec


def check_contracts(spec: ServiceSpec) -> None:
    """Refuse to start when a method this service implements has no policy option."""
    known = {r.service.full_name for r in contracts.rpcs()}
    for name in spec.implements:
        if name not in known:
            raise LookupError(f"{name} is not in the contracts registry")


def make_runtime(settings: Settings) -> Runtime:
    verifier = None
    if settings.jwt_public_keys_dir is not None:
        verifier = TokenVerifier.from_directory(settings.jwt_public_keys_dir, issuer=settings.jwt_issuer,
                                                audience=settings.jwt_audience,
                                                reload_seconds=settings.jwt_keys_reload_seconds)
    secret = settings.page_token_secret.get_secret_value()
    if not secret:
        raise RuntimeError("SENTINEL_PAGE_TOKEN_SECRET (or _FILE) is not set")
    service_verifier = tokens = None
    if settings.service_public_keys_dir is not None:
        service_verifier = ServiceVerifier.from_directory(settings.service_public_keys_dir, issuer=settings.jwt_issuer)
    if settings.service_key_file is not None:
        tokens = ServiceTokens.from_file(settings.service_key_file, issuer=settings.jwt_issuer)
    return Runtime(settings=settings, verifier=verifier, page_tokens=PageTokens(secret.encode()),
                   service_verifier=service_verifier, service_tokens=tokens, limiter=rate_limiter(settings))


def rate_limiter(settings: Settings) -> Limiter | None:
    """The tenant and principal limits (a bad ``SENTINEL_RATE_LIMITS`` stops the start, naming the key)."""
    if not settings.rate_limits_enabled:
        return None
    limits = ratelimit_rules.load(settings.rate_limits)
    url = settings.redis_url.get_secret_value()
    if not url:
        log.warning("no SENTINEL_REDIS_URL: tenant and principal rate limits are off")
        return None
    return Limiter(limits, redis_client(url, settings.rate_limit_redis_timeout_seconds),
                   cache_seconds=settings.rate_limit_cache_seconds)


async def build_server(spec: ServiceSpec, runtime: Runtime) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    settings = runtime.settings
    check_contracts(spec)
    chain = default_chain(spec.name, runtime.verifier, runtime.service_verifier, runtime.limiter)
    server = grpc.aio.server(interceptors=[*tracing.server_interceptors(), chain], options=SERVER_OPTIONS)
    spec.register(server, runtime)

    checks = [database_check()] if spec.needs_database else []
    peers = [peer_check(p, settings.peer(p)) for p in PEERS if p != spec.name]
    me = SelfStatus(spec.name, spec.status, spec.detail)
    common_pb2_grpc.add_HealthServiceServicer_to_server(HealthApi(me, settings.version, checks, peers), server)

    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [*spec.implements, common_pb2.DESCRIPTOR.services_by_name["HealthService"].full_name]
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)

    bound = server.add_insecure_port(f"{settings.grpc_host}:{settings.resolved_grpc_port}")
    if bound == 0:
        raise RuntimeError(f"cannot listen on {settings.grpc_host}:{settings.resolved_grpc_port}")
    serving = health_pb2.HealthCheckResponse.SERVING
    await health_servicer.set("", serving)
    for name in names:
        implemented = spec.status != common_pb2.SERVING_STATUS_DEGRADED or name not in spec.implements
        await health_servicer.set(name, serving if implemented else health_pb2.HealthCheckResponse.NOT_SERVING)
    return server, health_servicer


async def serve(spec: ServiceSpec, settings: Settings) -> None:
    runtime = make_runtime(settings)
    tasks: list[asyncio.Task[None]] = []
    if spec.needs_database:
        metrics.watch_pool(spec.name, db.init(settings))
        auditlog.enabled = settings.audit_recording
        if not settings.audit_recording:
            log.warning("audit recording is OFF (SENTINEL_AUDIT_RECORDING=false): nothing is recorded")
        elif runtime.service_tokens is None:
            raise RuntimeError("SENTINEL_SERVICE_KEY_FILE is not set: this service cannot deliver audit events")
        else:
            send = outbox.grpc_sender(settings.audit_addr, runtime.service_tokens)
            tasks.append(asyncio.create_task(outbox.run_drainer(
                spec.name, send, batch=settings.audit_outbox_batch,
                poll_seconds=settings.audit_outbox_poll_seconds), name="audit-outbox"))
        recorder = tenant_usage.start(spec.name)  # per-tenant counts for tenant SLOs
        tasks.append(asyncio.create_task(tenant_usage.run_flusher(recorder, settings.usage_flush_seconds),
                                         name="tenant-usage"))
    server, health_servicer = await build_server(spec, runtime)
    metrics.BUILD_INFO.labels(spec.name, settings.version).set(1)
    redis = kv.client(settings)
    probes = LoopProbes(spec.name, asyncio.get_running_loop(),
                        required=[database_check()] if spec.needs_database else [],
                        optional=[redis_check(redis)] if redis is not None else [], starting=True)
    serve_http(settings.metrics_host, settings.resolved_metrics_port, probes)
    read_tenants = revocation.read_blocked_tenants if spec.needs_database else None
    if read_tenants is not None:  # blocked tenants are known before the first call, Redis or not
        await revocation.tenants.reload(read_tenants)
    revocation.feed.start(redis, read_tenants=read_tenants,
                          resync_seconds=settings.tenant_states_resync_seconds)
    if redis is not None:  # keeps sentinel_redis_up current between commands
        tasks.append(asyncio.create_task(redis_metrics.watch(redis), name="redis-watch"))
    if redis is not None:
        try:  # serve only once revoked sessions are known (bounded: Redis may be down)
            await asyncio.wait_for(revocation.feed.ready.wait(), timeout=5)
        except TimeoutError:
            log.error("revoked sessions not loaded yet (Redis unreachable); serving anyway")
    await server.start()
    probes.starting = False
    if spec.background is not None:
        tasks.append(asyncio.create_task(spec.background(runtime), name=f"{spec.name}-background"))
    log.info("serving", extra={"grpc": f"{settings.grpc_host}:{settings.resolved_grpc_port}",
                               "metrics_port": settings.resolved_metrics_port})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    # Drain: tell load balancers first, then let in-flight calls finish.
    log.info("draining")
    probes.draining = True
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace=10)
    for task in tasks:  # the outbox keeps what it has not sent; the next start sends it
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await clients.close_all()
    if runtime.limiter is not None:
        await runtime.limiter.redis.aclose()
    await revocation.feed.stop()
    await kv.close()
    await db.dispose()
    log.info("stopped")
    tracing.shutdown()


def run_service(name: str) -> int:
    settings = get_settings()
    json_logging.configure(name, settings.log_level)
    tracing.setup(name, settings)  # before the engine, the server and the clients are made
    redis_metrics.instrument(name)
    spec = load_spec(name)
    try:
        import uvloop

        uvloop.run(serve(spec, settings))
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep a portable fallback
        asyncio.run(serve(spec, settings))
    return 0
