"""A throw-away stack for ``bench/run.py``: production settings, free ports, known admin."""

from __future__ import annotations

import contextlib
import json
import secrets
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from sentinel.devstack.stack import Ports, Stack

_FAR = "1000000000/minute"
#: Every rate limit out of reach but still counted (the limiter and Redis do their full work on
#: every call, so the benchmark measures the filter, not rejections); seeding needs more users
#: than the free plan allows.
BENCH_LIMITS = {
    "SENTINEL_RATE_LIMITS": json.dumps({
        "ip": dict.fromkeys(("auth", "write", "read"), _FAR),
        "tenant": {plan: dict.fromkeys(("auth", "write", "read"), _FAR) for plan in ("free", "standard", "enterprise")},
        "principal": {plan: dict.fromkeys(("auth", "write", "read"), _FAR)
                      for plan in ("free", "standard", "enterprise")},
    }),
    "SENTINEL_PLAN_MAX_USERS": json.dumps({"free": 10_000_000}),
    "SENTINEL_PLAN_MAX_ACTIVE_JOBS": json.dumps({"free": 10_000_000}),  # bench/jobs.py queues hundreds
}


@contextlib.contextmanager
def bench_stack(base: Path, env: Mapping[str, str] | None = None,
                instances: Mapping[str, int] | None = None) -> Iterator[Stack]:
    """``env`` is added to (and wins over) the benchmark defaults; ``instances`` as :class:`Stack`'s."""
    base.chmod(0o711)  # a Postgres system user (when root) must traverse it
    full = {"SENTINEL_BOOTSTRAP_ADMIN_EMAIL": "bench-admin@sentinel.local",
            "SENTINEL_BOOTSTRAP_ADMIN_PASSWORD": secrets.token_urlsafe(18),
            "SENTINEL_LOG_LEVEL": "WARNING", **BENCH_LIMITS, **(env or {})}
    with Stack(base / "data", ports=Ports.free(), env=full, echo=sys.stderr, instances=instances) as stack:
        yield stack
