"""``sentinel up`` as a user runs it: first start, generated admin password, clean stop, restart."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

pytestmark = pytest.mark.integration


@pytest.fixture
def data_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="sentinel-up-"))
    base.chmod(0o711)  # as root, the Postgres system user must traverse it
    yield base / "data"
    subprocess.run(["rm", "-rf", str(base)], check=False)


def start(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    env.update(SENTINEL_ARGON2_TIME_COST="1", SENTINEL_ARGON2_MEMORY_COST_KIB="1024", SENTINEL_ARGON2_PARALLELISM="1")
    proc = subprocess.Popen([sys.executable, "-m", "sentinel", "up", "--free-ports", "--data-dir", str(data_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    out = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        out.append(line)
        if line.startswith("Ctrl-C stops everything"):
            return proc, "".join(out)
    proc.kill()
    pytest.fail("sentinel up did not come up:\n" + "".join(out))


def stop(proc: subprocess.Popen[str], sig: int) -> str:
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 7, [c.name() for c in children]  # postgres, redis, 4 services, envoy
    proc.send_signal(sig)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left running: {[p.cmdline() for p in alive]}"
    return rest


def login(rest_url: str, password: str) -> int:
    r = httpx.post(f"{rest_url}/api/v1/auth/login", timeout=10, json={
        "tenant": "platform", "email": "admin@sentinel.local", "password": password})
    return r.status_code


def test_up_bootstraps_once_stops_cleanly_and_keeps_data(data_dir: Path) -> None:
    proc, out = start(data_dir)
    password = re.search(r"generated password: (\S+)", out)
    assert password, out
    rest_url = re.search(r"REST \+ gRPC \(Envoy\)\s+(\S+)", out)
    assert rest_url, out
    assert login(rest_url.group(1), password.group(1)) == 200
    assert "stopped" in stop(proc, signal.SIGTERM)
    assert (data_dir / "postgres" / "PG_VERSION").exists()
    assert oct((data_dir / "secrets").stat().st_mode & 0o777) == "0o700"

    # Restart: same data, the admin exists, no new password is printed, the old one still works.
    proc, out = start(data_dir)
    assert "generated password" not in out and "platform admin admin@sentinel.local exists" in out
    rest_url = re.search(r"REST \+ gRPC \(Envoy\)\s+(\S+)", out)
    assert rest_url
    assert login(rest_url.group(1), password.group(1)) == 200
    assert login(rest_url.group(1), password.group(1) + "x") == 401
    stop(proc, signal.SIGINT)  # Ctrl-C
