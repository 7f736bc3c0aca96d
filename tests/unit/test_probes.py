"""The HTTP probes: what each answer means, over a real HTTP server and a real event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from sentinel.common.v1 import common_pb2
from sentinel.devstack.stack import free_port
from sentinel.platform import health, probes


def check(name: str, status: common_pb2.ServingStatus.ValueType, detail: str = "") -> health.Check:
    async def run() -> common_pb2.ComponentHealth:
        return common_pb2.ComponentHealth(name=name, status=status, detail=detail, latency_seconds=0.001)

    return run


@pytest.fixture()
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def served(p: probes.Probes) -> str:
    port = free_port()
    probes.serve("127.0.0.1", port, p)
    return f"http://127.0.0.1:{port}"


def test_ready_when_every_dependency_answers(loop: asyncio.AbstractEventLoop) -> None:
    base = served(probes.LoopProbes("tenant", loop, [check("database", health.SERVING)],
                                    [check("redis", health.SERVING)]))
    r = httpx.get(base + "/readyz")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["status"] == "ready" and body["service"] == "tenant"
    assert [(c["name"], c["ok"], c["required"]) for c in body["components"]] == [
        ("database", True, True), ("redis", True, False)]
    assert httpx.get(base + "/healthz").json() == {"status": "ok", "service": "tenant"}


def test_a_failed_required_dependency_is_unready_an_optional_one_degraded(loop: asyncio.AbstractEventLoop) -> None:
    down = served(probes.LoopProbes("user", loop, [check("database", health.NOT_SERVING, "refused")],
                                    [check("redis", health.SERVING)]))
    r = httpx.get(down + "/readyz")
    assert r.status_code == 503
    assert r.json()["status"] == "unavailable"
    assert r.json()["components"][0] == {"name": "database", "ok": False, "detail": "refused",
                                         "latency_seconds": 0.001, "required": True}
    assert httpx.get(down + "/healthz").status_code == 200  # liveness does not ask dependencies

    degraded = served(probes.LoopProbes("user", loop, [check("database", health.SERVING)],
                                        [check("redis", health.NOT_SERVING, "timeout")]))
    r = httpx.get(degraded + "/readyz")
    assert r.status_code == 200
    assert r.json()["status"] == "degraded"


def test_unready_until_the_service_has_started(loop: asyncio.AbstractEventLoop) -> None:
    p = probes.LoopProbes("tenant", loop, [check("database", health.SERVING)], starting=True)
    base = served(p)
    r = httpx.get(base + "/readyz")  # the database answers, but gRPC does not serve yet
    assert r.status_code == 503 and r.json()["status"] == "starting"
    assert httpx.get(base + "/healthz").status_code == 200
    p.starting = False
    assert httpx.get(base + "/readyz").status_code == 200


def test_draining_is_unready_at_once(loop: asyncio.AbstractEventLoop) -> None:
    p = probes.LoopProbes("audit", loop, [check("database", health.SERVING)])
    base = served(p)
    assert httpx.get(base + "/readyz").status_code == 200
    p.draining = True
    r = httpx.get(base + "/readyz")
    assert r.status_code == 503 and r.json()["status"] == "draining"


def test_a_wedged_event_loop_fails_liveness(loop: asyncio.AbstractEventLoop) -> None:
    base = served(probes.LoopProbes("scheduler", loop, [check("database", health.SERVING)]))
    blocked = threading.Event()

    def wedge() -> None:  # a synchronous call that never yields, as a bug would
        blocked.set()
        time.sleep(probes.READINESS_TIMEOUT + 1.5)

    loop.call_soon_threadsafe(wedge)
    assert blocked.wait(5)
    live = httpx.get(base + "/healthz", timeout=10)
    assert live.status_code == 503
    assert "event loop" in live.json()["detail"]
    ready = httpx.get(base + "/readyz", timeout=10)
    assert ready.status_code == 503
    assert ready.json()["components"][0]["name"] == "event_loop"


def test_sync_probes_and_metrics_share_the_port() -> None:
    def refuse() -> None:
        raise ConnectionRefusedError("connection refused")

    base = served(probes.SyncProbes("worker", [probes.sync_check("redis", refuse)]))
    r = httpx.get(base + "/readyz")
    assert r.status_code == 503
    assert r.json()["components"][0]["detail"] == "ConnectionRefusedError: connection refused"
    assert httpx.get(base + "/healthz").status_code == 200
    metrics = httpx.get(base + "/metrics")
    assert metrics.status_code == 200 and "# TYPE" in metrics.text

