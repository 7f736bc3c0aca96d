"""A throw-away stack for ``bench/run.py``: production settings, free ports, known admin."""

from __future__ import annotations

import contextlib
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

from sentinel.devstack.stack import Ports, Stack


@contextlib.contextmanager
def bench_stack(base: Path) -> Iterator[Stack]:
    base.chmod(0o711)  # a Postgres system user (when root) must traverse it
    env = {"SENTINEL_BOOTSTRAP_ADMIN_EMAIL": "bench-admin@sentinel.local",
           "SENTINEL_BOOTSTRAP_ADMIN_PASSWORD": secrets.token_urlsafe(18),
           "SENTINEL_LOG_LEVEL": "WARNING"}
    with Stack(base / "data", ports=Ports.free(), env=env, echo=sys.stderr) as stack:
        yield stack
