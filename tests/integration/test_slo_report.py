"""The SLO report and burn-rate watch against a real Prometheus (Debian package ``prometheus``).

The recorded SLO series are backfilled with ``promtool tsdb create-blocks-from openmetrics`` into a
fresh TSDB directory *before* Prometheus starts (it only picks up blocks present in its storage
directory at start-up), and Prometheus runs with no scrape jobs, so the figures it answers with are
exactly the ones written here. Scenarios sit at different timestamps a few hours in the past, an
hour apart: far more than the 5-minute lookback delta, so one scenario's samples never show in a
query at another's time. Crossing a 2-hour block boundary is fine (promtool writes one block per
2-hour range and Prometheus loads them all).

These tests need no Sentinel stack (no ``stack``/``world`` fixtures).
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sentinel.scheduler import slo
from sentinel.scheduler.slo import ServiceSlo, SloQueryError

from tests.support import free_port, missing_tool, stop

pytestmark = pytest.mark.integration

# Whole minutes, a few hours back: inside the default 15-day retention, clear of "now".
BASE = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=5)
HEALTHY = BASE
CRITICAL = BASE + timedelta(hours=1)
PARTIAL = BASE + timedelta(hours=2)
#: A service outside the contract and a series without a service label.
EXTRA = BASE + timedelta(hours=3)
#: Two series for one (name, service): the contract is broken.
DUPLICATE = BASE + timedelta(hours=4)
#: Between two scenarios: nothing within the lookback delta.
GAP = BASE + timedelta(minutes=30)

Figures = Mapping[str, float]


def _figures(hourly: float, daily: float, monthly: float, budget: float, burn_2h: float, burn_24h: float,
             error_5m: float) -> dict[str, float]:
    return {"slo:availability:hourly": hourly, "slo:availability:daily": daily, "slo:availability:monthly": monthly,
            "slo:error_budget:remaining": budget, "slo:burnrate:2h": burn_2h, "slo:burnrate:24h": burn_24h,
            "slo:error_rate:5m": error_5m}


# scenario time -> service -> series name -> value (a missing name or service is not written at all).
DATA: dict[datetime, dict[str, Figures]] = {
    HEALTHY: {
        "tenant": _figures(1.0, 0.9998, 0.99975, 0.75, 0.2, 0.5, 0.0),
        "user": _figures(0.9999, 0.9997, 0.9996, 0.6, 1.5, 0.8, 0.0001),
        "audit": _figures(1.0, 1.0, 0.99991, 0.91, 0.0, 0.1, 0.0),
        "scheduler": _figures(1.0, 0.9999, 0.9998, 0.8, 0.0, 0.2, 0.0),
        "all": _figures(0.99995, 0.9998, 0.9995, 0.5125, 0.4, 0.45, 0.00005),
    },
    CRITICAL: {
        "tenant": _figures(0.971, 0.99, 0.9991, 0.1, 29.9, 5.0, 0.03),
        "user": _figures(0.969, 0.985, 0.99895, -0.05, 31.0, 12.5, 0.031),
        "audit": _figures(0.97, 0.999, 0.9993, 0.3, 30.0, 2.0, 0.03),
        "scheduler": _figures(1.0, 1.0, 0.9999, 0.9, 0.0, 0.0, 0.0),
        "all": _figures(0.975, 0.992, 0.9985, 0.08, 30.5, 7.25, 0.028),
    },
    PARTIAL: {
        # tenant: no 24h burn rate series; user: 0/0 availability (NaN); audit: an infinite burn rate;
        # scheduler: nothing at all; all: no budget series.
        "tenant": {k: v for k, v in _figures(1.0, 0.9999, 0.9998, 0.8, 0.5, 0.0, 0.0).items()
                   if k != "slo:burnrate:24h"},
        "user": _figures(math.nan, math.nan, 0.9995, 0.55, 0.0, 0.3, math.nan),
        "audit": _figures(1.0, 1.0, 0.9999, 0.9, math.inf, 0.1, 0.0),
        "all": {k: v for k, v in _figures(1.0, 0.9999, 0.9997, 0.7, 0.6, 0.3, 0.0).items()
                if k != "slo:error_budget:remaining"},
    },
}


# Lines outside DATA's shape, by family (each series has one sample, so their order is free).
RAW: dict[str, list[str]] = {
    "slo:burnrate:2h": [
        f'slo:burnrate:2h{{service="billing"}} 2.5 {int(EXTRA.timestamp())}',
        f"slo:burnrate:2h 99 {int(EXTRA.timestamp())}",
        f'slo:burnrate:2h{{service="tenant",instance="a"}} 1 {int(DUPLICATE.timestamp())}',
        f'slo:burnrate:2h{{service="tenant",instance="b"}} 2 {int(DUPLICATE.timestamp())}',
    ],
}


# The generated availability SLI's error ratios per window (what the multiwindow pages read).
SLOTH: dict[datetime, dict[str, dict[str, float]]] = {
    HEALTHY: {service: {"1h": 0.0001, "5m": 0.0001, "6h": 0.0001, "30m": 0.0001}
              for service in ("tenant", "user", "audit", "scheduler", "all")},
    CRITICAL: {
        "user": {"1h": 0.02, "5m": 0.03, "6h": 0.004, "30m": 0.004},  # page-fast (14.4x = 0.0144)
        "tenant": {"1h": 0.02, "5m": 0.001, "6h": 0.001, "30m": 0.001},  # the spike is over
        "all": {"1h": 0.01, "5m": 0.02, "6h": 0.007, "30m": 0.008},  # page-slow (6x = 0.006)
    },
}


def _om_value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


def openmetrics() -> str:
    """The scenarios as OpenMetrics text: one gauge family per series name, timestamps in seconds."""
    lines: list[str] = []
    for name in slo.SERIES:
        lines += [f"# HELP {name} Sentinel SLO recording rule (test data).", f"# TYPE {name} gauge"]
        # Per series the samples must go forward in time.
        for when in sorted(DATA):
            for service, figures in DATA[when].items():
                if name in figures:
                    lines.append(f'{name}{{service="{service}"}} {_om_value(figures[name])} {int(when.timestamp())}')
        lines += RAW.get(name, [])
    for window in ("5m", "30m", "1h", "6h"):
        name = f"slo:sli_error:ratio_rate{window}"
        lines += [f"# HELP {name} Sentinel SLI error ratio (test data).", f"# TYPE {name} gauge"]
        for when in sorted(SLOTH):
            for service, ratios in SLOTH[when].items():
                lines.append(f'{name}{{service="{service}",sloth_service="{service}",sloth_slo="availability"}} '
                             f"{ratios[window]!r} {int(when.timestamp())}")
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


@dataclass
class Prometheus:
    url: str
    version: str
    process: subprocess.Popen[bytes]


def _tools() -> tuple[str, str]:
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prometheus is None or promtool is None:
        missing_tool("prometheus and promtool (Debian package prometheus) are needed for the SLO report tests")
        raise AssertionError("unreachable")
    return prometheus, promtool


def _backfill(promtool: str, data: Path) -> None:
    source = data.parent / "slo.om"
    source.write_text(openmetrics())
    out = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(source), str(data)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, f"promtool backfill failed:\n{out.stdout}\n{out.stderr}"
    assert any(p.is_dir() for p in data.iterdir()), "promtool wrote no block"


def _start(prometheus: str, data: Path, *extra: str) -> Iterator[Prometheus]:
    """Run Prometheus on a free loopback port over ``data``; no scrape jobs, so nothing else lands there."""
    config = data.parent / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1m\n  evaluation_interval: 1m\n")
    version = subprocess.run([prometheus, "--version"], capture_output=True, text=True, check=True,
                             timeout=30).stdout.splitlines()[0]
    port = free_port()
    log = data.parent / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={data}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn", *extra],
            stdout=out, stderr=subprocess.STDOUT, cwd=data.parent)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"prometheus exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prometheus not ready after 30 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield Prometheus(url=url, version=version, process=process)
    finally:
        stop(process)


@pytest.fixture(scope="module")
def blocks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TSDB directory holding the backfilled scenarios (copied per Prometheus: each locks its own)."""
    _, promtool = _tools()
    data = tmp_path_factory.mktemp("slo-blocks") / "data"
    data.mkdir()
    _backfill(promtool, data)
    return data


@pytest.fixture(scope="module")
def prom(blocks: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    prometheus, _ = _tools()
    data = tmp_path_factory.mktemp("slo-prom") / "data"
    shutil.copytree(blocks, data)
    yield from _start(prometheus, data)


# ---------------------------------------------------------------------------------------------
# The snapshot


def _expected(figures: Figures) -> ServiceSlo:
    def value(name: str) -> float | None:
        v = figures.get(name)
        return v if v is not None and math.isfinite(v) else None

    return ServiceSlo(**{attr: value(name) for name, attr in slo.SERIES.items()})


async def test_snapshot_has_exactly_the_loaded_figures(prom: Prometheus) -> None:
    assert prom.version.startswith("prometheus, version "), prom.version
    snapshot = await slo.fetch(prom.url, at=HEALTHY)
    assert snapshot.when == HEALTHY
    assert list(snapshot.services) == ["tenant", "user", "audit", "scheduler", "all"]
    for service, figures in DATA[HEALTHY].items():
        assert snapshot.services[service] == _expected(figures), service
    assert snapshot.overall.availability_monthly == 0.9995
    assert snapshot.services["user"].burn_2h == 1.5


async def test_lookback_keeps_a_sample_for_five_minutes_and_scenarios_do_not_mix(prom: Prometheus) -> None:
    async with httpx.AsyncClient() as client:
        later = await slo.fetch(prom.url, at=HEALTHY + timedelta(minutes=4), client=client)
        assert not client.is_closed, "fetch must not close a client it was given"
        gap = await slo.fetch(prom.url, at=GAP, client=client)
    assert later.services == (await slo.fetch(prom.url, at=HEALTHY)).services
    assert set(gap.services) == {"tenant", "user", "audit", "scheduler", "all"}
    assert all(s == ServiceSlo() for s in gap.services.values()), gap


async def test_missing_nan_and_inf_are_none(prom: Prometheus) -> None:
    snapshot = await slo.fetch(prom.url, at=PARTIAL)
    assert snapshot.services["tenant"].burn_24h is None
    assert snapshot.services["tenant"].burn_2h == 0.5
    assert snapshot.services["user"].availability_daily is None  # NaN
    assert snapshot.services["user"].availability_monthly == 0.9995
    assert snapshot.services["audit"].burn_2h is None  # +Inf
    assert snapshot.services["scheduler"] == ServiceSlo()
    assert snapshot.overall.budget_remaining is None
    for service, figures in DATA[PARTIAL].items():
        assert snapshot.services[service] == _expected(figures), service


async def test_other_services_are_kept_and_unlabelled_series_ignored(prom: Prometheus) -> None:
    snapshot = await slo.fetch(prom.url, at=EXTRA)
    assert list(snapshot.services) == ["tenant", "user", "audit", "scheduler", "billing", "all"]
    assert snapshot.services["billing"] == ServiceSlo(burn_2h=2.5)
    assert snapshot.overall == ServiceSlo()  # the label-less 99x is not "all"
    assert "billing: availability daily no data" in slo.report(snapshot).text


async def test_two_series_for_one_service_break_the_contract(prom: Prometheus) -> None:
    with pytest.raises(SloQueryError, match=r"more than one series slo:burnrate:2h\{service='tenant'\}"):
        await slo.fetch(prom.url, at=DUPLICATE)


# ---------------------------------------------------------------------------------------------
# The report


async def test_report_healthy(prom: Prometheus) -> None:
    message = slo.report(await slo.fetch(prom.url, at=HEALTHY))
    day = HEALTHY.date().isoformat()
    assert message.subject == f"Sentinel SLO report {day}: overall 99.950 % (green)"
    assert message.severity == "ok"
    assert message.fields == (
        ("Overall availability (30 d)", "99.950 %"),
        ("Error budget left", "51.2 %"),
        ("Policy status", "green"),
        ("Burn rate 2h", "0.4x"),
    )
    lines = message.text.splitlines()
    assert lines[:5] == [
        "overall: availability daily 99.980 %, monthly 99.950 %; error budget left 51.2 % (green); "
        "burn rate 2h 0.4x, 24h 0.5x",
        "tenant: availability daily 99.980 %, monthly 99.975 %; error budget left 75.0 % (green); "
        "burn rate 2h 0.2x, 24h 0.5x",
        "user: availability daily 99.970 %, monthly 99.960 %; error budget left 60.0 % (green); "
        "burn rate 2h 1.5x, 24h 0.8x",
        "audit: availability daily 100.000 %, monthly 99.991 %; error budget left 91.0 % (green); "
        "burn rate 2h 0.0x, 24h 0.1x",
        "scheduler: availability daily 99.990 %, monthly 99.980 %; error budget left 80.0 % (green); "
        "burn rate 2h 0.0x, 24h 0.2x",
    ]
    assert "Worst status: green" in message.text
    assert slo.POLICY_MEANING["green"] in message.text
    assert "no data" not in message.text
    assert slo.burn_alerts(await slo.fetch(prom.url, at=HEALTHY)) == []


async def test_report_critical(prom: Prometheus) -> None:
    message = slo.report(await slo.fetch(prom.url, at=CRITICAL))
    assert message.subject == f"Sentinel SLO report {CRITICAL.date().isoformat()}: overall 99.850 % (critical)"
    assert message.severity == "critical"
    assert message.fields == (
        ("Overall availability (30 d)", "99.850 %"),
        ("Error budget left", "8.0 %"),
        ("Policy status", "critical"),
        ("Burn rate 2h", "30.5x"),
    )
    text = message.text
    assert ("user: availability daily 98.500 %, monthly 99.895 %; error budget left -5.0 % (critical); "
            "burn rate 2h 31.0x, 24h 12.5x") in text
    # 0.10 is the warning side of the boundary, 0.30 caution.
    assert "tenant: availability daily 99.000 %, monthly 99.910 %; error budget left 10.0 % (warning)" in text
    assert "error budget left 30.0 % (caution)" in text
    assert "Worst status: critical (overall, user)" in text
    assert "freeze releases" in text


async def test_missing_series_report_no_data_not_zero(prom: Prometheus) -> None:
    message = slo.report(await slo.fetch(prom.url, at=PARTIAL))
    lines = message.text.splitlines()
    assert ("scheduler: availability daily no data, monthly no data; error budget left no data (unknown); "
            "burn rate 2h no data, 24h no data") in lines
    assert "tenant: availability daily 99.990 %, monthly 99.980 %; error budget left 80.0 % (green); " \
           "burn rate 2h 0.5x, 24h no data" in lines
    assert "user: availability daily no data, monthly 99.950 %;" in message.text
    assert "audit: availability daily 100.000 %, monthly 99.990 %; error budget left 90.0 % (green); " \
           "burn rate 2h no data, 24h 0.1x" in lines
    assert message.subject.endswith(": overall 99.970 % (unknown)")
    assert ("Error budget left", "no data") in message.fields
    assert ("Policy status", "unknown") in message.fields
    # Everything known is green but two budgets are missing: not an all-clear.
    assert message.severity == "info"
    assert "Worst status: unknown (overall, scheduler)" in message.text
    assert not re.search(r"(?<![\d.])0\.0+ %", message.text), "a missing figure became 0 %"
    # A report between scenarios: every figure is "no data", none becomes 0 or 100 %.
    empty = slo.report(await slo.fetch(prom.url, at=GAP))
    assert empty.subject.endswith(": overall no data (unknown)")
    assert empty.severity == "info"
    assert "%" not in empty.text.replace(" 99.9 % availability", "")
    assert slo.burn_alerts(await slo.fetch(prom.url, at=PARTIAL)) == []  # +Inf is no data, not a burn


# ---------------------------------------------------------------------------------------------
# The burn-rate watch


async def test_burn_alerts_fire_only_strictly_above_30x(prom: Prometheus) -> None:
    snapshot = await slo.fetch(prom.url, at=CRITICAL)
    alerts = slo.burn_alerts(snapshot)
    # user 31x and all 30.5x fire; audit at exactly 30x and tenant at 29.9x do not.
    assert alerts == [slo.BurnAlert("user", 31.0, 12.5), slo.BurnAlert("all", 30.5, 7.25)]
    message = slo.burn_message(alerts, 30.0)
    assert message.severity == "critical"
    assert message.subject == "Sentinel SLO burn-rate alert: user, overall above 30x over 2h"
    assert "user: burning the error budget at 31.0x over 2h (24h: 12.5x)" in message.text
    assert "a full 30-day budget lasts 23.2 h" in message.text
    assert message.fields == (("user burn 2h", "31.0x"), ("overall burn 2h", "30.5x"))
    lower = slo.burn_alerts(snapshot, threshold=29.5)
    assert [a.service for a in lower] == ["tenant", "user", "audit", "all"]


# ---------------------------------------------------------------------------------------------
# Errors an operator has to act on


async def test_unreachable_prometheus_names_host_and_port() -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(SloQueryError) as e:
        await slo.fetch(f"http://127.0.0.1:{port}", at=HEALTHY, timeout=5)
    message = str(e.value)
    assert f"127.0.0.1:{port}" in message
    assert "unreachable" in message
    assert "slo:availability:daily" in message  # the query


async def test_bad_query_error_from_prometheus_is_surfaced(prom: Prometheus) -> None:
    port = prom.url.rsplit(":", 1)[1]
    with pytest.raises(SloQueryError) as e:
        await slo.instant_query(prom.url, "sum(slo:burnrate:2h", at=HEALTHY)
    message = str(e.value)
    assert f"127.0.0.1:{port}" in message
    assert "sum(slo:burnrate:2h" in message
    assert "HTTP 400" in message and "bad_data" in message
    assert "parse error" in message  # Prometheus' own words
    # A valid query that is not an instant vector is refused too.
    with pytest.raises(SloQueryError, match="expected an instant vector, got resultType 'scalar'"):
        await slo.instant_query(prom.url, "1", at=HEALTHY)
    # Wrong URL path (e.g. a missing --web.route-prefix): Prometheus answers 404.
    with pytest.raises(SloQueryError, match="HTTP 404"):
        await slo.fetch(prom.url + "/prometheus", at=HEALTHY)


async def test_prometheus_refusing_the_slo_query_is_surfaced(blocks: Path, tmp_path: Path) -> None:
    """A Prometheus limit rejects fetch's own query: its execution error reaches the operator."""
    prometheus, _ = _tools()
    data = tmp_path / "data"
    shutil.copytree(blocks, data)
    for server in _start(prometheus, data, "--query.max-samples=3"):
        with pytest.raises(SloQueryError) as e:
            await slo.fetch(server.url, at=HEALTHY)
        message = str(e.value)
        assert server.url.removeprefix("http://") in message
        assert "execution" in message and "too many samples" in message
