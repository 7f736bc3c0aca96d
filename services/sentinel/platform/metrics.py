"""Prometheus metrics shared by every process (names from DESIGN.md §8).

Labels are bounded: service, method (from the contracts) and status code. Never a tenant or
user id.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

# Buckets include 1.0 exactly: the latency SLO is "P95 < 1 s" (exposed as le="1.0").
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter("sentinel_requests", "RPCs handled, by final status code.",
                   ["service", "method", "code"])
ERRORS = Counter("sentinel_errors", "RPCs that ended with a non-OK status.",
                 ["service", "method", "code"])
DURATION = Histogram("sentinel_request_duration_seconds", "RPC handling time.",
                     ["service", "method"], buckets=LATENCY_BUCKETS)
IN_FLIGHT = Gauge("sentinel_requests_in_flight", "RPCs being handled now.", ["service"])
DB_POOL_SIZE = Gauge("sentinel_db_pool_connections", "Database pool connections by state.",
                     ["service", "state"])
BUILD_INFO = Gauge("sentinel_build_info", "Always 1; labels carry the version.", ["service", "version"])


def watch_pool(service: str, engine: Any) -> None:
    """Report the engine's pool on every scrape: checked out, idle, overflow, and the most it may
    hold (pool size + max overflow; ``checked_out`` reaching it means callers queue)."""
    pool = engine.pool
    readers: dict[str, Callable[[], float]] = {
        "checked_out": pool.checkedout, "idle": pool.checkedin, "overflow": pool.overflow,
        "max": lambda: pool.size() + pool._max_overflow,
    }
    for state, read in readers.items():
        DB_POOL_SIZE.labels(service, state).set_function(functools.partial(_at_least_zero, read))


def _at_least_zero(read: Callable[[], float]) -> float:
    return max(float(read()), 0.0)  # QueuePool.overflow() is negative until the pool is full
