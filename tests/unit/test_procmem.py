"""The process-memory collector (sentinel.host.procmem) and the textfile writer it shares.

* On a made-up /proc: which processes are chosen (top N by memory, plus top N by CPU, by CPU used
  since the previous run once there is one), the exact series, label escaping of odd comm names.
* On the real /proc: the written file passes ``promtool check metrics`` (Debian ``prometheus``;
  skips without it, fails under CI=true) and the duplicate/timestamp check promtool lacks, stays
  within 2N series per metric, and agrees with /proc.
* The write is atomic (a temp file in the same directory, never named *.prom, then a rename).
* The metric and file names are the ones the Host Metrics dashboard reads.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sentinel.host import procmem, textfile
from sentinel.host.procmem import Collector, Proc

from tests.support import promtool_check_metrics

PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


def _fake_proc(root: Path, procs: dict[int, tuple[str, int, int]]) -> Path:
    """pid -> (comm, resident pages, CPU ticks) as /proc/<pid>/{stat,statm}."""
    root.mkdir(exist_ok=True)
    for pid, (comm, pages, ticks) in procs.items():
        d = root / str(pid)
        d.mkdir(exist_ok=True)
        rest = ["S", "1", str(pid), str(pid), "0", "-1", "4194560", "100", "0", "0", "0", str(ticks), "0"] + ["0"] * 39
        (d / "stat").write_text(f"{pid} ({comm}) {' '.join(rest)}\n")
        (d / "statm").write_text(f"{pages * 3} {pages} 10 1 0 20 0\n")
    (root / "self").mkdir(exist_ok=True)  # not a pid: ignored
    return root


def test_selection_and_exact_output(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path / "proc", {
        1: ("systemd", 3000, 100), 2: ("kthreadd", 0, 5), 10: ("postgres", 90000, 50), 11: ("postgres", 80000, 40),
        12: ("envoy", 20000, 9000), 13: ('we"ird) (name', 1000, 1), 14: ("back\\slash", 500, 7000),
        15: ("idle", 10, 0)})
    chosen = procmem.select(procmem.read_processes(proc), top=2)
    assert [p.pid for p in chosen] == [10, 11, 12, 14], "top 2 by memory, then top 2 by CPU, sorted by memory"
    text = procmem.render(chosen, seen=8, duration=0.0123, now=1_700_000_000.5)
    assert f'sentinel_process_resident_memory_bytes{{process="postgres",pid="10"}} {90000 * PAGE}' in text
    assert f'sentinel_process_cpu_seconds_total{{process="envoy",pid="12"}} {9000 / TICK:g}' in text
    assert 'process="back\\\\slash",pid="14"' in text
    assert "sentinel_process_collector_processes 8" in text
    assert "sentinel_process_collector_last_run_timestamp_seconds 1700000000.5" in text
    assert textfile.check(text) == []
    odd = procmem.render(procmem.select(procmem.read_processes(proc), top=8), 8, 0, 0)
    assert 'process="we\\"ird) (name",pid="13"' in odd, "comm runs to the last ')' and is escaped"
    assert textfile.check(odd) == []


def test_cpu_ranking_uses_cpu_since_the_last_run(tmp_path: Path) -> None:
    procs = {pid: (f"p{pid}", 1000 - pid, 10_000 if pid == 1 else 0) for pid in range(1, 30)}
    proc = _fake_proc(tmp_path / "proc", procs)
    out = tmp_path / "out"
    out.mkdir()
    c = Collector(out, top=3, proc=proc)
    c.collect()
    procs[25] = ("p25", 975, 500)  # busy since the first run; pid 1 idle since
    _fake_proc(proc, procs)
    c.collect()
    series = textfile.families_by_name((out / procmem.FILE_NAME).read_text())[procmem.MEMORY_METRIC]
    assert [s["pid"] for s, _ in series] == ["1", "2", "3", "25"]


def test_real_proc_passes_promtool_and_the_checks(tmp_path: Path) -> None:
    path = Collector(tmp_path, top=5).collect()
    assert path == tmp_path / procmem.FILE_NAME
    assert path.stat().st_mode & 0o777 == 0o644, "readable by the node exporter's user"
    assert [p.name for p in tmp_path.iterdir()] == [procmem.FILE_NAME], "no temp file left behind"
    text = path.read_text()
    assert textfile.check(text) == []
    fams = textfile.families_by_name(text)
    mem, cpu = fams[procmem.MEMORY_METRIC], fams[procmem.CPU_METRIC]
    assert 1 <= len(mem) <= 10 and [labels for labels, _ in mem] == [labels for labels, _ in cpu]
    assert all(set(labels) == {"process", "pid"} for labels, _ in mem), "bounded labels: no rank, no cmdline"
    biggest = max(procmem.read_processes(), key=lambda p: p.rss_bytes)
    assert mem[0][1] >= biggest.rss_bytes * 0.5
    for line in text.splitlines():
        if not line.startswith("#"):
            tail = line.rsplit("}", 1)[-1] if "}" in line else line.split(" ", 1)[1]
            assert len(tail.split()) == 1, f"a value and no timestamp: {line}"
    promtool_check_metrics(text)


def test_the_checks_catch_what_promtool_does_not() -> None:
    good = procmem.render([Proc(1, "a", 4096, 1.5)], 1, 0.1, 1.0)
    assert textfile.check(good) == []
    with_timestamp = good.replace('pid="1"} 4096', 'pid="1"} 4096 1700000000000')
    assert any("timestamp" in p for p in textfile.check(with_timestamp))
    duplicated = good + 'sentinel_process_resident_memory_bytes{process="a",pid="1"} 8192\n'
    assert any("duplicate" in p for p in textfile.check(duplicated))
    with pytest.raises(ValueError, match="_total"):
        textfile.render([textfile.Family("x_seconds", "counter", "h")])


def test_the_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    renames: list[tuple[str, str]] = []
    real = os.replace

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        renames.append((str(src), str(dst)))
        assert Path(dst).read_text() == "old\n" if Path(dst).exists() else True, "the old file stays whole until then"
        real(src, dst)

    (tmp_path / "m.prom").write_text("old\n")
    monkeypatch.setattr(os, "replace", spy)
    textfile.write_atomic(tmp_path, "m.prom", "# HELP m h\n# TYPE m gauge\nm 1\n")
    ((src, dst),) = renames
    assert Path(src).parent == tmp_path and not src.endswith(".prom") and dst == str(tmp_path / "m.prom")
    with pytest.raises(ValueError, match=r"\.prom"):
        textfile.write_atomic(tmp_path, "m.txt", "")


def test_the_names_are_the_dashboards() -> None:
    dashboards = pytest.importorskip("sentinel.observability.dashboards")
    assert procmem.MEMORY_METRIC == dashboards.PROCESS_MEMORY_METRIC
    assert procmem.FILE_NAME == dashboards.PROCESS_MEMORY_FILE
    assert set(dashboards.PROCESS_MEMORY_LABELS) <= set(procmem.LABELS)

