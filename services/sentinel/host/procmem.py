"""The process-memory collector: the top processes by resident memory and by CPU, from /proc,
as a node-exporter textfile (``sentinel host collect-processes``).

Metrics (agreed with the Host Metrics dashboard, :mod:`sentinel.observability.dashboards`):

* ``sentinel_process_resident_memory_bytes{process, pid}``, gauge, resident set size;
* ``sentinel_process_cpu_seconds_total{process, pid}``, counter, user + system CPU time;
* ``sentinel_process_collector_processes``, gauge, processes seen in /proc;
* ``sentinel_process_collector_duration_seconds``, gauge, how long the last collection took;
* ``sentinel_process_collector_last_run_timestamp_seconds``, gauge, unix time of the last
  collection. Its *value* is a time; the exposition itself carries no timestamps, which is what
  the node exporter forbids. (``node_textfile_mtime_seconds`` says the same from outside; this
  one survives a copy of the file.)

``process`` is the kernel's ``comm`` (at most 15 bytes), ``pid`` the process id. Cardinality is
bounded per scrape: the union of the top N by resident memory and the top N by CPU, so at most
2N series per metric. Series still come and go as processes rise and fall in the ranking and as
pids change; that churn is the price of a pid label, which the dashboard wants to tell two
workers of the same name apart. There is deliberately no ``rank`` label: a rank change would
start a new series, and ``rate()`` over a counter whose labels change is meaningless; the
dashboard ranks with an instant ``topk``.

Why not process-exporter (Debian ``prometheus-process-exporter`` 0.7.10): it groups by name and
has no per-pid series, it is one more daemon and port to run and secure, and the dashboard's
metric names are the ones above. This collector is one /proc walk every interval, written
through the textfile directory the node exporter already serves.

psutil is not a runtime dependency of Sentinel, so this reads /proc directly: ``stat`` for comm
and CPU ticks, ``statm`` for resident pages.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from sentinel.host import textfile

__all__ = ["FILE_NAME", "MEMORY_METRIC", "Collector", "Proc", "read_processes", "render", "select"]

#: The file the dashboard's staleness panel and HostTextfileCollectorStale look for.
FILE_NAME: Final = "sentinel_process_memory.prom"
MEMORY_METRIC: Final = "sentinel_process_resident_memory_bytes"
CPU_METRIC: Final = "sentinel_process_cpu_seconds_total"
LABELS: Final = ("process", "pid")

_PAGE: Final = os.sysconf("SC_PAGE_SIZE")
_TICK: Final = os.sysconf("SC_CLK_TCK")
log = logging.getLogger("sentinel.host.procmem")


@dataclass(frozen=True)
class Proc:
    pid: int
    comm: str
    rss_bytes: int
    cpu_seconds: float


def _read_one(directory: Path) -> Proc | None:
    try:
        stat = (directory / "stat").read_bytes().decode("utf-8", "replace")
        statm = (directory / "statm").read_text()
    except OSError:  # exited between listdir and read, or not ours to read
        return None
    # comm may contain spaces and parentheses: it runs from the first "(" to the last ")".
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    rest = stat[stat.rindex(")") + 2:].split()
    utime, stime = int(rest[11]), int(rest[12])  # fields 14 and 15 of proc(5)
    return Proc(pid=int(directory.name), comm=comm, rss_bytes=int(statm.split()[1]) * _PAGE,
                cpu_seconds=(utime + stime) / _TICK)


def read_processes(proc: Path = Path("/proc")) -> list[Proc]:
    """Every process (thread-group leader) in ``proc``."""
    out = []
    for entry in proc.iterdir():
        if entry.name.isdigit():
            p = _read_one(entry)
            if p is not None:
                out.append(p)
    return out


def select(procs: Iterable[Proc], top: int, cpu_before: Mapping[int, float] | None = None) -> list[Proc]:
    """Top ``top`` by resident memory, plus top ``top`` by CPU: by CPU used since the previous
    collection when ``cpu_before`` is given (pid -> seconds), else by total CPU time.

    Sorted by resident memory, largest first; ties by pid, so the output is deterministic.
    """
    procs = list(procs)
    by_rss = sorted(procs, key=lambda p: (-p.rss_bytes, p.pid))[:top]
    if cpu_before is None:
        by_cpu = sorted(procs, key=lambda p: (-p.cpu_seconds, p.pid))[:top]
    else:
        by_cpu = sorted(procs, key=lambda p: (-(p.cpu_seconds - cpu_before.get(p.pid, 0.0)), p.pid))[:top]
    chosen = {p.pid: p for p in (*by_rss, *by_cpu)}
    return sorted(chosen.values(), key=lambda p: (-p.rss_bytes, p.pid))


def render(chosen: Iterable[Proc], seen: int, duration: float, now: float) -> str:
    mem = textfile.Family(MEMORY_METRIC, "gauge",
                          "Resident memory (RSS) of a process in the top N by memory or CPU.")
    cpu = textfile.Family(CPU_METRIC, "counter",
                          "User plus system CPU time of a process in the top N by memory or CPU.")
    for p in chosen:
        mem.add(p.rss_bytes, process=p.comm, pid=str(p.pid))
        cpu.add(p.cpu_seconds, process=p.comm, pid=str(p.pid))
    meta = [
        textfile.Family("sentinel_process_collector_processes", "gauge",
                        "Processes seen in /proc by the last collection."),
        textfile.Family("sentinel_process_collector_duration_seconds", "gauge", "How long the last collection took."),
        textfile.Family("sentinel_process_collector_last_run_timestamp_seconds", "gauge",
                        "Unix time of the last collection (a value, not a sample timestamp)."),
    ]
    meta[0].add(seen)
    meta[1].add(round(duration, 6))
    meta[2].add(round(now, 3))
    return textfile.render([mem, cpu, *meta])


class Collector:
    """Collects and writes the textfile; keeps the previous CPU totals for the CPU ranking."""

    def __init__(self, textfile_dir: Path, top: int = 10, proc: Path = Path("/proc")) -> None:
        if top < 1:
            raise ValueError("top must be at least 1")
        self.textfile_dir = textfile_dir
        self.top = top
        self.proc = proc
        self._cpu_before: dict[int, float] | None = None

    def collect(self) -> Path:
        start = time.monotonic()
        procs = read_processes(self.proc)
        chosen = select(procs, self.top, self._cpu_before)
        self._cpu_before = {p.pid: p.cpu_seconds for p in procs}
        text = render(chosen, len(procs), time.monotonic() - start, time.time())
        return textfile.write_atomic(self.textfile_dir, FILE_NAME, text)

    def run(self, interval: float | None) -> None:
        """Collect once, or every ``interval`` seconds until interrupted."""
        while True:
            path = self.collect()
            log.debug("wrote %s", path)
            if not interval:
                return
            time.sleep(interval)
