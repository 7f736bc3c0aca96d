"""Grafana dashboards as code: this module writes dashboards/*.json and dashboards/provisioning/.

Five dashboards: SLO / Error Budget, Service RED, Host Metrics Overview, System Logs (Loki) and
Jobs and Audit. Run ``python -m sentinel.observability.dashboards`` to write them, ``--check`` to
fail when the committed files differ from what this module generates (a unit test does the same).

Why a plain Python generator and not grafana-foundation-sdk's builders: the committed JSON is what
Grafana provisions and what reviewers read, and every change to it shows in the diff of one
module with no dependency at run time. Each query carries what the live test needs (must it
return data on a healthy, busy stack?), which a builder has no place for. The SDK is still used,
pinned to its Grafana 11.6 build, as a checker (tests/unit/test_dashboards.py): its models,
generated from Grafana's published schemas, must read every key of every dashboard back.
:func:`validate` is a strict structural check of the subset of Grafana's dashboard schema
(``kinds/dashboard``; grafana-foundation-sdk ``jsonschema/dashboard.jsonschema.json`` and the
panel schemas) that these dashboards use.

Contracts with other parts of the system, stated once here:

* Datasources are provisioned with fixed uids (:data:`PROMETHEUS_UID`, :data:`LOKI_UID`), so the
  dashboards need no ``__inputs`` (which file provisioning never resolves).
* **Process memory** (issue 7's collector): a node-exporter textfile collector writes
  ``sentinel_process_resident_memory_bytes{process="<name>", pid="<pid>"}``, a gauge in bytes
  (resident set size), one series per process, to a ``*.prom`` file in the node exporter's
  ``--collector.textfile.directory`` (:data:`PROCESS_MEMORY_METRIC`, :data:`PROCESS_MEMORY_LABELS`,
  :data:`PROCESS_MEMORY_FILE`), written atomically (temp file + rename), with HELP and TYPE lines
  and no timestamps. "Top 10 processes by memory" is an instant ``topk`` over it.
* **Log labels** come from the Alloy pipeline (:mod:`sentinel.observability.config`):
  :data:`LOG_LABELS`, with ``level`` one of :data:`LOG_LEVELS`.
* Scrape jobs ``sentinel-<process>``, ``envoy`` and ``node`` (alerts/README.md).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import yaml

from sentinel.observability import rules

__all__ = [
    "DASHBOARDS",
    "LOG_LABELS",
    "LOG_LEVELS",
    "LOKI_UID",
    "PROCESS_MEMORY_FILE",
    "PROCESS_MEMORY_LABELS",
    "PROCESS_MEMORY_METRIC",
    "PROMETHEUS_UID",
    "Dashboard",
    "Panel",
    "Query",
    "Row",
    "Variable",
    "build",
    "generate",
    "main",
    "queries",
    "render",
    "substitute",
    "validate",
]

PROMETHEUS_UID: Final = "sentinel-prometheus"
LOKI_UID: Final = "sentinel-loki"
PROM: Final = {"type": "prometheus", "uid": PROMETHEUS_UID}
LOKI: Final = {"type": "loki", "uid": LOKI_UID}

#: The per-process memory gauge issue 7's textfile collector writes (see the module docstring).
PROCESS_MEMORY_METRIC: Final = "sentinel_process_resident_memory_bytes"
PROCESS_MEMORY_LABELS: Final = ("process", "pid")
PROCESS_MEMORY_FILE: Final = "sentinel_process_memory.prom"

#: Labels the Alloy pipeline puts on every log stream (all bounded: no ids, no messages).
LOG_LABELS: Final = ("job", "host", "unit", "service", "level")
#: ``level`` values: Sentinel's JSON ``level`` field, and journald priorities mapped onto them.
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
LOG_JOB: Final = "journal"

#: Grafana 11.6's dashboard schema version (the pinned grafana-foundation-sdk build).
SCHEMA_VERSION: Final = 41
TAG: Final = "sentinel"

Kind = Literal["timeseries", "stat", "gauge", "bargauge", "table", "piechart", "logs", "text"]
Step = tuple[float | None, str]


# ---------------------------------------------------------------------------------------------
# The model


@dataclass(frozen=True)
class Query:
    """One target. ``empty_ok`` says why the query may legitimately return nothing on a healthy,
    busy system; the live test then only checks that it parses. Empty: it must return data."""

    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False
    empty_ok: str = ""


@dataclass(frozen=True)
class Panel:
    kind: Kind
    title: str
    description: str
    queries: tuple[Query, ...] = ()
    unit: str = "short"
    width: int = 8
    height: int = 8
    decimals: int | None = None
    min: float | None = None
    max: float | None = None
    #: (from value, colour); the first step's value is None (-Infinity).
    thresholds: tuple[Step, ...] = ((None, "green"),)
    #: timeseries: draw the thresholds as lines.
    threshold_lines: bool = False
    mappings: tuple[Mapping[str, Any], ...] = ()
    stack: bool = False
    loki: bool = False
    transformations: tuple[Mapping[str, Any], ...] = ()
    content: str = ""  # text panels (markdown)
    sort_by: str = ""  # table panels: the column sorted descending

    @property
    def datasource(self) -> Mapping[str, str]:
        return LOKI if self.loki else PROM


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Variable:
    name: str
    label: str
    #: label_values(...) for a query variable; for a custom one, the values comma-separated.
    query: str
    custom: bool = False
    loki: bool = False


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    tags: tuple[str, ...]
    variables: tuple[Variable, ...]
    rows: tuple[Row, ...]
    time_from: str = "now-6h"
    refresh: str = "1m"

    @property
    def file_name(self) -> str:
        return f"{self.uid.removeprefix('sentinel-')}.json"


# ---------------------------------------------------------------------------------------------
# The dashboards

_RATE = "$__rate_interval"
_OK_RED: Final[tuple[Step, ...]] = ((None, "green"), (1, "red"))


def _code_regex(codes: Sequence[str]) -> str:
    return "|".join(codes)


def _slo_dashboard(spec: rules.Spec) -> Dashboard:
    avail = spec.slo("availability")
    budget = float(avail.budget)
    sel = 'service=~"$service"'
    burn = "/ on (sloth_slo) group_left () slo:error_budget:ratio"
    policy_steps: tuple[Step, ...] = ((None, "red"), (0.10, "orange"), (0.25, "yellow"), (0.50, "green"))
    # Range mappings are inclusive at both ends and the first match wins: the order below gives
    # each boundary to the stricter status, as sentinel.scheduler.slo.budget_policy does.
    def result(text: str, color: str, index: int) -> dict[str, Any]:
        return {"text": text, "color": color, "index": index}

    policy = (
        {"type": "special", "options": {"match": "null+nan", "result": result("unknown", "text", 0)}},
        {"type": "range", "options": {"from": 0.10, "to": 0.25, "result": result("warning", "orange", 1)}},
        {"type": "range", "options": {"from": 0.25, "to": 0.50, "result": result("caution", "yellow", 2)}},
        {"type": "range", "options": {"from": -1e9, "to": 0.10, "result": result("critical", "red", 3)}},
        {"type": "range", "options": {"from": 0.50, "to": 1e9, "result": result("green", "green", 4)}},
    )
    objective = float(avail.objective)
    return Dashboard(
        uid="sentinel-slo", title="Sentinel / SLO and Error Budget",
        description="Availability per service and overall against the 99.9 % objective, the 30-day error budget, "
                    "burn rates over the alert windows, and the release policy the budget implies. Every figure "
                    "comes from the recording rules in alerts/generated (ratios of counts, never averaged ratios).",
        tags=(TAG, "slo"),
        variables=(Variable("service", "Service", "label_values(slo:availability:monthly, service)"),),
        time_from="now-7d", refresh="5m",
        rows=(
            Row("Availability and budget (30 days)", (
                Panel("gauge", "Availability, 30 days",
                      f"1 - server-side error ratio over 30 days, per service and overall (service=\"all\"); "
                      f"objective {objective:.1%}.",
                      (Query(f"slo:availability:monthly{{{sel}}}", "{{service}}", instant=True),),
                      unit="percentunit", width=12, height=7, decimals=3, min=0.99, max=1,
                      thresholds=((None, "red"), (objective, "green"))),
                Panel("stat", "Error budget remaining (availability)",
                      "Fraction of the 30-day error budget left; negative when overspent.",
                      (Query(f"slo:error_budget:remaining{{{sel}}}", "{{service}}", instant=True),),
                      unit="percentunit", width=6, height=7, decimals=1, thresholds=policy_steps),
                Panel("stat", "Error-budget policy",
                      "The release policy the remaining budget implies (sentinel.scheduler.slo.budget_policy): "
                      "green above 50 %, caution down to 25 %, warning down to 10 %, critical below.",
                      (Query(f"slo:error_budget:remaining{{{sel}}}", "{{service}}", instant=True),),
                      width=6, height=7, thresholds=policy_steps, mappings=policy),
                Panel("bargauge", "Budget remaining per SLO",
                      "slo:period_error_budget_remaining:ratio for availability (99.9 %), error rate (99 %) "
                      "and latency (95 % within 1 s).",
                      (Query(f"slo:period_error_budget_remaining:ratio{{{sel}}}", "{{service}} {{sloth_slo}}",
                             instant=True),),
                      unit="percentunit", width=12, height=9, decimals=1, min=0, max=1, thresholds=policy_steps),
                Panel("table", "Objectives",
                      "Objective and error budget of each SLO (recorded from alerts/slo.yaml).",
                      (Query("slo:objective:ratio", instant=True, table=True),
                       Query("slo:error_budget:ratio", instant=True, table=True)),
                      unit="percentunit", width=6, height=9,
                      transformations=({"id": "merge", "options": {}},
                                       {"id": "organize", "options": {
                                           "excludeByName": {"Time": True},
                                           "renameByName": {"Value #A": "objective", "Value #B": "error budget"}}})),
                Panel("stat", "SLO alerts firing",
                      "Burn-rate, absent and latency-bucket alerts firing now (ALERTS from Prometheus' rules).",
                      (Query('sum(ALERTS{alertstate="firing", alertname=~"SLO.*"}) or vector(0)', instant=True),),
                      width=6, height=9, thresholds=_OK_RED),
            )),
            Row("Burn rate", (
                Panel("timeseries", "Availability burn rate, page windows",
                      f"Error ratio / budget ({budget}) over the page pairs: 1h and 5m over 14.4x, or 6h and 30m "
                      "over 6x, page (both windows of a pair).",
                      tuple(Query(f'slo:sli_error:ratio_rate{w}{{sloth_slo="availability", {sel}}}\n{burn}',
                                  f"{{{{service}}}} {w}") for w in ("5m", "1h", "30m", "6h")),
                      width=12, height=9, thresholds=((None, "green"), (6, "orange"), (14.4, "red")),
                      threshold_lines=True),
                Panel("timeseries", "Burn rate by SLO, 1h",
                      "Every SLO's 1-hour error ratio divided by its own budget: 1x spends the budget in exactly "
                      "30 days.",
                      (Query(f"slo:sli_error:ratio_rate1h{{{sel}}}\n{burn}", "{{service}} {{sloth_slo}}"),),
                      width=12, height=9, thresholds=((None, "green"), (1, "orange")), threshold_lines=True),
                Panel("timeseries", "Burn rate 2h and 24h (scheduler report)",
                      "The series the daily SLO report and the burn-rate watch read.",
                      (Query(f"slo:burnrate:2h{{{sel}}}", "{{service}} 2h"),
                       Query(f"slo:burnrate:24h{{{sel}}}", "{{service}} 24h")),
                      width=12, height=8),
                Panel("timeseries", "Budget remaining, trend",
                      "30-day error budget left per SLO over time.",
                      (Query(f"slo:period_error_budget_remaining:ratio{{{sel}}}", "{{service}} {{sloth_slo}}"),),
                      unit="percentunit", width=12, height=8, thresholds=policy_steps),
            )),
            Row("SLIs", (
                Panel("timeseries", "Error ratio by SLO, 5m",
                      "Bad events / all events over 5 minutes: server-side failures (availability), any non-OK "
                      "answer (error rate), requests slower than 1 s (latency).",
                      (Query(f"slo:sli_error:ratio_rate5m{{{sel}}}", "{{service}} {{sloth_slo}}"),),
                      unit="percentunit", width=12, height=8),
                Panel("timeseries", "Latency P95, 5m",
                      "histogram_quantile over buckets summed by service (never averaged quantiles); the latency "
                      "SLO is 95 % within 1 s.",
                      (Query(f"slo:latency:p95_5m{{{sel}}}", "{{service}}"),),
                      unit="s", width=6, height=8, thresholds=((None, "green"), (1, "red")), threshold_lines=True),
                Panel("stat", "Within 1 s, last hour",
                      "Fraction of requests answered within 1 s over the last hour.",
                      (Query(f"slo:latency_good:hourly{{{sel}}}", "{{service}}", instant=True),),
                      unit="percentunit", width=6, height=8, decimals=2,
                      thresholds=((None, "red"), (float(spec.slo("latency").objective), "green"))),
            )),
        ),
    )


def _red_dashboard(spec: rules.Spec) -> Dashboard:
    sel = 'service=~"$service", method=~"$method"'
    server = _code_regex(spec.server_error_codes)
    le = spec.slo("latency").le
    count = "sentinel_request_duration_seconds_count"
    bucket = "sentinel_request_duration_seconds_bucket"

    def quantile(q: float, by: str) -> str:
        # The le label is kept through the sum (sum by (..., le)) so histogram_quantile sees the buckets.
        return f"histogram_quantile({q}, sum by ({by}, le) (rate({bucket}{{{sel}}}[{_RATE}])))"

    edge = 'envoy_http_conn_manager_prefix="ingress"'
    return Dashboard(
        uid="sentinel-red", title="Sentinel / Service RED",
        description="Rate, errors and duration per service and method from the services' own metrics "
                    "(sentinel_requests_total, sentinel_request_duration_seconds), plus the edge as Envoy sees it.",
        tags=(TAG, "red"),
        variables=(Variable("service", "Service", "label_values(sentinel_requests_total, service)"),
                   Variable("method", "Method", 'label_values(sentinel_requests_total{service=~"$service"}, method)')),
        time_from="now-3h", refresh="30s",
        rows=(
            Row("Rate", (
                Panel("timeseries", "Requests by service", "RPCs per second, every code.",
                      (Query(f"sum by (service) (rate(sentinel_requests_total{{{sel}}}[{_RATE}]))", "{{service}}"),),
                      unit="reqps", width=12),
                Panel("timeseries", "Requests by method", "RPCs per second per method.",
                      (Query(f"sum by (service, method) (rate(sentinel_requests_total{{{sel}}}[{_RATE}]))",
                             "{{service}} {{method}}"),),
                      unit="reqps", width=12),
            )),
            Row("Errors", (
                Panel("timeseries", "Non-OK ratio by service",
                      "Share of answers with any non-OK code (client errors included: the error-rate SLO).",
                      (Query(f'sum by (service) (rate(sentinel_requests_total{{code!="OK", {sel}}}[{_RATE}]))\n/\n'
                             f"sum by (service) (rate(sentinel_requests_total{{{sel}}}[{_RATE}]))", "{{service}}"),),
                      unit="percentunit", width=8),
                Panel("timeseries", "Errors by code", "Non-OK answers per second by service and gRPC code.",
                      (Query(f'sum by (service, code) (rate(sentinel_requests_total{{code!="OK", {sel}}}[{_RATE}]))',
                             "{{service}} {{code}}"),),
                      unit="reqps", width=8, stack=True),
                Panel("timeseries", "Server-side failures by method",
                      f"Answers that burn the availability budget ({server.replace('|', ', ')}).",
                      (Query(f'sum by (service, method, code) (rate(sentinel_requests_total{{code=~"{server}", '
                             f"{sel}}}[{_RATE}]))", "{{service}} {{method}} {{code}}",
                             empty_ok="a healthy stack answers no request with a server-side failure code"),),
                      unit="reqps", width=8, thresholds=((None, "red"),)),
                Panel("table", "Errors by method and code (time range)",
                      "Non-OK answers over the dashboard's time range.",
                      (Query(f'sort_desc(sum by (service, method, code) (increase(sentinel_requests_total{{code!="OK", '
                             f"{sel}}}[$__range])))", instant=True, table=True),),
                      width=24, height=8, decimals=0, sort_by="Value",
                      transformations=({"id": "organize", "options": {"excludeByName": {"Time": True},
                                                                      "renameByName": {"Value": "errors"}}},)),
            )),
            Row("Duration", (
                Panel("timeseries", "Duration p50 / p95 / p99 by service",
                      "From the histogram buckets summed by service and le (quantiles are never averaged).",
                      tuple(Query(quantile(q, "service"), f"{{{{service}}}} p{int(q * 100)}")
                            for q in (0.5, 0.95, 0.99)),
                      unit="s", width=12, thresholds=((None, "green"), (1, "red")), threshold_lines=True),
                Panel("timeseries", "Duration p95 by method", "95th percentile per method.",
                      (Query(quantile(0.95, "service, method"), "{{service}} {{method}}"),),
                      unit="s", width=12),
                Panel("timeseries", "Requests slower than 1 s",
                      f'All requests minus those in the le="{le}" bucket, per second: what burns the latency SLO.',
                      (Query(f"sum by (service) (rate({count}{{{sel}}}[{_RATE}]))\n-\n"
                             f'sum by (service) (rate({bucket}{{le="{le}", {sel}}}[{_RATE}]))', "{{service}}"),),
                      unit="reqps", width=12),
                Panel("timeseries", "Mean duration by method", "sum / count of the histogram.",
                      (Query(f"sum by (service, method) "
                             f"(rate(sentinel_request_duration_seconds_sum{{{sel}}}[{_RATE}]))\n/\n"
                             f"sum by (service, method) (rate({count}{{{sel}}}[{_RATE}]))", "{{service}} {{method}}"),),
                      unit="s", width=12),
            )),
            Row("Saturation", (
                Panel("timeseries", "In-flight requests", "RPCs being handled now.",
                      (Query('sum by (service) (sentinel_requests_in_flight{service=~"$service"})', "{{service}}"),),
                      width=8),
                Panel("timeseries", "Database pool", "Checked-out connections against the most the pool may hold.",
                      (Query('sum by (service, state) (sentinel_db_pool_connections{service=~"$service", '
                             'state=~"checked_out|max"})', "{{service}} {{state}}"),),
                      width=8),
                Panel("stat", "Scrape targets up", "up per scrape job (1 = scraped).",
                      (Query("min by (job) (up)", "{{job}}", instant=True),),
                      width=8, thresholds=((None, "red"), (1, "green"))),
            )),
            Row("Edge (Envoy)", (
                Panel("timeseries", "Edge requests by response class",
                      "Downstream HTTP requests per second at the ingress listener, by status class (gRPC-Web "
                      "and transcoded REST; native gRPC answers 200 whatever its grpc-status).",
                      (Query(f"sum by (envoy_response_code_class) "
                             f"(rate(envoy_http_downstream_rq_xx{{{edge}}}[{_RATE}]))",
                             "{{envoy_response_code_class}}xx"),),
                      unit="reqps", width=8, stack=True),
                Panel("timeseries", "Edge duration p95",
                      "Downstream request time (Envoy histograms are in milliseconds).",
                      (Query(f"histogram_quantile(0.95, sum by (le) "
                             f"(rate(envoy_http_downstream_rq_time_bucket{{{edge}}}"
                             f"[{_RATE}])))", "p95"),),
                      unit="ms", width=8),
                Panel("timeseries", "Upstream requests by cluster",
                      "Requests Envoy sent to each upstream cluster, by status class.",
                      (Query(f"sum by (envoy_cluster_name, envoy_response_code_class) "
                             f"(rate(envoy_cluster_upstream_rq_xx[{_RATE}]))",
                             "{{envoy_cluster_name}} {{envoy_response_code_class}}xx"),),
                      unit="reqps", width=8),
            )),
        ),
    )


_NO_WATCHDOG: Final = "the audit watchdog is optional (sentinel host install-audit-rules); the live stack runs none"


def _host_dashboard(spec: rules.Spec) -> Dashboard:
    inst = 'instance=~"$instance"'
    fs = f'{inst}, fstype!~"{_code_regex(spec.host.ignore_fstypes)}"'
    cpus = f'count by (instance) (node_cpu_seconds_total{{mode="idle", {inst}}})'
    mem = PROCESS_MEMORY_METRIC
    by = ", ".join(("instance", *PROCESS_MEMORY_LABELS))
    return Dashboard(
        uid="sentinel-host", title="Sentinel / Host Metrics Overview",
        description="CPU, memory, disk, network and filesystems from the node exporter (job node), the "
                    "processes using most memory from the process-memory textfile collector, and the audit "
                    "watchdog's view of auditd.",
        tags=(TAG, "host"),
        variables=(Variable("instance", "Host",
                            f'label_values(node_uname_info{{job="{spec.host.node_job}"}}, instance)'),),
        time_from="now-6h", refresh="1m",
        rows=(
            Row("Overview", (
                Panel("stat", "CPU busy", "All CPUs, share of time not idle.",
                      (Query(f'1 - avg by (instance) (rate(node_cpu_seconds_total{{mode="idle", {inst}}}[{_RATE}]))',
                             "{{instance}}", instant=True),),
                      unit="percentunit", width=6, height=5, decimals=1,
                      thresholds=((None, "green"), (0.75, "orange"), (float(spec.host.cpu_busy_max), "red"))),
                Panel("stat", "Memory available", "MemAvailable / MemTotal.",
                      (Query(f"node_memory_MemAvailable_bytes{{{inst}}} / node_memory_MemTotal_bytes{{{inst}}}",
                             "{{instance}}", instant=True),),
                      unit="percentunit", width=6, height=5, decimals=1,
                      thresholds=((None, "red"), (float(spec.host.memory_available_min), "orange"), (0.25, "green"))),
                Panel("stat", "Fullest filesystem", "Highest used share of any real, writable filesystem.",
                      (Query(f"max by (instance) (1 - node_filesystem_avail_bytes{{{fs}}} / "
                             f"node_filesystem_size_bytes{{{fs}}})", "{{instance}}", instant=True),),
                      unit="percentunit", width=6, height=5, decimals=1,
                      thresholds=((None, "green"), (1 - float(spec.host.disk_free_ticket), "orange"),
                                  (1 - float(spec.host.disk_free_page), "red"))),
                Panel("stat", "Uptime", "Time since boot.",
                      (Query(f"time() - node_boot_time_seconds{{{inst}}}", "{{instance}}", instant=True),),
                      unit="s", width=6, height=5),
            )),
            Row("CPU and memory", (
                Panel("timeseries", "CPU by mode", "Share of all CPUs per mode (idle left out).",
                      (Query(f"sum by (instance, mode) "
                             f'(rate(node_cpu_seconds_total{{mode!="idle", {inst}}}[{_RATE}]))\n'
                             f"/ on (instance) group_left ()\n{cpus}", "{{mode}}"),),
                      unit="percentunit", width=8, stack=True, max=1),
                Panel("timeseries", "Load average", "1, 5 and 15 minutes, against the number of CPUs.",
                      (Query(f"node_load1{{{inst}}}", "load 1m"), Query(f"node_load5{{{inst}}}", "load 5m"),
                       Query(f"node_load15{{{inst}}}", "load 15m"), Query(cpus, "CPUs")),
                      width=8),
                Panel("timeseries", "Memory", "Used (total - available), available, and swap in use.",
                      (Query(f"node_memory_MemTotal_bytes{{{inst}}} - node_memory_MemAvailable_bytes{{{inst}}}",
                             "used"),
                       Query(f"node_memory_MemAvailable_bytes{{{inst}}}", "available"),
                       Query(f"node_memory_SwapTotal_bytes{{{inst}}} - node_memory_SwapFree_bytes{{{inst}}}",
                             "swap used")),
                      unit="bytes", width=8),
            )),
            Row("Processes", (
                Panel("table", "Top 10 processes by memory",
                      f"Resident memory per process now (instant topk over {mem}{{process, pid}} from the "
                      "process-memory textfile collector).",
                      (Query(f"topk(10, max by ({by}) ({mem}{{{inst}}}))", instant=True, table=True),),
                      unit="bytes", width=12, height=10, sort_by="resident memory",
                      transformations=({"id": "organize", "options": {
                          "excludeByName": {"Time": True},
                          "indexByName": {"process": 0, "pid": 1, "instance": 2, "Value": 3},
                          "renameByName": {"Value": "resident memory"}}},)),
                Panel("stat", "Process-memory collector age",
                      "Seconds since the collector last rewrote its textfile (HostTextfileCollectorStale fires "
                      "after 15 minutes).",
                      (Query(f'time() - node_textfile_mtime_seconds{{file=~".*{PROCESS_MEMORY_FILE}", {inst}}}',
                             "{{instance}}", instant=True),),
                      unit="s", width=6, height=10, thresholds=((None, "green"), (300, "orange"), (900, "red"))),
                Panel("stat", "Textfile scrape errors", "1 when the node exporter rejects a textfile.",
                      (Query(f"node_textfile_scrape_error{{{inst}}}", "{{instance}}", instant=True),),
                      width=6, height=10, thresholds=_OK_RED),
            )),
            Row("Disk and filesystems", (
                Panel("timeseries", "Disk throughput", "Bytes read and written per second per device.",
                      (Query(f"rate(node_disk_read_bytes_total{{{inst}}}[{_RATE}])", "{{device}} read"),
                       Query(f"rate(node_disk_written_bytes_total{{{inst}}}[{_RATE}])", "{{device}} written")),
                      unit="Bps", width=8),
                Panel("timeseries", "Disk busy", "Share of time each device had I/O in progress.",
                      (Query(f"rate(node_disk_io_time_seconds_total{{{inst}}}[{_RATE}])", "{{device}}"),),
                      unit="percentunit", width=8),
                Panel("bargauge", "Filesystem used", "Used share per mountpoint (real, writable filesystems).",
                      (Query(f"1 - node_filesystem_avail_bytes{{{fs}}} / node_filesystem_size_bytes{{{fs}}}",
                             "{{mountpoint}}", instant=True),),
                      unit="percentunit", width=8, min=0, max=1,
                      thresholds=((None, "green"), (1 - float(spec.host.disk_free_ticket), "orange"),
                                  (1 - float(spec.host.disk_free_page), "red"))),
            )),
            Row("Network", (
                Panel("timeseries", "Network traffic", "Bytes received and sent per second (loopback left out).",
                      (Query(f'rate(node_network_receive_bytes_total{{device!="lo", {inst}}}[{_RATE}])',
                             "{{device}} in"),
                       Query(f'rate(node_network_transmit_bytes_total{{device!="lo", {inst}}}[{_RATE}])',
                             "{{device}} out")),
                      unit="Bps", width=12),
                Panel("timeseries", "Network errors and drops", "Receive and transmit errors and drops per second.",
                      tuple(Query(f'rate(node_network_{metric}_total{{device!="lo", {inst}}}[{_RATE}])',
                                  f"{{{{device}}}} {legend}")
                            for metric, legend in (("receive_errs", "rx errors"), ("transmit_errs", "tx errors"),
                                                   ("receive_drop", "rx drops"))),
                      unit="pps", width=12),
            )),
            Row("Audit watchdog", (
                Panel("stat", "Audit watchdog",
                      "From sentinel-watchdog's textfile at its last scan: auditd down (1: not running; "
                      "SentinelAuditdDown pages after 5 minutes) and expected audit rule keys not loaded in the "
                      "kernel (SentinelAuditRulesMissing). Empty on a host without the watchdog.",
                      (Query(f"1 - sentinel_watchdog_auditd_up{{{inst}}}", "{{instance}} auditd down", instant=True,
                             empty_ok=_NO_WATCHDOG),
                       Query(f"sentinel_watchdog_rules_missing{{{inst}}}", "{{instance}} rules missing",
                             instant=True, empty_ok=_NO_WATCHDOG)),
                      width=24, height=4, decimals=0, thresholds=_OK_RED),
            )),
        ),
    )


def _logs_dashboard() -> Dashboard:
    base = f'job="{LOG_JOB}", unit=~"$unit", level=~"$level"'
    sentinel = f'job="{LOG_JOB}", service=~"$service", level=~"$level"'
    errors = 'level=~"error|critical"'
    return Dashboard(
        uid="sentinel-logs", title="Sentinel / System Logs",
        description="The host's journal in Loki, shipped by Alloy: error rates, severity distribution and the log "
                    "streams. Sentinel's processes log one JSON object per line; Alloy promotes its service and "
                    "level fields to labels (other units get level from the journal priority).",
        tags=(TAG, "logs"),
        variables=(Variable("unit", "Unit", f'label_values({{job="{LOG_JOB}"}}, unit)', loki=True),
                   Variable("service", "Sentinel service", f'label_values({{job="{LOG_JOB}"}}, service)', loki=True),
                   Variable("level", "Level", ",".join(LOG_LEVELS), custom=True)),
        time_from="now-6h", refresh="1m",
        rows=(
            Row("Rates", (
                Panel("timeseries", "Errors per unit",
                      "Lines at level error or critical per second, per systemd unit.",
                      (Query(f'sum by (unit) (rate({{job="{LOG_JOB}", unit=~"$unit", {errors}}}[$__auto]))',
                             "{{unit}}"),),
                      unit="short", width=12, loki=True),
                Panel("timeseries", "Sentinel errors per service",
                      "Error and critical lines per second from Sentinel's own processes.",
                      (Query(f'sum by (service) (rate({{job="{LOG_JOB}", service=~"$service", {errors}}}[$__auto]))',
                             "{{service}}"),),
                      unit="short", width=12, loki=True),
                Panel("timeseries", "Log volume by level", "Lines per second by level.",
                      (Query(f"sum by (level) (rate({{{base}}}[$__auto]))", "{{level}}"),),
                      unit="short", width=12, stack=True, loki=True),
                Panel("piechart", "Severity distribution", "Lines per level over the dashboard's time range.",
                      (Query(f"sum by (level) (count_over_time({{{base}}}[$__range]))", "{{level}}", instant=True),),
                      width=12, loki=True),
            )),
            Row("Streams", (
                Panel("logs", "Sentinel errors",
                      "Error and critical lines of Sentinel's processes, message and trace id extracted from the JSON.",
                      (Query(f'{{job="{LOG_JOB}", service=~"$service", {errors}}} | json | '
                             'line_format "{{.service}} {{.logger}}: {{.msg}} {{.trace_id}}"'),),
                      width=24, height=10, loki=True),
                Panel("logs", "Sentinel logs", "Every line of the selected services and levels.",
                      (Query(f"{{{sentinel}}}"),), width=24, height=12, loki=True),
                Panel("logs", "System journal", "Every line of the selected units and levels.",
                      (Query(f"{{{base}}}"),), width=24, height=12, loki=True),
            )),
        ),
    )


def _jobs_dashboard(spec: rules.Spec) -> Dashboard:
    periodic = _code_regex(spec.platform.periodic_jobs)
    return Dashboard(
        uid="sentinel-jobs", title="Sentinel / Jobs and Audit",
        description="The job worker (throughput, failures, queue depth, duration), audit delivery through the "
                    "services' outboxes, the audit chains' verification, and the edge's rate limiting.",
        tags=(TAG, "jobs", "audit"),
        variables=(),
        time_from="now-6h", refresh="1m",
        rows=(
            Row("Jobs", (
                Panel("timeseries", "Job runs by kind", "Runs per second by kind (periodic jobs by their name).",
                      (Query(f"sum by (kind) (rate(sentinel_jobs_total[{_RATE}]))", "{{kind}}"),),
                      unit="ops", width=8),
                Panel("timeseries", "Job runs by outcome", "succeeded, failed, retrying, dead_letter, superseded...",
                      (Query(f"sum by (outcome) (rate(sentinel_jobs_total[{_RATE}]))", "{{outcome}}"),),
                      unit="ops", width=8, stack=True),
                Panel("stat", "Failed and dead-lettered (time range)",
                      "Job runs that failed permanently or exhausted their retries.",
                      (Query('sum(increase(sentinel_jobs_total{outcome=~"failed|dead_letter"}[$__range])) or vector(0)',
                             instant=True),),
                      width=4, decimals=0, thresholds=_OK_RED),
                Panel("stat", "Queue depth", "Tasks waiting in the huey queue (last measured).",
                      (Query("max(sentinel_job_queue_depth)", instant=True),),
                      width=4, thresholds=((None, "green"), (100, "orange"), (1000, "red"))),
                Panel("timeseries", "Queue depth over time", "Tasks waiting in the huey queue.",
                      (Query("max(sentinel_job_queue_depth)", "queued"),), width=8),
                Panel("timeseries", "Job duration p95 by kind", "From sentinel_job_duration_seconds buckets.",
                      (Query(f"histogram_quantile(0.95, sum by (kind, le) "
                             f"(rate(sentinel_job_duration_seconds_bucket[{_RATE}])))", "{{kind}}"),),
                      unit="s", width=8),
                Panel("table", "Periodic jobs (time range)", "Runs of each periodic job by outcome.",
                      (Query(f'sum by (kind, outcome) (increase(sentinel_jobs_total{{kind=~"{periodic}"}}[$__range]))',
                             instant=True, table=True),),
                      width=8, decimals=0,
                      transformations=({"id": "organize", "options": {"excludeByName": {"Time": True},
                                                                      "renameByName": {"Value": "runs"}}},)),
                Panel("stat", "Component health", "The last health check per component (1 = reached).",
                      (Query("sentinel_component_up", "{{component}}", instant=True),),
                      width=24, height=5, thresholds=((None, "red"), (1, "green"))),
            )),
            Row("Audit", (
                Panel("stat", "Broken audit chains",
                      "Tenant chains that failed their last verification (audit_verify). Anything above 0 is a "
                      "security incident (SentinelAuditChainBroken pages).",
                      (Query("max(sentinel_audit_chain_broken)", instant=True),),
                      width=6, decimals=0, thresholds=_OK_RED),
                Panel("stat", "Audit dead letters", "Events the audit service refused as invalid, since process start.",
                      (Query("sum(sentinel_audit_outbox_dead_letters_total) or vector(0)", instant=True),),
                      width=6, decimals=0, thresholds=_OK_RED),
                Panel("timeseries", "Outbox pending", "Audit events waiting in each service's outbox.",
                      (Query("sum by (service) (sentinel_audit_outbox_pending)", "{{service}}"),),
                      width=12),
                Panel("timeseries", "Outbox delivery", "Events delivered and failed drain attempts per second.",
                      (Query(f"sum by (service) (rate(sentinel_audit_outbox_sent_total[{_RATE}]))", "{{service}} sent"),
                       Query(f"sum by (service) (rate(sentinel_audit_outbox_failures_total[{_RATE}]))",
                             "{{service}} failed",
                             empty_ok="no drain attempt fails while the audit service is up")),
                      unit="ops", width=12),
                Panel("timeseries", "Notifications", "Slack and e-mail notifications by outcome.",
                      (Query(f"sum by (channel, outcome) (rate(sentinel_notifications_total[{_RATE}]))",
                             "{{channel}} {{outcome}}",
                             empty_ok="the worker loads the notifier, and with it these series, at its first "
                                      "health change or SLO report"),),
                      unit="ops", width=12),
            )),
            Row("Rate limiting", (
                Panel("timeseries", "Rejections by tier and class",
                      "Requests refused with 429 / RESOURCE_EXHAUSTED, by the tier and class (auth, write, "
                      "read) that refused them: ip is Envoy's per-address buckets, tenant and principal the "
                      "services' counters in Redis.",
                      (Query(f"sum by (tier, class) (rate(sentinel_ratelimit_rejections_total[{_RATE}]))",
                             "{{tier}} {{class}}"),
                       Query("sum by (envoy_local_http_ratelimit_prefix) (rate(envoy_http_local_rate_limit_rate_limited"
                             f'{{envoy_local_http_ratelimit_prefix=~"edge_ip_.+"}}[{_RATE}]))',
                             "{{envoy_local_http_ratelimit_prefix}}")),
                      unit="reqps", width=12),
                Panel("stat", "Rejections (time range)", "429s over the dashboard's time range, every tier.",
                      (Query("(sum(increase(sentinel_ratelimit_rejections_total[$__range])) or vector(0)) + "
                             "(sum(increase(envoy_http_local_rate_limit_rate_limited"
                             '{envoy_local_http_ratelimit_prefix=~"edge_ip_.+"}[$__range])) or vector(0))',
                             instant=True),),
                      width=4, decimals=0),
                Panel("stat", "Failed open", "Service decisions made without Redis (tenant and principal limits "
                      "not enforced), since start.",
                      (Query("sum(sentinel_ratelimit_errors_total) or vector(0)", instant=True),),
                      width=4, decimals=0, thresholds=_OK_RED),
                Panel("stat", "Decision p99", "Time a service takes to count one call (one Redis round trip).",
                      (Query("histogram_quantile(0.99, sum by (le) (rate(sentinel_ratelimit_decision_seconds_bucket"
                             f"[{_RATE}])))", instant=True),),
                      unit="s", width=4),
                Panel("timeseries", "Checks by outcome", "Counters checked per second by tier and outcome.",
                      (Query(f"sum by (tier, outcome) (rate(sentinel_ratelimit_checks_total[{_RATE}]))",
                             "{{tier}} {{outcome}}"),),
                      unit="ops", width=12),
            )),
        ),
    )


def build(spec: rules.Spec) -> tuple[Dashboard, ...]:
    """The five dashboards, built from the SLO spec's numbers (objectives, codes, thresholds)."""
    return (_slo_dashboard(spec), _red_dashboard(spec), _host_dashboard(spec), _logs_dashboard(),
            _jobs_dashboard(spec))


#: Titles of the five dashboards, in order.
DASHBOARDS: Final = ("SLO and Error Budget", "Service RED", "Host Metrics Overview", "System Logs", "Jobs and Audit")


# ---------------------------------------------------------------------------------------------
# Rendering to Grafana's JSON model


def _reduce() -> dict[str, Any]:
    return {"calcs": ["lastNotNull"], "fields": "", "values": False}


def _options(p: Panel) -> dict[str, Any]:
    legend = {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []}
    if p.kind == "timeseries":
        return {"legend": legend, "tooltip": {"mode": "multi", "sort": "desc"}}
    if p.kind == "stat":
        return {"graphMode": "none", "colorMode": "value", "justifyMode": "auto", "textMode": "auto",
                "wideLayout": True, "showPercentChange": False, "percentChangeColorMode": "standard",
                "orientation": "auto", "reduceOptions": _reduce()}
    if p.kind == "gauge":
        return {"showThresholdLabels": False, "showThresholdMarkers": True, "sizing": "auto", "minVizWidth": 75,
                "minVizHeight": 75, "orientation": "auto", "reduceOptions": _reduce()}
    if p.kind == "bargauge":
        return {"displayMode": "gradient", "valueMode": "color", "namePlacement": "auto", "showUnfilled": True,
                "sizing": "auto", "minVizWidth": 8, "minVizHeight": 16, "maxVizHeight": 300,
                "legend": {**legend, "showLegend": False}, "reduceOptions": _reduce(), "orientation": "horizontal"}
    if p.kind == "table":
        out: dict[str, Any] = {"frameIndex": 0, "showHeader": True, "cellHeight": "sm",
                               "footer": {"show": False, "reducer": ["sum"], "countRows": False}}
        if p.sort_by:
            out["sortBy"] = [{"displayName": p.sort_by, "desc": True}]
        return out
    if p.kind == "piechart":
        return {"pieType": "donut", "displayLabels": ["percent"], "tooltip": {"mode": "single", "sort": "none"},
                "legend": {**legend, "values": ["value", "percent"], "displayMode": "table", "placement": "right"},
                "reduceOptions": _reduce(), "orientation": "auto"}
    if p.kind == "logs":
        return {"showLabels": False, "showCommonLabels": False, "showTime": True, "showLogContextToggle": True,
                "wrapLogMessage": True, "prettifyLogMessage": False, "enableLogDetails": True,
                "sortOrder": "Descending", "dedupStrategy": "none"}
    return {"mode": "markdown", "content": p.content}  # text


def _custom(p: Panel) -> dict[str, Any] | None:
    """fieldConfig.defaults.custom: the panel plugin's own field options."""
    if p.kind == "timeseries":
        return {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 20 if p.stack else 10, "showPoints": "never",
                "spanNulls": False, "axisSoftMin": 0,
                "stacking": {"mode": "normal" if p.stack else "none", "group": "A"},
                "thresholdsStyle": {"mode": "dashed" if p.threshold_lines else "off"}}
    if p.kind == "table":
        return {"align": "auto", "inspect": False}
    if p.kind == "piechart":
        return {"hideFrom": {"legend": False, "tooltip": False, "viz": False}}
    return None


def _field_config(p: Panel) -> dict[str, Any]:
    if p.kind in ("logs", "text"):
        return {"defaults": {}, "overrides": []}
    defaults: dict[str, Any] = {
        "unit": p.unit,
        "color": {"mode": "palette-classic" if p.kind in ("timeseries", "piechart") else "thresholds"},
        "thresholds": {"mode": "absolute", "steps": [{"value": v, "color": c} for v, c in p.thresholds]},
        "mappings": [dict(m) for m in p.mappings],
    }
    for key, value in (("decimals", p.decimals), ("min", p.min), ("max", p.max)):
        if value is not None:
            defaults[key] = value
    custom = _custom(p)
    if custom is not None:
        defaults["custom"] = custom
    return {"defaults": defaults, "overrides": []}


def _target(p: Panel, q: Query, ref: str) -> dict[str, Any]:
    out: dict[str, Any] = {"refId": ref, "datasource": dict(p.datasource), "expr": q.expr, "editorMode": "code"}
    if q.legend:
        out["legendFormat"] = q.legend
    if p.loki:
        out["queryType"] = "instant" if q.instant else "range"
        if p.kind == "logs":
            out["maxLines"] = 1000
    else:
        out.update(range=not q.instant, instant=q.instant, format="table" if q.table else "time_series")
    return out


def _panel(p: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": p.kind, "id": pid, "title": p.title, "description": p.description,
        "gridPos": {"h": p.height, "w": p.width, "x": x, "y": y},
    }
    if p.kind != "text":
        out["datasource"] = dict(p.datasource)
        out["targets"] = [_target(p, q, chr(ord("A") + i)) for i, q in enumerate(p.queries)]
    if p.transformations:
        out["transformations"] = [dict(t) for t in p.transformations]
    out["options"] = _options(p)
    out["fieldConfig"] = _field_config(p)
    return out


def _variable(v: Variable) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "custom" if v.custom else "query", "name": v.name, "label": v.label, "query": v.query,
        "multi": True, "includeAll": True, "allValue": ".*", "hide": 0, "skipUrlSync": False,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    }
    if v.custom:
        values = v.query.split(",")
        out["options"] = [{"selected": True, "text": "All", "value": "$__all"}] + [
            {"selected": False, "text": value, "value": value} for value in values]
    else:
        out.update(datasource=dict(LOKI if v.loki else PROM), refresh=1, sort=1, regex="", options=[])
    return out


def render(d: Dashboard) -> dict[str, Any]:
    """Grafana's dashboard JSON model of ``d``: rows stacked, panels left to right on the 24-column grid."""
    panels: list[dict[str, Any]] = []
    pid, y = 1, 0
    for row in d.rows:
        panels.append({"type": "row", "id": pid, "title": row.title, "collapsed": False, "panels": [],
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
        pid, y = pid + 1, y + 1
        x, line_height = 0, 0
        for p in row.panels:
            if x + p.width > 24:
                x, y, line_height = 0, y + line_height, 0
            panels.append(_panel(p, pid, x, y))
            pid, x, line_height = pid + 1, x + p.width, max(line_height, p.height)
        y += line_height
    return {
        "uid": d.uid, "title": d.title, "description": d.description, "tags": list(d.tags),
        "timezone": "utc", "editable": False, "graphTooltip": 1, "fiscalYearStartMonth": 0, "liveNow": False,
        "time": {"from": d.time_from, "to": "now"}, "refresh": d.refresh,
        "schemaVersion": SCHEMA_VERSION, "version": 1,
        "links": [{"title": "Sentinel dashboards", "type": "dashboards", "tags": [TAG], "asDropdown": True,
                   "icon": "external link", "tooltip": "", "targetBlank": False, "includeVars": False,
                   "keepTime": True}],
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True, "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard",
            "target": {"limit": 100, "matchAny": False, "tags": [], "type": "dashboard"}}]},
        "templating": {"list": [_variable(v) for v in d.variables]},
        "panels": panels,
    }


# ---------------------------------------------------------------------------------------------
# Queries, for the tests


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref: str
    datasource: Literal["prometheus", "loki"]
    expr: str
    instant: bool
    empty_ok: str


def queries(dashboards: Sequence[Dashboard]) -> Iterator[PanelQuery]:
    """Every target of every panel, with what the live test needs to know about it."""
    for d in dashboards:
        for row in d.rows:
            for p in row.panels:
                for i, q in enumerate(p.queries):
                    yield PanelQuery(d.title, p.title, chr(ord("A") + i), "loki" if p.loki else "prometheus",
                                     q.expr, q.instant, q.empty_ok)


_MACRO = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace Grafana's macros and template variables (``$__rate_interval``, ``$service``,
    ``${service}``) with ``values``; an unknown name raises KeyError (a typo must not pass)."""
    return _MACRO.sub(lambda m: values[m.group(1) or m.group(2)], expr)


# ---------------------------------------------------------------------------------------------
# Strict structural check (the subset of Grafana's schema these dashboards use)

_DASHBOARD_KEYS: Final = frozenset({
    "id", "uid", "title", "description", "revision", "gnetId", "tags", "timezone", "editable", "graphTooltip",
    "time", "timepicker", "fiscalYearStartMonth", "liveNow", "weekStart", "refresh", "schemaVersion", "version",
    "panels", "templating", "annotations", "links", "snapshot", "preload"})
_PANEL_KEYS: Final = frozenset({
    "type", "id", "pluginVersion", "targets", "title", "description", "transparent", "datasource", "gridPos",
    "links", "repeat", "repeatDirection", "maxPerRow", "maxDataPoints", "transformations", "interval", "timeFrom",
    "timeShift", "hideTimeOverride", "libraryPanel", "cacheTimeout", "queryCachingTTL", "options", "fieldConfig"})
_ROW_KEYS: Final = frozenset({"type", "collapsed", "title", "datasource", "gridPos", "id", "panels", "repeat"})
_VARIABLE_KEYS: Final = frozenset({
    "type", "name", "label", "hide", "skipUrlSync", "description", "query", "datasource", "current", "multi",
    "allowCustomValue", "options", "refresh", "sort", "includeAll", "allValue", "regex", "auto", "auto_min",
    "auto_count"})
_FIELD_CONFIG_KEYS: Final = frozenset({
    "displayName", "displayNameFromDS", "description", "path", "writeable", "filterable", "unit", "decimals",
    "min", "max", "mappings", "thresholds", "color", "links", "noValue", "custom", "fieldMinMax", "actions"})
_TARGET_KEYS: Final = {
    "prometheus": frozenset({"expr", "instant", "range", "exemplar", "editorMode", "format", "legendFormat",
                             "intervalFactor", "refId", "hide", "queryType", "datasource", "interval"}),
    "loki": frozenset({"expr", "legendFormat", "maxLines", "resolution", "editorMode", "range", "instant", "step",
                       "refId", "hide", "queryType", "datasource", "direction"}),
}
#: Required keys of each panel plugin's options (Grafana 11.6 panel schemas).
_OPTIONS_REQUIRED: Final = {
    "timeseries": {"legend", "tooltip"},
    "stat": {"graphMode", "colorMode", "justifyMode", "textMode", "wideLayout", "showPercentChange", "reduceOptions",
             "percentChangeColorMode", "orientation"},
    "gauge": {"showThresholdLabels", "showThresholdMarkers", "sizing", "minVizWidth", "reduceOptions",
              "minVizHeight", "orientation"},
    "bargauge": {"displayMode", "valueMode", "namePlacement", "showUnfilled", "sizing", "minVizWidth",
                 "minVizHeight", "legend", "reduceOptions", "maxVizHeight", "orientation"},
    "table": {"frameIndex", "showHeader"},
    "piechart": {"pieType", "tooltip", "reduceOptions", "legend", "orientation"},
    "logs": {"showLabels", "showCommonLabels", "showTime", "showLogContextToggle", "wrapLogMessage",
             "prettifyLogMessage", "enableLogDetails", "sortOrder", "dedupStrategy"},
    "text": {"mode", "content"},
}
_COLOR_MODES: Final = frozenset({
    "thresholds", "palette-classic", "palette-classic-by-name", "continuous-GrYlRd", "continuous-RdYlGr",
    "continuous-BlYlRd", "continuous-YlRd", "continuous-BlPu", "continuous-YlBl", "continuous-blues",
    "continuous-reds", "continuous-greens", "continuous-purples", "fixed", "shades"})
_BUILTIN_VARS: Final = frozenset({"__rate_interval", "__interval", "__range", "__auto", "__all", "__interval_ms"})


def _keys(obj: object, where: str, allowed: frozenset[str], required: set[str], problems: list[str]) -> bool:
    if not isinstance(obj, dict):
        problems.append(f"{where}: expected an object, got {type(obj).__name__}")
        return False
    if unknown := sorted(set(obj) - allowed):
        problems.append(f"{where}: keys not in Grafana's schema: {', '.join(unknown)}")
    if missing := sorted(required - set(obj)):
        problems.append(f"{where}: missing required keys: {', '.join(missing)}")
    return True


def _grid(panel: Mapping[str, Any], where: str, problems: list[str]) -> None:
    g = panel.get("gridPos")
    if not _keys(g, f"{where}.gridPos", frozenset({"h", "w", "x", "y", "static"}), {"h", "w", "x", "y"}, problems):
        return
    assert isinstance(g, dict)
    if not all(isinstance(g[k], int) for k in "hwxy" if k in g):
        problems.append(f"{where}.gridPos: h, w, x and y must be integers")
    elif not (g["h"] > 0 and 0 < g["w"] <= 24 and 0 <= g["x"] < 24 and g["x"] + g["w"] <= 24 and g["y"] >= 0):
        problems.append(f"{where}.gridPos: {g} is outside the 24-column grid")


def _datasource(ds: object, where: str, problems: list[str]) -> str:
    if not _keys(ds, where, frozenset({"type", "uid"}), {"type", "uid"}, problems):
        return ""
    assert isinstance(ds, dict)
    expected = {"prometheus": PROMETHEUS_UID, "loki": LOKI_UID}.get(ds["type"])
    if expected is None or ds["uid"] != expected:
        problems.append(f"{where}: {ds} is not a provisioned datasource ({PROMETHEUS_UID}, {LOKI_UID})")
        return ""
    return str(ds["type"])


def _field_config_problems(fc: object, where: str, problems: list[str]) -> None:
    if not _keys(fc, where, frozenset({"defaults", "overrides"}), {"defaults", "overrides"}, problems):
        return
    assert isinstance(fc, dict)
    defaults = fc["defaults"]
    if not _keys(defaults, f"{where}.defaults", _FIELD_CONFIG_KEYS, set(), problems):
        return
    color = defaults.get("color")
    if color is not None and (not isinstance(color, dict) or color.get("mode") not in _COLOR_MODES):
        problems.append(f"{where}.defaults.color: unknown mode {color!r}")
    th = defaults.get("thresholds")
    if th is not None:
        steps = th.get("steps") if isinstance(th, dict) else None
        if (not isinstance(th, dict) or th.get("mode") not in ("absolute", "percentage") or not steps
                or steps[0].get("value") is not None):
            problems.append(f"{where}.defaults.thresholds: needs a mode and steps starting at null (-Infinity)")
        else:
            values = [s["value"] for s in steps[1:]]
            if values != sorted(values):
                problems.append(f"{where}.defaults.thresholds: steps must be sorted by value")
    for i, m in enumerate(defaults.get("mappings", [])):
        if not isinstance(m, dict) or m.get("type") not in ("value", "range", "regex", "special") or "options" not in m:
            problems.append(f"{where}.defaults.mappings[{i}]: not a value mapping")


def validate(dashboard: Mapping[str, Any]) -> list[str]:
    """Problems with ``dashboard`` (empty when none): unknown or missing keys of the dashboard,
    rows, panels, targets, field configs and variables (Grafana's schema allows no others), the
    required options of each panel plugin, grid positions, datasource uids, unique panel ids,
    and template variables used but not defined."""
    problems: list[str] = []
    if not _keys(dashboard, "dashboard", _DASHBOARD_KEYS, {"schemaVersion", "templating", "annotations", "uid",
                                                           "title", "panels"}, problems):
        return problems
    where = f"dashboard {dashboard.get('uid')}"
    if "__inputs" in dashboard or "id" in dashboard:
        problems.append(f"{where}: no __inputs and no id in a provisioned dashboard")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", str(dashboard["uid"])):
        problems.append(f"{where}: uid must be 1-40 letters, digits, - or _")
    defined = set()
    templating = dashboard["templating"]
    if _keys(templating, f"{where}.templating", frozenset({"list"}), {"list"}, problems):
        for i, v in enumerate(templating["list"]):
            vw = f"{where}.templating.list[{i}]"
            if _keys(v, vw, _VARIABLE_KEYS, {"type", "name"}, problems):
                defined.add(v["name"])
                if v["type"] == "query":
                    _datasource(v.get("datasource"), f"{vw}.datasource", problems)
                if not isinstance(v.get("query", ""), str):
                    problems.append(f"{vw}.query: must be a string")
    ids: list[int] = []
    for i, panel in enumerate(dashboard["panels"]):
        pw = f"{where}.panels[{i}]"
        if not isinstance(panel, dict):
            problems.append(f"{pw}: expected an object")
            continue
        ids.append(panel.get("id", -1))
        _grid(panel, pw, problems)
        if panel.get("type") == "row":
            _keys(panel, pw, _ROW_KEYS, {"type", "collapsed", "id", "panels"}, problems)
            continue
        pw = f"{pw} {panel.get('title')!r}"
        _keys(panel, pw, _PANEL_KEYS, {"type", "id", "title", "gridPos", "options", "fieldConfig"}, problems)
        kind = panel.get("type")
        if kind not in _OPTIONS_REQUIRED:
            problems.append(f"{pw}: panel type {kind!r} is not one this generator knows")
            continue
        if missing := sorted(_OPTIONS_REQUIRED[kind] - set(panel.get("options", {}))):
            problems.append(f"{pw}.options: missing required {kind} options: {', '.join(missing)}")
        _field_config_problems(panel.get("fieldConfig"), f"{pw}.fieldConfig", problems)
        if kind == "text":
            continue
        ds_type = _datasource(panel.get("datasource"), f"{pw}.datasource", problems)
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"{pw}: no targets")
        refs = [t.get("refId") for t in targets if isinstance(t, dict)]
        if len(set(refs)) != len(refs):
            problems.append(f"{pw}: duplicate refIds {refs}")
        for j, t in enumerate(targets):
            tw = f"{pw}.targets[{j}]"
            if ds_type and _keys(t, tw, _TARGET_KEYS[ds_type], {"expr", "refId"}, problems):
                _datasource(t.get("datasource"), f"{tw}.datasource", problems)
                if not t["expr"].strip():
                    problems.append(f"{tw}: empty expression")
                for name in (m.group(1) or m.group(2) for m in _MACRO.finditer(t["expr"])):
                    if name not in defined and name not in _BUILTIN_VARS:
                        problems.append(f"{tw}: uses ${name}, which the dashboard does not define")
    if len(set(ids)) != len(ids):
        problems.append(f"{where}: panel ids are not unique")
    return problems


# ---------------------------------------------------------------------------------------------
# Provisioning and files


def provisioning(prometheus_url: str, loki_url: str, dashboards_path: str) -> dict[str, str]:
    """``provisioning/datasources.yaml`` and ``provisioning/dashboards.yaml`` (Grafana file provisioning)."""
    datasources = {"apiVersion": 1, "datasources": [
        {"name": "Prometheus", "uid": PROMETHEUS_UID, "type": "prometheus", "access": "proxy", "url": prometheus_url,
         "isDefault": True, "editable": False, "jsonData": {"timeInterval": "15s", "httpMethod": "POST"}},
        {"name": "Loki", "uid": LOKI_UID, "type": "loki", "access": "proxy", "url": loki_url, "editable": False,
         "jsonData": {"maxLines": 1000}},
    ]}
    providers = {"apiVersion": 1, "providers": [
        {"name": "sentinel", "orgId": 1, "folder": "Sentinel", "folderUid": "sentinel", "type": "file",
         "disableDeletion": True, "allowUiUpdates": False, "updateIntervalSeconds": 60,
         "options": {"path": dashboards_path, "foldersFromFilesStructure": False}},
    ]}
    head = ("# Generated by `python -m sentinel.observability.dashboards`: do not edit by hand.\n"
            "# Datasource uids are pinned: the dashboards in ../ refer to them.\n")
    return {"provisioning/datasources.yaml": head + _yaml(datasources),
            "provisioning/dashboards.yaml": head + _yaml(providers)}


def _yaml(data: object) -> str:
    return str(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


def generate(spec: rules.Spec) -> dict[str, str]:
    """Path under dashboards/ -> text of every generated file; ValueError when a dashboard fails :func:`validate`."""
    from sentinel.observability import config

    files: dict[str, str] = {}
    problems: list[str] = []
    for d in build(spec):
        model = render(d)
        problems += validate(model)
        files[d.file_name] = json.dumps(model, indent=2, ensure_ascii=False) + "\n"
    if problems:
        raise ValueError("invalid dashboards:\n" + "\n".join(problems))
    files.update(provisioning(config.PROMETHEUS_URL, config.LOKI_URL, config.GRAFANA_DASHBOARDS_PATH))
    return files


def _tree() -> Path:
    return Path(__file__).resolve().parents[3]


def main(argv: Sequence[str] | None = None) -> int:
    """Write dashboards/ (default) or, with ``--check``, exit 1 when the committed files are stale."""
    tree = _tree()
    parser = argparse.ArgumentParser(prog="python -m sentinel.observability.dashboards",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--spec", type=Path, default=tree / "alerts" / "slo.yaml", help="the SLO spec")
    parser.add_argument("--out", type=Path, default=tree / "dashboards", help="output directory (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when --out is stale")
    args = parser.parse_args(argv)
    try:
        files = generate(rules.load_spec(args.spec))
    except (OSError, rules.SpecError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return rules.write_or_check(files, args.out, args.check, "python -m sentinel.observability.dashboards",
                                stale_glob=("*.json", "provisioning/*.yaml"))


if __name__ == "__main__":
    raise SystemExit(main())
