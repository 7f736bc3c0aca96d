"""Benchmark: GetUser and ListUsers over direct gRPC and REST through Envoy, against a raw
asyncpg loop doing the same tenant-scoped transaction, all in one run on one machine.

    make bench                      # starts its own stack in a temporary directory
    .venv/bin/python bench/run.py --seconds 10 --clients 4 --streams 8

Prints throughput, p50/p99 latency, CPU per request of the serving processes, and the ratios
the targets are stated in. Not a test: numbers depend on the machine; compare ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import urllib.request
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import Result, asyncpg_loop, grpc_frame, h2load, h2load_spread
from sentinel.common.v1 import common_pb2
from sentinel.tenant.v1 import tenant_service_pb2 as tsp
from sentinel.tenant.v1 import tenant_service_pb2_grpc as tsg
from sentinel.user.v1 import user_service_pb2 as usp
from sentinel.user.v1 import user_service_pb2_grpc as usg

PASSWORD = "benchmark password 1"


async def seed(user_target: str, tenant_target: str, admin_email: str, admin_password: str,
               users: int) -> dict[str, str]:
    async with grpc.aio.insecure_channel(user_target) as uch, grpc.aio.insecure_channel(tenant_target) as tch:
        auth, people = usg.AuthServiceStub(uch), usg.UserServiceStub(uch)
        admin = await auth.Login(usp.LoginRequest(tenant="platform", email=admin_email, password=admin_password))
        md = (("authorization", f"Bearer {admin.access_token}"),)
        import uuid

        slug = f"bench-{uuid.uuid4().hex[:6]}"
        tenant = (await tsg.TenantServiceStub(tch).CreateTenant(
            tsp.CreateTenantRequest(slug=slug, display_name="Benchmark"), metadata=md)).tenant
        await people.CreateUser(usp.CreateUserRequest(tenant_id=tenant.id, email=f"owner@{slug}.example.com",
                                                      password=PASSWORD, role=common_pb2.ROLE_OWNER), metadata=md)
        owner = await auth.Login(usp.LoginRequest(tenant=slug, email=f"owner@{slug}.example.com", password=PASSWORD))
        omd = (("authorization", f"Bearer {owner.access_token}"),)
        last = ""
        for i in range(users):
            last = (await people.CreateUser(usp.CreateUserRequest(email=f"u{i}@{slug}.example.com",
                                                                  password=PASSWORD), metadata=omd)).user.id
        # Sanity: the exact requests the load generators send succeed.
        await people.GetUser(usp.GetUserRequest(id=last), metadata=omd)
        return {"tenant_id": tenant.id, "user_id": last, "token": owner.access_token}


def scrape_errors(metrics_url: str, method: str) -> dict[str, float]:
    """The service's error counts for ``method`` by gRPC code."""
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()  # noqa: S310 - loopback
    counts: dict[str, float] = {}
    for line in text.splitlines():
        # The method label is "<Service>/<Method>" (e.g. UserService/GetUser).
        if line.startswith("sentinel_errors_total{") and f'/{method}"' in line:
            code = line.split('code="', 1)[1].split('"', 1)[0]
            counts[code] = counts.get(code, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def service_errors(metrics_urls: list[str], method: str) -> dict[str, float]:
    """:func:`scrape_errors` summed over the instances."""
    total: dict[str, float] = {}
    for url in metrics_urls:
        for code, n in scrape_errors(url, method).items():
            total[code] = total.get(code, 0.0) + n
    return total


def table(results: list[Result], processes: list[str]) -> str:
    head = f"{'workload':34} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} " + " ".join(
        f"{'cpu-us/req ' + p:>20}" for p in processes)
    rows = [head, "-" * len(head)]
    for r in results:
        rows.append(f"{r.name:34} {r.rps:9.0f} {r.percentile(0.5):8.2f} {r.percentile(0.99):8.2f} {r.errors:7d} "
                    + " ".join(f"{r.cpu_us_per_request(p):20.0f}" for p in processes))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4, help="h2load connections")
    parser.add_argument("--streams", type=int, default=8, help="concurrent streams per connection")
    parser.add_argument("--users", type=int, default=60)
    parser.add_argument("--user-instances", type=int, default=1,
                        help="user-service processes; direct gRPC then spreads the connections over them "
                             "(as a balancing client does) and Envoy balances over them")
    parser.add_argument("--json", type=Path, help="also write the results here")
    ns = parser.parse_args(argv)
    concurrency = ns.clients * ns.streams

    from sentinel.devstack.bench import bench_stack

    instances = {"user": ns.user_instances}
    with tempfile.TemporaryDirectory(prefix="sentinel-bench-") as tmp, \
            bench_stack(Path(tmp), instances=instances) as stack:
        ids = asyncio.run(seed(stack.service_target("user"), stack.service_target("tenant"),
                               stack.admin_email, stack.admin_password, ns.users))
        auth = {"authorization": f"Bearer {ids['token']}"}
        grpc_headers = {**auth, "content-type": "application/grpc", "te": "trailers"}
        users = stack.instance_names("user")
        pids = {("user-svc" if n == "user" else n): stack.pid(n) for n in users} | {"envoy": stack.pid("envoy")}
        instance_urls = [f"http://{stack.service_target(n)}" for n in users]
        get_body = grpc_frame(usp.GetUserRequest(id=ids["user_id"]).SerializeToString())
        list_body = grpc_frame(usp.ListUsersRequest(page_size=50).SerializeToString())
        user_url = f"http://{stack.service_target('user')}"
        run = {"seconds": ns.seconds, "clients": ns.clients, "streams": ns.streams, "pids": pids}
        metrics = [stack.metrics_url(n) for n in users]
        errors_before = {m: service_errors(metrics, m) for m in ("GetUser", "ListUsers")}

        empty = grpc_frame(b"")
        results = [
            # The floor under every RPC: transport alone, then transport plus the interceptor chain.
            h2load("Health    gRPC direct (no auth/db)", f"{user_url}/grpc.health.v1.Health/Check",
                   headers={"content-type": "application/grpc", "te": "trailers"}, body=empty, **run),
            h2load("WhoAmI    gRPC direct (no db)", f"{user_url}/sentinel.user.v1.AuthService/WhoAmI",
                   headers=grpc_headers, body=empty, **run),
            asyncio.run(asyncpg_loop("GetUser   raw asyncpg (same tx)", stack.app_dsn, ids["tenant_id"],
                                     "SELECT * FROM users WHERE id = $1", (ids["user_id"],),
                                     seconds=ns.seconds, concurrency=concurrency, pool_size=10)),
            h2load_spread("GetUser   gRPC direct", [f"{u}/sentinel.user.v1.UserService/GetUser" for u in
                                                       instance_urls], headers=grpc_headers, body=get_body, **run),
            h2load("GetUser   gRPC via Envoy", f"{stack.rest_url}/sentinel.user.v1.UserService/GetUser",
                   headers=grpc_headers, body=get_body, **run),
            h2load("GetUser   REST via Envoy", f"{stack.rest_url}/api/v1/users/{ids['user_id']}",
                   headers=auth, body=None, **run),
            asyncio.run(asyncpg_loop("ListUsers raw asyncpg (same tx)", stack.app_dsn, ids["tenant_id"],
                                     "SELECT * FROM users ORDER BY create_time, id LIMIT 51", (),
                                     seconds=ns.seconds, concurrency=concurrency, pool_size=10)),
            h2load_spread("ListUsers gRPC direct", [f"{u}/sentinel.user.v1.UserService/ListUsers" for u in
                                                       instance_urls], headers=grpc_headers, body=list_body, **run),
            h2load("ListUsers REST via Envoy", f"{stack.rest_url}/api/v1/users?page_size=50",
                   headers=auth, body=None, **run),
        ]
        # h2load sees HTTP 200 for gRPC errors too: count failures from the service's own metrics.
        grpc_errors = {}
        for m in ("GetUser", "ListUsers"):
            after = service_errors(metrics, m)
            grpc_errors[m] = {code: n - errors_before[m].get(code, 0.0) for code, n in after.items()
                              if n > errors_before[m].get(code, 0.0)}

    for r in results:  # "user-svc": every user-service instance together
        r.cpu_seconds["user-svc"] = sum(r.cpu_seconds.pop(k, 0.0) for k in pids if k == "user-svc" or k in users)
    print(f"\nSentinel benchmark — Python {platform.python_version()}, grpcio {grpc.__version__}, "
          f"concurrency {concurrency} ({ns.clients} conns x {ns.streams} streams), {ns.seconds:.0f} s each, "
          f"{ns.user_instances} user-service instance(s)"
          + (" (Health and WhoAmI: the first alone)" if ns.user_instances > 1 else ""))
    print(table(results, ["user-svc", "envoy", "bench-client"]))
    # CANCELLED here: calls in flight when a load generator stopped (it resets its streams).
    print(f"\nservice-side errors during the runs, by code: {grpc_errors}")
    ratios = {}
    for op in ("GetUser", "ListUsers"):
        raw = next(r for r in results if r.name.startswith(op) and "raw" in r.name)
        direct = next(r for r in results if r.name.startswith(op) and "gRPC direct" in r.name)
        rest = next(r for r in results if r.name.startswith(op) and "REST" in r.name)
        ratios[f"{op} gRPC direct / raw asyncpg"] = direct.rps / raw.rps
        ratios[f"{op} REST via Envoy / gRPC direct"] = rest.rps / direct.rps
    for name, value in ratios.items():
        print(f"  {name:40} {value:6.2f}")
    print("targets: GetUser gRPC direct >= 0.50 of raw asyncpg; REST via Envoy >= 0.80 of gRPC direct")
    if ns.json:
        ns.json.write_text(json.dumps({
            "results": [{"name": r.name, "rps": r.rps, "p50_ms": r.percentile(0.5), "p99_ms": r.percentile(0.99),
                         "errors": r.errors, "cpu_seconds": r.cpu_seconds} for r in results],
            "ratios": ratios, "service_errors": grpc_errors}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
