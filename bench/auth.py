"""Identity figures (not a test): login latency with the production argon2id parameters, and how
long a revoked session, a revoked API key and a suspended tenant keep working in another service.

    .venv/bin/python bench/auth.py [--logins 20] [--rounds 20]

Starts its own stack (production settings) in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import httpx
from sentinel.common.v1 import common_pb2
from sentinel.devstack.stack import temporary_stack
from sentinel.platform.config import Settings
from sentinel.tenant.v1 import tenant_service_pb2 as tsp
from sentinel.tenant.v1 import tenant_service_pb2_grpc as tsg
from sentinel.user.passwords import Passwords
from sentinel.user.v1 import service_account_service_pb2 as sap
from sentinel.user.v1 import service_account_service_pb2_grpc as sag
from sentinel.user.v1 import user_service_pb2 as usp
from sentinel.user.v1 import user_service_pb2_grpc as usg

PASSWORD = "correct horse battery staple"


def summary(name: str, seconds: list[float]) -> None:
    ms = sorted(s * 1000 for s in seconds)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(f"{name:<48} n={len(ms):<3} p50 {statistics.median(ms):8.1f} ms   p99 {p99:8.1f} ms   max {ms[-1]:8.1f} ms")


async def until_refused(probe: Callable[[], Awaitable[Any]]) -> float:
    """Seconds from now until ``probe`` fails (polling every millisecond)."""
    start = time.perf_counter()
    while True:
        try:
            await probe()
        except grpc.aio.AioRpcError:
            return time.perf_counter() - start
        await asyncio.sleep(0.001)


async def measure(stack: Any, logins: int, rounds: int) -> None:
    settings = Settings()
    passwords = Passwords(settings)
    print(f"argon2id t={settings.argon2_time_cost} m={settings.argon2_memory_cost_kib} KiB "
          f"p={settings.argon2_parallelism}")
    hashes = []
    for _ in range(10):
        start = time.perf_counter()
        await passwords.hash(PASSWORD)
        hashes.append(time.perf_counter() - start)
    summary("argon2id hash (in process)", hashes)

    user_ch = grpc.aio.insecure_channel(stack.service_target("user"))
    tenant_ch = grpc.aio.insecure_channel(stack.service_target("tenant"))
    auth, users = usg.AuthServiceStub(user_ch), usg.UserServiceStub(user_ch)
    tenants = tsg.TenantServiceStub(tenant_ch)
    admin = await auth.Login(usp.LoginRequest(tenant="platform", email=stack.admin_email,
                                              password=stack.admin_password))
    admin_md = (("authorization", f"Bearer {admin.access_token}"),)
    slug = f"bench-{uuid.uuid4().hex[:6]}"
    tenant = (await tenants.CreateTenant(tsp.CreateTenantRequest(slug=slug, display_name="Bench"),
                                         metadata=admin_md)).tenant
    email = f"owner@{slug}.example.com"
    await users.CreateUser(usp.CreateUserRequest(tenant_id=tenant.id, email=email, password=PASSWORD,
                                                 role=common_pb2.ROLE_OWNER), metadata=admin_md)

    async with httpx.AsyncClient(base_url=stack.rest_url, timeout=30) as http:
        for label, body in (("login over REST, right password", {"email": email, "password": PASSWORD}),
                            ("login over REST, unknown user", {"email": "nobody@example.com", "password": PASSWORD})):
            times = []
            for _ in range(logins):
                start = time.perf_counter()
                r = await http.post("/api/v1/auth/login", json={"tenant": slug, **body})
                times.append(time.perf_counter() - start)
                assert r.status_code in (200, 401), r.text
            summary(label, times)

    def get_tenant(md: Any) -> Callable[[], Awaitable[Any]]:
        return lambda: tenants.GetTenant(tsp.GetTenantRequest(id=tenant.id), metadata=md, timeout=5)

    def list_users(md: Any) -> Callable[[], Awaitable[Any]]:
        return lambda: users.ListUsers(usp.ListUsersRequest(), metadata=md, timeout=5)

    delays = []
    for _ in range(rounds):
        login = await auth.Login(usp.LoginRequest(tenant=slug, email=email, password=PASSWORD))
        md = (("authorization", f"Bearer {login.access_token}"),)
        await get_tenant(md)()
        await auth.Logout(usp.LogoutRequest(), metadata=md)  # in the user service ...
        delays.append(await until_refused(get_tenant(md)))  # ... refused by the tenant service
    summary("logout → refused by the tenant service", delays)

    accounts = sag.ServiceAccountServiceStub(user_ch)
    owner = await auth.Login(usp.LoginRequest(tenant=slug, email=email, password=PASSWORD))
    owner_md = (("authorization", f"Bearer {owner.access_token}"),)
    account = (await accounts.CreateServiceAccount(sap.CreateServiceAccountRequest(
        display_name="bench", role=common_pb2.ROLE_VIEWER), metadata=owner_md)).service_account
    delays = []
    for _ in range(rounds):
        key = await accounts.CreateApiKey(sap.CreateApiKeyRequest(service_account_id=account.id,
                                                                  scopes=["tenants.read"]), metadata=owner_md)
        md = (("x-api-key", key.secret),)
        await get_tenant(md)()
        await accounts.RevokeApiKey(sap.RevokeApiKeyRequest(service_account_id=account.id, id=key.api_key.id),
                                    metadata=owner_md)
        delays.append(await until_refused(get_tenant(md)))
    summary("API key revoked → refused by the tenant service", delays)

    delays = []
    for _ in range(rounds):
        login = await auth.Login(usp.LoginRequest(tenant=slug, email=email, password=PASSWORD))
        md = (("authorization", f"Bearer {login.access_token}"),)
        probe = list_users(md)
        await probe()
        await tenants.SuspendTenant(tsp.SuspendTenantRequest(id=tenant.id, reason="bench"), metadata=admin_md)
        delays.append(await until_refused(probe))  # suspended in the tenant service, refused by the user service
        await tenants.ResumeTenant(tsp.ResumeTenantRequest(id=tenant.id), metadata=admin_md)
        await asyncio.sleep(0.05)
    summary("tenant suspended → refused by the user service", delays)
    await user_ch.close()
    await tenant_ch.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logins", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=20)
    ns = parser.parse_args()
    env = {"SENTINEL_BOOTSTRAP_ADMIN_EMAIL": "bench@platform.example.com",
           "SENTINEL_BOOTSTRAP_ADMIN_PASSWORD": secrets.token_urlsafe(18),
           # Many logins from one address: the brute-force throttle is not what is measured here.
           "SENTINEL_LOGIN_MAX_FAILURES": "1000", "SENTINEL_LOGIN_MAX_FAILURES_PER_IP": "100000"}
    with temporary_stack(env=env) as stack:
        asyncio.run(measure(stack, ns.logins, ns.rounds))


if __name__ == "__main__":
    main()
