"""The scheduler's SLO report and burn-rate watch, read from Prometheus' HTTP API.

The scheduler does not compute SLOs itself: the observability work records them in Prometheus,
and this module only reads the recorded figures (one instant query) and turns them into
notifications. Keeping the arithmetic in recording rules means dashboards, alerts and these
reports all show the same numbers.

Series contract
---------------
The recording rules must produce exactly these series, one per ``service`` label value, where
``service`` is one of ``tenant``, ``user``, ``audit``, ``scheduler``, and ``service="all"`` is the
overall figure for the platform:

=============================== =========================================================== ==========
series                          meaning                                                     unit
=============================== =========================================================== ==========
``slo:availability:hourly``     availability over the last hour                             ratio 0..1
``slo:availability:daily``      availability over the last day                              ratio 0..1
``slo:availability:monthly``    availability over the 30-day SLO window                     ratio 0..1
``slo:error_budget:remaining``  fraction of the 30-day error budget left (negative when     ratio
                                overspent)
``slo:burnrate:2h``             error ratio over 2 h / (1 - OBJECTIVE)                      multiple
``slo:burnrate:24h``            error ratio over 24 h / (1 - OBJECTIVE)                     multiple
``slo:error_rate:5m``           error ratio over the last 5 minutes                         ratio 0..1
=============================== =========================================================== ==========

A burn rate of 1 spends exactly the budget in 30 days. The objective is :data:`OBJECTIVE`
(99.9 % availability). Series without a ``service`` label are ignored; two series with the same
name and ``service`` break the contract and make :func:`fetch` fail instead of picking one. A
series Prometheus does not have (or whose value is NaN/Inf) is ``None`` in the snapshot and
"no data" in reports: a report must never turn a missing figure into 0 % or 100 %.

Budget policy (:func:`budget_policy`), on the fraction of the error budget left:

* ``green``    more than 50 %,
* ``caution``  more than 25 % up to 50 %, 50 % itself included,
* ``warning``  10 % to 25 %, both 25 % and 10 % included,
* ``critical`` less than 10 % (also an overspent, negative budget),
* ``unknown``  no data.

The burn-rate watch (:func:`burn_alerts`) keeps the original system's single rule: a 2 h burn
rate above 30x pages. It is deliberately simple and will be replaced by the multiwindow,
multi-burn-rate alerts (14.4x 1 h/5 m, 6x 6 h/30 m, ...) that the observability work generates as
Prometheus alerting rules; until then the scheduler evaluates this one rule itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import httpx

from sentinel.platform import slo as platform_slo
from sentinel.platform.slo import POLICY_MEANING, budget_policy
from sentinel.scheduler.notify import Message

__all__ = [
    "BURN_THRESHOLD",
    "OBJECTIVE",
    "OVERALL",
    "PAGE_WINDOWS",
    "POLICY_MEANING",
    "QUERY",
    "SERIES",
    "SERVICES",
    "BurnAlert",
    "ServiceSlo",
    "SloQueryError",
    "SloSnapshot",
    "WindowBurn",
    "budget_policy",
    "burn_alerts",
    "burn_message",
    "fetch",
    "fetch_windows",
    "instant_query",
    "multiwindow_alerts",
    "report",
    "tenant_lines",
    "window_message",
]

#: The SLO: 99.9 % of requests succeed over a 30-day window.
OBJECTIVE: Final = platform_slo.BY_NAME["availability"].target
#: The ``service`` label values of the contract, in report order.
SERVICES: Final = ("tenant", "user", "audit", "scheduler")
#: The ``service`` label value of the platform-wide figures.
OVERALL: Final = "all"
#: The original system's page: 2 h burn rate strictly above this multiple.
BURN_THRESHOLD: Final = 30.0

#: Recorded series name -> :class:`ServiceSlo` attribute.
SERIES: Final[Mapping[str, str]] = {
    "slo:availability:hourly": "availability_hourly",
    "slo:availability:daily": "availability_daily",
    "slo:availability:monthly": "availability_monthly",
    "slo:error_budget:remaining": "budget_remaining",
    "slo:burnrate:2h": "burn_2h",
    "slo:burnrate:24h": "burn_24h",
    "slo:error_rate:5m": "error_rate_5m",
}

#: The one instant query :func:`fetch` sends (names are fixed, so an exact alternation suffices).
QUERY: Final = '{__name__=~"' + "|".join(SERIES) + '",service!=""}'

# Worst-status ranking. "unknown" sits above green: a report with a service missing is not all-clear.
_RANK: Final[Mapping[str, int]] = {"green": 0, "unknown": 1, "caution": 2, "warning": 3, "critical": 4}
_SEVERITY: Final[Mapping[str, str]] = {
    "green": "ok", "unknown": "info", "caution": "warning", "warning": "warning", "critical": "critical",
}
NO_DATA: Final = "no data"


class SloQueryError(Exception):
    """Prometheus could not be asked or refused the query; the message says where and why."""


@dataclass(frozen=True)
class ServiceSlo:
    """The recorded SLO figures of one service; ``None`` where Prometheus has no (finite) sample."""

    availability_hourly: float | None = None
    availability_daily: float | None = None
    availability_monthly: float | None = None
    budget_remaining: float | None = None
    burn_2h: float | None = None
    burn_24h: float | None = None
    error_rate_5m: float | None = None

    @property
    def policy(self) -> str:
        """The budget policy status (:func:`budget_policy`) of this service."""
        return budget_policy(self.budget_remaining)


@dataclass(frozen=True)
class SloSnapshot:
    """All services' figures at one instant (``when``, timezone-aware, the query's evaluation time).

    ``services`` always has the contract's services and ``"all"``, plus any other ``service``
    value Prometheus returned, so a service whose series are missing still shows up as "no data".
    """

    when: datetime
    services: dict[str, ServiceSlo] = field(default_factory=dict)

    @property
    def overall(self) -> ServiceSlo:
        """The platform-wide figures (``service="all"``)."""
        return self.services.get(OVERALL, ServiceSlo())


@dataclass(frozen=True)
class BurnAlert:
    """One service burning its error budget too fast (2 h burn rate above the threshold)."""

    service: str
    burn_2h: float
    burn_24h: float | None


# ---------------------------------------------------------------------------------------------
# Querying


def _host_port(url: httpx.URL) -> str:
    port = url.port or {"http": 80, "https": 443}.get(url.scheme, 0)
    return f"{url.host}:{port}"


def _prometheus_error(response: httpx.Response) -> str:
    """Prometheus' own error string from a response body, else a short excerpt of it."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("status") == "error":
        return f"{body.get('errorType', 'error')}: {body.get('error', '(no message)')}"
    text = response.text.strip().replace("\n", " ")
    return text[:200] or "(empty body)"


def _value(raw: Any) -> float | None:
    """A sample's value; NaN and +-Inf (e.g. 0/0 over no traffic) count as no data."""
    try:
        value = float(raw[1])
    except (TypeError, ValueError, IndexError):
        return None
    return value if math.isfinite(value) else None


def _snapshot(when: datetime, result: Sequence[Mapping[str, Any]], where: str) -> SloSnapshot:
    figures: dict[str, dict[str, float | None]] = {name: {} for name in (*SERVICES, OVERALL)}
    for sample in result:
        metric = sample.get("metric")
        if not isinstance(metric, dict):
            continue
        name, service = metric.get("__name__"), metric.get("service")
        if not isinstance(name, str) or name not in SERIES or not isinstance(service, str) or not service:
            continue
        attr = SERIES[name]
        per_service = figures.setdefault(service, {})
        if attr in per_service:
            raise SloQueryError(
                f"{where}: more than one series {name}{{service={service!r}}}; the SLO contract allows "
                f"one per service (check the recording rules for extra labels)"
            )
        per_service[attr] = _value(sample.get("value"))
    extra = sorted(s for s in figures if s not in SERVICES and s != OVERALL)
    order = (*SERVICES, *extra, OVERALL)
    return SloSnapshot(when=when, services={s: ServiceSlo(**figures[s]) for s in order})


async def instant_query(
    prometheus_url: str,
    promql: str,
    *,
    at: datetime,
    client: httpx.AsyncClient | None = None,
    timeout: float = 10.0,  # noqa: ASYNC109 (HTTP timeout handed to httpx, part of the API)
) -> list[dict[str, Any]]:
    """One ``GET /api/v1/query`` evaluated at ``at``; the samples of the instant vector it returns.

    Every failure (bad URL, unreachable, timeout, HTTP error, Prometheus' ``status: error``, an
    answer that is not an instant vector) raises :class:`SloQueryError` naming the Prometheus
    host:port, the query and the cause, which is what an operator needs to fix it.
    """
    if at.tzinfo is None:
        raise ValueError("the query time needs a timezone-aware datetime, e.g. datetime.now(UTC)")
    try:
        url = httpx.URL(prometheus_url.rstrip("/") + "/api/v1/query")
    except httpx.InvalidURL as e:
        raise SloQueryError(f"Prometheus URL {prometheus_url!r} is not a valid URL: {e}") from e
    where = f"Prometheus at {_host_port(url)} (query {promql} at {at.isoformat()})"
    params = {"query": promql, "time": f"{at.timestamp():.3f}"}
    http = httpx.AsyncClient(timeout=timeout) if client is None else client
    try:
        response = await http.get(url, params=params, timeout=timeout)
    except httpx.TimeoutException as e:
        raise SloQueryError(f"{where}: no answer within {timeout:g} s ({type(e).__name__})") from e
    except httpx.HTTPError as e:
        raise SloQueryError(
            f"{where}: unreachable ({type(e).__name__}: {e}); is Prometheus running and is the URL right?"
        ) from e
    finally:
        if client is None:
            await http.aclose()
    if response.is_error:
        raise SloQueryError(f"{where}: HTTP {response.status_code}: {_prometheus_error(response)}")
    try:
        body = response.json()
    except ValueError as e:
        raise SloQueryError(f"{where}: answer is not JSON: {_prometheus_error(response)}") from e
    if not isinstance(body, dict) or body.get("status") != "success":
        detail = _prometheus_error(response) if isinstance(body, dict) else repr(body)[:200]
        raise SloQueryError(f"{where}: query failed: {detail}")
    data = body.get("data")
    result = data.get("result") if isinstance(data, dict) else None
    if not isinstance(data, dict) or data.get("resultType") != "vector" or not isinstance(result, list):
        kind = data.get("resultType") if isinstance(data, dict) else None
        raise SloQueryError(f"{where}: expected an instant vector, got resultType {kind!r}")
    return [sample for sample in result if isinstance(sample, dict)]


async def fetch(
    prometheus_url: str,
    *,
    at: datetime | None = None,
    client: httpx.AsyncClient | None = None,
    timeout: float = 10.0,  # noqa: ASYNC109 (HTTP timeout handed to httpx, part of the API)
) -> SloSnapshot:
    """Read every contract series at ``at`` (default: now) with one instant query (:data:`QUERY`).

    ``at`` must be timezone-aware: a naive time would silently shift the report by the host's UTC
    offset. ``client`` lets a caller reuse a connection pool; it is not closed here. Failures raise
    :class:`SloQueryError` (see :func:`instant_query`).
    """
    when = at if at is not None else datetime.now(UTC)
    result = await instant_query(prometheus_url, QUERY, at=when, client=client, timeout=timeout)
    return _snapshot(when, result, f"Prometheus at {prometheus_url} (query {QUERY})")


# ---------------------------------------------------------------------------------------------
# Policy and formatting


def worst_policy(statuses: Sequence[str]) -> str:
    """The most demanding status; "unknown" outranks only green (no data is not all-clear)."""
    return max(statuses, key=lambda s: _RANK[s], default="unknown")


def percent(ratio: float | None, decimals: int = 3) -> str:
    """``0.9995`` -> ``"99.950 %"``; three decimals so 99.9 % vs 99.89 % stays visible."""
    return NO_DATA if ratio is None else f"{ratio * 100:.{decimals}f} %"


def multiple(rate: float | None) -> str:
    """A burn rate: ``31.0`` -> ``"31.0x"``."""
    return NO_DATA if rate is None else f"{rate:.1f}x"


def display_name(service: str) -> str:
    """How a ``service`` label reads in a notification."""
    return "overall" if service == OVERALL else service


def service_line(service: str, slo: ServiceSlo) -> str:
    """One report line: availability, budget with its status, burn rates."""
    return (
        f"{display_name(service)}: availability daily {percent(slo.availability_daily)}, "
        f"monthly {percent(slo.availability_monthly)}; "
        f"error budget left {percent(slo.budget_remaining, 1)} ({slo.policy}); "
        f"burn rate 2h {multiple(slo.burn_2h)}, 24h {multiple(slo.burn_24h)}"
    )


def report(snapshot: SloSnapshot) -> Message:
    """The daily SLO report: one line per service, the worst status's policy, the overall figures.

    The headline availability is the 30-day (monthly) figure, the one the objective and the error
    budget are defined on. Severity follows the worst status over all services, so one service in
    trouble is not hidden by a healthy overall figure.
    """
    overall = snapshot.overall
    ordered = {OVERALL: overall, **{s: slo for s, slo in snapshot.services.items() if s != OVERALL}}
    statuses = {name: slo.policy for name, slo in ordered.items()}
    worst = worst_policy(list(statuses.values()))
    culprits = [display_name(s) for s, status in statuses.items() if status == worst]
    day = snapshot.when.astimezone(UTC).date().isoformat()
    subject = f"Sentinel SLO report {day}: overall {percent(overall.availability_monthly)} ({overall.policy})"
    lines = [service_line(name, slo) for name, slo in ordered.items()]
    lines.append("")
    lines.append(
        f"Objective {percent(OBJECTIVE, 1)} availability over 30 days. "
        f"Worst status: {worst} ({', '.join(culprits) or 'no services'}): {POLICY_MEANING[worst]}."
    )
    return Message(
        subject=subject,
        text="\n".join(lines),
        fields=(
            ("Overall availability (30 d)", percent(overall.availability_monthly)),
            ("Error budget left", percent(overall.budget_remaining, 1)),
            ("Policy status", overall.policy),
            ("Burn rate 2h", multiple(overall.burn_2h)),
        ),
        severity=_SEVERITY[worst],
    )


# ---------------------------------------------------------------------------------------------
# Burn-rate watch


def burn_alerts(snapshot: SloSnapshot, *, threshold: float = BURN_THRESHOLD) -> list[BurnAlert]:
    """Services (and "all") whose 2 h burn rate is strictly above ``threshold``.

    The original system's single-window rule; a service without a 2 h figure never alerts here
    (the report shows it as "no data"). Replaced later by the generated multiwindow alerts.
    """
    return [
        BurnAlert(service=name, burn_2h=slo.burn_2h, burn_24h=slo.burn_24h)
        for name, slo in snapshot.services.items()
        if slo.burn_2h is not None and slo.burn_2h > threshold
    ]


#: The page pairs of ``alerts/slo.yaml`` (``burn_windows``; a test keeps them equal): the
#: availability SLI's error ratio must exceed factor x (1 - objective) over both windows.
PAGE_WINDOWS: Final = (("page-fast", 14.4, "1h", "5m"), ("page-slow", 6.0, "6h", "30m"))
WINDOW_QUERY: Final = '{__name__=~"slo:sli_error:ratio_rate(5m|30m|1h|6h)",sloth_slo="availability"}'


@dataclass(frozen=True)
class WindowBurn:
    """A service burning its budget fast enough over both windows of a page pair."""

    service: str
    pair: str
    factor: float
    long_burn: float
    short_burn: float


async def fetch_windows(prometheus_url: str, *, at: datetime, client: httpx.AsyncClient | None = None,
                        timeout: float = 10.0) -> dict[str, dict[str, float]]:  # noqa: ASYNC109
    """The availability SLI error ratios per service and window (``"1h"``, ``"5m"``, ...) at ``at``."""
    result = await instant_query(prometheus_url, WINDOW_QUERY, at=at, client=client, timeout=timeout)
    out: dict[str, dict[str, float]] = {}
    for sample in result:
        labels = sample.get("metric", {})
        value = _value(sample.get("value"))
        service = labels.get("sloth_service") or labels.get("service")
        if value is None or not service:
            continue
        window = str(labels.get("__name__", "")).removeprefix("slo:sli_error:ratio_rate")
        out.setdefault(str(service), {})[window] = value
    return out


def multiwindow_alerts(windows: Mapping[str, Mapping[str, float]], *,
                       objective: float = OBJECTIVE) -> list[WindowBurn]:
    """The generated page rules, evaluated here for the notification: a pair fires when both its
    long and short window burn faster than its factor (a past spike alone does not page)."""
    budget = 1 - objective
    alerts = []
    for service in sorted(windows, key=lambda s: (s == OVERALL, s)):
        ratios = windows[service]
        for pair, factor, long, short in PAGE_WINDOWS:
            if long in ratios and short in ratios and min(ratios[long], ratios[short]) > factor * budget:
                alerts.append(WindowBurn(service, pair, factor, ratios[long] / budget, ratios[short] / budget))
    return alerts


def window_message(alerts: Sequence[WindowBurn], tenants: Sequence[str] = ()) -> Message:
    """The page for the multiwindow pairs; ``tenants``: lines naming the busiest tenants."""
    lines = [f"{display_name(a.service)}: {a.pair} ({a.factor:g}x): burning at {a.long_burn:.1f}x over the long "
             f"window and {a.short_burn:.1f}x over the short one" for a in alerts]
    if tenants:
        lines += ["", *tenants]
    return Message(subject="Sentinel SLO: error budget burning fast in "
                           + ", ".join(dict.fromkeys(display_name(a.service) for a in alerts)),
                   text="\n".join(lines), severity="critical")


def tenant_lines(ranking: Any) -> list[str]:
    """The busiest tenants of a RankTenantUsageResponse, one line each, noisy neighbours marked."""
    if not ranking.tenants:
        return ["No per-tenant usage in the last hour."]
    lines = [f"Busiest tenants over the last hour ({ranking.impacted_tenants} other tenant(s) burning budget):"]
    for t in ranking.tenants:
        burns = ", ".join(f"{name} burn {multiple(getattr(t, field) if t.HasField(field) else None)}"
                          for name, field in (("availability", "availability_burn_rate"),
                                              ("latency", "latency_burn_rate")))
        lines.append(f"{'NOISY NEIGHBOUR ' if t.noisy else ''}{t.slug}: {t.busy_share * 100:.0f} % of handling time, "
                     f"{t.db_share * 100:.0f} % of database time, {t.request_share * 100:.0f} % of requests; {burns}")
    return lines


def burn_message(alerts: Sequence[BurnAlert], threshold: float = BURN_THRESHOLD) -> Message:
    """The page for :func:`burn_alerts`' result: which services, how fast, how long the budget lasts."""
    if not alerts:
        raise ValueError("burn_message needs at least one alert")
    names = ", ".join(display_name(a.service) for a in alerts)
    lines = []
    for a in alerts:
        # At burn rate b a full 30-day budget lasts 30 d / b.
        lasts = 30 * 24 / a.burn_2h
        lines.append(
            f"{display_name(a.service)}: burning the error budget at {multiple(a.burn_2h)} over 2h "
            f"(24h: {multiple(a.burn_24h)}); at this rate a full 30-day budget lasts {lasts:.1f} h"
        )
    lines.append("")
    lines.append(f"Rule: 2h burn rate above {threshold:g}x. Find the failing dependency or roll back the last release.")
    return Message(
        subject=f"Sentinel SLO burn-rate alert: {names} above {threshold:g}x over 2h",
        text="\n".join(lines),
        fields=tuple((f"{display_name(a.service)} burn 2h", multiple(a.burn_2h)) for a in alerts),
        severity="critical",
    )

