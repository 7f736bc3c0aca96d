"""OpenTelemetry tracing for every Sentinel process (DESIGN.md §8, docs/observability.md).

:func:`setup` runs once per process, before the server, the database engine and the clients are
made. It installs the SDK's tracer provider (``service.name`` = ``sentinel-<service>``), the Redis
instrumentation, and an OTLP/gRPC exporter when an endpoint is configured
(``SENTINEL_OTLP_ENDPOINT`` or the standard ``OTEL_EXPORTER_OTLP[_TRACES]_ENDPOINT``). Without one
(and ``SENTINEL_TRACING`` left at ``auto``) nothing is installed: the helpers below then return
no interceptors and start no spans, so tracing costs nothing.

What is traced once it is on:

* every RPC a service handles (a SERVER span that continues the caller's ``traceparent``; Envoy
  forwards it), except ``grpc.health.v1`` and reflection;
* every call made through :mod:`sentinel.platform.clients` (a CLIENT span; the callee's span is its
  child), e.g. the audit outbox's AppendEvents and the peers' GetHealth;
* every SQL statement (SQLAlchemy's cursor events: a CLIENT span per statement) and every Redis
  command or pipeline;
* every job the worker runs (a CONSUMER span, the child of the span that enqueued it).

A statement or command outside any traced operation (polling loops: the outbox drainer, the huey
consumer, the revocation feed) starts no trace of its own: see :func:`skip_orphan_clients`.
Sampling otherwise follows ``OTEL_TRACES_SAMPLER`` (default: parent-based, always on).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind, format_span_id, format_trace_id
from opentelemetry.util.types import Attributes

from sentinel.platform.config import Settings

log = logging.getLogger("sentinel.tracing")

#: Methods never traced: load balancers' health probes and reflection (noise, not work).
UNTRACED_SERVICES = ("grpc.health.v1.Health",)
UNTRACED_PREFIXES = ("grpc.reflection.",)
TRACER_NAME = "sentinel"

_provider: Any = None  # the SDK TracerProvider once set up; None: tracing is off in this process


def endpoint(settings: Settings) -> str:
    """Where spans are exported ("" for nowhere)."""
    return (settings.otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
            or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""))


def wanted(settings: Settings) -> bool:
    if settings.tracing == "off" or os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return settings.tracing == "on" or bool(endpoint(settings))


def enabled() -> bool:
    return _provider is not None


def setup(service: str, settings: Settings, *, processor: Any = None) -> bool:
    """Install tracing for this process (once; later calls change nothing). ``processor`` (a
    SpanProcessor) replaces the OTLP exporter, e.g. the SDK's in-memory exporter in tests, and
    switches tracing on. Returns whether tracing is on."""
    global _provider
    if _provider is not None:
        return True
    if processor is None and not wanted(settings):
        return False
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.resources import (
        SERVICE_INSTANCE_ID,
        SERVICE_NAME,
        SERVICE_NAMESPACE,
        SERVICE_VERSION,
        Resource,
    )
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import _get_from_env_or_default

    # Resource.create also merges OTEL_RESOURCE_ATTRIBUTES (e.g. deployment.environment=prod).
    resource = Resource.create({
        SERVICE_NAME: f"sentinel-{service}", SERVICE_NAMESPACE: "sentinel", SERVICE_VERSION: settings.version,
        SERVICE_INSTANCE_ID: f"{socket.gethostname()}:{os.getpid()}",
    })
    provider = TracerProvider(resource=resource, sampler=skip_orphan_clients(_get_from_env_or_default()))
    target = endpoint(settings)
    if processor is None and target:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        # The exporter reads the other OTEL_EXPORTER_OTLP_* settings (headers, certificate, timeout)
        # itself; an http:// endpoint means plaintext. Batches leave on a background thread.
        processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint or None))
    if processor is not None:
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    _provider = provider
    RedisInstrumentor().instrument(tracer_provider=provider)
    log.info("tracing on", extra={"otlp_endpoint": target if processor is not None else "",
                                  "sampler": provider.sampler.get_description()})
    return True


def shutdown() -> None:
    """Send what is still buffered (at most a few seconds)."""
    if _provider is not None:
        _provider.force_flush(timeout_millis=5000)


def tracer() -> trace.Tracer:
    if _provider is not None:
        result: trace.Tracer = _provider.get_tracer(TRACER_NAME)
        return result
    return trace.get_tracer(TRACER_NAME)


def skip_orphan_clients(delegate: Any) -> Any:
    """A sampler that drops CLIENT spans (SQL, Redis, outgoing RPCs) that would start a trace: the
    statements of background loops are not operations anyone follows. Everything else is decided
    by ``delegate`` (from ``OTEL_TRACES_SAMPLER``)."""
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

    drop = SamplingResult(Decision.DROP)

    class SkipOrphanClients(Sampler):
        def should_sample(self, parent_context: Context | None, trace_id: int, name: str,
                          kind: SpanKind | None = None, attributes: Attributes = None,
                          links: Sequence[Link] | None = None, trace_state: Any = None) -> SamplingResult:
            if kind is SpanKind.CLIENT and not trace.get_current_span(parent_context).get_span_context().is_valid:
                return drop
            result: SamplingResult = delegate.should_sample(parent_context, trace_id, name, kind, attributes,
                                                            links, trace_state)
            return result

        def get_description(self) -> str:
            return f"SkipOrphanClients{{{delegate.get_description()}}}"

    return SkipOrphanClients()


# --------------------------------------------------------------------------- instrumentation hooks


def _grpc_filter() -> Any:
    from opentelemetry.instrumentation.grpc import filters

    return filters.negate(filters.any_of(*(filters.service_name(s) for s in UNTRACED_SERVICES),
                                         *(filters.service_prefix(p) for p in UNTRACED_PREFIXES)))


def server_interceptors() -> list[Any]:
    """The grpc.aio server interceptor that opens each call's SERVER span (first in the list)."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor(tracer_provider=_provider, filter_=_grpc_filter())]  # type: ignore[no-untyped-call]


def client_interceptors() -> list[Any]:
    """grpc.aio client interceptors: a CLIENT span per call, its context sent as ``traceparent``."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors(tracer_provider=_provider, filter_=_grpc_filter()))  # type: ignore[no-untyped-call]


def instrument_engine(engine: Any) -> None:
    """A span per SQL statement on ``engine`` (an AsyncEngine or a sync Engine), as a child of the
    current span. Uses the SQLAlchemy instrumentation's engine listener directly: per engine (the
    worker has one per thread), without patching ``create_engine`` globally."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.instrumentation.sqlalchemy.version import __version__ as version
    from opentelemetry.metrics import get_meter

    sync_engine = getattr(engine, "sync_engine", engine)
    name = "opentelemetry.instrumentation.sqlalchemy"
    usage = get_meter(name, version).create_up_down_counter("db.client.connections.usage", unit="connections")
    try:
        EngineTracer(_provider.get_tracer(name, version), sync_engine, usage)  # type: ignore[no-untyped-call]
    except Exception:  # an instrumentation that no longer fits costs the spans, never the service
        log.warning("database statements are not traced", exc_info=True)


# --------------------------------------------------------------------------- ids and context


def current_ids() -> tuple[str, str]:
    """(trace id, span id) in hex of the active span, ("", "") without one."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return "", ""
    return format_trace_id(ctx.trace_id), format_span_id(ctx.span_id)


def header_trace_id(metadata: Mapping[str, str]) -> str:
    """The trace id of a W3C ``traceparent`` (``00-<trace id>-<span id>-<flags>``), "" if none."""
    parts = metadata.get("traceparent", "").split("-")
    if len(parts) == 4 and len(parts[1]) == 32 and parts[1] != "0" * 32:
        try:
            int(parts[1], 16)
        except ValueError:
            return ""
        return parts[1].lower()
    return ""


def log_ids() -> tuple[str, str]:
    """The ids a log line carries: the active span's; with tracing off, the trace id the caller of
    the current RPC sent (no span id: this process made none)."""
    ids = current_ids()
    if ids[0]:
        return ids
    from sentinel.platform.calls import current_call

    call = current_call()
    return (header_trace_id(call.metadata), "") if call is not None else ("", "")


def carrier() -> dict[str, str]:
    """The current trace context as W3C headers (``traceparent``, ``tracestate``), for work handed
    to another process outside gRPC (a job). Empty when there is nothing to continue."""
    out: dict[str, str] = {}
    if _provider is not None and trace.get_current_span().get_span_context().is_valid:
        propagate.inject(out)
    return out


@contextlib.contextmanager
def span(name: str, *, kind: SpanKind = SpanKind.INTERNAL, parent: Mapping[str, str] | None = None,
         attributes: Attributes = None) -> Iterator[trace.Span]:
    """A span around a block, current inside it. ``parent``: a :func:`carrier` to continue (a
    job's), else the current context. A no-op span when tracing is off."""
    if _provider is None:
        yield trace.INVALID_SPAN
        return
    context = propagate.extract(dict(parent)) if parent is not None else None
    with tracer().start_as_current_span(name, context=context, kind=kind, attributes=attributes) as current:
        yield current
