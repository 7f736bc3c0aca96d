"""What the processes expose for Prometheus beyond the request metrics: database pools, the
job worker's queue and every process's Redis use."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.integration


def samples(text: str, name: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            series, value = line.rsplit(" ", 1)
            out[series] = float(value)
    return out


async def test_every_service_reports_its_database_pool(stack: Any) -> None:
    async with httpx.AsyncClient(timeout=5) as http:
        for service in ("tenant", "user", "audit", "scheduler"):
            body = (await http.get(stack.metrics_url(service))).text
            pool = samples(body, "sentinel_db_pool_connections")
            labels = f'service="{service}"'
            assert pool[f'sentinel_db_pool_connections{{{labels},state="max"}}'] == 15  # 10 + 5 overflow
            assert 0 <= pool[f'sentinel_db_pool_connections{{{labels},state="checked_out"}}'] <= 15
            assert f'sentinel_db_pool_connections{{{labels},state="idle"}}' in pool


async def test_the_worker_reports_its_queue(stack: Any) -> None:
    async with httpx.AsyncClient(timeout=5) as http:
        body = (await http.get(stack.worker_metrics_url)).text
    assert "sentinel_job_queue_depth" in samples(body, "sentinel_job_queue_depth")
    assert "# TYPE sentinel_jobs_total counter" in body


async def test_redis_use_is_measured_per_process(stack: Any, world: Any) -> None:
    """A login goes through the throttle (a PTTL pipeline, then DEL of the failure counter)."""
    from tests.integration.conftest import login

    async with httpx.AsyncClient(timeout=5) as http:
        def count(body: str, command: str) -> float:
            key = f'sentinel_redis_commands_total{{command="{command}",outcome="ok",service="user"}}'
            return samples(body, "sentinel_redis_commands_total").get(key, 0.0)

        before = (await http.get(stack.metrics_url("user"))).text
        await login(world.channels["user"], "platform", stack.admin_email, stack.admin_password)
        after = (await http.get(stack.metrics_url("user"))).text
        worker = (await http.get(stack.worker_metrics_url)).text
    assert count(after, "PIPELINE") >= count(before, "PIPELINE") + 1
    assert count(after, "DEL") >= count(before, "DEL") + 1
    assert samples(after, "sentinel_redis_up") == {'sentinel_redis_up{service="user"}': 1.0}
    latency = samples(after, "sentinel_redis_command_duration_seconds_count")
    assert latency['sentinel_redis_command_duration_seconds_count{command="PIPELINE",service="user"}'] >= 1
    # The worker's huey client (polling the queue) is measured under its own name.
    assert samples(worker, "sentinel_redis_up") == {'sentinel_redis_up{service="worker"}': 1.0}
    assert any('service="worker"' in series for series in samples(worker, "sentinel_redis_commands_total"))
    # Labels stay bounded: no key, tenant or user in them.
    for body in (after, worker):
        for series in samples(body, "sentinel_redis_commands_total"):
            assert "sentinel:" not in series and "@" not in series
