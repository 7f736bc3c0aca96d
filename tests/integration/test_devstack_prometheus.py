"""`sentinel up` starts Prometheus when there is a binary: every process scraped, the rules loaded."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest
import yaml
from sentinel.devstack.stack import Stack

from tests.support import missing_tool

pytestmark = pytest.mark.integration
RULES = Path(__file__).resolve().parents[2] / "alerts" / "generated"


def test_the_stack_starts_prometheus_with_the_generated_rules(stack: Stack) -> None:
    if not shutil.which("prometheus"):
        missing_tool("prometheus not found (Debian package prometheus)")
    try:
        assert stack.start_prometheus()
        deadline = time.monotonic() + 60  # the first scrape comes within one 15 s interval
        while True:
            targets = httpx.get(f"{stack.prometheus_url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
            health = {(t["labels"]["job"], t["labels"]["instance"]): t["health"] for t in targets}
            if health and all(h == "up" for h in health.values()):
                break
            assert time.monotonic() < deadline, health
            time.sleep(1)
        jobs = {job for job, _ in health}
        assert jobs == {"sentinel-tenant", "sentinel-user", "sentinel-audit", "sentinel-scheduler",
                        "sentinel-worker", "envoy"}
        # Both user-service instances are targets of the one job.
        assert sum(1 for job, _ in health if job == "sentinel-user") == stack.instances["user"]
        groups = httpx.get(f"{stack.prometheus_url}/api/v1/rules", timeout=5).json()["data"]["groups"]
        loaded = sum(len(g["rules"]) for g in groups)
        generated = sum(len(g["rules"]) for f in RULES.glob("*.rules.yaml")
                        for g in yaml.safe_load(f.read_text())["groups"])
        assert loaded == generated > 0
    finally:
        stack.kill_service("prometheus")
