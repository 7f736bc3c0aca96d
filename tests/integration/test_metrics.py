"""What the processes expose for Prometheus beyond the request metrics: database pools and the
job worker's queue."""

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
