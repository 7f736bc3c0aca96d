"""Rate limits through the real Envoy (address tier) and services on Redis (tenant, principal).

The suite's own address (127.0.0.1) is exempt and only the enterprise plan has reachable
limits in the test stack (conftest.RATE_LIMITS, daily windows), so each test here calls from
a loopback address of its own (127.x.y.z) and/or uses a fresh enterprise tenant: no test can
eat another's budget, and a burst never straddles a window boundary. The stack runs two
user-service instances behind Envoy, so every tenant and principal count here crosses them.
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from sentinel.devstack.stack import Stack, free_port
from sentinel.platform import apikeys
from sentinel.user.v1 import user_service_pb2 as usp
from sentinel.user.v1 import user_service_pb2_grpc as usg

from tests.integration.conftest import PASSWORD, RATE_LIMITS, second_envoy

pytestmark = pytest.mark.integration


def limit(tier: str, klass: str, plan: str = "enterprise") -> int:
    value = RATE_LIMITS[tier][klass] if tier == "ip" else RATE_LIMITS[tier][plan][klass]  # type: ignore[index]
    return int(str(value).split("/")[0])


def own_address() -> str:
    """A loopback address no other test uses (Linux routes all of 127/8 to lo)."""
    return f"127.{random.randrange(1, 255)}.{random.randrange(256)}.{random.randrange(2, 255)}"


@contextlib.contextmanager
def client(base_url: str, address: str = "127.0.0.1") -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=10,
                      transport=httpx.HTTPTransport(local_address=address)) as c:
        yield c


def until_refused(call: Callable[[], httpx.Response], most: int) -> list[httpx.Response]:
    """Call until the first 429 (included) or ``most`` calls."""
    out: list[httpx.Response] = []
    while len(out) < most:
        out.append(call())
        if out[-1].status_code == 429:
            break
    return out


def assert_refused(r: httpx.Response, limit_value: int, tier: str) -> None:
    """A 429 as every client sees it, whichever side refused (Envoy's address tier, or a
    service's tenant or principal tier)."""
    assert r.status_code == 429, r.text
    body = r.json()
    assert body["code"] == 8 and "Retry-After" in body["message"], body
    if tier == "ip":  # Envoy's own reply
        assert body["request_id"] == r.headers["x-request-id"]
    else:  # the service's RESOURCE_EXHAUSTED, transcoded
        info = next(d for d in body["details"] if d["@type"].endswith("google.rpc.ErrorInfo"))
        assert info["reason"] == "RATE_LIMITED" and info["metadata"]["tier"] == tier, info
        assert any(d["@type"].endswith("google.rpc.RetryInfo") for d in body["details"]), body
        assert r.headers["x-request-id"]
    assert r.headers["ratelimit-limit"] == str(limit_value)
    assert r.headers["ratelimit-remaining"] == "0"
    assert r.headers["retry-after"] == r.headers["ratelimit-reset"]
    assert 1 <= int(r.headers["retry-after"]) <= 86400
    assert r.headers["ratelimit-policy"] == f"{limit_value};w=86400"
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["cache-control"] == "no-store"
    for leaked in ("grpc-status", "grpc-message", "x-envoy-ratelimited", "server"):
        assert leaked not in r.headers, leaked


class Enterprise:
    """A fresh enterprise-plan tenant with ``n`` members, each logged in over REST."""

    def __init__(self, stack: Stack, admin: dict[str, str], n: int) -> None:
        self.stack, self.admin = stack, admin
        with client(stack.rest_url) as c:
            slug = f"ent-{uuid.uuid4().hex[:8]}"
            r = c.post("/api/v1/tenants", headers=admin, json={
                "slug": slug, "display_name": "Enterprise", "plan": "TENANT_PLAN_ENTERPRISE"})
            assert r.status_code == 200, r.text
            self.id, self.slug = r.json()["tenant"]["id"], slug
            self.tokens: list[str] = []
            for i in range(n):
                email = f"u{i}@{slug}.example.com"
                r = c.post("/api/v1/users", headers=admin, json={
                    "tenant_id": self.id, "email": email, "password": PASSWORD,
                    "role": "ROLE_OWNER" if i == 0 else "ROLE_MEMBER"})
                assert r.status_code == 200, r.text
                r = c.post("/api/v1/auth/login", json={"tenant": slug, "email": email, "password": PASSWORD})
                assert r.status_code == 200, r.text
                self.tokens.append(r.json()["access_token"])

    def headers(self, i: int) -> dict[str, str]:
        return {"authorization": f"Bearer {self.tokens[i]}"}

    def set_plan(self, plan: str) -> None:
        with client(self.stack.rest_url) as c:
            r = c.patch(f"/api/v1/tenants/{self.id}", headers=self.admin, json={"plan": plan},
                        params={"update_mask": "plan"})
            assert r.status_code == 200, r.text


def metric_at(url: str, name: str, **labels: str) -> float:
    text = httpx.get(url, timeout=5).text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and line.split("{", 1)[1].startswith(want):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def metric(stack: Stack, name: str, **labels: str) -> float:
    """Summed over the user-service instances (they count the tenant and principal tiers)."""
    return sum(metric_at(stack.metrics_url(n), name, **labels) for n in stack.instance_names("user"))


def fail_open_count(stack: Stack) -> str:
    """For assertion messages: calls the limiter admitted because Redis failed or was slow."""
    counts = {r: metric(stack, "sentinel_ratelimit_errors_total", reason=r) for r in ("redis", "redis_backoff")}
    return f"limiter fail-open counts so far: {counts}"


def edge_refusals(stack: Stack, klass: str) -> int:
    """Envoy's count of calls its address tier refused, for one class."""
    stats = httpx.get(f"http://{stack.host}:{stack.ports.envoy_admin}/stats",
                      params={"filter": f"^edge_ip_{klass}\\.http_local_rate_limit\\.rate_limited$"}, timeout=5).text
    return sum(int(line.rsplit(" ", 1)[1]) for line in stats.splitlines() if line.strip())


# --------------------------------------------------------------------------- tier (a): per address


def test_address_tier_counts_every_caller_by_address(stack: Stack) -> None:
    reads = limit("ip", "read")
    with client(stack.rest_url, own_address()) as c:
        seen = until_refused(lambda: c.get("/api/v1/health"), 2 * reads + 1)
        assert [r.status_code for r in seen] == [200] * reads + [429]
        # Every admitted response says how much is left, counting down to 0.
        assert [int(r.headers["ratelimit-remaining"]) for r in seen[:-1]] == list(range(reads - 1, -1, -1))
        assert all(r.headers["ratelimit-limit"] == str(reads) for r in seen)
        assert_refused(seen[-1], reads, "ip")
        # Refused calls consume nothing; still refused.
        assert c.get("/api/v1/health").status_code == 429
    with client(stack.rest_url, own_address()) as other:  # another address has its own budget
        r = other.get("/api/v1/health")
        assert r.status_code == 200 and r.headers["ratelimit-remaining"] == str(reads - 1)
    with client(stack.rest_url) as exempt:  # 127.0.0.1 is in ip_exempt: not counted at all
        r = exempt.get("/api/v1/health")
        assert r.status_code == 200 and "ratelimit-limit" not in r.headers


def test_authentication_is_the_strictest_class(stack: Stack) -> None:
    auth, reads = limit("ip", "auth"), limit("ip", "read")
    assert auth < reads
    before = edge_refusals(stack, "auth")
    with client(stack.rest_url, own_address()) as c:
        def guess() -> httpx.Response:  # a different unknown account each time: no account lock
            return c.post("/api/v1/auth/login", json={"tenant": "platform", "password": "not-the-password",
                                                      "email": f"{uuid.uuid4().hex[:10]}@example.com"})

        seen = until_refused(guess, 2 * auth + 1)
        assert [r.status_code for r in seen] == [401] * auth + [429]
        assert_refused(seen[-1], auth, "ip")
        # Reads from the same address have their own, more lenient budget.
        assert c.get("/api/v1/health").status_code == 200
    assert edge_refusals(stack, "auth") >= before + 1


# --------------------------------------------------------------------------- tiers (b) and (c)


def test_principal_and_tenant_tiers(stack: Stack, admin_headers: dict[str, str]) -> None:
    ent = Enterprise(stack, admin_headers, 3)
    per_user, per_tenant = limit("principal", "read"), limit("tenant", "read")
    assert per_user < per_tenant < 3 * per_user
    with client(stack.rest_url) as c:
        def read(i: int) -> Callable[[], httpx.Response]:
            return lambda: c.get("/api/v1/users/me", headers=ent.headers(i))

        first = until_refused(read(0), 2 * per_user)
        assert [r.status_code for r in first] == [200] * per_user + [429], fail_open_count(stack)
        assert_refused(first[-1], per_user, "principal")
        # Another user of the tenant is not held back by the first one's limit ...
        second = until_refused(read(1), 2 * per_user)
        assert [r.status_code for r in second] == [200] * per_user + [429]
        # ... until the tenant's budget (shared by all its users) is used up.
        left = per_tenant - 2 * per_user
        third = until_refused(read(2), 2 * per_user)
        assert [r.status_code for r in third] == [200] * left + [429]
        assert_refused(third[-1], per_tenant, "tenant")
        # Writes are a class of their own: the owner may still create users. Once half of a
        # counter is used, admitted responses say so too.
        writes = limit("principal", "write")
        for i in range(writes // 2):
            r = c.post("/api/v1/users", headers=ent.headers(0), json={
                "email": f"late{i}@{ent.slug}.example.com", "password": PASSWORD, "role": "ROLE_MEMBER"})
            assert r.status_code == 200, r.text
        assert r.headers["ratelimit-limit"] == str(writes)
        assert r.headers["ratelimit-remaining"] == str(writes - writes // 2)
        assert r.headers["ratelimit-policy"] == f"{writes};w=86400"
    assert metric(stack, "sentinel_ratelimit_rejections_total", **{"class": "read", "tier": "tenant"}) >= 1
    assert metric(stack, "sentinel_ratelimit_rejections_total", **{"class": "read", "tier": "principal"}) >= 2


def test_limits_follow_the_tenant_plan(stack: Stack, admin_headers: dict[str, str]) -> None:
    ent = Enterprise(stack, admin_headers, 1)
    per_user = limit("principal", "read")
    with client(stack.rest_url) as c:
        seen = until_refused(lambda: c.get("/api/v1/users/me", headers=ent.headers(0)), 2 * per_user)
        assert seen[-1].status_code == 429
        ent.set_plan("TENANT_PLAN_STANDARD")  # out of reach in the test stack
        deadline = time.monotonic() + 10  # the service re-reads a plan after 0.5 s here
        while (r := c.get("/api/v1/users/me", headers=ent.headers(0))).status_code == 429:
            assert time.monotonic() < deadline, "the plan change never lifted the limit"
            time.sleep(0.2)
        assert r.status_code == 200
    # Far from the new limit, the count travels in the trailing metadata (response headers only
    # once half of it is used).
    with grpc.insecure_channel(f"{stack.host}:{stack.ports.envoy}") as channel:
        _, call = usg.UserServiceStub(channel).GetCurrentUser.with_call(
            usp.GetCurrentUserRequest(), metadata=(("authorization", f"Bearer {ent.tokens[0]}"),), timeout=10)
    trailing = dict(call.trailing_metadata() or ())
    assert int(trailing["ratelimit-limit"]) > 1000 and int(trailing["ratelimit-remaining"]) > 1000


def test_api_keys_are_principals_and_forged_keys_charge_no_tenant(
        stack: Stack, admin_headers: dict[str, str]) -> None:
    ent = Enterprise(stack, admin_headers, 1)
    per_key = limit("principal", "read")
    with client(stack.rest_url) as c:
        r = c.post("/api/v1/serviceAccounts", headers=ent.headers(0),
                   json={"display_name": "ci", "role": "ROLE_MEMBER"})
        assert r.status_code == 200, r.text
        account = r.json()["service_account"]["id"]
        r = c.post(f"/api/v1/serviceAccounts/{account}/keys", headers=ent.headers(0),
                   json={"display_name": "k", "scopes": ["users.read"]})
        assert r.status_code == 200, r.text
        key = r.json()["secret"]
        # A well-formed key of this tenant that does not exist: refused by the service every time,
        # never counted against the tenant or a principal (only a verified key is a principal).
        forged, _ = apikeys.generate(uuid.UUID(ent.id), uuid.uuid4())
        for _ in range(per_key + 2):
            assert c.get("/api/v1/users", headers={"x-api-key": forged}).status_code == 401

        seen = until_refused(lambda: c.get("/api/v1/users", headers={"x-api-key": key}), 2 * per_key)
        assert [r.status_code for r in seen] == [200] * per_key + [429]
        assert_refused(seen[-1], per_key, "principal")
        # The same key as a bearer credential is the same principal.
        r = c.get("/api/v1/users", headers={"authorization": f"Bearer {key}"})
        assert r.status_code == 429
        # The owner (another principal of the tenant) still reads.
        assert c.get("/api/v1/users/me", headers=ent.headers(0)).status_code == 200


def test_native_grpc_gets_resource_exhausted(stack: Stack, admin_headers: dict[str, str]) -> None:
    ent = Enterprise(stack, admin_headers, 1)
    metadata = (("authorization", f"Bearer {ent.tokens[0]}"),)
    with grpc.insecure_channel(f"{stack.host}:{stack.ports.envoy}") as channel:
        stub = usg.UserServiceStub(channel)
        for _ in range(limit("principal", "read")):
            stub.GetCurrentUser(usp.GetCurrentUserRequest(), metadata=metadata, timeout=10)
        with pytest.raises(grpc.RpcError) as err:
            stub.GetCurrentUser(usp.GetCurrentUserRequest(), metadata=metadata, timeout=10)
    call: Any = err.value
    assert call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "Retry-After" in call.details()
    sent = dict(call.trailing_metadata() or ()) | dict(call.initial_metadata() or ())
    assert int(sent["retry-after"]) >= 1


# --------------------------------------------------------------------------- several Envoys, failure


def test_limits_hold_across_envoy_instances(stack: Stack, admin_headers: dict[str, str], tmp_path: Path) -> None:
    ent = Enterprise(stack, admin_headers, 2)
    per_user = limit("principal", "read")
    with second_envoy(stack, tmp_path) as other_url, client(stack.rest_url) as one, client(other_url) as two:
        # The second Envoy fetches the JWKS in the background: wait until it accepts a token
        # (the second user's, so the first user's budget is untouched).
        deadline = time.monotonic() + 20
        while two.get("/api/v1/users/me", headers=ent.headers(1)).status_code == 401:
            assert time.monotonic() < deadline, "second Envoy never accepted the token"
            time.sleep(0.2)
        codes = []
        for i in range(2 * per_user):  # alternate between the two edges
            edge = one if i % 2 == 0 else two
            codes.append(edge.get("/api/v1/users/me", headers=ent.headers(0)).status_code)
    # One budget for the principal, whichever Envoy the calls went through.
    assert codes == [200] * per_user + [429] * per_user, codes


def test_direct_grpc_to_a_service_is_limited_too(stack: Stack, admin_headers: dict[str, str]) -> None:
    """The tiers are counted by the services: a caller that reaches one without Envoy gains nothing."""
    ent = Enterprise(stack, admin_headers, 1)
    metadata = (("authorization", f"Bearer {ent.tokens[0]}"),)
    codes = []
    for name in stack.instance_names("user"):  # straight to each instance, alternating
        with grpc.insecure_channel(stack.service_target(name)) as channel:
            stub = usg.UserServiceStub(channel)
            for _ in range(limit("principal", "read")):
                try:
                    stub.GetCurrentUser(usp.GetCurrentUserRequest(), metadata=metadata, timeout=10)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as err:
                    codes.append(err.code())  # type: ignore[attr-defined]
    per_user = limit("principal", "read")
    assert codes[:per_user] == [grpc.StatusCode.OK] * per_user
    assert set(codes[per_user:]) == {grpc.StatusCode.RESOURCE_EXHAUSTED}, codes


def test_a_redis_restart_fails_nothing_open(stack: Stack, admin_headers: dict[str, str]) -> None:
    """After a restart every pooled Redis connection is dead: each is replaced at once, so the
    limits keep holding and no call is admitted uncounted."""
    ent = Enterprise(stack, admin_headers, 2)
    per_user = limit("principal", "read")
    errors = ("redis", "redis_backoff")
    with client(stack.rest_url) as c:
        for _ in range(2):  # both user-service instances hold pooled connections to Redis
            assert c.get("/api/v1/users/me", headers=ent.headers(1)).status_code == 200
        stack.kill_service("redis")
        stack.start_redis()
        before = {r: metric(stack, "sentinel_ratelimit_errors_total", reason=r) for r in errors}
        seen = until_refused(lambda: c.get("/api/v1/users/me", headers=ent.headers(0)), 2 * per_user)
    assert [r.status_code for r in seen] == [200] * per_user + [429], fail_open_count(stack)
    assert {r: metric(stack, "sentinel_ratelimit_errors_total", reason=r) for r in errors} == before


def test_an_unreachable_redis_fails_open(stack: Stack, admin_headers: dict[str, str], tmp_path: Path) -> None:
    """A user-service instance whose Redis is down admits every call and counts the failures."""
    ent = Enterprise(stack, admin_headers, 1)
    dead = tmp_path / "redis-url"
    dead.write_text(f"redis://127.0.0.1:{free_port()}/0")
    grpc_port, metrics_port = free_port(), free_port()
    env = {**stack.service_env("user"), "SENTINEL_REDIS_URL_FILE": str(dead),
           "SENTINEL_GRPC_PORT": str(grpc_port), "SENTINEL_METRICS_PORT": str(metrics_port)}
    log = (tmp_path / "user-no-redis.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "sentinel", "serve", "user"], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    target = f"{stack.host}:{grpc_port}"
    try:
        deadline = time.monotonic() + 60
        while not stack._grpc_serving(target):
            assert proc.poll() is None, (tmp_path / "user-no-redis.log").read_text()
            assert time.monotonic() < deadline, "the instance without Redis never served"
            time.sleep(0.3)
        metadata = (("authorization", f"Bearer {ent.tokens[0]}"),)
        with grpc.insecure_channel(target) as channel:
            stub = usg.UserServiceStub(channel)
            for _ in range(3 * limit("principal", "read")):  # beyond the limit: nothing refuses
                stub.GetCurrentUser(usp.GetCurrentUserRequest(), metadata=metadata, timeout=10)
        url = f"http://{stack.host}:{metrics_port}/metrics"
        failed_open = sum(metric_at(url, "sentinel_ratelimit_errors_total", reason=r)
                          for r in ("redis", "redis_backoff"))
        assert failed_open >= 3 * limit("principal", "read"), failed_open
        assert metric_at(url, "sentinel_ratelimit_errors_total", reason="redis") >= 1
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()
