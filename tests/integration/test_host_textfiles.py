"""The real node exporter (Debian ``prometheus-node-exporter``) serves the host agents' textfiles.

The process-memory collector and the audit watchdog write into a temporary textfile directory; a
node exporter with only the textfile collector enabled, on a free loopback port, serves both, and
reports ``node_textfile_scrape_error 0``. A file with a client-side timestamp, the mistake the
textfile check exists for, makes it report 1. Without the binary this skips (fails under CI=true).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sentinel.host import procmem
from sentinel.watchdog import FILE_NAME, Watchdog
from sentinel.watchdog.sources import FileFollower

from tests.support import free_port, missing_tool

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data" / "audit"


class _UpAuditd:
    def pid(self) -> int | None:
        return 1

    def signal(self, sig: object) -> None:
        raise AssertionError("no signal in this test")


@pytest.fixture
def node_exporter(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    binary = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    if binary is None:
        missing_tool("prometheus-node-exporter not installed (Debian package prometheus-node-exporter)")
    assert binary is not None
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    addr = f"127.0.0.1:{free_port()}"
    log = (tmp_path / "node-exporter.log").open("wb")
    proc = subprocess.Popen([binary, f"--web.listen-address={addr}", "--collector.disable-defaults",
                             "--collector.textfile", f"--collector.textfile.directory={textfiles}"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://{addr}/metrics"
    deadline = time.monotonic() + 20
    while True:
        assert proc.poll() is None, (tmp_path / "node-exporter.log").read_text()
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline, "node exporter did not start"
            time.sleep(0.05)
    try:
        yield url, textfiles
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()


def _scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def test_node_exporter_serves_the_collector_and_the_watchdog(node_exporter: tuple[str, Path], tmp_path: Path) -> None:
    url, textfiles = node_exporter
    procmem.Collector(textfiles, top=5).collect()
    audit_log = tmp_path / "audit.log"
    audit_log.write_text("".join(p.read_text() for p in sorted(DATA.glob("*.log"))))
    dog = Watchdog(auditd=_UpAuditd(), sources=[FileFollower(audit_log, "audit", from_start=True)],
                   check_rules=False, textfile_dir=textfiles)
    dog.scan()

    got = _scrape(url)
    assert got["node_textfile_scrape_error"] == [({}, 0.0)]
    mem = got[procmem.MEMORY_METRIC]
    assert 1 <= len(mem) <= 10 and all(set(labels) == {"process", "pid"} for labels, _ in mem)
    assert max(value for _, value in mem) > 0
    assert procmem.CPU_METRIC in got
    events = {labels["key"]: value for labels, value in got["sentinel_audit_events_total"]}
    assert events["tmp-exec"] == 2 and events["kmod-change"] == 3 and events["other"] == 0
    assert got["sentinel_watchdog_scans_total"] == [({}, 1.0)]
    files = {labels["file"].rsplit("/", 1)[-1] for labels, _ in got["node_textfile_mtime_seconds"]}
    assert files == {procmem.FILE_NAME, FILE_NAME}, "the file the staleness alert and panel look for"

    (textfiles / "stamped.prom").write_text("# HELP x_total x\n# TYPE x_total counter\nx_total 1 1700000000000\n")
    assert _scrape(url)["node_textfile_scrape_error"] == [({}, 1.0)], "a timestamp spoils the textfile collector"
