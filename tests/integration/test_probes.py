"""HTTP probes beside /metrics: /healthz and /readyz of every process, and what a lost
dependency does to them (a service instance whose database connection is cut, then restored)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sentinel.devstack.stack import Stack, free_port

from tests.integration.conftest import second_envoy

pytestmark = pytest.mark.integration


def components(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in body["components"]}


def test_every_process_is_live_and_ready(stack: Stack) -> None:
    for name in [*stack.instance_names(), "worker"]:
        live = httpx.get(stack.probe_url(name, "healthz"), timeout=5)
        assert live.status_code == 200, (name, live.text)
        assert live.json()["status"] == "ok"
        assert live.headers["cache-control"] == "no-store"
        ready = httpx.get(stack.probe_url(name), timeout=5)
        assert ready.status_code == 200, (name, ready.text)
        assert ready.json()["status"] == "ready", ready.json()
        found = components(ready.json())
        expected = {"redis"} if name == "worker" else {"database", "redis"}
        assert set(found) == expected, (name, found)
        assert all(c["ok"] for c in found.values())
        # /metrics is still served on the same port.
        metrics_url, series = ((stack.worker_metrics_url, "sentinel_job_queue_depth") if name == "worker"
                               else (stack.metrics_url(name), "sentinel_build_info"))
        assert series in httpx.get(metrics_url, timeout=5).text


class Cuttable:
    """A TCP forwarder to Postgres whose connections can be cut and whose port can be closed."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _open(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def _cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()

    def open(self) -> None:
        self._call(self._open())

    def cut(self) -> None:
        self._call(self._cut())


@pytest.fixture()
def instance_behind_a_cuttable_database(stack: Stack, tmp_path: Path) -> Iterator[tuple[str, Cuttable]]:
    proxy = Cuttable(stack.host, stack.ports.postgres)
    proxy.open()
    url = stack.app_url.replace(f":{stack.ports.postgres}/", f":{proxy.port}/")
    secret = tmp_path / "database-url"
    secret.write_text(url)
    grpc_port, metrics_port = free_port(), free_port()
    env = {**stack.service_env("tenant"), "SENTINEL_DATABASE_URL_FILE": str(secret),
           "SENTINEL_GRPC_PORT": str(grpc_port), "SENTINEL_METRICS_PORT": str(metrics_port)}
    log_path = tmp_path / "tenant.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "sentinel", "serve", "tenant"], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        base = f"http://{stack.host}:{metrics_port}"
        try:
            deadline = time.monotonic() + 60
            while not stack._http_ok(f"{base}/readyz"):
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "the instance never became ready"
                time.sleep(0.3)
            yield base, proxy
        finally:
            proc.terminate()
            proc.wait(15)
            with contextlib.suppress(Exception):
                proxy.cut()


def until(base: str, path: str, status: int, within: float = 15) -> httpx.Response:
    deadline = time.monotonic() + within
    while True:
        r = httpx.get(base + path, timeout=10)
        if r.status_code == status or time.monotonic() > deadline:
            return r
        time.sleep(0.2)


def test_a_lost_database_makes_the_instance_unready_but_not_dead(
        instance_behind_a_cuttable_database: tuple[str, Cuttable]) -> None:
    base, proxy = instance_behind_a_cuttable_database
    proxy.cut()
    r = until(base, "/readyz", 503)
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["status"] == "unavailable"
    db = components(body)["database"]
    assert db["ok"] is False and db["required"] is True and db["detail"], db
    assert components(body)["redis"]["ok"] is True
    # Liveness does not depend on the database: a supervisor must not restart the process for it.
    live = httpx.get(base + "/healthz", timeout=5)
    assert live.status_code == 200, live.text

    proxy.open()  # the database is back: ready again without a restart
    r = until(base, "/readyz", 200, within=30)
    assert r.status_code == 200, r.text
    assert components(r.json())["database"]["ok"] is True


def test_the_edge_answers_its_own_probes(stack: Stack) -> None:
    for path in ("/healthz", "/readyz"):
        r = httpx.get(stack.rest_url + path, timeout=5)
        assert r.status_code == 200, (path, r.text)
        assert "server" not in r.headers
        assert "x-envoy-upstream-healthchecked-cluster" not in r.headers
        assert r.headers["x-content-type-options"] == "nosniff"
    # Only GET-able paths of their own: nothing else is answered by the probe filters.
    assert httpx.get(stack.rest_url + "/readyz/x", timeout=5).status_code == 404


def test_the_edge_is_unready_while_a_service_has_no_healthy_instance(stack: Stack, tmp_path: Path) -> None:
    dead = free_port()

    def audit_nowhere(config: dict[str, Any]) -> None:
        audit = next(c for c in config["static_resources"]["clusters"] if c["name"] == "audit")
        for group in audit["load_assignment"]["endpoints"]:
            for host in group["lb_endpoints"]:
                host["endpoint"]["address"]["socket_address"]["port_value"] = dead

    with second_envoy(stack, tmp_path, audit_nowhere) as url:
        assert httpx.get(url + "/healthz", timeout=5).status_code == 200  # Envoy itself is fine
        r = until(url, "/readyz", 503)
        assert r.status_code == 503, r.text
        assert "no instance passing its health check" in r.json()["message"]
        assert "x-envoy-upstream-healthchecked-cluster" not in r.headers
        # The services behind it that are healthy still answer.
        assert httpx.get(url + "/api/v1/health", timeout=10).status_code == 200
