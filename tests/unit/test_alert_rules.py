"""The generated Prometheus rules (alerts/generated/) against their spec, the code and promtool.

* The committed files are what alerts/slo.yaml generates, and every rule is well formed.
* The spec agrees with the code it describes (buckets, periodic jobs, gRPC codes, the scheduler's
  SLO contract), and the rules read only metrics that exist.
* Deliberately broken specs are refused: alerts that could never fire are the bug this
  generator exists to prevent.
* promtool (Debian package ``prometheus``) checks every generated file and runs every
  alerts/tests/*.test.yaml; every alert must fire in some case and stay silent in another, and
  every recording rule must be asserted. Without promtool these skip (and fail under CI=true).
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from prometheus_client.utils import floatToGoString
from sentinel.observability import rules
from sentinel.observability.rules import NeverFiresError, SpecError
from sentinel.platform.metrics import LATENCY_BUCKETS
from sentinel.ratelimit import limiter
from sentinel.scheduler import periodic, slo
from sentinel.watchdog import Watchdog

from tests.support import missing_tool

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "alerts"
SPEC_FILE = ALERTS / "slo.yaml"
GENERATED = ALERTS / "generated"
PROMTOOL_TESTS = ALERTS / "tests"
TEST_FILES = sorted(PROMTOOL_TESTS.glob("*.test.yaml"))
RULE_FILES = sorted(GENERATED.glob("*.rules.yaml"))

#: The metrics the processes expose (sentinel.platform.metrics, outbox, scheduler) and the node
#: exporter's; a rule reading anything else reads nothing and never fires.
SENTINEL_METRICS = {
    "sentinel_requests_total", "sentinel_errors_total", "sentinel_request_duration_seconds_bucket",
    "sentinel_requests_in_flight", "sentinel_db_pool_connections", "sentinel_build_info",
    "sentinel_audit_outbox_pending", "sentinel_audit_outbox_failures_total", "sentinel_audit_outbox_dead_letters_total",
    "sentinel_jobs_total", "sentinel_job_duration_seconds_bucket", "sentinel_job_queue_depth",
    "sentinel_component_up", "sentinel_audit_chain_broken",
}
#: The audit watchdog's (through the node exporter's textfile collector) and the rate-limit
#: service's metrics the alerts read; test_alerted_host_and_ratelimit_metrics_are_exported checks
#: them against the code.
WATCHDOG_METRICS = {
    "sentinel_watchdog_auditd_up", "sentinel_watchdog_rules_missing", "sentinel_watchdog_last_scan_timestamp_seconds",
    "sentinel_watchdog_dry_run",
}
RATELIMIT_METRICS = {
    "sentinel_ratelimit_errors_total", "sentinel_ratelimit_rejections_total", "sentinel_ratelimit_checks_total",
}
NODE_METRICS = {
    "node_filesystem_avail_bytes", "node_filesystem_size_bytes", "node_filesystem_readonly",
    "node_memory_MemAvailable_bytes", "node_memory_MemTotal_bytes", "node_cpu_seconds_total",
    "node_textfile_mtime_seconds", "node_textfile_scrape_error",
}


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load(path: Path) -> Any:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_LOADER)  # noqa: S506 (a safe loader)


def spec_data() -> dict[str, Any]:
    """A fresh copy of the spec's YAML data, for tests to break."""
    data = yaml.safe_load(SPEC_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@cache
def _committed() -> dict[str, dict[str, Any]]:
    return {p.name: _load(p) for p in RULE_FILES}


def committed_rules() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(file, group, rule) for every rule in the committed files."""
    for name, doc in _committed().items():
        for group in doc["groups"]:
            for rule in group["rules"]:
                yield name, group["name"], rule


def alert_names() -> set[str]:
    return {r["alert"] for _, _, r in committed_rules() if "alert" in r}


def record_names() -> set[str]:
    return {r["record"] for _, _, r in committed_rules() if "record" in r}


# ---------------------------------------------------------------------------------------------
# Up to date, well formed


def test_generated_files_are_up_to_date() -> None:
    files = rules.generate(rules.load_spec(SPEC_FILE))
    assert sorted(files) == [p.name for p in RULE_FILES], "alerts/generated/ holds files the spec does not generate"
    for name, text in files.items():
        assert (GENERATED / name).read_text(encoding="utf-8") == text, (
            f"alerts/generated/{name} is stale: run .venv/bin/python -m sentinel.observability.rules")


def test_main_writes_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "generated"
    spec = ["--spec", str(SPEC_FILE), "--out", str(out)]
    assert rules.main([*spec, "--check"]) == 1  # nothing written yet
    assert rules.main(spec) == 0
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in RULE_FILES]
    assert rules.main([*spec, "--check"]) == 0
    (out / rules.HOST_FILE).write_text("groups: []\n", encoding="utf-8")
    assert rules.main([*spec, "--check"]) == 1
    assert "stale: host.rules.yaml" in capsys.readouterr().err
    rules.main(spec)
    (out / "old.rules.yaml").write_text("groups: []\n", encoding="utf-8")
    assert rules.main([*spec, "--check"]) == 1
    assert "not generated from the spec" in capsys.readouterr().err
    broken = tmp_path / "slo.yaml"
    data = spec_data()
    data["burn_windows"]["page-fast"]["factor"] = 1000
    broken.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert rules.main(["--spec", str(broken), "--out", str(tmp_path / "x")]) == 2
    assert "can never fire" in capsys.readouterr().err
    assert not (tmp_path / "x").exists(), "nothing may be written from a refused spec"


def test_every_rule_is_well_formed() -> None:
    readme = (ALERTS / "README.md").read_text(encoding="utf-8")
    headings = {h.lower() for h in re.findall(r"^### (\w+)$", readme, re.MULTILINE)}
    seen: set[tuple[str, str]] = set()
    for file, group, rule in committed_rules():
        where = f"{file}/{group}/{rule.get('record') or rule.get('alert')}"
        assert ("record" in rule) != ("alert" in rule), where
        assert isinstance(rule["expr"], str) and rule["expr"].strip(), where
        if "record" in rule:
            assert set(rule) <= {"record", "expr", "labels"}, where
            key = (rule["record"], repr(sorted(rule.get("labels", {}).items())))
            assert key not in seen, f"{where}: two rules record the same series"
            seen.add(key)
            continue
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, where
        assert rule["labels"]["severity"] in {"page", "ticket"}, where
        assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}, where
        if "for" in rule:
            rules.Duration.parse(rule["for"], where)
        url = rule["annotations"]["runbook_url"]
        assert url == f"alerts/README.md#{rule['alert'].lower()}", where
        assert rule["alert"].lower() in headings, f"{where}: alerts/README.md has no '### {rule['alert']}' runbook"


def test_rules_read_only_metrics_that_exist() -> None:
    recorded = record_names()
    for file, _, rule in committed_rules():
        expr = rule["expr"]
        for name in re.findall(r"(?<![\w:])(sentinel_\w+|node_\w+)(?![\w:])", expr):
            assert name in SENTINEL_METRICS | NODE_METRICS | WATCHDOG_METRICS | RATELIMIT_METRICS, (
                f"{file}: {name} is not a metric anything exposes")
        # A recorded name that nothing records would silently match nothing.
        for name in re.findall(r"(?<![\w:])([a-z_]+:[a-z0-9_]+:[a-z0-9_]+)(?![\w:])", expr):
            assert name in recorded, f"{file}: {rule.get('record') or rule.get('alert')} reads {name}, never recorded"


class _RunningAuditd:
    """An auditd the watchdog finds running (pid 1) and never signals (dry run)."""

    def pid(self) -> int | None:
        return 1

    def signal(self, sig: signal.Signals) -> None:
        raise AssertionError(f"the dry-run watchdog sent {sig.name}")


def test_alerted_host_and_ratelimit_metrics_are_exported() -> None:
    # One dry-run scan with no rule loaded: every gauge the watchdog alerts read is written.
    dog = Watchdog(auditd=_RunningAuditd(), sources=[], runner=lambda argv, timeout: (0, ""), dry_run=True)
    dog.scan()
    exported = {line.split("{")[0].split()[0] for line in dog.exposition().splitlines()
                if line and not line.startswith("#")}
    assert WATCHDOG_METRICS - exported == set(), "gauges the watchdog does not write"
    # prometheus_client exposes a Counter named x as x_total.
    counters = {f"{m.name}_total" for c in (limiter.ERRORS, limiter.REJECTIONS, limiter.CHECKS) for m in c.describe()}
    assert counters == RATELIMIT_METRICS


def test_the_scheduler_contract_is_recorded() -> None:
    spec = rules.load_spec(SPEC_FILE)
    assert float(spec.slo("availability").objective) == slo.OBJECTIVE
    assert spec.services == slo.SERVICES
    assert spec.overall == slo.OVERALL
    for name in slo.SERIES:
        found = [r for _, _, r in committed_rules() if r.get("record") == name]
        assert len(found) == 1, f"{name}: recorded {len(found)} times"
        # One series per service label: no static labels that could split it.
        assert "labels" not in found[0], name
        assert "by (service)" in found[0]["expr"], name


def test_the_spec_agrees_with_the_code() -> None:
    spec = rules.load_spec(SPEC_FILE)
    # Bucket bounds as prometheus_client writes them (le="1.0"); its utils have no annotations.
    exposed = [floatToGoString(b) for b in LATENCY_BUCKETS]  # type: ignore[no-untyped-call]
    assert spec.buckets == (*exposed, "+Inf")
    assert spec.slo("latency").le == "1.0"
    assert spec.platform.periodic_jobs == tuple(periodic.JOBS_BY_NAME)
    assert tuple(c.name for c in grpc.StatusCode) == rules.GRPC_CODES
    assert set(spec.server_error_codes) == {"INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNKNOWN", "DEADLINE_EXCEEDED"}


# ---------------------------------------------------------------------------------------------
# The generator refuses alerts that could never fire


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    """Set ``a.b.0.c`` in nested dicts and lists (numeric parts index lists)."""
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def _add_latency_window(data: dict[str, Any], factor: float) -> None:
    data["burn_windows"]["page-extreme"] = {"severity": "page", "long": "1h", "short": "5m", "factor": factor,
                                            "for": "2m"}
    data["slos"][2]["alert_windows"].append("page-extreme")


Mutation = Callable[[dict[str, Any]], None]


def _setting(path: str, value: Any) -> Mutation:
    return lambda data: _set(data, path, value)


def _both(*mutations: Mutation) -> Mutation:
    def apply(data: dict[str, Any]) -> None:
        for m in mutations:
            m(data)
    return apply


NEVER_FIRES: list[tuple[str, Mutation, str]] = [
    ("burn factor x budget = 1",
     _setting("burn_windows.page-fast.factor", 1000),
     r"SLOAvailabilityBudgetBurn\{long=1h,short=5m\}: can never fire: availability 1h error ratio "
     r"\(factor 1000 x budget 0\.001\) > 1, but .* lies in \[0, 1\]"),
    ("a 20x latency page (20 x 5 % = 100 %)",
     lambda data: _add_latency_window(data, 20),
     r"SLOLatencyBudgetBurn\{long=1h,short=5m\}: can never fire: latency 1h error ratio \(factor 20 x budget 0\.05\)"),
    ("short window = long window",
     _setting("burn_windows.page-fast.short", "1h"),
     r"short window 1h must be shorter than the long window 1h"),
    ("short window > long window",
     _setting("burn_windows.page-slow.short", "1d"),
     r"\[page-slow\]: the short window 1d must be shorter than the long window 6h"),
    ("`for` as long as the short window",
     _setting("burn_windows.page-fast.for", "5m"),
     r"`for: 5m` is not shorter than the 5m window feeding availability 5m error ratio"),
    ("`for` longer than the short window",
     _setting("burn_windows.ticket-slow.for", "7h"),
     r"`for: 7h` is not shorter than the 6h window"),
    ("a window nobody records",
     _setting("burn_windows.page-slow.long", "12h"),
     r"the long window 12h is not in sli_windows, so slo:sli_error:ratio_rate12h is never recorded"),
    ("a long window beyond the SLO period",
     _both(_setting("sli_windows", ["5m", "30m", "1h", "2h", "6h", "1d", "3d", "30d", "60d"]),
           _setting("burn_windows.ticket-slow.long", "60d")),
     r"the long window 60d exceeds the SLO period 30d"),
    ("a zero burn factor",
     _setting("burn_windows.ticket-slow.factor", 0),
     r"the burn factor 0 must be positive"),
    ('le="1" (prometheus_client writes "1.0")',
     _setting("slos.2.sli.le", "1"),
     r'le="1" never matches: prometheus_client writes that bound as le="1\.0"'),
    ("a bucket the services do not expose",
     _setting("slos.2.sli.le", "0.75"),
     r'le="0\.75" is not one of the exposed buckets'),
    ("rate windows shorter than two scrapes",
     _setting("scrape_interval", "5m"),
     r"the range \[5m\] holds fewer than two scrapes at scrape_interval 5m"),
    ("free disk below 0 %",
     _setting("host.disk_free_ticket", 0),
     r"HostDiskSpaceLow: can never fire: free disk ratio < 0"),
    ("free disk below 150 %",
     _setting("host.disk_free_page", 1.5),
     r"HostDiskSpaceCritical: can never resolve: free disk ratio < 1\.5 always holds"),
    ("CPU busier than 100 %",
     _setting("host.cpu_busy_max", 1),
     r"HostCpuBusy: can never fire: busy CPU ratio > 1"),
    ("memory below 0 %",
     _setting("host.memory_available_min", 0),
     r"HostMemoryLow: can never fire"),
    ("`for` as long as the outbox failure window",
     _setting("platform.outbox_failures_for", "10m"),
     r"SentinelAuditOutboxFailing: `for: 10m` is not shorter than the 10m window"),
    ("a negative failure threshold",
     _setting("platform.on_demand_failed_max", -1),
     r"SentinelOnDemandJobsFailing: can never resolve"),
    ("more than 100 % of requests refused",
     _setting("platform.ratelimit_rejected_ratio_max", 1),
     r"SentinelRateLimitRejectionsHigh: can never fire: refused share of checked requests over 5m > 1"),
    ("a negative refusal rate",
     _setting("platform.ratelimit_rejected_rate_min", -1),
     r"SentinelRateLimitRejectionsHigh: can never resolve"),
]


@pytest.mark.parametrize(("change", "mutate", "message"), NEVER_FIRES, ids=[c[0] for c in NEVER_FIRES])
def test_alerts_that_could_never_fire_are_refused(change: str, mutate: Mutation, message: str) -> None:
    data = spec_data()
    mutate(data)
    with pytest.raises(NeverFiresError) as caught:
        rules.generate(rules.parse_spec(data))
    assert any(re.search(message, p) for p in caught.value.problems), (
        f"{change}: no problem matches {message!r} in:\n{caught.value}")


def test_every_problem_is_reported_at_once() -> None:
    data = spec_data()
    _set(data, "burn_windows.page-fast.factor", 1000)
    _set(data, "host.cpu_busy_max", 2)
    with pytest.raises(NeverFiresError) as caught:
        rules.generate(rules.parse_spec(data))
    text = str(caught.value)
    assert "SLOAvailabilityBudgetBurn" in text and "HostCpuBusy" in text
    assert text.startswith("alerts that could never fire:\n  - ")
    assert isinstance(caught.value, SpecError)


def test_the_committed_spec_passes_every_check() -> None:
    spec = rules.load_spec(SPEC_FILE)
    rules.check(spec, rules.build(spec))  # raises on any problem


MALFORMED: list[tuple[str, Mutation, str]] = [
    ("a misspelt key", _setting("slos.0.objectve", 0.99), r"slos\[0\]: unknown keys objectve"),
    ("a misspelt gRPC code", _setting("server_error_codes", ["INTERNAL", "UNAVAILBLE"]),
     r"unknown gRPC status names \['UNAVAILBLE'\]"),
    ("OK counted as an error", _setting("slos.1.sli.codes", ["OK"]), r"OK is not an error"),
    ("objective 1", _setting("slos.0.objective", 1), r"must lie strictly between 0 and 1"),
    ("an unknown burn window", _setting("slos.0.alert_windows", ["page-fast", "page-fastest"]),
     r"unknown burn windows \['page-fastest'\]"),
    ("a duration without a unit", _setting("absent_for", "10"), r"'10' is not a Prometheus duration"),
    ("a duration in words", _setting("burn_windows.page-fast.for", "2 minutes"), r"is not a Prometheus duration"),
    ("an unknown severity", _setting("burn_windows.page-fast.severity", "urgent"), r"'urgent' is not one of page"),
    ("overall named like a service", _setting("overall", "tenant"), r"'tenant' is also a service"),
    ("a regex in a filesystem type", _setting("host.ignore_fstypes", ["fuse.lxcfs"]), r"no regex characters"),
    ("the contract's windows missing", _setting("sli_windows", ["5m", "1h", "30d"]),
     r"the scheduler's SLO series need the windows \['1d', '2h'\]"),
]


@pytest.mark.parametrize(("change", "mutate", "message"), MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_specs_are_refused(change: str, mutate: Mutation, message: str) -> None:
    data = spec_data()
    mutate(data)
    with pytest.raises(SpecError, match=message):
        rules.parse_spec(data)


def test_a_missing_key_is_named() -> None:
    data = spec_data()
    del data["period"]
    with pytest.raises(SpecError, match="spec: missing key 'period'"):
        rules.parse_spec(data)


def test_budgets_are_exact_decimals() -> None:
    text = (GENERATED / rules.RECORDING_FILE).read_text(encoding="utf-8")
    text += (GENERATED / rules.ALERTS_FILE).read_text(encoding="utf-8")
    assert "0.0009999" not in text and "0.00100000" not in text
    assert "> 0.0144\n" in text and "/ 0.001\n" in text


# ---------------------------------------------------------------------------------------------
# The promtool tests cover every alert and every recording rule


@cache
def _test_docs() -> dict[str, dict[str, Any]]:
    return {p.name: _load(p) for p in TEST_FILES}


def test_promtool_tests_exist() -> None:
    assert len(TEST_FILES) >= 8, TEST_FILES


def test_every_alert_fires_somewhere_and_stays_silent_somewhere() -> None:
    fires: set[str] = set()
    silent: set[str] = set()
    for doc in _test_docs().values():
        for case in doc["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check["exp_alerts"] else silent).add(check["alertname"])
    assert alert_names() - fires == set(), "alerts no promtool test makes fire"
    assert alert_names() - silent == set(), "alerts no promtool test proves quiet"
    assert (fires | silent) - alert_names() == set(), "tests of alerts that do not exist"


def test_every_recording_rule_is_asserted() -> None:
    exprs = [check["expr"] for doc in _test_docs().values() for case in doc["tests"]
             for check in case.get("promql_expr_test", [])]
    untested = {name for name in record_names()
                if not any(re.search(rf"(?<![\w:]){re.escape(name)}(?![\w:])", e) for e in exprs)}
    assert untested == set(), "recording rules no promtool test asserts"


@pytest.mark.parametrize("test_file", [p.name for p in TEST_FILES])
def test_promtool_test_files_load_generated_rules_in_order(test_file: str) -> None:
    """promtool evaluates groups in random order unless told (2.42: sort.Slice on equal keys), so
    every file pins the order: recording groups first, as the rule files list them."""
    doc = _test_docs()[test_file]
    groups = []
    for rule_file in doc["rule_files"]:
        path = (PROMTOOL_TESTS / rule_file).resolve()
        assert path.parent == GENERATED, f"{test_file}: {rule_file} is not a generated rules file"
        groups += [g["name"] for g in _committed()[path.name]["groups"]]
    assert doc.get("group_eval_order") == groups


# ---------------------------------------------------------------------------------------------
# promtool


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        missing_tool("promtool (Debian package prometheus) is needed to check and test the alert rules")
        raise AssertionError("unreachable")
    return path


@cache
def _promtool_test_runs() -> dict[str, Future[subprocess.CompletedProcess[str]]]:
    """Start every promtool unit test at once (each is one process; together they take seconds)."""
    promtool = _promtool()
    pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="promtool")
    runs = {
        # Run from alerts/tests so the relative rule_files resolve with any promtool version.
        p.name: pool.submit(subprocess.run, [promtool, "test", "rules", p.name], cwd=PROMTOOL_TESTS,
                            capture_output=True, text=True, timeout=120, check=False)
        for p in TEST_FILES
    }
    pool.shutdown(wait=False)
    return runs


@pytest.fixture(scope="module", autouse=True)
def _start_promtool_early() -> None:
    """Kick off the promtool unit tests before the pure-Python tests run, so the two overlap."""
    if shutil.which("promtool"):
        _promtool_test_runs()


@pytest.mark.parametrize("rule_file", [p.name for p in RULE_FILES])
def test_promtool_check_rules(rule_file: str) -> None:
    out = subprocess.run([_promtool(), "check", "rules", "--lint-fatal", rule_file], cwd=GENERATED,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, f"promtool check rules {rule_file}:\n{out.stdout}\n{out.stderr}"
    assert "SUCCESS" in out.stdout


@pytest.mark.parametrize("test_file", [p.name for p in TEST_FILES])
def test_promtool_unit_tests(test_file: str) -> None:
    out = _promtool_test_runs()[test_file].result()
    assert out.returncode == 0, f"promtool test rules {test_file}:\n{out.stdout}\n{out.stderr}"
    assert "SUCCESS" in out.stdout


def test_promtool_rejects_a_broken_generated_file(tmp_path: Path) -> None:
    """The check is not a formality: promtool fails on a rule that does not parse."""
    doc = copy.deepcopy(_committed()[rules.ALERTS_FILE])
    doc["groups"][0]["rules"][0]["expr"] += " and on("
    path = tmp_path / "broken.rules.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    out = subprocess.run([_promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode != 0
