"""The SLO budget policy, formatting and burn-rate rule as pure functions (no Prometheus here).

The figures come from hand-built snapshots; tests/integration/test_slo_report.py reads the same
kind of figures from a real Prometheus.
"""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime

import pytest
from sentinel.scheduler import slo
from sentinel.scheduler.notify import Message
from sentinel.scheduler.slo import BurnAlert, ServiceSlo, SloSnapshot, budget_policy

WHEN = datetime(2026, 12, 3, 6, 0, tzinfo=UTC)


def snapshot(**services: ServiceSlo) -> SloSnapshot:
    return SloSnapshot(when=WHEN, services=dict(services))


def budget(remaining: float | None, burn_2h: float | None = None) -> ServiceSlo:
    return ServiceSlo(availability_daily=0.9995, availability_monthly=0.9993, budget_remaining=remaining,
                      burn_2h=burn_2h, burn_24h=1.0)


# ---------------------------------------------------------------------------------------------
# The contract


def test_series_contract() -> None:
    assert slo.OBJECTIVE == 0.999
    assert slo.SERVICES == ("tenant", "user", "audit", "scheduler")
    assert slo.OVERALL == "all"
    assert set(slo.SERIES) == {
        "slo:availability:hourly", "slo:availability:daily", "slo:availability:monthly",
        "slo:error_budget:remaining", "slo:burnrate:2h", "slo:burnrate:24h", "slo:error_rate:5m",
    }
    # Every series lands in a ServiceSlo attribute and every attribute has a series.
    assert set(slo.SERIES.values()) == {f.name for f in dataclasses.fields(ServiceSlo)}
    for name in slo.SERIES:
        assert name in slo.QUERY
        assert name in (slo.__doc__ or ""), f"{name} missing from the module docstring"


# ---------------------------------------------------------------------------------------------
# Budget policy: green > 50 % >= caution >= 25 % >= warning >= 10 % > critical


@pytest.mark.parametrize(
    ("remaining", "status"),
    [
        (1.0, "green"),
        (0.5000001, "green"),
        (0.50, "caution"),
        (0.4999999, "caution"),
        (0.2500001, "caution"),
        (0.25, "warning"),
        (0.2499999, "warning"),
        (0.1000001, "warning"),
        (0.10, "warning"),
        (0.0999999, "critical"),
        (0.0, "critical"),
        (-0.3, "critical"),  # overspent
        (None, "unknown"),
        (math.nan, "unknown"),
    ],
)
def test_budget_policy_edges(remaining: float | None, status: str) -> None:
    assert budget_policy(remaining) == status


def test_worst_policy_ranks_unknown_just_above_green() -> None:
    assert slo.worst_policy(["green", "green"]) == "green"
    assert slo.worst_policy(["green", "unknown"]) == "unknown"
    assert slo.worst_policy(["unknown", "caution"]) == "caution"
    assert slo.worst_policy(["warning", "critical", "caution"]) == "critical"
    assert slo.worst_policy([]) == "unknown"


# ---------------------------------------------------------------------------------------------
# Formatting


def test_percent_and_multiple() -> None:
    assert slo.percent(0.9995) == "99.950 %"
    # Three decimals keep a miss visible: 99.89 % must not read as 99.9 %.
    assert slo.percent(0.9989) == "99.890 %"
    assert slo.percent(1.0) == "100.000 %"
    assert slo.percent(0.0) == "0.000 %"
    assert slo.percent(-0.05, 1) == "-5.0 %"
    assert slo.percent(None) == "no data"
    assert slo.multiple(31) == "31.0x"
    assert slo.multiple(0.04) == "0.0x"
    assert slo.multiple(None) == "no data"


@pytest.mark.parametrize(
    ("remaining", "severity"),
    [(0.9, "ok"), (0.5, "warning"), (0.25, "warning"), (0.1, "warning"), (0.05, "critical"), (None, "info")],
)
def test_report_severity_follows_the_policy(remaining: float | None, severity: str) -> None:
    services = {s: budget(remaining) for s in (*slo.SERVICES, "all")}
    message = slo.report(snapshot(**services))
    assert isinstance(message, Message)
    assert message.severity == severity
    status = budget_policy(remaining)
    assert message.subject == f"Sentinel SLO report 2026-12-03: overall 99.930 % ({status})"
    assert f"Worst status: {status} (overall, tenant, user, audit, scheduler): {slo.POLICY_MEANING[status]}." \
        in message.text


def test_report_worst_service_sets_severity_even_when_overall_is_green() -> None:
    message = slo.report(snapshot(tenant=budget(0.9), user=budget(0.05), all=budget(0.8)))
    assert message.severity == "critical"
    assert ("Policy status", "green") in message.fields  # the overall status
    assert "Worst status: critical (user)" in message.text
    assert "freeze releases" in message.text
    # Missing services still get a "no data" line, overall first.
    lines = message.text.splitlines()
    assert lines[0].startswith("overall: ")
    assert lines[1].startswith("tenant: ")


def test_report_without_overall_series_says_no_data() -> None:
    message = slo.report(snapshot(tenant=budget(0.9)))
    assert message.subject == "Sentinel SLO report 2026-12-03: overall no data (unknown)"
    assert message.fields == (
        ("Overall availability (30 d)", "no data"),
        ("Error budget left", "no data"),
        ("Policy status", "unknown"),
        ("Burn rate 2h", "no data"),
    )
    assert message.severity == "info"


def test_report_date_is_utc() -> None:
    late = datetime.fromisoformat("2026-12-03T23:30:00-05:00")  # 2026-12-04 04:30 UTC
    message = slo.report(SloSnapshot(when=late, services={"all": budget(0.9)}))
    assert message.subject.startswith("Sentinel SLO report 2026-12-04:")


# ---------------------------------------------------------------------------------------------
# Burn-rate rule


def test_burn_alerts_are_strictly_above_the_threshold() -> None:
    snap = snapshot(tenant=budget(0.9, 30.0), user=budget(0.9, 30.000001), audit=budget(0.9, None),
                    scheduler=budget(0.9, 29.0), all=budget(0.9, 31.0))
    assert slo.burn_alerts(snap) == [BurnAlert("user", 30.000001, 1.0), BurnAlert("all", 31.0, 1.0)]
    assert [a.service for a in slo.burn_alerts(snap, threshold=28.5)] == ["tenant", "user", "scheduler", "all"]
    assert slo.burn_alerts(snap, threshold=31.0) == []


def test_burn_message() -> None:
    message = slo.burn_message([BurnAlert("audit", 36.0, None)], 30.0)
    assert message.severity == "critical"
    assert message.subject == "Sentinel SLO burn-rate alert: audit above 30x over 2h"
    assert "audit: burning the error budget at 36.0x over 2h (24h: no data)" in message.text
    assert "lasts 20.0 h" in message.text  # 720 h / 36
    assert "2h burn rate above 30x" in message.text
    with pytest.raises(ValueError, match="at least one alert"):
        slo.burn_message([], 30.0)


async def test_fetch_refuses_a_naive_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await slo.fetch("http://127.0.0.1:9", at=datetime(2026, 12, 3))


def test_the_page_pairs_are_the_spec_s() -> None:
    import pathlib

    import yaml

    spec = yaml.safe_load((pathlib.Path(__file__).resolve().parents[2] / "alerts" / "slo.yaml").read_text())
    pages = {name: w for name, w in spec["burn_windows"].items() if w["severity"] == "page"}
    assert {(n, float(w["factor"]), w["long"], w["short"]) for n, w in pages.items()} == set(slo.PAGE_WINDOWS)


def test_a_page_pair_needs_both_windows_strictly_above_its_factor() -> None:
    budget = 1 - slo.OBJECTIVE
    fast = 14.4 * budget
    windows = {
        "user": {"1h": fast * 2, "5m": fast * 1.01, "6h": 0.0, "30m": 0.0},  # page-fast
        "tenant": {"1h": fast * 2, "5m": fast * 0.5},  # the spike is over: no page
        "audit": {"1h": fast, "5m": fast},  # exactly the factor: no page
        "all": {"6h": 6 * budget * 1.5, "30m": 6 * budget * 1.2, "1h": 0.0, "5m": 0.0},  # page-slow
        "scheduler": {"1h": fast * 3},  # a window missing: no page
    }
    alerts = slo.multiwindow_alerts(windows)
    assert [(a.service, a.pair) for a in alerts] == [("user", "page-fast"), ("all", "page-slow")]
    assert round(alerts[0].long_burn, 1) == 28.8 and round(alerts[1].short_burn, 1) == 7.2
    message = slo.window_message(alerts)
    assert message.severity == "critical" and "page-fast" in message.text
