"""What tracing costs on a simple RPC (not a test).

    .venv/bin/python bench/tracing.py [--calls 3000] [--rounds 3] [--statements 0]

Each mode runs in a process of its own (the tracer provider is set once per process): a grpc.aio
server with the production interceptor chain (behind the tracing interceptor when tracing is
on) answers HealthService.GetHealth (public, no database) to a plain gRPC client (a caller from
outside, as Envoy is: the server span starts the trace), one call at a time, with the JSON access
log formatted to /dev/null; with ``--statements N`` the handler also runs N ``SELECT 1`` on an
in-memory SQLite engine instrumented like the services' (a span per statement when tracing is
on). Per call it reports wall time and the process's CPU time (client, server and the exporter's
thread together):

* ``off``: tracing not configured (the default): no SDK, no interceptor;
* ``on, no export``: ``SENTINEL_TRACING=on`` without an endpoint (spans made, then dropped);
* ``on, OTLP export``: spans batched and sent over OTLP/gRPC to a receiver in this process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

MODES = {"off": {}, "on, no export": {"tracing": "on"}, "on, OTLP export": {"tracing": "auto", "export": True}}


def child(mode: dict[str, Any], calls: int, endpoint: str, statements: int) -> dict[str, float]:
    import grpc
    from sentinel.common.v1 import common_pb2, common_pb2_grpc
    from sentinel.platform import tracing
    from sentinel.platform.config import Settings
    from sentinel.platform.interceptors import default_chain
    from sentinel.platform.logging import JsonFormatter
    from sqlalchemy import create_engine, text

    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the process
    handler.setFormatter(JsonFormatter("bench"))
    logging.getLogger().handlers[:] = [handler]
    logging.getLogger().setLevel(logging.INFO)
    settings = Settings(tracing=mode.get("tracing", "auto"), otlp_endpoint=endpoint if mode.get("export") else "")
    tracing.setup("bench", settings)
    engine = create_engine("sqlite://")
    tracing.instrument_engine(engine)

    class Health(common_pb2_grpc.HealthServiceServicer):
        async def GetHealth(self, request: Any, context: Any) -> common_pb2.GetHealthResponse:
            if statements:
                with engine.connect() as conn:
                    for _ in range(statements):
                        conn.execute(text("SELECT 1"))
            return common_pb2.GetHealthResponse(status=common_pb2.SERVING_STATUS_SERVING)

    async def run() -> dict[str, float]:
        server = grpc.aio.server(interceptors=[*tracing.server_interceptors(), default_chain("tenant", None)])
        common_pb2_grpc.add_HealthServiceServicer_to_server(Health(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = common_pb2_grpc.HealthServiceStub(channel)
        for _ in range(300):  # warm up
            await stub.GetHealth(common_pb2.GetHealthRequest())
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(calls):
            await stub.GetHealth(common_pb2.GetHealthRequest())
        wall = time.perf_counter() - wall
        tracing.shutdown()  # exporting what is still buffered is part of the cost
        cpu = time.process_time() - cpu
        await channel.close()
        await server.stop(None)
        return {"wall_us": wall / calls * 1e6, "cpu_us": cpu / calls * 1e6}

    import uvloop

    return uvloop.run(run())


def receiver() -> tuple[Any, str, list[int]]:
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    received = [0]
    lock = threading.Lock()

    class Sink(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            with lock:
                received[0] += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Sink(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"http://127.0.0.1:{port}", received


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--statements", type=int, default=0, help="SQL statements per call (SQLite)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", default="", help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.child:
        print(json.dumps(child(MODES[ns.child], ns.calls, ns.endpoint, ns.statements)))
        return 0

    server, endpoint, received = receiver()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SENTINEL_"))}
    results: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    try:
        for _ in range(ns.rounds):  # interleaved, so a noisy neighbour hits every mode alike
            for mode in MODES:
                out = subprocess.run([sys.executable, __file__, "--child", mode, "--calls", str(ns.calls),
                                      "--statements", str(ns.statements), "--endpoint", endpoint],
                                     env=env, capture_output=True, text=True, check=True)
                results[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        server.stop(None)
    base = {k: statistics.median(r[k] for r in results["off"]) for k in ("wall_us", "cpu_us")}
    print(f"{ns.calls} sequential GetHealth calls, {ns.statements} statements each, x {ns.rounds} rounds "
          f"(medians); spans received: {received[0]}")
    print(f"{'mode':<18} {'wall µs/call':>13} {'CPU µs/call':>12} {'extra CPU µs':>13}")
    for mode, runs in results.items():
        wall = statistics.median(r["wall_us"] for r in runs)
        cpu = statistics.median(r["cpu_us"] for r in runs)
        print(f"{mode:<18} {wall:>13.0f} {cpu:>12.0f} {cpu - base['cpu_us']:>+13.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
