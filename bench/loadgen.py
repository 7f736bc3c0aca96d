"""Load drivers for the benchmark: h2load for gRPC and REST (same C client for both, so the
comparison measures the servers, not two different Python clients), and an in-process
asyncpg loop for the raw-driver baseline.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg


@dataclass
class Result:
    name: str
    requests: int
    seconds: float
    latencies_us: list[int]
    errors: int
    cpu_seconds: dict[str, float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_us:
            return float("nan")
        data = sorted(self.latencies_us)
        return data[min(len(data) - 1, int(q * len(data)))] / 1000.0

    def cpu_us_per_request(self, process: str) -> float:
        return self.cpu_seconds.get(process, 0.0) / self.requests * 1e6 if self.requests else 0.0


def process_cpu(pid: int) -> float:
    """utime + stime of a process in seconds (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def grpc_frame(message: bytes) -> bytes:
    return struct.pack(">BI", 0, len(message)) + message


def h2load(name: str, url: str, *, headers: dict[str, str], body: bytes | None, seconds: float,
           clients: int, streams: int, pids: dict[str, int], warmup: float = 1.0) -> Result:
    """Run h2load for a fixed duration and read per-request latencies from its log file."""
    exe = shutil.which("h2load")
    if exe is None:
        raise RuntimeError("h2load not found: apt-get install nghttp2-client")
    with tempfile.TemporaryDirectory() as tmp:
        # h2load takes durations as integers (seconds) or with a unit: "2.0" is refused.
        args = [exe, "-c", str(clients), "-m", str(streams), "-t", "1", "-D", f"{int(seconds * 1000)}ms",
                "--warm-up-time", f"{int(warmup * 1000)}ms", "--log-file", f"{tmp}/log"]
        for key, value in headers.items():
            args += ["-H", f"{key}: {value}"]
        if body is not None:
            Path(f"{tmp}/body").write_bytes(body)
            args += ["-d", f"{tmp}/body"]
        args.append(url)
        before = {k: process_cpu(p) for k, p in pids.items()}
        out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
        cpu = {k: process_cpu(p) - before[k] for k, p in pids.items()}
        lines = Path(f"{tmp}/log").read_text().splitlines()
    latencies, errors = [], 0
    for line in lines:
        _start, status, elapsed = line.split("\t")
        if status != "200":
            errors += 1
        latencies.append(int(elapsed))
    match = re.search(r"finished in ([\d.]+)(m?s)", out)
    measured = float(match.group(1)) / (1000 if match and match.group(2) == "ms" else 1) if match else seconds
    return Result(name, len(lines), measured, latencies, errors, cpu)


async def asyncpg_loop(name: str, dsn: str, tenant_id: str, sql: str, args: tuple[Any, ...], *,
                       seconds: float, concurrency: int, pool_size: int, warmup: float = 1.0) -> Result:
    """The same tenant-scoped transaction as the service, straight on asyncpg:
    BEGIN; set_config(tenant, platform); <query>; COMMIT."""
    pool = await asyncpg.create_pool(dsn, min_size=pool_size, max_size=pool_size)
    assert pool is not None
    latencies: list[int] = []
    count = 0
    stop_at = 0.0
    record = False

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < stop_at:
            start = time.perf_counter_ns()
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT set_config('sentinel.tenant_id', $1, true), "
                                   "set_config('sentinel.platform', '', true)", tenant_id)
                rows = await conn.fetch(sql, *args)
                assert rows, "the baseline query returned nothing"
            if record:
                latencies.append((time.perf_counter_ns() - start) // 1000)
                count += 1

    stop_at = time.perf_counter() + warmup
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    record = True
    pid = {"bench-client": os.getpid()}
    before = {k: process_cpu(p) for k, p in pid.items()}
    started = time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu = {k: process_cpu(p) - before[k] for k, p in pid.items()}
    await pool.close()
    return Result(name, count, elapsed, latencies, 0, cpu)
