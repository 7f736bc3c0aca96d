"""Fixtures for integration tests: the real stack on free ports, and two populated tenants.

One stack (Postgres, Redis, four services, Envoy) serves the whole session. Passwords are hashed
with cheap argon2 parameters here so that logging in dozens of test users stays fast; the
parameters come from configuration, so the code path is the production one.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from sentinel.common.v1 import common_pb2
from sentinel.devstack.stack import Stack, free_port, temporary_stack
from sentinel.gateway import envoy as gw
from sentinel.platform.apikeys import grantable_scopes
from sentinel.tenant.v1 import tenant_service_pb2 as tsp
from sentinel.tenant.v1 import tenant_service_pb2_grpc as tsg
from sentinel.user.v1 import invitation_service_pb2 as ivp
from sentinel.user.v1 import invitation_service_pb2_grpc as ivg
from sentinel.user.v1 import service_account_service_pb2 as sap
from sentinel.user.v1 import service_account_service_pb2_grpc as sag
from sentinel.user.v1 import user_service_pb2 as usp
from sentinel.user.v1 import user_service_pb2_grpc as usg

from tests.integration.clients import Principal

PASSWORD = "correct horse battery staple"
PERIODIC_JOBS = ("health_check", "slo_report", "burn_rate_watch", "audit_retention", "audit_verify", "tenant_purge",
                 "cleanup")


_OUT_OF_REACH = dict.fromkeys(("auth", "write", "read"), "1000000/day")
RATE_LIMITS = {
    "ip": {"auth": "6/day", "write": "20/day", "read": "20/day"},
    "ip_exempt": ["127.0.0.1/32"],
    "tenant": {"free": _OUT_OF_REACH, "standard": _OUT_OF_REACH,
               "enterprise": {"auth": "10/day", "write": "10/day", "read": "12/day"}},
    "principal": {"free": _OUT_OF_REACH, "standard": _OUT_OF_REACH,
                  "enterprise": {"auth": "5/day", "write": "4/day", "read": "5/day"}},
}


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    env = {
        "SENTINEL_BOOTSTRAP_ADMIN_EMAIL": "root@platform.example.com",
        "SENTINEL_BOOTSTRAP_ADMIN_PASSWORD": secrets.token_urlsafe(18),
        "SENTINEL_ARGON2_TIME_COST": "1",
        "SENTINEL_ARGON2_MEMORY_COST_KIB": "1024",
        "SENTINEL_ARGON2_PARALLELISM": "1",
        # Short failed-login locks so the tests can watch one expire.
        "SENTINEL_LOGIN_LOCK_SECONDS": "2",
        # Tests fill the free tenants A and B freely; the standard plan is the one with a low limit.
        "SENTINEL_PLAN_MAX_USERS": '{"free": 100000, "standard": 3}',
        "SENTINEL_PLAN_MAX_API_KEYS": '{"free": 1000, "standard": 2}',
        "SENTINEL_PLAN_MAX_ACTIVE_JOBS": '{"free": 1000, "standard": 2}',
        # A short concurrent-refresh grace so the reuse test need not wait long.
        "SENTINEL_REFRESH_REUSE_GRACE_SECONDS": "1",
        # Audit checkpoints every second, so tests see them without waiting minutes.
        "SENTINEL_AUDIT_CHECKPOINT_SECONDS": "1",
        # Jobs: quick retries. The worker's own clock runs no periodic job: the tests drive
        # periodic.run_due with the times they choose.
        "SENTINEL_JOB_RETRY_BASE_SECONDS": "0.2",
        "SENTINEL_PERIODIC_SCHEDULES": json.dumps(dict.fromkeys(PERIODIC_JOBS, "off")),
        # Edge rate limits: the suite's own address (127.0.0.1) is exempt and the free and
        # standard plans are out of reach, so only test_ratelimit.py meets a limit: it calls from
        # other loopback addresses and uses enterprise tenants. Daily windows: a test's burst
        # never straddles a window boundary.
        "SENTINEL_RATE_LIMITS": json.dumps(RATE_LIMITS),
        "SENTINEL_RATE_LIMIT_CACHE_SECONDS": "0.5",
        # The suite shares two cores and one disk with Postgres: a Redis reply held up by an AOF
        # fsync must not make the limiter fail open mid-test (production keeps 0.25 s).
        "SENTINEL_RATE_LIMIT_REDIS_TIMEOUT_SECONDS": "3",
        # Per-tenant usage reaches the database twice a second, so tenant SLOs show calls quickly.
        "SENTINEL_USAGE_FLUSH_SECONDS": "0.5",
    }
    # Two user-service instances behind Envoy, so every REST test goes through its load balancing
    # (test_gateway_failover.py kills and restarts the second one, "user-2"). Peers and the
    # direct gRPC channels below use the first, "user".
    with temporary_stack(env=env, echo=sys.stderr, instances={"user": 2}) as s:
        yield s


@pytest.fixture(scope="session")
def pg_stack(stack: Stack) -> Stack:
    """The same stack, for tests that talk to Postgres directly (owner_url, app_url)."""
    return stack


@dataclass
class Tenant:
    id: str
    slug: str
    owner: Principal
    member: Principal
    user_ids: list[str] = field(default_factory=list)
    #: A service account (role admin) and an API key carrying every permission it may hold.
    service_account_id: str = ""
    api_key_id: str = ""
    api_key: Principal | None = None
    #: A pending invitation.
    invitation_id: str = ""
    #: An event of the tenant's audit chain.
    audit_event_id: str = ""
    #: A job of the tenant (a tenant export).
    job_id: str = ""
    #: The chain head once the set-up's own events (tenant, users, logins, key...) were recorded.
    audit_base: int = 0


@dataclass
class World:
    """Tenants A and B, each with an owner and a member, plus the platform admin."""

    admin: Principal
    a: Tenant
    b: Tenant
    channels: dict[str, grpc.aio.Channel]

    def stub(self, cls: Any, service: str) -> Any:
        return cls(self.channels[service])


async def login(channel: grpc.aio.Channel, slug: str, email: str, password: str) -> tuple[str, str]:
    reply = await usg.AuthServiceStub(channel).Login(usp.LoginRequest(tenant=slug, email=email, password=password))
    me = await usg.AuthServiceStub(channel).WhoAmI(
        usp.WhoAmIRequest(), metadata=(("authorization", f"Bearer {reply.access_token}"),))
    return reply.access_token, me.user_id


async def make_tenant(channels: dict[str, grpc.aio.Channel], admin: Principal, name: str) -> Tenant:
    slug = f"{name}-{uuid.uuid4().hex[:8]}"
    tenant = (await tsg.TenantServiceStub(channels["tenant"]).CreateTenant(
        tsp.CreateTenantRequest(slug=slug, display_name=f"Tenant {name}"), metadata=admin.metadata)).tenant
    users = usg.UserServiceStub(channels["user"])
    principals = {}
    for role, label in ((common_pb2.ROLE_OWNER, "owner"), (common_pb2.ROLE_MEMBER, "member")):
        email = f"{label}@{slug}.example.com"
        await users.CreateUser(usp.CreateUserRequest(tenant_id=tenant.id, email=email, password=PASSWORD,
                                                     role=role, display_name=f"{label} of {name}"),
                               metadata=admin.metadata)
        token, user_id = await login(channels["user"], slug, email, PASSWORD)
        principals[label] = Principal(f"{name}-{label}", tenant.id, user_id, token)
    t = Tenant(tenant.id, slug, principals["owner"], principals["member"])
    t.user_ids = [principals["owner"].user_id, principals["member"].user_id]
    accounts = sag.ServiceAccountServiceStub(channels["user"])
    account = (await accounts.CreateServiceAccount(sap.CreateServiceAccountRequest(
        display_name=f"ci of {name}", role=common_pb2.ROLE_ADMIN), metadata=principals["owner"].metadata)
    ).service_account
    key = await accounts.CreateApiKey(sap.CreateApiKeyRequest(
        service_account_id=account.id, display_name="all it may", scopes=sorted(grantable_scopes("admin"))),
        metadata=principals["owner"].metadata)
    t.service_account_id, t.api_key_id = account.id, key.api_key.id
    t.api_key = Principal(f"{name}-key", tenant.id, account.id, key.secret)
    invitation = await ivg.InvitationServiceStub(channels["user"]).CreateInvitation(ivp.CreateInvitationRequest(
        email=f"invited@{slug}.example.com", role=common_pb2.ROLE_VIEWER), metadata=principals["owner"].metadata)
    t.invitation_id = invitation.invitation.id
    t.audit_base = await audit_head(t.id)  # the set-up's own events are in the chain before the test starts
    return t


@pytest.fixture(scope="module")
def http(stack: Stack) -> Iterator[httpx.Client]:
    """REST through Envoy (the stack's edge)."""
    with httpx.Client(base_url=stack.rest_url, timeout=15) as client:
        yield client


@pytest.fixture(scope="module")
def admin_headers(http: httpx.Client, stack: Stack) -> dict[str, str]:
    """The platform administrator's bearer token, logged in over REST."""
    r = http.post("/api/v1/auth/login", json={"tenant": "platform", "email": stack.admin_email,
                                              "password": stack.admin_password})
    assert r.status_code == 200, r.text
    return {"authorization": f"Bearer {r.json()['access_token']}"}


@pytest.fixture(scope="session")
async def kernel_db(stack: Stack) -> AsyncIterator[None]:
    """The kernel's database layer in this process, as the service role (e.g. to append audit events)."""
    from pydantic import SecretStr
    from sentinel.platform import db
    from sentinel.platform.config import Settings

    db.init(Settings(database_url=SecretStr(stack.app_url)))
    yield
    await db.dispose()


async def bare_tenant(name: str) -> tuple[str, str]:
    """A tenant row and nothing else (no users, so no recorded events): (id, slug). For tests that
    need a chain to start with events they append themselves, e.g. old ones for retention."""
    from sentinel.platform import db
    from sentinel.platform.auth import PLATFORM_TENANT_ID
    from sentinel.platform.ids import uuid7
    from sqlalchemy import text

    tenant_id, slug = uuid7(), f"{name}-{uuid.uuid4().hex[:8]}"
    async with db.unit_of_work(tenant_id=PLATFORM_TENANT_ID, platform=True) as session:
        await session.execute(text("INSERT INTO tenants (id, slug, display_name) VALUES (:id, :slug, :slug)"),
                              {"id": tenant_id, "slug": slug})
    return str(tenant_id), slug


async def audit_settled(within: float = 20.0) -> None:
    """Wait until every event recorded so far has reached its chain (the audit outbox is empty).

    A call's audit event is committed to the outbox before the call returns, so after this the
    chains hold everything the test has done.
    """
    import asyncio
    import time

    from sentinel.platform import db
    from sentinel.platform.auth import PLATFORM_TENANT_ID
    from sqlalchemy import text

    deadline = time.monotonic() + within
    while True:
        async with db.unit_of_work(tenant_id=PLATFORM_TENANT_ID, platform=True) as session:
            pending = await session.scalar(text("SELECT count(*) FROM audit_outbox WHERE error IS NULL"))
        if not pending:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{pending} audit events still in the outbox after {within}s")
        await asyncio.sleep(0.05)


async def audit_head(tenant_id: str) -> int:
    """The tenant's chain head sequence, once the outbox has drained."""
    from sentinel.audit import store
    from sentinel.platform import db

    await audit_settled()
    async with db.unit_of_work(tenant_id=uuid.UUID(tenant_id), platform=False) as session:
        return (await store.head(session))[0]


async def append_audit_event(tenant_id: str, **fields: Any) -> str:
    from sentinel.audit import store
    from sentinel.platform import db

    tenant = uuid.UUID(tenant_id)
    async with db.unit_of_work(tenant_id=tenant, platform=False) as session:
        rows = await store.append(session, tenant, [{"action": "test.event", "actor_type": "system", **fields}])
    return str(rows[0]["id"])


@pytest.fixture(scope="session")
async def world(stack: Any, kernel_db: None) -> AsyncIterator[World]:
    channels = {name: grpc.aio.insecure_channel(stack.service_target(name))
                for name in ("tenant", "user", "audit", "scheduler")}
    token, user_id = await login(channels["user"], "platform", stack.admin_email, stack.admin_password)
    from sentinel.platform.auth import PLATFORM_TENANT_ID

    admin = Principal("platform-admin", str(PLATFORM_TENANT_ID), user_id, token)
    a = await make_tenant(channels, admin, "alpha")
    b = await make_tenant(channels, admin, "bravo")
    from sentinel.scheduler.v1 import job_pb2
    from sentinel.scheduler.v1 import scheduler_service_pb2 as ssp
    from sentinel.scheduler.v1 import scheduler_service_pb2_grpc as ssg

    for t in (a, b):
        t.audit_event_id = await append_audit_event(t.id, target_type="tenant", target_id=t.id)
        t.job_id = (await ssg.SchedulerServiceStub(channels["scheduler"]).CreateJob(
            ssp.CreateJobRequest(kind=job_pb2.JOB_KIND_TENANT_EXPORT), metadata=t.owner.metadata)).job.id
    await audit_settled()
    yield World(admin, a, b, channels)
    for ch in channels.values():
        await ch.close()


@contextlib.contextmanager
def second_envoy(stack: Stack, tmp: Path, edit: Callable[[dict[str, Any]], None] | None = None) -> Iterator[str]:
    """Another Envoy on the stack's generated config (own ports; ``edit`` may change it further),
    in front of the same services."""
    config = yaml.safe_load((stack.data_dir / "gateway" / "envoy.yaml").read_text())
    if edit is not None:
        edit(config)
    port, admin = free_port(), free_port()
    config["admin"]["address"]["socket_address"]["port_value"] = admin
    config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = port
    conf = tmp / "envoy2.yaml"
    conf.write_text(yaml.safe_dump(config))
    log = (tmp / "envoy2.log").open("w")
    proc = subprocess.Popen([str(stack.bins.envoy), *gw.envoy_args(conf, log_level="warn")],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://{stack.host}:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp / "envoy2.log").read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://{stack.host}:{admin}/ready", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "second Envoy not ready"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
