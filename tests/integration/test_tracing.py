"""Tracing through the real stack: one id from the client's ``traceparent`` to the spans, the log
lines and the audit event, across processes.

An OTLP/gRPC receiver runs in the test (opentelemetry-proto's TraceService); the tenant, audit
and scheduler services and the job worker are restarted with ``OTEL_EXPORTER_OTLP_ENDPOINT``
pointing at it, so what is checked is what they really export. They are restarted again without
it afterwards (the rest of the suite runs with tracing off, as the stack does by default).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from sentinel.audit.v1 import audit_service_pb2 as asp
from sentinel.audit.v1 import audit_service_pb2_grpc as asg
from sentinel.scheduler.v1 import job_pb2
from sentinel.scheduler.v1 import scheduler_service_pb2 as ssp
from sentinel.scheduler.v1 import scheduler_service_pb2_grpc as ssg

from tests.integration.conftest import World, audit_settled, make_tenant

pytestmark = pytest.mark.integration

TRACED = ("tenant", "audit", "scheduler", "worker")
SERVER, CLIENT, CONSUMER = trace_pb2.Span.SPAN_KIND_SERVER, trace_pb2.Span.SPAN_KIND_CLIENT, \
    trace_pb2.Span.SPAN_KIND_CONSUMER


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every exported span with the ``service.name`` of its resource."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[tuple[str, trace_pb2.Span]] = []

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
               context: Any) -> trace_service_pb2.ExportTraceServiceResponse:
        with self.lock:
            for resource_spans in request.resource_spans:
                service = next((a.value.string_value for a in resource_spans.resource.attributes
                                if a.key == "service.name"), "")
                for scope_spans in resource_spans.scope_spans:
                    self.spans += [(service, s) for s in scope_spans.spans]
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: str) -> list[tuple[str, trace_pb2.Span]]:
        with self.lock:
            return [(svc, s) for svc, s in self.spans if s.trace_id.hex() == trace_id]

    async def wait_for(self, found: Callable[[], Any], what: str, within: float = 20.0) -> Any:
        deadline = time.monotonic() + within
        while not (result := found()):
            assert time.monotonic() < deadline, f"no {what} exported within {within}s"
            await asyncio.sleep(0.1)
        return result


def _restart(stack: Any, name: str) -> None:
    """Stop one process gracefully (SIGTERM, as systemd would) and start it with the stack's env."""
    for proc in [p for p in stack.procs if p.name == name]:
        proc.popen.send_signal(proc.stop_signal)
        proc.popen.wait(timeout=30)
        stack.procs.remove(proc)
    if name == "worker":
        stack.start_worker()
    else:
        stack.start_service(name)


@pytest.fixture(scope="module")
def receiver(stack: Any, world: World) -> Iterator[Receiver]:
    sink = Receiver()
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_BSP_SCHEDULE_DELAY": "100"}
    stack.extra_env.update(env)
    try:
        for name in TRACED:
            _restart(stack, name)
        yield sink
    finally:
        for key in env:
            stack.extra_env.pop(key, None)
        for name in TRACED:
            _restart(stack, name)
        server.stop(None)


def _attrs(span: trace_pb2.Span) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in span.attributes:
        kind = a.value.WhichOneof("value")
        out[a.key] = getattr(a.value, kind) if kind else None
    return out


def _log_lines(stack: Any, process: str, trace_id: str) -> list[dict[str, Any]]:
    lines = []
    for raw in (stack.logs_dir / f"{process}.log").read_text(errors="replace").splitlines():
        if trace_id in raw:
            lines.append(json.loads(raw))
    return lines


def _traceparent() -> tuple[str, str, str]:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, parent, f"00-{trace_id}-{parent}-01"


async def test_a_rest_call_its_spans_log_line_and_audit_event_share_the_clients_trace_id(
        world: World, stack: Any, receiver: Receiver) -> None:
    t = await make_tenant(world.channels, world.admin, "trace")
    trace_id, parent, traceparent = _traceparent()
    async with httpx.AsyncClient(base_url=stack.rest_url, timeout=10) as http:  # through Envoy
        r = await http.patch(f"/api/v1/tenants/{t.id}", json={"display_name": "Traced"},
                             headers={**t.owner.headers, "traceparent": traceparent, "x-request-id": "req-traced"})
    assert r.status_code == 200, r.text

    def server_span() -> Any:
        return next((s for svc, s in receiver.trace(trace_id) if svc == "sentinel-tenant" and s.kind == SERVER), None)

    server = await receiver.wait_for(server_span, "server span of UpdateTenant")
    assert server.name == "/sentinel.tenant.v1.TenantService/UpdateTenant"
    assert server.parent_span_id.hex() == parent  # Envoy forwards the client's traceparent untouched
    assert _attrs(server)["sentinel.request_id"] == "req-traced"
    assert _attrs(server)["sentinel.tenant_id"] == t.id
    statements = [s for svc, s in receiver.trace(trace_id) if svc == "sentinel-tenant" and s.kind == CLIENT
                  and _attrs(s).get("db.system", _attrs(s).get("db.system.name")) == "postgresql"]
    assert statements and all(s.parent_span_id == server.span_id for s in statements), statements

    access = [line for line in _log_lines(stack, "tenant", trace_id) if line["msg"] == "rpc"]
    assert len(access) == 1, access
    assert access[0]["method"] == "/sentinel.tenant.v1.TenantService/UpdateTenant"
    assert (access[0]["trace_id"], access[0]["span_id"]) == (trace_id, server.span_id.hex())

    await audit_settled()
    events = (await asg.AuditServiceStub(world.channels["audit"]).ListAuditEvents(asp.ListAuditEventsRequest(
        filter=asp.AuditFilter(action="tenant.update", target_id=t.id)), metadata=t.owner.metadata)).events
    assert [(e.trace_id, e.request_id) for e in events] == [(trace_id, "req-traced")]


async def test_the_audit_outbox_delivery_is_one_trace_across_two_services(
        world: World, receiver: Receiver) -> None:
    await make_tenant(world.channels, world.admin, "outbox")  # events recorded by tenant (traced) and user

    def delivery() -> Any:
        with receiver.lock:
            spans = list(receiver.spans)
        for svc, send in spans:
            # The audit service drains its own outbox too (its reads are audited): a delivery to
            # itself is one service, not the hop this test is about.
            if send.name != "audit outbox send" or svc == "sentinel-audit":
                continue
            same = [(s2, s) for s2, s in spans if s.trace_id == send.trace_id]
            client = next((s for _, s in same if s.kind == CLIENT and s.parent_span_id == send.span_id
                           and s.name.endswith("AuditService/AppendEvents")), None)
            if client is None:
                continue
            callee = next((s for s2, s in same if s2 == "sentinel-audit" and s.kind == SERVER
                           and s.parent_span_id == client.span_id), None)
            if callee is not None:
                return svc, send, client, callee
        return None

    service, send, client, callee = await receiver.wait_for(delivery, "AppendEvents trace")
    assert service in ("sentinel-tenant", "sentinel-user", "sentinel-scheduler")
    assert callee.name == "/sentinel.audit.v1.AuditService/AppendEvents"
    assert _attrs(send)["sentinel.audit.events"] >= 1
    assert client.trace_id == callee.trace_id == send.trace_id


async def test_a_job_runs_in_the_trace_of_the_call_that_created_it(
        world: World, stack: Any, receiver: Receiver) -> None:
    t = await make_tenant(world.channels, world.admin, "tracejob")
    trace_id, _, traceparent = _traceparent()
    job = (await ssg.SchedulerServiceStub(world.channels["scheduler"]).CreateJob(
        ssp.CreateJobRequest(kind=job_pb2.JOB_KIND_TENANT_EXPORT),
        metadata=(*t.owner.metadata, ("traceparent", traceparent)))).job

    def run() -> Any:
        spans = receiver.trace(trace_id)
        create = next((s for svc, s in spans if svc == "sentinel-scheduler" and s.kind == SERVER), None)
        consumed = next((s for svc, s in spans if svc == "sentinel-worker" and s.kind == CONSUMER
                         and _attrs(s).get("sentinel.job.state")), None)
        return (create, consumed) if create and consumed else None

    create, consumed = await receiver.wait_for(run, "worker span of the job")
    assert create.name == "/sentinel.scheduler.v1.SchedulerService/CreateJob"
    assert consumed.name == "job run_job" and consumed.parent_span_id == create.span_id
    assert (_attrs(consumed)["sentinel.job_id"], _attrs(consumed)["sentinel.job.state"]) == (job.id, "succeeded")
    worked = [s for svc, s in receiver.trace(trace_id) if svc == "sentinel-worker" and s.kind == CLIENT]
    assert any(s.parent_span_id == consumed.span_id for s in worked)  # its statements are its children
    assert any(line.get("msg") == "job run" for line in _log_lines(stack, "worker", trace_id))
    await audit_settled()
    runs = (await asg.AuditServiceStub(world.channels["audit"]).ListAuditEvents(asp.ListAuditEventsRequest(
        filter=asp.AuditFilter(action="job.run", target_id=job.id)), metadata=t.owner.metadata)).events
    created = (await asg.AuditServiceStub(world.channels["audit"]).ListAuditEvents(asp.ListAuditEventsRequest(
        filter=asp.AuditFilter(action="job.create", target_id=job.id)), metadata=t.owner.metadata)).events
    assert [e.trace_id for e in runs] == [trace_id] and [e.trace_id for e in created] == [trace_id]
