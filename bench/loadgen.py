"""Load drivers for the benchmark: h2load for gRPC and REST (same C client for both, so the
comparison measures the servers, not two different Python clients), an in-process asyncpg
loop for the raw-driver baseline, and a multi-process Python driver (:func:`py_load`) for
calls h2load cannot make because every request must differ (e.g. a unique e-mail).

h2load and :func:`py_load` run closed loop (a fixed number of requests in flight) or, given
``rate``, open loop (requests sent at a fixed total rate whatever is in flight).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import multiprocessing
import os
import re
import shutil
import statistics
import struct
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Awaitable, Callable
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
           clients: int, streams: int, pids: dict[str, int], warmup: float = 1.0,
           rate: float | None = None) -> Result:
    """Run h2load for a fixed duration and read per-request latencies from its log file.

    ``rate`` (requests/s in total, spread evenly over the clients) makes it open loop
    (``--rps``); h2load then times each request from when it sends it, so a request that
    waited for a free stream does not count its wait. Its own CPU is ``cpu["bench-client"]``."""
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
        if rate is not None:
            args += ["--rps", f"{rate / clients:.3f}"]
        args.append(url)
        # CPU is sampled over the measured window (after the warm-up), like the requests.
        started = time.monotonic()
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        watched = {**pids, "bench-client": proc.pid}
        time.sleep(warmup)
        before = {k: process_cpu(p) for k, p in watched.items()}
        time.sleep(max(0.0, started + warmup + seconds - 0.02 - time.monotonic()))
        cpu = {k: process_cpu(p) - before[k] for k, p in watched.items()}
        out, err = proc.communicate(timeout=60)
        if proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, args, out, err)
        lines = Path(f"{tmp}/log").read_text().splitlines()
    latencies, errors = [], 0
    for line in lines:
        _start, status, elapsed = line.split("\t")
        if status != "200":
            errors += 1
        latencies.append(int(elapsed))
    # "finished in" counts the warm-up too; the log holds only the requests after it.
    match = re.search(r"finished in ([\d.]+)(m?s)", out)
    measured = float(match.group(1)) / (1000 if match.group(2) == "ms" else 1) - warmup if match else seconds
    return Result(name, len(lines), measured, latencies, errors, cpu)


def h2load_spread(name: str, urls: list[str], *, clients: int, pids: dict[str, int], **options: Any) -> Result:
    """:func:`h2load` at several instances at once, ``clients`` connections shared out among them
    (what a client balancing over the instances does), merged into one result: requests add up
    over the same window; each process's CPU is what it spent in that window."""
    if len(urls) == 1:
        return h2load(name, urls[0], clients=clients, pids=pids, **options)
    per = max(1, clients // len(urls))
    with concurrent.futures.ThreadPoolExecutor(len(urls)) as pool:
        parts = list(pool.map(lambda url: h2load(name, url, clients=per, pids=pids, **options), urls))
    cpu = {k: statistics.mean(p.cpu_seconds[k] for p in parts) for k in pids}  # each part saw the same window
    cpu["bench-client"] = sum(p.cpu_seconds["bench-client"] for p in parts)  # one h2load each
    return Result(name, sum(p.requests for p in parts), statistics.mean(p.seconds for p in parts),
                  [us for p in parts for us in p.latencies_us], sum(p.errors for p in parts), cpu)


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


#: One request numbered ``seq`` (unique across the processes of a run); True when it succeeded.
Sender = Callable[[int], Awaitable[bool]]
#: Called once in each load process with the process index; yields that process's sender
#: (connected). Must pickle (a module-level function or a functools.partial of one).
SenderFactory = Callable[[int], contextlib.AbstractAsyncContextManager[Sender]]


def py_load(name: str, factory: SenderFactory, *, seconds: float, processes: int, concurrency: int,
            pids: dict[str, int], rate: float | None = None, warmup: float = 1.0) -> Result:
    """Drive ``factory``'s sender from ``processes`` Python processes (spawned; asyncio, uvloop).

    Closed loop (``rate`` None): ``concurrency`` requests in flight in each process. Open loop:
    ``rate`` requests/s in total, evenly spaced and interleaved across the processes, each sent
    at its time whatever is in flight, and timed from that time (so time spent waiting in a
    client that fell behind counts too). Counted: the requests that finish in the ``seconds``
    after ``warmup``. ``cpu["bench-client"]`` sums the load processes."""
    ctx = multiprocessing.get_context("spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    go, start = ctx.Event(), ctx.Value("d", 0.0)
    procs = [ctx.Process(target=_py_load_process, daemon=True,
                         args=(factory, i, processes, concurrency, rate, warmup, seconds, ready, go, start, results))
             for i in range(processes)]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            ready.get(timeout=60)
        start.value = time.monotonic() + 0.05
        go.set()
        watched = {**pids, **{f"_load{i}": p.pid for i, p in enumerate(procs) if p.pid is not None}}
        time.sleep(max(0.0, start.value + warmup - time.monotonic()))
        before = {k: process_cpu(p) for k, p in watched.items()}
        time.sleep(max(0.0, start.value + warmup + seconds - time.monotonic()))
        after = {k: process_cpu(p) for k, p in watched.items()}
        parts = [results.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    cpu = {k: after[k] - before[k] for k in pids}
    cpu["bench-client"] = sum(after[k] - before[k] for k in watched if k.startswith("_load"))
    failed = [part for part in parts if "crash" in part]
    if failed:
        raise RuntimeError(f"{name}: a load process failed: {failed[0]['crash']}")
    latencies = [us for part in parts for us in part["latencies"]]
    return Result(name, len(latencies), seconds, latencies, sum(part["errors"] for part in parts), cpu)


def _py_load_process(factory: SenderFactory, index: int, processes: int, concurrency: int, rate: float | None,
                     warmup: float, seconds: float, ready: Any, go: Any, start: Any, results: Any) -> None:
    import uvloop  # a dependency of the services: the clients run on the same loop as the servers

    try:
        part = uvloop.run(_py_load_async(factory, index, processes, concurrency, rate, warmup, seconds,
                                         ready, go, start))
    except BaseException as exc:  # reported to the parent, which raises
        ready.put(index)  # the parent may still be waiting for it
        part = {"crash": repr(exc)[:2000]}
    results.put(part)


async def _py_load_async(factory: SenderFactory, index: int, processes: int, concurrency: int,
                         rate: float | None, warmup: float, seconds: float, ready: Any, go: Any,
                         start: Any) -> dict[str, Any]:
    latencies: list[int] = []
    errors = 0
    numbers = iter(range(index, 1 << 62, processes))
    async with factory(index) as send:
        ready.put(index)
        go.wait()  # blocks the loop: nothing else runs yet
        begin = start.value + warmup
        end = begin + seconds

        def record(started: float, ok: bool) -> None:
            nonlocal errors
            done = time.monotonic()
            if begin <= done < end:
                latencies.append(int((done - started) * 1e6))
                errors += not ok

        await asyncio.sleep(max(0.0, start.value - time.monotonic()))
        if rate is None:
            async def worker() -> None:
                while time.monotonic() < end:
                    started = time.monotonic()
                    record(started, await send(next(numbers)))

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        else:
            async def one(due: float) -> None:
                record(due, await send(next(numbers)))

            interval = processes / rate
            due = start.value + index / rate
            pending: set[asyncio.Task[None]] = set()
            while due < end:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                task = asyncio.create_task(one(due))
                pending.add(task)
                task.add_done_callback(pending.discard)
                due += interval
            if pending:
                await asyncio.wait(pending, timeout=60)
    return {"latencies": latencies, "errors": errors}


class Http1Pool:
    """Keep-alive HTTP/1.1 connections to one server, one request at a time on each: a lean
    client for :func:`py_load` (httpx spends ~2 ms of CPU a request, which on a small machine
    is taken from the servers it measures; this spends a fraction of that)."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self._head = "".join(f"{k}: {v}\r\n" for k, v in {"host": parts.netloc, **headers}.items()).encode()
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """Status and body. A broken connection raises (OSError, asyncio.IncompleteReadError)."""
        reader, writer = self._idle.pop() if self._idle else await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(b"%s %s HTTP/1.1\r\n%scontent-length: %d\r\n\r\n%s"
                         % (method.encode(), path.encode(), self._head, len(body), body))
            head = (await reader.readuntil(b"\r\n\r\n")).lower()
            status = int(head[9:12])
            if b"transfer-encoding: chunked" in head:
                chunks = []
                while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                    chunks.append((await reader.readexactly(size + 2))[:-2])
                await reader.readuntil(b"\r\n")  # the empty trailer section
                data = b"".join(chunks)
            else:
                length = re.search(rb"\r\ncontent-length: *(\d+)", head)
                data = await reader.readexactly(int(length.group(1))) if length else b""
        except BaseException:
            writer.close()
            raise
        if b"\r\nconnection: close" in head:
            writer.close()
        else:
            self._idle.append((reader, writer))
        return status, data

    async def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()
