"""The Envoy config generator: contract coverage, the committed dev file, and real Envoy.

The last tests start the real Envoy binary in front of a tiny in-test gRPC backend (tenant
lookups, the JWKS, grpc.health) and check the edge behaviour through REST and native gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
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
    assert names == ["envoy.filters.http.cors", "sentinel.strict_json", "sentinel.probe.healthz",
                     "sentinel.probe.readyz", "envoy.filters.http.grpc_json_transcoder",
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
    from sentinel import cli

    out, pb = tmp_path / "envoy.yaml", tmp_path / "gw" / "sentinel.pb"
    ns = cli.build_parser().parse_args(["gateway", "render", "-o", str(out), "--descriptor-set", str(pb),
                                        "--write-descriptor-set"])
    assert ns.func(ns) == 0
    assert pb.stat().st_size > 0
    rendered = yaml.safe_load(out.read_text())
    assert _filter(rendered, "envoy.filters.http.grpc_json_transcoder")["proto_descriptor"] == str(pb)
    # The rest of the dev config stays (docs, the address-tier rate limits).
    assert _filter(rendered, "sentinel.edge_rate_limit.auth")["stat_prefix"] == "edge_ip_auth"

    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    ns = cli.build_parser().parse_args(["gateway", "render", "-o", str(out), "--tls-cert", str(cert),
                                        "--tls-key", str(key), "--tls-port", "9443", "--cors-origin",
                                        "https://a.example", "--cors-allow-credentials", "--no-rate-limit"])
    assert ns.func(ns) == 0
    rendered = yaml.safe_load(out.read_text())
    listeners = rendered["static_resources"]["listeners"]
    assert [lst["address"]["socket_address"]["port_value"] for lst in listeners] == [9443, 8000]
    assert "transport_socket" in listeners[0]["filter_chains"][0]
    assert not any(f["name"].startswith("sentinel.edge_rate_limit.") for f in _hcm(rendered)["http_filters"])
    cors = _hcm(rendered)["route_config"]["virtual_hosts"][0]["typed_per_filter_config"]["envoy.filters.http.cors"]
    assert cors["allow_credentials"] is True and cors["allow_origin_string_match"] == [{"exact": "https://a.example"}]


def test_cli_render_from_a_json_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--config FILE.json` (the NixOS module's build step): every GatewayConfig field, JSON out."""
    from sentinel import cli

    out_dir = tmp_path / "gw"
    config = {"upstreams": {"tenant": "10.0.0.1:50051", "user": ["10.0.0.2:50052", "10.0.0.3:50052"],
                            "audit": "10.0.0.4:50053", "scheduler": "10.0.0.5:50054"},
              "descriptor_set_path": str(out_dir / "sentinel.pb"), "docs_dir": str(out_dir / "docs"),
              "listen_host": "0.0.0.0", "listen_port": 80, "admin_port": 9911, "tls_cert_file": "/run/c.pem",
              "tls_key_file": "/run/k.pem", "tls_port": 443, "cors_allowed_origins": ["https://a.example"],
              "rate_limits": None, "access_log_path": "/var/log/envoy/access.log"}
    path = tmp_path / "gateway.json"
    path.write_text(json.dumps(config))
    cfg = gw.config_from_json(config)
    assert cfg.upstreams["user"] == ["10.0.0.2:50052", "10.0.0.3:50052"]
    assert (cfg.tls_cert_file, cfg.cors_allowed_origins, cfg.rate_limits) == (
        Path("/run/c.pem"), ("https://a.example",), None)
    args = ["gateway", "render", "--config", str(path), "--format", "json", "-o", str(tmp_path / "envoy.json"),
            "--write-descriptor-set", "--write-docs", "--docs-template", str(REPO / "gateway" / "docs" / "index.html")]
    assert cli.main(args) == 0
    assert json.loads((tmp_path / "envoy.json").read_text()) == json.loads(json.dumps(gw.render(cfg)))
    assert (out_dir / "sentinel.pb").stat().st_size > 0 and (out_dir / "docs" / "openapi.json").is_file()

    for bad, message in (({**config, "listen_prot": 1}, "unknown key(s) listen_prot"),
                         ({k: v for k, v in config.items() if k != "upstreams"}, "missing key(s) upstreams"),
                         ({**config, "listen_port": "80"}, "listen_port must be a JSON int"),
                         ({**config, "cors_allow_credentials": 1}, "cors_allow_credentials must be a JSON bool"),
                         ({**config, "admin_port": True}, "admin_port must be a JSON int"),
                         ({**config, "upstreams": {"tenant": 5}}, "upstreams must map each backend"),
                         ({**config, "tls_key_file": None}, "TLS needs both tls_cert_file and tls_key_file")):
        path.write_text(json.dumps(bad))
        capsys.readouterr()
        assert cli.main(["gateway", "render", "--config", str(path)]) == 2
        assert message in capsys.readouterr().err
    path.write_text(json.dumps({**config, "docs_dir": None}))
    assert cli.main(["gateway", "render", "--config", str(path), "--write-docs"]) == 2
    assert "--write-docs needs a docs directory" in capsys.readouterr().err


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


@contextlib.asynccontextmanager
async def fake_backend(key: Ed25519PrivateKey,
                       *more: Callable[[grpc.aio.Server], None]) -> AsyncIterator[int]:
    """An in-test gRPC backend on a free port (its port): tenant lookups, the JWKS for ``key``,
    grpc.health SERVING, and whatever ``more`` registers. Partial fakes: other RPCs answer
    UNIMPLEMENTED."""
    server = grpc.aio.server()
    tenant_service_pb2_grpc.add_TenantServiceServicer_to_server(FakeTenants(), server)  # type: ignore[abstract]
    user_service_pb2_grpc.add_AuthServiceServicer_to_server(FakeAuth(key), server)  # type: ignore[abstract]
    for register in more:
        register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    try:
        yield port
    finally:
        await server.stop(grace=None)


@pytest.fixture(scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    envoy = envoy_binary()
    tmp = tmp_path_factory.mktemp("gateway")
    key = Ed25519PrivateKey.generate()
    async with fake_backend(key) as backend_port:
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
        async with running_envoy(envoy, conf, tmp, gateway.base_url, gateway.bearer(sign(key))):
            yield gateway


@contextlib.asynccontextmanager
async def running_envoy(envoy: str, conf: Path, tmp: Path, base_url: str,
                        headers: dict[str, str], verify: ssl.SSLContext | bool = True) -> AsyncIterator[None]:
    """Envoy on ``conf`` for the block. Ready = listener up AND the self-served JWKS fetched (a
    request with a valid token passes). ``verify``: how to check an HTTPS ``base_url``."""
    log = (tmp / "envoy.log").open("w")
    proc = await asyncio.create_subprocess_exec(envoy, *gw.envoy_args(conf, log_level="warn"),
                                                stdout=log, stderr=subprocess.STDOUT)
    try:
        async with httpx.AsyncClient(timeout=2, verify=verify) as client:
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


# --------------------------------------------------------------------------- instances, retries, breakers

WRITE_SAFE_RETRY_ON = {"connect-failure", "refused-stream", "reset-before-request"}


def _two_user_instances(**kw: Any) -> gw.GatewayConfig:
    return gw.GatewayConfig(upstreams={**gw.DEV_UPSTREAMS, "user": ["127.0.0.1:50052", "127.0.0.1:50152"]},
                            descriptor_set_path=Path("/x.pb"), **kw)


def _cluster(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in cfg["static_resources"]["clusters"] if c["name"] == name)  # type: ignore[no-any-return]


def _endpoints(cluster: dict[str, Any]) -> list[tuple[str, int]]:
    return [(e["endpoint"]["address"]["socket_address"]["address"], e["endpoint"]["address"]["socket_address"]
             ["port_value"]) for group in cluster["load_assignment"]["endpoints"] for e in group["lb_endpoints"]]


def test_several_instances_get_one_endpoint_each() -> None:
    out = gw.render(_two_user_instances())
    user = _cluster(out, "user")
    assert user["type"] == "STATIC" and user["lb_policy"] == "ROUND_ROBIN"
    assert _endpoints(user) == [("127.0.0.1", 50052), ("127.0.0.1", 50152)]
    assert _endpoints(_cluster(out, "tenant")) == [("127.0.0.1", 50051)]  # a plain string: one instance
    # A single-element sequence renders exactly like the string.
    one = gw.render(gw.GatewayConfig(upstreams={**gw.DEV_UPSTREAMS, "user": ("127.0.0.1:50052",)},
                                     descriptor_set_path=Path("/x.pb")))
    assert _cluster(one, "user") == _cluster(gw.render(gw.GatewayConfig(
        upstreams=gw.DEV_UPSTREAMS, descriptor_set_path=Path("/x.pb"))), "user")
    # Names (and names mixed with IPs) are resolved by DNS, each endpoint on its own.
    named = gw.render(gw.GatewayConfig(
        upstreams={**gw.DEV_UPSTREAMS, "user": ["user-a.internal:5000", "10.0.0.7:5000"]},
        descriptor_set_path=Path("/x.pb")))
    user = _cluster(named, "user")
    assert user["type"] == "STRICT_DNS" and user["dns_lookup_family"] == "V4_PREFERRED"
    assert _endpoints(user) == [("user-a.internal", 5000), ("10.0.0.7", 5000)]
    for bad, match in (([], "no address"), (["127.0.0.1:1", "127.0.0.1:1"], "twice"), (["127.0.0.1"], "host:port")):
        with pytest.raises(ValueError, match=match):
            gw.render(gw.GatewayConfig(upstreams={**gw.DEV_UPSTREAMS, "user": bad}, descriptor_set_path=Path("/x.pb")))


def test_backend_clusters_have_circuit_breakers_outlier_detection_and_health_checks() -> None:
    out = gw.render(_two_user_instances())
    for name in gw.BACKENDS:
        cluster = _cluster(out, name)
        (thresholds,) = cluster["circuit_breakers"]["thresholds"]
        assert thresholds["priority"] == "DEFAULT", name
        for key in ("max_connections", "max_pending_requests", "max_requests"):
            assert isinstance(thresholds[key], int) and thresholds[key] > 0, (name, key)
        # A budget, not Envoy's default max_retries of 3: losing one of two instances puts half of
        # what is in flight into retry at once.
        budget = thresholds["retry_budget"]
        assert budget["budget_percent"]["value"] >= 50 and budget["min_retry_concurrency"] >= 10, name
        outlier = cluster["outlier_detection"]
        assert outlier["split_external_local_origin_errors"] is True, name
        for key in ("consecutive_5xx", "consecutive_gateway_failure", "consecutive_local_origin_failure"):
            assert outlier[key] >= 1 and outlier.get(f"enforcing_{key}", 100) == 100, (name, key)
        assert outlier["interval"] and outlier["base_ejection_time"], name
        # Of two instances one may be ejected (Envoy: ejected/hosts <= max_ejection_percent) ...
        assert 100 * 1 / 2 <= outlier["max_ejection_percent"] < 100, name
        (check,) = cluster["health_checks"]
        assert check["grpc_health_check"] == {"service_name": ""}, name
    # ... but the JWKS fetch (Envoy's own listener) is not a service cluster.
    assert "outlier_detection" not in _cluster(out, gw.JWKS_CLUSTER)


def test_reads_retry_on_another_instance() -> None:
    cfg = gw.render(_two_user_instances())
    reads = [rpc for rpc in contracts.rpcs() if not rpc.mutating and not rpc.streaming
             and rpc.policy.tenant_scope != policy_pb2.TENANT_SCOPE_INTERNAL]
    assert reads
    for rpc in reads:
        policy = _route_for(cfg, rpc.full_method)["route"]["retry_policy"]
        retry_on = set(policy["retry_on"].split(","))
        # An instance just killed: refused connections, resets of calls in flight, UNAVAILABLE.
        assert {"connect-failure", "refused-stream", "reset", "unavailable"} <= retry_on, rpc.full_method
        assert policy["num_retries"] >= 1 and policy["per_try_timeout"], rpc.full_method
        assert [p["name"] for p in policy["retry_host_predicate"]] == ["envoy.retry_host_predicates.previous_hosts"]
        assert policy["host_selection_retry_max_attempts"] >= 2, rpc.full_method


def test_writes_retry_only_where_nothing_reached_the_service() -> None:
    cfg = gw.render(_two_user_instances())
    vhost = _hcm(cfg)["route_config"]["virtual_hosts"][0]
    fallback = vhost["retry_policy"]  # applies to every route without its own policy
    assert set(fallback["retry_on"].split(",")) <= WRITE_SAFE_RETRY_ON
    assert "per_try_timeout" not in fallback and "retriable_status_codes" not in fallback
    assert "retry_host_predicate" in fallback  # a refused write goes to the other instance
    writes = [rpc for rpc in contracts.rpcs() if (rpc.mutating or rpc.streaming)
              and rpc.policy.tenant_scope != policy_pb2.TENANT_SCOPE_INTERNAL]
    assert writes
    for rpc in writes:
        route = _route_for(cfg, rpc.full_method)["route"]
        policy = route.get("retry_policy", fallback)
        assert set(policy["retry_on"].split(",")) <= WRITE_SAFE_RETRY_ON, rpc.full_method
        assert "retriable_status_codes" not in policy and "retriable_headers" not in policy, rpc.full_method
        assert not policy.get("hedge_policy") and not route.get("hedge_policy"), rpc.full_method


def test_envoy_validates_several_instances(tmp_path: Path) -> None:
    from sentinel.gateway import schema

    cfg = gw.GatewayConfig(upstreams={**gw.DEV_UPSTREAMS, "user": ["127.0.0.1:50052", "127.0.0.1:50152"]},
                           descriptor_set_path=gw.write_descriptor_set(tmp_path / "sentinel.pb"))
    schema.check(gw.render(cfg))  # strict xds-protos parse: every new field exists and is typed right
    envoy = envoy_binary()
    conf = tmp_path / "envoy.yaml"
    conf.write_text(gw.render_yaml(cfg))
    proc = subprocess.run([envoy, "--mode", "validate", "-c", str(conf), "--disable-hot-restart",
                           "--log-level", "warn"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


class CountingTenants(FakeTenants):
    def __init__(self) -> None:
        self.calls = 0

    async def GetTenant(self, request: tenant_service_pb2.GetTenantRequest,
                        context: grpc.aio.ServicerContext[Any, Any]) -> tenant_service_pb2.GetTenantResponse:
        self.calls += 1
        await asyncio.sleep(0.005)  # calls are in flight when the instance goes away
        return await super().GetTenant(request, context)


async def test_reads_survive_losing_one_of_two_instances(tmp_path: Path) -> None:
    """Two tenant backends behind real Envoy; one stops abruptly mid-run: every read still succeeds."""
    envoy = envoy_binary()
    key = Ed25519PrivateKey.generate()
    servers, counters, ports = [], [], []
    for _ in range(2):
        server = grpc.aio.server()
        counter = CountingTenants()
        tenant_service_pb2_grpc.add_TenantServiceServicer_to_server(counter, server)  # type: ignore[abstract]
        user_service_pb2_grpc.add_AuthServiceServicer_to_server(FakeAuth(key), server)  # type: ignore[abstract]
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        servers.append(server)
        counters.append(counter)
    port, admin = free_port(), free_port()
    survivor = f"127.0.0.1:{ports[1]}"
    cfg = gw.GatewayConfig(upstreams={"tenant": [f"127.0.0.1:{p}" for p in ports], "user": survivor,
                                      "audit": survivor, "scheduler": survivor},
                           descriptor_set_path=gw.write_descriptor_set(tmp_path / "sentinel.pb"),
                           listen_port=port, admin_port=admin, access_log_path=str(tmp_path / "access.log"))
    conf = tmp_path / "envoy.yaml"
    conf.write_text(gw.render_yaml(cfg))
    base_url = f"http://127.0.0.1:{port}"
    auth = {"authorization": f"Bearer {sign(key)}"}
    statuses: list[int] = []
    try:
        async with running_envoy(envoy, conf, tmp_path, base_url, auth), \
                httpx.AsyncClient(base_url=base_url, timeout=5) as http:
            stop = asyncio.Event()

            async def reader() -> None:
                while not stop.is_set():
                    r = await http.get(f"/api/v1/tenants/{KNOWN_TENANT}", headers=auth)
                    statuses.append(r.status_code)
                    assert r.status_code != 200 or r.json()["tenant"]["slug"] == "acme"

            readers = [asyncio.create_task(reader()) for _ in range(8)]
            await asyncio.sleep(0.7)
            before = [c.calls for c in counters]
            await servers[0].stop(grace=None)  # abrupt: calls in flight are cut, the port closes
            killed_at = len(statuses)
            await asyncio.sleep(1.0)
            stop.set()
            await asyncio.gather(*readers)
            stats = (await http.get(f"http://127.0.0.1:{admin}/stats",
                                    params={"filter": r"^cluster\.tenant\.upstream_rq_retry"})).text
    finally:
        for server in servers:
            await server.stop(grace=None)
    assert all(b > 0 for b in before), before  # both instances served reads
    assert len(statuses) > killed_at > 0
    assert statuses.count(200) == len(statuses), {s: statuses.count(s) for s in set(statuses)}
    assert counters[1].calls > before[1]
    counts = {k: int(v) for k, _, v in (line.partition(": ") for line in stats.splitlines()) if v.isdigit()}
    # The reads cut or refused by the stopped instance were retried (on the other one), none dropped.
    assert counts["cluster.tenant.upstream_rq_retry"] > 0, stats
    assert counts["cluster.tenant.upstream_rq_retry_overflow"] == 0, stats


def test_probe_filters_answer_get_only_and_need_a_healthy_host_per_service() -> None:
    filters = {f["name"]: f["typed_config"] for f in _hcm(gw.render(gw.dev_config()))["http_filters"]}
    live, ready = filters["sentinel.probe.healthz"], filters["sentinel.probe.readyz"]
    for probe, path in ((live, "/healthz"), (ready, "/readyz")):
        assert probe["pass_through_mode"] is False
        assert {"name": ":path", "string_match": {"exact": path}} in probe["headers"]
        assert any(h["name"] == ":method" for h in probe["headers"])
    assert "cluster_min_healthy_percentages" not in live  # liveness asks nothing of the services
    shares = ready["cluster_min_healthy_percentages"]
    assert set(shares) == set(gw.BACKENDS)
    # Envoy truncates the share to whole percent: anything below 1 would always pass.
    assert all(v["value"] >= 1 and v["value"] == int(v["value"]) for v in shares.values())
