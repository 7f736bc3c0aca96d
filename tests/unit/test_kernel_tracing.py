"""Tracing (sentinel.platform.tracing) with the SDK's in-memory exporter, in process.

A grpc.aio server runs the production chain behind the tracing interceptor, like a service does;
its handler runs a statement on an instrumented SQLAlchemy engine and builds the call's audit
event. Spans, the JSON access-log line and the event must share one trace id, continued from the
caller's ``traceparent``. The job queue's trace context (enqueue → the worker's span) is checked
with huey's tasks called in a thread of their own, as the consumer does.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, format_span_id, format_trace_id
from pydantic import SecretStr
from sentinel.common.v1 import common_pb2, common_pb2_grpc
from sentinel.platform import auditlog, calls, clients, tracing
from sentinel.platform.config import Settings
from sentinel.platform.errors import NotFound
from sentinel.platform.interceptors import default_chain
from sentinel.platform.logging import JsonFormatter
from sqlalchemy import create_engine, text

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TENANT = uuid.UUID("0190a8a0-0000-7000-8000-00000000000a")
EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process for this module (the tracer provider is global and set once;
    afterwards the kernel's helpers are switched off again, so other tests see no spans)."""
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    tracing.setup("test", Settings(), processor=SimpleSpanProcessor(EXPORTER))
    assert tracing.enabled()
    yield EXPORTER
    tracing._provider = None
    RedisInstrumentor().uninstrument()
    EXPORTER.clear()


@pytest.fixture(autouse=True)
def fresh(spans: InMemorySpanExporter) -> None:
    spans.clear()


ENGINE = create_engine("sqlite://")


class Health(common_pb2_grpc.HealthServiceServicer):
    """GetHealth (a public RPC) doing what a real handler does: a statement, an audit event."""

    events: list[Any] = []

    async def GetHealth(self, request: Any, context: Any) -> common_pb2.GetHealthResponse:
        if calls.require_call().metadata.get("x-fail"):
            raise NotFound("no such thing", reason="TEST_NOT_FOUND")
        with ENGINE.connect() as conn:
            conn.execute(text("SELECT 1"))
        Health.events.append(auditlog.build(calls.require_call(), tenant_id=TENANT, action="tenant.update"))
        logging.getLogger("sentinel.test").info("handled")
        return common_pb2.GetHealthResponse(status=common_pb2.SERVING_STATUS_SERVING)


@pytest.fixture(scope="module")
async def target(spans: InMemorySpanExporter) -> AsyncIterator[str]:
    tracing.instrument_engine(ENGINE)
    server = grpc.aio.server(interceptors=[*tracing.server_interceptors(), default_chain("tenant", None)])
    common_pb2_grpc.add_HealthServiceServicer_to_server(Health(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await clients.close_all()
        await server.stop(None)


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter("tenant"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def _finished(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return list(exporter.get_finished_spans())


def _one(found: list[ReadableSpan], kind: SpanKind, name_part: str) -> ReadableSpan:
    matches = [s for s in found if s.kind is kind and name_part in s.name]
    assert len(matches) == 1, [(s.name, s.kind) for s in found]
    return matches[0]


async def _settle(exporter: InMemorySpanExporter, count: int) -> list[ReadableSpan]:
    """The server span ends once the server has unwound, a moment after the client has its answer."""
    for _ in range(100):
        if len(exporter.get_finished_spans()) >= count:
            break
        await asyncio.sleep(0.01)
    return _finished(exporter)


async def test_the_server_span_continues_the_callers_traceparent(
        target: str, spans: InMemorySpanExporter, log_lines: io.StringIO) -> None:
    Health.events.clear()
    async with grpc.aio.insecure_channel(target) as channel:
        await common_pb2_grpc.HealthServiceStub(channel).GetHealth(
            common_pb2.GetHealthRequest(), metadata=(("traceparent", f"00-{TRACE}-{PARENT}-01"),
                                                     ("x-request-id", "req-trace-1")))
    found = await _settle(spans, 2)
    server = _one(found, SpanKind.SERVER, "GetHealth")
    assert server.context is not None and server.parent is not None
    assert format_trace_id(server.context.trace_id) == TRACE
    assert format_span_id(server.parent.span_id) == PARENT and server.parent.is_remote
    assert server.name == "/sentinel.common.v1.HealthService/GetHealth"
    assert server.attributes is not None and server.attributes["sentinel.request_id"] == "req-trace-1"
    assert server.resource.attributes["service.name"] == "sentinel-test"

    statement = _one(found, SpanKind.CLIENT, "SELECT")  # the database span, a child of the call's
    assert statement.parent is not None and statement.parent.span_id == server.context.span_id
    assert statement.attributes is not None and statement.attributes["db.system"] == "sqlite"

    server_span_id = format_span_id(server.context.span_id)
    lines = _lines(log_lines)
    access = [line for line in lines if line["msg"] == "rpc"]
    assert len(access) == 1 and access[0]["request_id"] == "req-trace-1"
    assert {(line["trace_id"], line["span_id"]) for line in lines} == {(TRACE, server_span_id)}
    assert [e.trace_id for e in Health.events] == [TRACE]


async def test_a_call_without_traceparent_starts_a_trace_of_its_own(
        target: str, spans: InMemorySpanExporter, log_lines: io.StringIO) -> None:
    Health.events.clear()
    async with grpc.aio.insecure_channel(target) as channel:
        await common_pb2_grpc.HealthServiceStub(channel).GetHealth(common_pb2.GetHealthRequest())
    server = _one(await _settle(spans, 2), SpanKind.SERVER, "GetHealth")
    assert server.parent is None and server.context is not None
    trace_id = format_trace_id(server.context.trace_id)
    assert {line["trace_id"] for line in _lines(log_lines)} == {trace_id}
    assert [e.trace_id for e in Health.events] == [trace_id]


async def test_service_to_service_calls_carry_the_context(target: str, spans: InMemorySpanExporter) -> None:
    with tracing.span("caller") as caller:
        await common_pb2_grpc.HealthServiceStub(clients.channel(target)).GetHealth(common_pb2.GetHealthRequest())
    found = await _settle(spans, 4)
    client = _one(found, SpanKind.CLIENT, "GetHealth")
    server = _one(found, SpanKind.SERVER, "GetHealth")
    assert client.parent is not None and client.parent.span_id == caller.get_span_context().span_id
    assert client.context is not None and server.parent is not None
    assert server.parent.span_id == client.context.span_id
    assert server.context is not None and server.context.trace_id == caller.get_span_context().trace_id


async def test_a_refused_call_keeps_its_status_and_its_span_records_it(
        target: str, spans: InMemorySpanExporter) -> None:
    from opentelemetry.trace import StatusCode
    from sentinel.platform.interceptors.errors import STATUS_DETAILS_KEY

    async with grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await common_pb2_grpc.HealthServiceStub(channel).GetHealth(
                common_pb2.GetHealthRequest(), metadata=(("x-fail", "1"),))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND and refused.value.details() == "no such thing"
    assert STATUS_DETAILS_KEY in dict(refused.value.trailing_metadata() or ())  # google.rpc details still there
    server = _one(await _settle(spans, 1), SpanKind.SERVER, "GetHealth")
    # The semantic conventions leave a server span's status unset for the caller's errors (NOT_FOUND,
    # INVALID_ARGUMENT...): only server-side failures (INTERNAL, UNAVAILABLE...) are span errors.
    assert server.status.status_code is StatusCode.UNSET
    assert server.attributes is not None
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]


async def test_health_probes_are_not_traced(target: str, spans: InMemorySpanExporter) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError):  # no grpc.health.v1 servicer here: UNIMPLEMENTED
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    await asyncio.sleep(0.05)
    assert _finished(spans) == []


def test_statements_outside_any_operation_start_no_trace(spans: InMemorySpanExporter) -> None:
    with ENGINE.connect() as conn:  # e.g. the outbox drainer's polling
        conn.execute(text("SELECT 2"))
    assert _finished(spans) == []
    with tracing.span("job tick"), ENGINE.connect() as conn:
        conn.execute(text("SELECT 3"))
    assert sorted(s.name for s in _finished(spans)) == ["SELECT", "job tick"]


def test_log_lines_outside_spans_take_the_callers_traceparent_when_tracing_is_off() -> None:
    call = calls.Call(method="/x.v1.X/Y", rpc=None, metadata={"traceparent": f"00-{TRACE}-{PARENT}-01"},
                      context=None)  # type: ignore[arg-type]
    token = calls.bind(call)
    try:
        record = logging.LogRecord("sentinel.access", logging.INFO, __file__, 1, "rpc", None, None)
        line = json.loads(JsonFormatter("tenant").format(record))
    finally:
        calls.unbind(token)
    assert line["trace_id"] == TRACE and "span_id" not in line
    assert tracing.header_trace_id({"traceparent": "00-" + "0" * 32 + f"-{PARENT}-01"}) == ""
    assert tracing.header_trace_id({"traceparent": "00-xyz-1-01"}) == ""


def test_tracing_is_off_unless_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(var, raising=False)
    assert not tracing.wanted(Settings())
    assert tracing.wanted(Settings(tracing="on"))
    assert tracing.wanted(Settings(otlp_endpoint="http://127.0.0.1:4317"))
    assert not tracing.wanted(Settings(tracing="off", otlp_endpoint="http://127.0.0.1:4317"))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    assert tracing.wanted(Settings()) and tracing.endpoint(Settings()) == "http://127.0.0.1:4317"
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not tracing.wanted(Settings())


# --------------------------------------------------------------------------- jobs


def test_a_job_runs_in_a_child_of_the_span_that_enqueued_it(
        spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch) -> None:
    from sentinel.scheduler import queue, runner

    # A huey of our own (nothing is sent: the tasks are called directly), restored afterwards.
    monkeypatch.setattr(queue, "_huey", None)
    monkeypatch.setattr(queue, "_settings", None)
    monkeypatch.setattr(queue, "_tasks", {})
    settings = Settings(redis_url=SecretStr("redis://127.0.0.1:1/0"),
                        database_url=SecretStr("postgresql+asyncpg://nobody:x@127.0.0.1:1/none"))
    queue.huey_for(settings)
    run_job = queue._tasks["run_job"].call_local  # the function the consumer runs
    sent: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    monkeypatch.setitem(queue._tasks, "run_job", lambda *a, **kw: sent.append((a, kw)))
    seen: list[str] = []

    async def run(settings: Settings, tenant_id: uuid.UUID, job_id: uuid.UUID, **_: Any) -> runner.Outcome:
        seen.append(tracing.current_ids()[0])
        return runner.Outcome("succeeded")

    monkeypatch.setattr(runner, "run", run)
    job = uuid.uuid4()
    with tracing.span("CreateJob") as enqueuing:
        queue.enqueue(TENANT, job)
    queue.enqueue(TENANT, job)  # outside any span (e.g. a CLI tool): no context to carry
    (args, first), (_, second) = sent
    assert set(first) == {"trace"} and second == {}
    assert first["trace"]["traceparent"].split("-")[2] == format_span_id(enqueuing.get_span_context().span_id)

    def consume() -> None:  # one worker thread, two jobs: each run sees its own span
        run_job(*args, **first)
        run_job(*args)

    thread = threading.Thread(target=consume)
    thread.start()
    thread.join()
    jobs = [s for s in _finished(spans) if s.name == "job run_job"]
    assert len(jobs) == 2
    child, root = jobs
    assert child.kind is SpanKind.CONSUMER and child.parent is not None
    assert child.parent.span_id == enqueuing.get_span_context().span_id
    assert child.context is not None and child.context.trace_id == enqueuing.get_span_context().trace_id
    assert root.parent is None and root.context is not None
    assert seen == [format_trace_id(child.context.trace_id), format_trace_id(root.context.trace_id)]
    assert child.attributes is not None and child.attributes["sentinel.job.state"] == "succeeded"


def test_no_span_is_current_after_the_module() -> None:
    assert not trace.get_current_span().get_span_context().is_valid
