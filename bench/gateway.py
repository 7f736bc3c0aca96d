"""Gateway benchmark (issue 5): REST through Envoy, with every filter of the stack's gateway
on, against direct gRPC to the user service, for GetUser and CreateUser.

    make bench-gateway
    .venv/bin/python bench/gateway.py [--seconds 5] [--rounds 4] [--json FILE]

For each RPC and path: the maximum rate (closed loop), then both paths at a fixed rate of
50 % of the direct-gRPC maximum (open loop). Targets: Envoy adds <= 1 ms at p99 at that rate
(REST p99 minus direct-gRPC p99), and REST keeps >= 80 % of the direct-gRPC maximum.
GetUser is driven by h2load (one fixed request); CreateUser needs a new e-mail every call,
so it is driven by bench/loadgen.py's py_load (Python processes: grpc.aio for gRPC, a lean
keep-alive HTTP/1.1 client for REST, same structure). CreateUser runs on a stack with the
test suite's argon2id parameters unless --create-hashing says otherwise (bench/README.md).
Not a test: numbers depend on the machine; compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.protobuf import field_mask_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import Http1Pool, Result, Sender, grpc_frame, h2load, py_load
from run import PASSWORD, scrape_errors, seed
from sentinel.devstack.stack import Stack
from sentinel.tenant.v1 import tenant_pb2
from sentinel.tenant.v1 import tenant_service_pb2 as tsp
from sentinel.tenant.v1 import tenant_service_pb2_grpc as tsg
from sentinel.user.v1 import user_service_pb2 as usp
from sentinel.user.v1 import user_service_pb2_grpc as usg

# Extra environment for the stack under test. Rate limits are raised (still counted, never
# refused) by bench_stack itself (sentinel.devstack.bench.BENCH_LIMITS), so the benchmark measures
# the filter, not rejections.
BENCH_ENV: dict[str, str] = {}

#: The test suite's argon2id parameters: CreateUser with production hashing (t=3, 64 MiB, p=4,
#: ~150 ms) measures argon2, not the gateway; see bench/README.md.
CHEAP_HASHING = {"SENTINEL_ARGON2_TIME_COST": "1", "SENTINEL_ARGON2_MEMORY_COST_KIB": "1024",
                 "SENTINEL_ARGON2_PARALLELISM": "1"}
#: Open loop with h2load: one connection, so requests are evenly spaced (h2load's clients each
#: send on their own timer, started together: N connections send in bursts of N).
OPEN_LOOP_CONNECTIONS, OPEN_LOOP_STREAMS = 1, 64
TARGET_ADDED_P99_MS, TARGET_RATIO, LOAD_FRACTION = 1.0, 0.80, 0.5


def gateway_stack(base: Path, env: dict[str, str]) -> contextlib.AbstractContextManager[Stack]:
    """``bench_stack`` (production settings, free ports, limits out of reach) with ``env`` added."""
    from sentinel.devstack import bench

    return bench.bench_stack(base, env)


def filter_chain(stack: Stack) -> list[str]:
    """The HTTP filters of the running Envoy, in order (from the configuration it was given)."""
    conf = yaml.safe_load((stack.data_dir / "gateway" / "envoy.yaml").read_text())
    names: list[str] = []
    for listener in conf["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                names += [h["name"].removeprefix("envoy.filters.http.")
                          for h in f.get("typed_config", {}).get("http_filters", [])]
    return names


@dataclass
class Tenant:
    tenant_id: str
    user_id: str
    token: str


def fresh_tenant(stack: Stack) -> Tenant:
    """A new enterprise tenant (plan limit far away) with an owner, one user and the owner's
    access token (10 minutes). Every CreateUser run gets its own, so the plan-limit count it
    makes starts at the same size on every path."""

    async def go() -> Tenant:
        ids = await seed(stack.service_target("user"), stack.service_target("tenant"),
                         stack.admin_email, stack.admin_password, users=1)
        async with grpc.aio.insecure_channel(stack.service_target("user")) as uch, \
                grpc.aio.insecure_channel(stack.service_target("tenant")) as tch:
            admin = await usg.AuthServiceStub(uch).Login(usp.LoginRequest(
                tenant="platform", email=stack.admin_email, password=stack.admin_password))
            await tsg.TenantServiceStub(tch).UpdateTenant(
                tsp.UpdateTenantRequest(tenant=tenant_pb2.Tenant(id=ids["tenant_id"],
                                                                 plan=tenant_pb2.TENANT_PLAN_ENTERPRISE),
                                        update_mask=field_mask_pb2.FieldMask(paths=["plan"])),
                metadata=(("authorization", f"Bearer {admin.access_token}"),))
        return Tenant(ids["tenant_id"], ids["user_id"], ids["token"])

    return asyncio.run(go())


# ----- CreateUser senders (run in py_load's processes; module level so they pickle)

@contextlib.asynccontextmanager
async def grpc_create_user(target: str, token: str, tag: str, index: int) -> AsyncIterator[Sender]:
    """One channel (one HTTP/2 connection) per process, as a gRPC client uses it."""
    async with grpc.aio.insecure_channel(target) as channel:
        await channel.channel_ready()
        stub = usg.UserServiceStub(channel)
        md = (("authorization", f"Bearer {token}"),)

        async def send(seq: int) -> bool:
            try:
                await stub.CreateUser(usp.CreateUserRequest(email=f"{tag}-{seq}@bench.example.com",
                                                            password=PASSWORD), metadata=md, timeout=30)
            except grpc.aio.AioRpcError:
                return False
            return True

        yield send


@contextlib.asynccontextmanager
async def rest_create_user(base_url: str, token: str, tag: str, index: int) -> AsyncIterator[Sender]:
    """Keep-alive HTTP/1.1 connections per process (one call at a time on each), as a REST
    client uses them."""
    pool = Http1Pool(base_url, {"authorization": f"Bearer {token}", "content-type": "application/json"})
    try:
        status, _ = await pool.request("GET", "/api/v1/health")
        assert status == 200, status

        async def send(seq: int) -> bool:
            body = json.dumps({"email": f"{tag}-{seq}@bench.example.com", "password": PASSWORD}).encode()
            try:
                status, _ = await asyncio.wait_for(pool.request("POST", "/api/v1/users", body), 30)
            except (OSError, asyncio.IncompleteReadError, TimeoutError):
                return False
            return status == 200

        yield send
    finally:
        await pool.close()


# ----- the paths to the user service, and one run of one path

@dataclass(frozen=True)
class Route:
    kind: str  # "grpc" (protobuf over HTTP/2) or "rest" (JSON over HTTP)
    address: str  # host:port
    envoy_pid: int | None  # the Envoy on the way, if any


@contextlib.contextmanager
def envoy_without(stack: Stack, names: list[str], workdir: Path) -> Iterator[Route]:
    """A second Envoy on free ports, from the stack's own configuration minus the HTTP filters
    ``names`` (e.g. ``lua``), in front of the same services: what those filters cost."""
    from sentinel.devstack.stack import free_port
    from sentinel.gateway.envoy import envoy_args

    conf = yaml.safe_load((stack.data_dir / "gateway" / "envoy.yaml").read_text())
    moved = {stack.ports.envoy: free_port(), stack.ports.envoy_admin: free_port()}
    removed: set[str] = set()
    tag = "-".join(names)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("port_value") in moved:
                node["port_value"] = moved[node["port_value"]]
            if "http_filters" in node:
                keep = [f for f in node["http_filters"] if f["name"].removeprefix("envoy.filters.http.") not in names]
                removed.update(f["name"].removeprefix("envoy.filters.http.") for f in node["http_filters"]
                               if f not in keep)
                node["http_filters"] = keep
            for key, value in node.items():
                if isinstance(value, str) and value == str(stack.logs_dir / "envoy-access.log"):
                    node[key] = str(workdir / f"envoy-without-{tag}-access.log")
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(conf)
    if missing := set(names) - removed:
        raise SystemExit(f"--without {', '.join(sorted(missing))}: not in the filter chain {filter_chain(stack)}")
    path = workdir / f"envoy-without-{tag}.yaml"
    path.write_text(yaml.safe_dump(conf, sort_keys=False))
    with (workdir / f"envoy-without-{tag}.log").open("ab") as log:
        proc = subprocess.Popen([str(stack.bins.envoy), *envoy_args(path, log_level="warn")],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not http_ok(f"http://{stack.host}:{moved[stack.ports.envoy]}/api/v1/health"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the Envoy without {tag} did not start; see {workdir}/envoy-without-{tag}.log")
            time.sleep(0.2)
        yield Route("rest", f"{stack.host}:{moved[stack.ports.envoy]}", proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def http_ok(url: str, token: str = "") -> bool:
    req = urllib.request.Request(url, headers={"authorization": f"Bearer {token}"} if token else {})  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=5) as reply:  # noqa: S310 - loopback
            return bool(reply.status == 200)
    except OSError:
        return False


@dataclass
class Bench:
    stack: Stack
    routes: dict[str, Route]  # path name -> route; "gRPC" and "REST" always
    seconds: float
    clients: int
    streams: int
    processes: int
    concurrency: int
    _reader: tuple[float, Tenant] | None = None
    #: GetUser calls the service ended CANCELLED: h2load resetting the streams still in flight when
    #: a run's time is up. They are not in h2load's log, so they count neither way; shown apart.
    cancelled: int = 0

    def reader(self) -> Tenant:
        """GetUser's tenant, made again when its access token nears its 10 minutes."""
        if self._reader is None or time.monotonic() - self._reader[0] > 300:
            self._reader = (time.monotonic(), fresh_tenant(self.stack))
        return self._reader[1]

    def pids(self, route: Route) -> dict[str, int]:
        pids = {"user-svc": self.stack.pid("user")}
        if route.envoy_pid is not None:
            pids["envoy"] = route.envoy_pid
        return pids

    def get_user(self, path: str, rate: float | None) -> Result:
        route, t = self.routes[path], self.reader()
        auth = {"authorization": f"Bearer {t.token}"}
        conns = dict(clients=self.clients, streams=self.streams) if rate is None else \
            dict(clients=OPEN_LOOP_CONNECTIONS, streams=OPEN_LOOP_STREAMS)
        run: dict[str, Any] = dict(seconds=self.seconds, pids=self.pids(route), rate=rate, **conns)
        name = f"GetUser    {path}"
        if route.kind == "rest":
            return h2load(name, f"http://{route.address}/api/v1/users/{t.user_id}", headers=auth, body=None, **run)
        metrics = self.stack.metrics_url("user")
        before = scrape_errors(metrics, "GetUser"), handled(metrics, "UserService/GetUser")
        result = h2load(name, f"http://{route.address}/sentinel.user.v1.UserService/GetUser",
                        headers={**auth, "content-type": "application/grpc", "te": "trailers"},
                        body=grpc_frame(usp.GetUserRequest(id=t.user_id).SerializeToString()), **run)
        # h2load sees HTTP 200 for gRPC errors: count the service's own, and, through Envoy, the
        # calls that never reached the service (Envoy's own refusals, e.g. a rate limit). The
        # service's count includes the warm-up, so only refusals beyond that show.
        after = scrape_errors(metrics, "GetUser")
        new = {code: n - before[0].get(code, 0.0) for code, n in after.items()}
        self.cancelled += int(new.pop("CANCELLED", 0.0))
        result.errors += int(sum(new.values()))
        result.errors = max(result.errors, result.requests - int(handled(metrics, "UserService/GetUser") - before[1]))
        return result

    def create_user(self, label: str) -> Callable[[str, float | None], Result]:
        def run(path: str, rate: float | None) -> Result:
            route, t = self.routes[path], fresh_tenant(self.stack)
            tag = uuid.uuid4().hex[:8]
            factory = functools.partial(grpc_create_user, route.address, t.token, tag) if route.kind == "grpc" \
                else functools.partial(rest_create_user, f"http://{route.address}", t.token, tag)
            return py_load(f"CreateUser {path}{label}", factory, seconds=self.seconds, processes=self.processes,
                           concurrency=max(1, self.concurrency // self.processes), pids=self.pids(route), rate=rate)

        return run


def handled(metrics_url: str, method: str) -> float:
    """Calls of ``method`` the service has finished, whatever their status."""
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()  # noqa: S310 - loopback
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("sentinel_requests_total{") and f'method="{method}"' in line)


def check_paths(stack: Stack, routes: dict[str, Route]) -> None:
    """One call of each kind on every REST path before measuring: a refusal (401, 429, ...)
    stops the benchmark. (A new Envoy may need a moment for its JWKS: retried for 30 s.)"""
    t = fresh_tenant(stack)
    for route in (r for r in routes.values() if r.kind == "rest"):
        base = f"http://{route.address}"
        deadline = time.monotonic() + 30
        while not http_ok(f"{base}/api/v1/users/{t.user_id}", t.token) and time.monotonic() < deadline:
            time.sleep(0.5)
        for method, url, body in (("GET", f"/api/v1/users/{t.user_id}", None),
                                  ("POST", "/api/v1/users", {"email": f"check-{uuid.uuid4().hex[:6]}@bench.example.com",
                                                             "password": PASSWORD})):
            req = urllib.request.Request(base + url, method=method,  # noqa: S310 - loopback
                                         data=json.dumps(body).encode() if body else None,
                                         headers={"authorization": f"Bearer {t.token}",
                                                  "content-type": "application/json"})
            try:
                urllib.request.urlopen(req, timeout=10).read()  # noqa: S310 - loopback
            except urllib.error.HTTPError as exc:
                raise SystemExit(f"{method} {base}{url}: HTTP {exc.code} {exc.read()[:300]!r}") from None


# ----- phases and figures

def good_rps(r: Result) -> float:
    """Successful calls per second: a refusal (a 429 from a rate limit) is not throughput."""
    return (r.requests - r.errors) / r.seconds if r.seconds else 0.0


def merge(name: str, parts: list[Result]) -> Result:
    cpu: dict[str, float] = {}
    for p in parts:
        for k, v in p.cpu_seconds.items():
            cpu[k] = cpu.get(k, 0.0) + v
    return Result(name, sum(p.requests for p in parts), sum(p.seconds for p in parts),
                  [us for p in parts for us in p.latencies_us], sum(p.errors for p in parts), cpu)


@dataclass
class Figures:
    rpc: str
    rate: float  # the fixed rate: LOAD_FRACTION of the direct-gRPC maximum
    peak: dict[str, list[Result]]  # path -> closed-loop runs, one a round
    fixed: dict[str, list[Result]]  # path -> runs at the fixed rate, one a round
    pooled: dict[str, Result] = field(default_factory=dict)  # path -> its fixed-rate runs merged

    def __post_init__(self) -> None:
        self.pooled = {path: merge(path, runs) for path, runs in self.fixed.items()}

    def maximum(self, path: str) -> float:
        return statistics.mean(good_rps(r) for r in self.peak[path])

    def ratio(self, path: str = "REST") -> float:
        return self.maximum(path) / self.maximum("gRPC")

    def added(self, q: float, path: str = "REST") -> float:
        """What ``path`` adds over direct gRPC at the fixed rate, at quantile ``q``, in ms."""
        return self.pooled[path].percentile(q) - self.pooled["gRPC"].percentile(q)

    def ratio_per_round(self, path: str = "REST") -> list[float]:
        return [good_rps(r) / good_rps(g) for g, r in zip(self.peak["gRPC"], self.peak[path], strict=True)]

    def added_per_round(self, q: float, path: str = "REST") -> list[float]:
        return [r.percentile(q) - g.percentile(q) for g, r in zip(self.fixed["gRPC"], self.fixed[path], strict=True)]

    def errors(self, path: str) -> int:
        return sum(r.errors for r in self.peak[path] + self.fixed[path])

    def failing(self, path: str) -> bool:
        """More than 0.5 % errors: the figures are not the RPC's (a few CANCELLED calls are
        h2load resetting its last streams)."""
        return self.errors(path) > 0.005 * sum(r.requests for r in self.peak[path] + self.fixed[path])

    @property
    def runs(self) -> list[Result]:
        return [r for phase in (self.peak, self.fixed) for runs in phase.values() for r in runs]


def measure(rpc: str, run: Callable[[str, float | None], Result], paths: list[str], rounds: int) -> Figures:
    """Maximum rate of every path, then every path at LOAD_FRACTION of the direct-gRPC maximum;
    within a round the paths take turns, and each round starts one path further on (with two
    paths: gRPC, REST, REST, gRPC, ...), so a slow spell of the machine hits them alike."""
    def phase(rate: float | None) -> dict[str, list[Result]]:
        out: dict[str, list[Result]] = {path: [] for path in paths}
        for n in range(rounds):
            for path in paths[n % len(paths):] + paths[:n % len(paths)]:
                result = run(path, rate)
                result.name += f"  {'max' if rate is None else f'@{rate:.0f}/s'} #{n + 1}"
                print(row(result), file=sys.stderr, flush=True)
                out[path].append(result)
        return out

    peak = phase(None)
    rate = LOAD_FRACTION * statistics.mean(good_rps(r) for r in peak["gRPC"])
    if rate <= 0:
        raise SystemExit(f"{rpc}: no direct gRPC call succeeded in the closed-loop runs (try more --seconds)")
    return Figures(rpc, rate, peak, phase(rate))


PROCESSES = ("user-svc", "envoy", "bench-client")


def row(r: Result) -> str:
    return (f"{r.name:48} {r.rps:7.0f} {r.requests:6d} {r.percentile(0.5):7.2f} {r.percentile(0.99):7.2f} "
            f"{r.percentile(0.999):8.2f} {r.errors:6d} "
            + " ".join(f"{r.cpu_us_per_request(p):8.0f}" for p in PROCESSES))


def head() -> str:
    text = (f"{'run':48} {'req/s':>7} {'n':>6} {'p50 ms':>7} {'p99 ms':>7} {'p99.9 ms':>8} {'errors':>6} "
            + " ".join(f"{p.removeprefix('bench-')[:8]:>8}" for p in PROCESSES))
    return text + "\n" + " " * 94 + "(CPU µs per request)"


def verdict(ok: Callable[[float], bool], figure: float, per_round: list[float]) -> str:
    """"met"/"MISSED" by the figure of the whole run, and how many rounds alone say the same:
    on a noisy machine they disagree, and then the verdict is only as good as that count."""
    agree = sum(ok(x) == ok(figure) for x in per_round)
    return f"{'met' if ok(figure) else 'MISSED'} ({agree}/{len(per_round)} rounds)"


def summary(figures: list[Figures]) -> str:
    lines = [f"{'RPC':26} {'gRPC max':>8} {'REST max':>8} {'ratio':>5} {'':18} {'rate':>5} "
             f"{'gRPC p99':>8} {'REST p99':>8} {'added':>7}", "-" * 118]
    for f in figures:
        g, rest = f.pooled["gRPC"], f.pooled["REST"]
        ratio, added = f.ratio(), f.added(0.99)
        invalid = "INVALID: errors" if f.failing("gRPC") or f.failing("REST") else ""
        lines.append(f"{f.rpc:26} {f.maximum('gRPC'):8.0f} {f.maximum('REST'):8.0f} {ratio:5.2f} "
                     f"{invalid or verdict(lambda x: x >= TARGET_RATIO, ratio, f.ratio_per_round()):18} "
                     f"{f.rate:5.0f} {g.percentile(0.99):8.2f} {rest.percentile(0.99):8.2f} {added:+7.2f} "
                     f"{invalid or verdict(lambda x: x <= TARGET_ADDED_P99_MS, added, f.added_per_round(0.99))}")
        notes = [f"ratio per round {', '.join(f'{x:.2f}' for x in f.ratio_per_round())}",
                 f"added p99 per round {', '.join(f'{x:+.1f}' for x in f.added_per_round(0.99))} ms "
                 f"(median {statistics.median(f.added_per_round(0.99)):+.1f})",
                 f"added p50 {f.added(0.5):+.2f} ms "
                 f"(per round {', '.join(f'{x:+.1f}' for x in f.added_per_round(0.5))})",
                 f"achieved {good_rps(g):.0f} / {good_rps(rest):.0f} req/s"]
        if f.errors("gRPC") or f.errors("REST"):
            notes.append(f"ERRORS (not counted as throughput): gRPC {f.errors('gRPC')}, REST {f.errors('REST')}")
        if min(good_rps(g), good_rps(rest)) < 0.95 * f.rate:
            notes.append("the fixed rate was not reached")
        if min(g.requests, rest.requests) < 1000:
            notes.append(f"only {min(g.requests, rest.requests)} calls per path at the fixed rate: p99 is rough")
        lines.append("    " + "; ".join(notes))
        for path in [p for p in f.peak if p not in ("gRPC", "REST")]:
            lines.append(f"    {path}: max {f.maximum(path):.0f} ({f.ratio(path):.2f} of direct gRPC); at "
                         f"{f.rate:.0f}/s it adds p50 {f.added(0.5, path):+.2f} ms, p99 {f.added(0.99, path):+.2f} ms"
                         + (f"; {f.errors(path)} ERRORS" if f.errors(path) else ""))
    lines.append(f"targets: REST/gRPC maximum >= {TARGET_RATIO:.2f}; REST p99 - gRPC p99 at "
                 f"{LOAD_FRACTION:.0%} of the gRPC maximum <= {TARGET_ADDED_P99_MS:.1f} ms")
    return "\n".join(lines)


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.machine())
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} cores ({model}), load average {load}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds of each run (after 1 s warm-up)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="runs of each path and phase, alternating (evens out a noisy machine)")
    parser.add_argument("--clients", type=int, default=4, help="h2load connections (GetUser, closed loop)")
    parser.add_argument("--streams", type=int, default=8, help="h2load streams per connection (GetUser)")
    parser.add_argument("--processes", type=int, default=2, help="load processes (CreateUser)")
    parser.add_argument("--concurrency", type=int, default=8, help="CreateUser calls in flight, closed loop, in all")
    parser.add_argument("--create-hashing", choices=("cheap", "production", "both"), default="cheap",
                        help="argon2id parameters of the stack CreateUser runs on (GetUser: production); "
                             "production: ~150 ms of argon2 per call, give it --seconds 20 or more")
    parser.add_argument("--grpc-via-envoy", action="store_true",
                        help="also measure native gRPC through Envoy (proxying and filters, no transcoding)")
    parser.add_argument("--without", action="append", default=[], metavar="FILTER",
                        help="also measure REST through a second Envoy without this HTTP filter, e.g. "
                             "lua or sentinel.edge_rate_limit.read (repeatable: one Envoy each)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="more stack environment for this run, over BENCH_ENV (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    ns = parser.parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M")
    note = machine()
    figures: list[Figures] = []
    chain: list[str] = []
    cancelled = 0
    extra = {**BENCH_ENV, **dict(item.split("=", 1) for item in ns.env)}
    stacks: list[tuple[str, dict[str, str]]] = [("production", {})]
    if ns.create_hashing != "production":
        stacks.append(("cheap", CHEAP_HASHING))
    print(head(), file=sys.stderr)
    for hashing, env in stacks:
        with tempfile.TemporaryDirectory(prefix="sentinel-bench-") as tmp, \
                gateway_stack(Path(tmp), {**env, **extra}) as stack, contextlib.ExitStack() as envoys:
            chain = filter_chain(stack)
            routes = {"gRPC": Route("grpc", stack.service_target("user"), None),
                      "REST": Route("rest", f"{stack.host}:{stack.ports.envoy}", stack.pid("envoy"))}
            if ns.grpc_via_envoy:
                routes["gRPC via Envoy"] = Route("grpc", f"{stack.host}:{stack.ports.envoy}", stack.pid("envoy"))
            for name in ns.without:
                routes[f"REST w/o {name}"] = envoys.enter_context(envoy_without(stack, [name], Path(tmp)))
            check_paths(stack, routes)
            bench = Bench(stack, routes, ns.seconds, ns.clients, ns.streams, ns.processes, ns.concurrency)
            if hashing == "production":
                figures.append(measure("GetUser", bench.get_user, list(routes), ns.rounds))
            if ns.create_hashing in (hashing, "both"):
                label = f" ({hashing} argon2)"
                figures.append(measure(f"CreateUser{label}", bench.create_user(label), list(routes), ns.rounds))
            cancelled += bench.cancelled

    print(f"\nSentinel gateway benchmark, {started}: {note}; Python {platform.python_version()}, "
          f"grpcio {grpc.__version__}; {ns.seconds:g} s per run, {ns.rounds} rounds")
    print(f"Envoy HTTP filters: {' -> '.join(chain)}" + (f"; stack env {extra}" if extra else ""))
    print(f"GetUser: h2load, {ns.clients} conns x {ns.streams} streams at the maximum, {OPEN_LOOP_CONNECTIONS} conn "
          f"at the fixed rate. CreateUser: py_load, {ns.processes} processes, {ns.concurrency} in flight at the "
          f"maximum (gRPC: a grpc.aio channel per process; REST: HTTP/1.1 keep-alive connections)\n")
    print(head())
    for f in figures:
        for r in f.runs:
            print(row(r))
    print()
    print(summary(figures))
    if cancelled:
        print(f"GetUser calls the service ended CANCELLED (h2load resetting its streams in flight when a run "
              f"stopped; in no run's figures): {cancelled}")
    if ns.json:
        def dump(r: Result) -> dict[str, object]:
            return {"name": r.name, "rps": r.rps, "requests": r.requests, "errors": r.errors,
                    "p50_ms": r.percentile(0.5), "p99_ms": r.percentile(0.99), "p999_ms": r.percentile(0.999),
                    "cpu_us_per_request": {p: r.cpu_us_per_request(p) for p in PROCESSES}}

        ns.json.write_text(json.dumps({
            "started": started, "machine": note, "seconds": ns.seconds, "rounds": ns.rounds, "filters": chain,
            "stack_env": extra, "targets": {"ratio": TARGET_RATIO, "added_p99_ms": TARGET_ADDED_P99_MS},
            "figures": [{
                "rpc": f.rpc, "rate": f.rate, "max_rps": {path: f.maximum(path) for path in f.peak},
                "ratio": f.ratio(), "ratio_per_round": f.ratio_per_round(),
                "added_p99_ms": f.added(0.99), "added_p99_per_round_ms": f.added_per_round(0.99),
                "added_p50_ms": f.added(0.5), "errors": {path: f.errors(path) for path in f.peak},
                "invalid": f.failing("gRPC") or f.failing("REST"),
                "fixed_rate": {path: dump(r) for path, r in f.pooled.items()},
                "runs": [dump(r) for r in f.runs],
            } for f in figures]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
