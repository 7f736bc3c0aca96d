"""Dashboards, recording rules and the scrape config against reality: a real Prometheus (Debian
package ``prometheus``) scrapes the running test stack, and a real node exporter (Debian package
``prometheus-node-exporter``), with the scrape config rendered by sentinel.observability.config for
the stack's actual ports (same job names as production, a 1 s scrape interval) and the generated
rules of alerts/generated evaluated every second.

The test drives known traffic (OK, NOT_FOUND and INVALID_ARGUMENT answers, logins made slow on
purpose by an imported bcrypt hash of cost 14, a job, a periodic job, calls refused by the edge's
rate limit), then:

* evaluates every Prometheus expression of every dashboard panel (template variables
  substituted) and every recording rule and alert expression over the HTTP API: any parse error
  fails, and so does any panel query or recording rule that returns nothing unless the generator
  marked the query as legitimately empty on a healthy stack (Loki panels are checked by structure in
  tests/unit/test_dashboards.py: no Loki binary exists here);
* checks the recorded SLIs against the counters the services themselves expose (read before and
  after the traffic), and against the traffic driven: client errors burn the error-rate SLO but not
  availability, the slow logins are what burns the latency SLO, P95 lands in the right bucket;
* checks every scrape target is up, Envoy's /stats/prometheus included.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sentinel.devstack.stack import Stack
from sentinel.observability import config, dashboards, rules
from sentinel.scheduler.v1 import job_pb2
from sentinel.scheduler.v1 import scheduler_service_pb2 as ssp
from sentinel.scheduler.v1 import scheduler_service_pb2_grpc as ssg
from sentinel.tenant.v1 import tenant_service_pb2 as tsp
from sentinel.tenant.v1 import tenant_service_pb2_grpc as tsg
from sentinel.user.v1 import user_service_pb2 as usp
from sentinel.user.v1 import user_service_pb2_grpc as usg

from tests.support import free_port, missing_tool, stop

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TREE = Path(__file__).resolve().parents[2]
SPEC = rules.load_spec(TREE / "alerts" / "slo.yaml")
SERVER_CODES = set(SPEC.server_error_codes)
LE = SPEC.slo("latency").le
#: bcrypt (cost 14: about 1.5 s to verify here) of SLOW_PASSWORD, made once; imported users log in
#: with it, so their first login is slower than the latency SLO's 1 s (then it is rehashed cheaply).
SLOW_PASSWORD = "slow login on purpose"
SLOW_HASH = "$2b$14$8R6U0YmeaR8GyrI1AYIhG.R.NCuC7MEqOXOqhI7JOlyUt5C407pcm"
#: The same password at cost 4, for the tenant's owner (who makes the fast calls).
FAST_HASH = "$2b$04$HnMXNTyaF5CdMcobrq/Z0eRVAyfa8Oueujnic65y/A48qXHKHeGiq"
SLOW_USERS = 3
#: Template variables and Grafana macros as the live test fills them in (1 s scrapes).
VALUES = {"service": ".*", "method": ".*", "instance": ".*", "unit": ".*", "level": ".*",
          "__rate_interval": "30s", "__interval": "5s", "__range": "5m", "__auto": "30s"}
TRAFFIC = {"OK": 60, "NOT_FOUND": 30, "INVALID_ARGUMENT": 10}


def _binary(*names: str) -> str:
    for name in names:
        if path := shutil.which(name):
            return path
    missing_tool(f"{' or '.join(names)} is needed for the live observability test (Debian packages prometheus, "
                 "prometheus-node-exporter)")
    raise AssertionError("unreachable")


def _wait_http(url: str, process: subprocess.Popen[bytes], log: Path, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not ready after {timeout:.0f} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


@contextlib.contextmanager
def _run(argv: list[str], log: Path, ready_url: str, what: str) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent)
    try:
        _wait_http(ready_url, process, log, what)
        yield process
    finally:
        stop(process)


def _write_process_memory(directory: Path, stack: Stack) -> int:
    """What issue 7's collector will write (dashboards.PROCESS_MEMORY_*): the stack's processes' RSS."""
    lines = [f"# HELP {dashboards.PROCESS_MEMORY_METRIC} Resident memory of a process.",
             f"# TYPE {dashboards.PROCESS_MEMORY_METRIC} gauge"]
    for proc in stack.procs:
        status = Path(f"/proc/{proc.popen.pid}/status")
        with contextlib.suppress(OSError):
            rss = next(int(line.split()[1]) * 1024 for line in status.read_text().splitlines()
                       if line.startswith("VmRSS:"))
            lines.append(f'{dashboards.PROCESS_MEMORY_METRIC}{{process="{proc.name}",pid="{proc.popen.pid}"}} {rss}')
    tmp = directory / f".{dashboards.PROCESS_MEMORY_FILE}.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.rename(directory / dashboards.PROCESS_MEMORY_FILE)  # atomic, as the collector must
    return len(lines) - 2


@dataclass
class Prom:
    url: str
    client: httpx.Client

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        r = self.client.get(f"{self.url}/api/v1/query", params={"query": expr, **({"time": at} if at else {})})
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{expr}\n-> {r.status_code} {body}"
        result = body["data"]["result"]
        return result if isinstance(result, list) else [{"value": result}]

    def query_range(self, expr: str, start: float, end: float, step: str = "5s") -> list[dict[str, Any]]:
        r = self.client.get(f"{self.url}/api/v1/query_range",
                            params={"query": expr, "start": start, "end": end, "step": step})
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{expr}\n-> {r.status_code} {body}"
        return list(body["data"]["result"])

    def value(self, expr: str, at: float | None = None) -> float:
        result = self.query(expr, at)
        assert len(result) == 1, f"{expr}: expected one series, got {result}"
        return float(result[0]["value"][1])


@dataclass
class Counts:
    """Request counters summed per service (all instances), as the services expose them."""

    total: dict[str, float]
    non_ok: dict[str, float]
    server: dict[str, float]
    by_code: dict[tuple[str, str, str], float]  # (service, method, code)
    latency_count: dict[str, float]
    latency_good: dict[str, float]  # the le=LE bucket

    def __sub__(self, other: Counts) -> Counts:
        def sub(a: dict[Any, float], b: dict[Any, float]) -> dict[Any, float]:
            return {k: a.get(k, 0.0) - b.get(k, 0.0) for k in set(a) | set(b)}

        return Counts(sub(self.total, other.total), sub(self.non_ok, other.non_ok), sub(self.server, other.server),
                      sub(self.by_code, other.by_code), sub(self.latency_count, other.latency_count),
                      sub(self.latency_good, other.latency_good))


def scrape_counts(stack: Stack) -> Counts:
    c = Counts({}, {}, {}, {}, {}, {})
    for name in stack.ports.metrics:
        text = httpx.get(stack.metrics_url(name), timeout=5).text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                svc = s.labels.get("service", "")
                if s.name == "sentinel_requests_total":
                    code = s.labels["code"]
                    c.total[svc] = c.total.get(svc, 0) + s.value
                    key = (svc, s.labels["method"], code)
                    c.by_code[key] = c.by_code.get(key, 0) + s.value
                    if code != "OK":
                        c.non_ok[svc] = c.non_ok.get(svc, 0) + s.value
                    if code in SERVER_CODES:
                        c.server[svc] = c.server.get(svc, 0) + s.value
                elif s.name == "sentinel_request_duration_seconds_count":
                    c.latency_count[svc] = c.latency_count.get(svc, 0) + s.value
                elif s.name == "sentinel_request_duration_seconds_bucket" and s.labels["le"] == LE:
                    c.latency_good[svc] = c.latency_good.get(svc, 0) + s.value
    return c


def _record_rules() -> list[dict[str, Any]]:
    return [r for f in sorted((TREE / "alerts" / "generated").glob(config.RULES_GLOB))
            for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"]]


def _status(call: Callable[[], Any]) -> str:
    try:
        call()
    except grpc.RpcError as e:
        return str(e.code().name)
    return "OK"


def _login(channel: grpc.Channel, tenant: str, email: str, password: str) -> tuple[str, float]:
    started = time.monotonic()
    reply = usg.AuthServiceStub(channel).Login(usp.LoginRequest(tenant=tenant, email=email, password=password))
    return reply.access_token, time.monotonic() - started


def _own_address() -> str:
    """A loopback address no other test uses, so the address tier of the rate limit counts only us."""
    return f"127.{random.randrange(1, 255)}.{random.randrange(256)}.{random.randrange(2, 255)}"


def test_dashboards_and_rules_against_a_real_prometheus(stack: Stack, tmp_path: Path) -> None:
    prometheus, promtool = _binary("prometheus"), _binary("promtool")
    node_exporter = _binary("prometheus-node-exporter", "node_exporter")
    started = time.monotonic()

    # --- Warm-up, before Prometheus starts: every series the checks read exists already (a counter
    # is born at its first increment, and rate() cannot see that first one).
    user_ch = grpc.insecure_channel(stack.service_target("user"))
    tenant_ch = grpc.insecure_channel(stack.service_target("tenant"))
    sched_ch = grpc.insecure_channel(stack.service_target("scheduler"))
    try:
        admin_token, _ = _login(user_ch, "platform", stack.admin_email, stack.admin_password)
        admin = (("authorization", f"Bearer {admin_token}"),)
        tenants = tsg.TenantServiceStub(tenant_ch)
        slug = f"obs-{uuid.uuid4().hex[:8]}"
        tenant = tenants.CreateTenant(tsp.CreateTenantRequest(slug=slug, display_name="Observability"),
                                      metadata=admin).tenant
        calls = {"OK": lambda: tenants.GetTenant(tsp.GetTenantRequest(id=tenant.id), metadata=admin),
                 "NOT_FOUND": lambda: tenants.GetTenant(tsp.GetTenantRequest(id=str(uuid.uuid4())), metadata=admin),
                 "INVALID_ARGUMENT": lambda: tenants.GetTenant(tsp.GetTenantRequest(id="not-a-uuid"), metadata=admin)}
        # Five of each, so no counter starts near zero: rate() would then stop its extrapolation at the
        # counter's zero point, which differs per series and would skew ratios between codes.
        for _ in range(5):
            assert {code: _status(call) for code, call in calls.items()} == {c: c for c in calls}
        emails = [f"slow{i}@{slug}.example.com" for i in range(SLOW_USERS)]
        csv = "email,display_name,role,password_hash\n" + f"owner@{slug}.example.com,Owner,owner,{FAST_HASH}\n" + \
            "".join(f"{e},Slow {i},member,{SLOW_HASH}\n" for i, e in enumerate(emails))
        (tmp_path / "users.csv").write_text(csv)
        imported = subprocess.run(
            [sys.executable, "-m", "sentinel", "admin", "import-users", "--tenant", slug, str(tmp_path / "users.csv")],
            env={**os.environ, "SENTINEL_DATABASE_URL": stack.app_url, "SENTINEL_PLAN_MAX_USERS": '{"free": 1000}'},
            capture_output=True, text=True, timeout=60, check=False)
        assert imported.returncode == 0, imported.stdout + imported.stderr
        owner_token, _ = _login(user_ch, slug, f"owner@{slug}.example.com", SLOW_PASSWORD)
        owner = (("authorization", f"Bearer {owner_token}"),)
        who = usg.AuthServiceStub(user_ch)
        jobs_api = ssg.SchedulerServiceStub(sched_ch)

        def job_traffic(lists: int) -> None:
            who.WhoAmI(usp.WhoAmIRequest(), metadata=owner)
            jobs_api.CreateJob(ssp.CreateJobRequest(kind=job_pb2.JOB_KIND_TENANT_EXPORT), metadata=owner)
            jobs_api.RunPeriodicJob(ssp.RunPeriodicJobRequest(name="health_check"), metadata=admin)
            for _ in range(lists):
                jobs_api.ListJobs(ssp.ListJobsRequest(), metadata=owner)

        job_traffic(1)
        # The worker has run both jobs: their series exist before Prometheus' first scrape.
        _until(lambda: all(m in httpx.get(stack.worker_metrics_url, timeout=5).text
                           for m in ('sentinel_jobs_total{kind="tenant_export"', "sentinel_component_up{")),
               30, "the worker ran the export and the health check")

        # --- Node exporter with the process-memory textfile, and Prometheus.
        textfiles = tmp_path / "textfile"
        textfiles.mkdir()
        assert _write_process_memory(textfiles, stack) >= 5
        node_addr = f"127.0.0.1:{free_port()}"
        prom_port = free_port()
        rule_files = sorted(str(p) for p in (TREE / "alerts" / "generated").glob(config.RULES_GLOB))
        prom_config = config.prometheus_config(config.stack_jobs(stack, node_exporter=node_addr),
                                               scrape_interval="1s", evaluation_interval="1s", rule_files=rule_files)
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prom_config, sort_keys=False))
        check = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")],
                               capture_output=True, text=True, timeout=60, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        jobs = {j["job_name"] for j in prom_config["scrape_configs"]}
        assert jobs == {"sentinel-tenant", "sentinel-user", "sentinel-audit", "sentinel-scheduler",
                        "sentinel-worker", "envoy", "node"}

        with _run([node_exporter, f"--web.listen-address={node_addr}",
                   f"--collector.textfile.directory={textfiles}"], tmp_path / "node-exporter.log",
                  f"http://{node_addr}/metrics", "node exporter"), \
             _run([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                   f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{prom_port}",
                   config.PROMETHEUS_RETENTION_FLAG, "--log.level=warn"], tmp_path / "prometheus.log",
                  f"http://127.0.0.1:{prom_port}/-/ready", "prometheus"), \
             httpx.Client(timeout=10) as client:
            prom = Prom(f"http://127.0.0.1:{prom_port}", client)
            _until(lambda: _all_up(prom, jobs), 20, "every scrape target up")
            _until(lambda: prom.value('min(count_over_time(up{job=~"sentinel-.*"}[1m]))') >= 3, 20,
                         "three scrapes of every Sentinel target")
            before = scrape_counts(stack)

            # --- Traffic: known codes on tenant, slow logins and fast calls on user, a job, the edge.
            sent = {code: [_status(calls[code]) for _ in range(n)] for code, n in TRAFFIC.items()}
            assert all(got == [code] * TRAFFIC[code] for code, got in sent.items()), sent
            with ThreadPoolExecutor(SLOW_USERS) as pool:  # at once, as users would
                logins = list(pool.map(lambda e: _login(user_ch, slug, e, SLOW_PASSWORD), emails))
            slow = sum(1 for _, took in logins if took > 1.0)
            for _ in range(20):
                who.WhoAmI(usp.WhoAmIRequest(), metadata=owner)
            job_traffic(10)
            refused = _hit_the_rate_limit(stack)
            time.sleep(1.5)  # the last calls' counters reach one more scrape
            after = scrape_counts(stack)
            traffic_end = time.time()
            delta = after - before

            # The services counted what was sent (a mismatch means the expectations below are off).
            for code, n in TRAFFIC.items():
                assert delta.by_code[("tenant", "TenantService/GetTenant", code)] == n, code
            assert delta.server.get("tenant", 0) == 0

            # --- (b) Recorded SLIs = the services' own counts (same window: everything since start).
            def sli(slo: str, service: str) -> float:
                return prom.value(f'slo:sli_error:ratio_rate5m{{sloth_slo="{slo}", service="{service}"}}')

            # Every target scraped after the traffic, then two more rule evaluations (1 s each).
            _until(lambda: prom.value("min(timestamp(up))") > traffic_end + 1, 20, "a scrape after the traffic")
            time.sleep(2.5)
            expected_error_rate = delta.non_ok["tenant"] / delta.total["tenant"]
            assert expected_error_rate > 0.3  # mostly our traffic: 40 of the 100 GetTenant calls are errors
            assert abs(sli("error-rate", "tenant") - expected_error_rate) < 0.02, (sli("error-rate", "tenant"),
                                                                                   expected_error_rate)
            # Client errors are not the service's fault: availability is untouched.
            assert sli("availability", "tenant") == 0
            assert prom.value('slo:availability:hourly{service="tenant"}') == 1
            assert prom.value('slo:error_rate:5m{service="tenant"}') == 0
            ratio = prom.value('service_code:sentinel_requests:rate5m{service="tenant", code="NOT_FOUND"}') / \
                prom.value('service_code:sentinel_requests:rate5m{service="tenant", code="INVALID_ARGUMENT"}')
            assert abs(ratio - TRAFFIC["NOT_FOUND"] / TRAFFIC["INVALID_ARGUMENT"]) < 0.05, ratio
            # Latency: the slow logins are the requests over 1 s.
            assert slow >= 1, f"no login took over 1 s: {[round(t, 2) for _, t in logins]}"
            slow_counted = delta.latency_count["user"] - delta.latency_good["user"]
            assert slow_counted >= slow
            expected_latency = slow_counted / delta.latency_count["user"]
            assert abs(sli("latency", "user") - expected_latency) < 0.02, (sli("latency", "user"), expected_latency)
            if expected_latency > 0.05:  # more than 5 % slow: the P95 lies above the 1 s bucket
                assert prom.value('slo:latency:p95_5m{service="user"}') > 1.0
            # The platform-wide figure is a ratio of the summed counts, never a mean of ratios.
            overall = sum(delta.non_ok.values()) / sum(delta.total.values())
            assert abs(sli("error-rate", "all") - overall) < 0.03, (sli("error-rate", "all"), overall)
            # Read both as of the burn rate's own evaluation (same rule group, same timestamp): two
            # reads at "now" can straddle an evaluation, and the rates move with every one.
            burn_series = 'slo:current_burn_rate:ratio{sloth_slo="error-rate", service="tenant"}'
            evaluated = prom.value(f"timestamp({burn_series})")
            burn = prom.value(burn_series, at=evaluated)
            sli_then = prom.value('slo:sli_error:ratio_rate5m{sloth_slo="error-rate", service="tenant"}', at=evaluated)
            assert abs(burn - sli_then / 0.01) < 1e-6, (burn, sli_then)

            # --- Targets: every job up, Envoy's /stats/prometheus among them.
            targets = client.get(f"{prom.url}/api/v1/targets").json()["data"]["activeTargets"]
            envoy = [t for t in targets if t["labels"]["job"] == "envoy"]
            assert envoy and envoy[0]["scrapeUrl"].endswith("/stats/prometheus"), envoy
            assert prom.value('up{job="envoy"}') == 1
            assert {t["labels"]["job"] for t in targets if t["health"] == "up"} == jobs
            groups = client.get(f"{prom.url}/api/v1/rules").json()["data"]["groups"]
            broken = [(g["name"], r["name"], r.get("lastError")) for g in groups for r in g["rules"]
                      if r.get("health") != "ok"]
            assert not broken, broken

            # --- (a) Every panel's PromQL and every rule's expression.
            now = time.time()
            empty: list[str] = []
            evaluated, with_data = 0, 0
            for q in dashboards.queries(dashboards.build(SPEC)):
                if q.datasource != "prometheus":
                    continue
                expr = dashboards.substitute(q.expr, VALUES)
                result = prom.query(expr, now) if q.instant else prom.query_range(expr, now - 60, now)
                evaluated += 1
                with_data += bool(result)
                if not result and not q.empty_ok:
                    empty.append(f"{q.dashboard} / {q.panel} / {q.ref}: {expr}")
            if not refused:  # the edge did not refuse: its rejection counters may not exist yet
                empty = [e for e in empty if "rejections" not in e]
            assert not empty, "panel queries without data:\n" + "\n".join(empty)
            records = _record_rules()
            no_data = []
            for r in records:
                got = prom.query(r["expr"], now)
                if "record" in r and (not got or not prom.query(_recorded(r), now)):
                    no_data.append(r["record"])
            assert not no_data, f"recording rules without data: {no_data}"
            top = prom.query(dashboards.substitute(next(
                q.expr for q in dashboards.queries(dashboards.build(SPEC)) if q.panel == "Top 10 processes by memory"),
                VALUES), now)
            assert 5 <= len(top) <= 10 and all({"process", "pid"} <= set(s["metric"]) for s in top), top
            assert prom.value("max(node_textfile_scrape_error)") == 0
            print(f"\nlive observability: {evaluated} panel expressions ({with_data} with data), "
                  f"{sum('record' in r for r in records)} recording rules (all with data) and "
                  f"{sum('alert' in r for r in records)} alert expressions evaluated; "
                  f"rate limit refused: {refused}; slow logins {slow}; traffic ended "
                  f"{time.time() - traffic_end:.1f} s before the checks; {time.monotonic() - started:.1f} s in all")
    finally:
        for ch in (user_ch, tenant_ch, sched_ch):
            ch.close()


def _recorded(rule: dict[str, Any]) -> str:
    labels = ", ".join(f'{k}="{v}"' for k, v in (rule.get("labels") or {}).items())
    return f"{rule['record']}{{{labels}}}"


def _all_up(prom: Prom, jobs: set[str]) -> bool:
    up = prom.query("up")
    return {s["metric"]["job"] for s in up if s["value"][1] == "1"} == jobs


def _hit_the_rate_limit(stack: Stack) -> bool:
    """Read calls from an address of our own until the edge answers 429 (the address tier)."""
    with httpx.Client(base_url=stack.rest_url, timeout=10,
                      transport=httpx.HTTPTransport(local_address=_own_address())) as c:
        for _ in range(int(os.environ.get("SENTINEL_OBS_RATE_LIMIT_TRIES", "30"))):
            if c.get("/api/v1/health").status_code == 429:
                return True
    return False


def _until(check: Callable[[], Any], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            if check():
                return
        except AssertionError:
            pass
        if time.monotonic() > deadline:
            check_result = check()
            pytest.fail(f"timed out after {within:.0f} s waiting for: {what} (last: {check_result})")
        time.sleep(0.25)
