"""The Envoy config generator: contract coverage, the committed dev file, and real Envoy.

The last tests start the real Envoy binary in front of a tiny in-test gRPC backend (tenant
lookups, the JWKS, grpc.health) and check the edge behaviour through REST and native gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from sentinel.audit.v1 import audit_service_pb2, audit_service_pb2_grpc
from sentinel.gateway import envoy as gw
from sentinel.platform import contracts
from sentinel.platform.auth import public_jwk
from sentinel.policy.v1 import policy_pb2
from sentinel.tenant.v1 import tenant_pb2, tenant_service_pb2, tenant_service_pb2_grpc
from sentinel.user.v1 import user_service_pb2, user_service_pb2_grpc

from tests.support import envoy_binary, free_port

REPO = Path(__file__).resolve().parents[2]
DEV_YAML = REPO / "gateway" / "envoy.dev.yaml"


def _dev_render() -> dict[str, Any]:
    return gw.render(gw.dev_config())


def _filter(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    for f in hcm["http_filters"]:
        if f["name"] == name:
            return f["typed_config"]  # type: ignore[no-any-return]
    raise AssertionError(f"no {name} filter")


def _hcm(cfg: dict[str, Any]) -> dict[str, Any]:
    return cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]  # type: ignore[no-any-return]


def _headers_match(m: dict[str, Any], headers: dict[str, str]) -> bool:
    for h in m.get("headers", []):
        value = headers.get(h["name"])
        if value is None:
            return False
        if "string_match" in h:
            want = h["string_match"]["prefix"]
            if h["string_match"].get("ignore_case"):
                value, want = value.lower(), want.lower()
            if not value.startswith(want):
                return False
    return True


def _rule_for(rules: list[dict[str, Any]], path: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """First matching jwt_authn rule, as Envoy evaluates them."""
    for rule in rules:
        m = rule["match"]
        if not _headers_match(m, headers or {}):
            continue
        if ("path" in m and m["path"] == path) or ("prefix" in m and path.startswith(m["prefix"])):
            return rule
    raise AssertionError(f"no jwt rule matches {path}")


def test_api_keys_pass_jwt_authn_for_the_services_to_verify() -> None:
    rules = gw.jwt_rules()
    path = "/sentinel.user.v1.UserService/ListUsers"
    assert _rule_for(rules, path, {"authorization": "Bearer eyJhbGciOi"})["requires"] == {"provider_name": "sentinel"}
    for headers in ({"authorization": "Bearer snt_AAAA"}, {"authorization": "bearer snt_AAAA"},
                    {"x-api-key": "snt_AAAA"}):
        assert "requires" not in _rule_for(rules, path, headers), headers
    assert _rule_for(rules, path)["requires"] == {"provider_name": "sentinel"}  # nothing sent


def _route_for(cfg: dict[str, Any], path: str) -> dict[str, Any]:
    for route in _hcm(cfg)["route_config"]["virtual_hosts"][0]["routes"]:
        m = route["match"]
        if ("path" in m and m["path"] == path) or ("prefix" in m and path.startswith(m["prefix"])):
            return route  # type: ignore[no-any-return]
    raise AssertionError(f"no route for {path}")


# --------------------------------------------------------------------------- generated data


def test_every_rpc_is_transcoded_routed_and_guarded() -> None:
    cfg = _dev_render()
    transcoder = _filter(cfg, "envoy.filters.http.grpc_json_transcoder")
    rules = _filter(cfg, "envoy.filters.http.jwt_authn")["rules"]
    clusters = {c["name"] for c in cfg["static_resources"]["clusters"]}
    assert set(gw.BACKENDS) <= clusters

    for rpc in contracts.rpcs():
        if rpc.http:
            assert rpc.service.full_name in transcoder["services"], rpc.full_method
        route = _route_for(cfg, rpc.full_method)
        if rpc.policy.tenant_scope == policy_pb2.TENANT_SCOPE_INTERNAL:
            # Service-to-service methods do not exist at the edge, whatever token is sent.
            assert route["direct_response"]["status"] == 404 and "route" not in route, rpc.full_method
            assert not rpc.http
            continue
        assert route["route"]["cluster"] == gw.backend_for(rpc.service.full_name), rpc.full_method
        # Only reads are retried.
        assert ("retry_policy" in route["route"]) == (not rpc.mutating and not rpc.streaming), rpc.full_method
        if rpc.streaming:
            assert route["route"]["timeout"] == "0s"
        rule = _rule_for(rules, rpc.full_method)
        if rpc.public:
            assert "requires" not in rule, rpc.full_method
        else:
            assert rule["requires"] == {"provider_name": "sentinel"}, rpc.full_method
    for prefix in contracts.INFRASTRUCTURE_PREFIXES:
        assert "requires" not in _rule_for(rules, prefix + "Check")
    # Anything not declared fails closed.
    assert _rule_for(rules, "/sentinel.new.v1.Thing/Do")["requires"] == {"provider_name": "sentinel"}
    catch_all = _hcm(cfg)["route_config"]["virtual_hosts"][0]["routes"][-2:]
    assert catch_all[0]["match"] == {"prefix": "/", "grpc": {}} and "direct_response" in catch_all[0]


def test_backend_mapping() -> None:
    assert gw.backend_for("sentinel.tenant.v1.TenantService") == "tenant"
    assert gw.backend_for("sentinel.user.v1.AuthService") == "user"
    assert gw.backend_for("sentinel.user.v1.UserService") == "user"
    assert gw.backend_for("sentinel.audit.v1.AuditService") == "audit"
    assert gw.backend_for("sentinel.scheduler.v1.SchedulerService") == "scheduler"
    assert gw.backend_for("sentinel.common.v1.HealthService") == "tenant"
    with pytest.raises(ValueError):
        gw.backend_for("other.v1.Service")


def test_render_checks_upstreams_and_derives_jwks() -> None:
    with pytest.raises(ValueError, match="lacks"):
        gw.render(gw.GatewayConfig(upstreams={"tenant": "127.0.0.1:1"}, descriptor_set_path=Path("x.pb")))
    cfg = gw.GatewayConfig(upstreams={b: f"{b}.internal:5000" for b in gw.BACKENDS},
                           descriptor_set_path=Path("/x.pb"), listen_host="0.0.0.0", listen_port=8443,
                           cors_allowed_origins=("https://app.example.com",))
    out = gw.render(cfg)
    jwks = _filter(out, "envoy.filters.http.jwt_authn")["providers"]["sentinel"]["remote_jwks"]
    assert jwks["http_uri"]["uri"] == "http://127.0.0.1:8443/.well-known/jwks.json"
    tenant = next(c for c in out["static_resources"]["clusters"] if c["name"] == "tenant")
    assert tenant["type"] == "STRICT_DNS"
    names = [f["name"] for f in _hcm(out)["http_filters"]]
    assert names == ["envoy.filters.http.cors", "sentinel.strict_json", "envoy.filters.http.grpc_json_transcoder",
                     "envoy.filters.http.jwt_authn", "envoy.filters.http.buffer", "envoy.filters.http.router"]
    https = gw.render(gw.GatewayConfig(upstreams=gw.DEV_UPSTREAMS, descriptor_set_path=Path("/x.pb"),
                                       jwks_uri="https://id.example.com/jwks"))
    jwks_cluster = next(c for c in https["static_resources"]["clusters"] if c["name"] == "jwks")
    assert jwks_cluster["transport_socket"]["name"] == "envoy.transport_sockets.tls"
    assert jwks_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == {
        "socket_address": {"address": "id.example.com", "port_value": 443}}


def test_descriptor_set_loads_every_service(tmp_path: Path) -> None:
    from google.protobuf import descriptor_pb2, descriptor_pool

    path = gw.write_descriptor_set(tmp_path / "d" / "sentinel.pb")
    fds = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for f in fds.file:
        pool.Add(f)
    for name in gw.service_names():
        pool.FindServiceByName(name)
    pool.FindMessageTypeByName("google.rpc.BadRequest")  # details render as JSON at the edge


def test_no_binding_uses_response_body() -> None:
    # Envoy would refuse to load the descriptor set (envoyproxy/envoy#11136).
    assert gw.response_body_bindings() == []


def test_committed_dev_config_is_current() -> None:
    expected = gw.render_yaml(gw.dev_config())
    assert DEV_YAML.read_text() == expected, (
        "gateway/envoy.dev.yaml is stale: run `sentinel gateway render -o gateway/envoy.dev.yaml`")
    assert yaml.safe_load(expected) == _dev_render()


def test_cli_render_writes_config_and_descriptor(tmp_path: Path) -> None:
    import argparse

    from sentinel import cli

    out, pb = tmp_path / "envoy.yaml", tmp_path / "gw" / "sentinel.pb"
    ns = argparse.Namespace(output=out, descriptor_set=pb, write_descriptor_set=True)
    assert cli._gateway_render(ns) == 0
    assert pb.stat().st_size > 0
    rendered = yaml.safe_load(out.read_text())
    assert _filter(rendered, "envoy.filters.http.grpc_json_transcoder")["proto_descriptor"] == str(pb)


# --------------------------------------------------------------------------- real Envoy


def test_envoy_validates_rendered_config(tmp_path: Path) -> None:
    envoy = envoy_binary()
    cfg = gw.GatewayConfig(upstreams=gw.DEV_UPSTREAMS,
                           descriptor_set_path=gw.write_descriptor_set(tmp_path / "sentinel.pb"),
                           cors_allowed_origins=("http://localhost:5173",))
    conf = tmp_path / "envoy.yaml"
    conf.write_text(gw.render_yaml(cfg))
    proc = subprocess.run([envoy, "--mode", "validate", "-c", str(conf), "--disable-hot-restart",
                           "--log-level", "warn"], capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert f"configuration '{conf}' OK" in out


ISS, AUD = "sentinel", "sentinel-api"
KID = "test-key-1"
KNOWN_TENANT = "0190f6b4-8a5e-7c3d-9f1a-2b3c4d5e6f70"
APP_ORIGIN = "http://app.test:5173"


class FakeTenants(tenant_service_pb2_grpc.TenantServiceServicer):
    async def GetTenant(self, request: tenant_service_pb2.GetTenantRequest,
                        context: grpc.aio.ServicerContext[Any, Any]) -> tenant_service_pb2.GetTenantResponse:
        if request.id != KNOWN_TENANT:
            info = any_pb2.Any()
            info.Pack(error_details_pb2.ErrorInfo(reason="TENANT_NOT_FOUND", domain="sentinel"))
            await context.abort_with_status(rpc_status.to_status(status_pb2.Status(
                code=code_pb2.NOT_FOUND, message=f"tenant {request.id} not found", details=[info])))
        return tenant_service_pb2.GetTenantResponse(tenant=tenant_pb2.Tenant(
            id=KNOWN_TENANT, slug="acme", display_name="Acme Inc", state=tenant_pb2.TENANT_STATE_ACTIVE))


class FakeAuth(user_service_pb2_grpc.AuthServiceServicer):
    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._jwk = public_jwk(KID, key.public_key())

    async def GetJwks(self, request: user_service_pb2.GetJwksRequest,
                      context: grpc.aio.ServicerContext[Any, Any]) -> user_service_pb2.GetJwksResponse:
        return user_service_pb2.GetJwksResponse(keys=[user_service_pb2.Jwk(**self._jwk)])


def sign(key: Ed25519PrivateKey, **override: Any) -> str:
    now = int(time.time())
    claims = {"iss": ISS, "aud": AUD, "sub": str(uuid.uuid4()), "tid": KNOWN_TENANT, "role": "admin",
              "iat": now, "nbf": now, "exp": now + 300, "jti": uuid.uuid4().hex, "use": "access", **override}
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": KID})


@dataclass
class Gateway:
    base_url: str
    grpc_target: str
    key: Ed25519PrivateKey
    access_log: Path

    def bearer(self, token: str) -> dict[str, str]:
        return {"authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    envoy = envoy_binary()
    tmp = tmp_path_factory.mktemp("gateway")
    key = Ed25519PrivateKey.generate()

    server = grpc.aio.server()
    # Partial fakes: the other RPCs answer UNIMPLEMENTED.
    tenant_service_pb2_grpc.add_TenantServiceServicer_to_server(FakeTenants(), server)  # type: ignore[abstract]
    user_service_pb2_grpc.add_AuthServiceServicer_to_server(FakeAuth(key), server)  # type: ignore[abstract]
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    backend_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)

    port, admin = free_port(), free_port()
    cfg = gw.GatewayConfig(
        upstreams={b: f"127.0.0.1:{backend_port}" for b in gw.BACKENDS},
        descriptor_set_path=gw.write_descriptor_set(tmp / "sentinel.pb"),
        listen_port=port, admin_port=admin, max_request_bytes=64 * 1024, cors_allowed_origins=(APP_ORIGIN,),
        access_log_path=str(tmp / "access.log"),
    )
    conf = tmp / "envoy.yaml"
    conf.write_text(gw.render_yaml(cfg))
    gateway = Gateway(f"http://127.0.0.1:{port}", f"127.0.0.1:{port}", key, tmp / "access.log")
    try:
        async with running_envoy(envoy, conf, tmp, gateway.base_url, gateway.bearer(sign(key))):
            yield gateway
    finally:
        await server.stop(grace=None)


@contextlib.asynccontextmanager
async def running_envoy(envoy: str, conf: Path, tmp: Path, base_url: str,
                        headers: dict[str, str]) -> AsyncIterator[None]:
    """Envoy on ``conf`` for the block. Ready = listener up AND the self-served JWKS fetched (a
    request with a valid token passes)."""
    log = (tmp / "envoy.log").open("w")
    proc = await asyncio.create_subprocess_exec(envoy, *gw.envoy_args(conf, log_level="warn"),
                                                stdout=log, stderr=subprocess.STDOUT)
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            deadline = time.monotonic() + 15
            while True:
                if proc.returncode is not None:
                    raise AssertionError(f"envoy exited {proc.returncode}: {(tmp / 'envoy.log').read_text()}")
                with contextlib.suppress(httpx.HTTPError):
                    r = await client.get(f"{base_url}/api/v1/tenants/{KNOWN_TENANT}", headers=headers)
                    if r.status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise AssertionError(f"gateway not ready: {(tmp / 'envoy.log').read_text()}")
                await asyncio.sleep(0.1)
        yield
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout=5)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()


@pytest.fixture
async def http(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=5) as client:
        yield client


async def test_rest_get_is_transcoded_to_snake_case_json(gateway: Gateway, http: httpx.AsyncClient) -> None:
    r = await http.get(f"/api/v1/tenants/{KNOWN_TENANT}", headers=gateway.bearer(sign(gateway.key)))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    tenant = r.json()["tenant"]
    assert tenant["display_name"] == "Acme Inc" and tenant["state"] == "TENANT_STATE_ACTIVE"
    assert tenant["etag"] == ""  # primitive fields are always printed
    for name, value in gw.SECURITY_HEADERS.items():
        assert r.headers[name] == value
    assert "server" not in r.headers and "x-envoy-upstream-service-time" not in r.headers
    assert r.headers["x-request-id"]
    r = await http.get(f"/api/v1/tenants/{KNOWN_TENANT}", headers={"authorization": f"bearer {sign(gateway.key)}"})
    assert r.status_code == 200, r.text


async def test_missing_forged_and_non_jwt_tokens_are_json_401(gateway: Gateway, http: httpx.AsyncClient) -> None:
    path = f"/api/v1/tenants/{KNOWN_TENANT}"
    other = Ed25519PrivateKey.generate()
    cases = {
        "missing": {},
        "forged": gateway.bearer(sign(other)),
        "expired": gateway.bearer(sign(gateway.key, iat=1, nbf=1, exp=2)),
    }
    for name, headers in cases.items():
        r = await http.get(path, headers=headers)
        assert r.status_code == 401, (name, r.text)
        body = r.json()
        assert body["code"] == 16 and body["message"], (name, body)
        assert body["request_id"] == r.headers["x-request-id"], name
        assert r.headers["x-content-type-options"] == "nosniff", name
        assert "server" not in r.headers, name
    # An API key is no JWT: the edge passes it on for the service to verify (this fake backend
    # accepts anything; the integration tests show the real services refusing bad keys).
    r = await http.get(path, headers=gateway.bearer("snt_0123456789abcdef"))
    assert r.status_code == 200, r.text
    # jwt_authn answers a well-signed token for another audience with 403, not 401.
    r = await http.get(path, headers=gateway.bearer(sign(gateway.key, aud="someone-else")))
    assert r.status_code == 403 and r.json()["code"] == 7, r.text


async def test_upstream_not_found_maps_to_http_404_with_details(gateway: Gateway, http: httpx.AsyncClient) -> None:
    missing = str(uuid.uuid4())
    r = await http.get(f"/api/v1/tenants/{missing}", headers=gateway.bearer(sign(gateway.key)))
    assert r.status_code == 404
    body = r.json()
    assert body["code"] == 5 and missing in body["message"]
    assert body["details"][0]["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert body["details"][0]["reason"] == "TENANT_NOT_FOUND"


async def test_edge_rejections_are_json(gateway: Gateway, http: httpx.AsyncClient) -> None:
    auth = gateway.bearer(sign(gateway.key))
    r = await http.get(f"/api/v1/tenants/{KNOWN_TENANT}", params={"bogus": "1"}, headers=auth)
    assert r.status_code == 400 and r.json()["code"] == 3, r.text
    r = await http.get("/api/v1/no-such-thing", headers=auth)
    assert r.status_code == 404 and r.json()["code"] == 5, r.text
    assert r.headers["x-frame-options"] == "DENY"
    r = await http.post("/api/v1/tenants", content=b'{"slug": "' + b"a" * 100_000 + b'"}',
                        headers={**auth, "content-type": "application/json"})
    assert r.status_code == 413 and r.json()["code"] == 8, r.text
    r = await http.get("/api/v1//tenants/%2Fx", headers=auth)
    assert r.status_code == 400 and r.json()["code"] == 3, r.text
    r = await http.get(f"/api/v1/tenants/{KNOWN_TENANT}", headers={**auth, "x_tenant": "other"})
    assert r.status_code == 400 and r.json()["code"] == 3, r.text


async def test_cors_only_for_configured_origins(gateway: Gateway, http: httpx.AsyncClient) -> None:
    preflight = {"access-control-request-method": "POST",
                 "access-control-request-headers": "authorization,content-type,idempotency-key"}
    r = await http.options("/api/v1/tenants", headers={"origin": APP_ORIGIN, **preflight})
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "idempotency-key" in r.headers["access-control-allow-headers"]
    r = await http.options("/api/v1/tenants", headers={"origin": "http://evil.test", **preflight})
    assert "access-control-allow-origin" not in r.headers
    r = await http.get(f"/api/v1/tenants/{KNOWN_TENANT}",
                       headers={"origin": APP_ORIGIN, **gateway.bearer(sign(gateway.key))})
    assert r.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "x-request-id" in r.headers["access-control-expose-headers"]


async def test_access_log_is_json(gateway: Gateway, http: httpx.AsyncClient) -> None:
    r = await http.get(f"/api/v1/tenants/{KNOWN_TENANT}", headers=gateway.bearer(sign(gateway.key)))
    rid = r.headers["x-request-id"]
    deadline = time.monotonic() + 5
    while True:  # Envoy flushes the file log asynchronously
        lines = [json.loads(line) for line in gateway.access_log.read_text().splitlines() if line]
        entry = next((e for e in lines if e["request_id"] == rid), None)
        if entry or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert entry is not None
    assert entry["method"] == "GET" and entry["path"] == f"/api/v1/tenants/{KNOWN_TENANT}"
    assert entry["grpc_method"] == "/sentinel.tenant.v1.TenantService/GetTenant"
    assert entry["response_code"] == 200 and entry["grpc_status"] == 0
    assert entry["upstream_cluster"] == "tenant" and entry["tenant_id"] == KNOWN_TENANT


async def test_native_grpc_through_the_edge(gateway: Gateway) -> None:
    async with grpc.aio.insecure_channel(gateway.grpc_target) as channel:
        stub = tenant_service_pb2_grpc.TenantServiceStub(channel)
        token = (("authorization", f"Bearer {sign(gateway.key)}"),)
        reply = await stub.GetTenant(tenant_service_pb2.GetTenantRequest(id=KNOWN_TENANT), metadata=token)
        assert reply.tenant.slug == "acme"

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetTenant(tenant_service_pb2.GetTenantRequest(id=str(uuid.uuid4())), metadata=token)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

        # Envoy's own local replies reach gRPC clients as a gRPC status, not JSON.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetTenant(tenant_service_pb2.GetTenantRequest(id=KNOWN_TENANT))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert err.value.details() == "Jwt is missing"  # plain text, not the REST JSON body

        # An unknown service or method: UNIMPLEMENTED, as from a gRPC server.
        unknown: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/sentinel.nope.v1.Nope/Nope")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await unknown(b"", metadata=token)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED

        # Internal methods are not reachable from outside, even with a token that would pass.
        append = audit_service_pb2_grpc.AuditServiceStub(channel).AppendEvents
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await append(audit_service_pb2.AppendEventsRequest(), metadata=token)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED

        # Health needs no token.
        check = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert check.status == health_pb2.HealthCheckResponse.SERVING

        # Public RPCs need no token over gRPC either.
        jwks = await user_service_pb2_grpc.AuthServiceStub(channel).GetJwks(user_service_pb2.GetJwksRequest())
        assert jwks.keys[0].kid == KID
