"""The edge with TLS and a full CORS configuration: real Envoy, self-signed certificate made here.

Same in-test backend as tests/unit/test_gateway.py (tenant lookups, JWKS, grpc.health).
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from sentinel.gateway import envoy as gw
from sentinel.tenant.v1 import tenant_service_pb2, tenant_service_pb2_grpc

from tests.support import envoy_binary, free_port
from tests.unit.test_gateway import APP_ORIGIN, KNOWN_TENANT, fake_backend, running_envoy, sign

CORS_HEADERS = ("authorization", "content-type", "x-trace-tag")


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A P-256 certificate for localhost and 127.0.0.1, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "edge.crt", directory / "edge.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return cert_file, key_file


@dataclass
class TlsGateway:
    https_url: str
    http_url: str
    tls_port: int
    cert: Path
    key: Ed25519PrivateKey

    @property
    def trust(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))

    def bearer(self) -> dict[str, str]:
        return {"authorization": f"Bearer {sign(self.key)}"}


@pytest.fixture(scope="module")
async def edge(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TlsGateway]:
    envoy = envoy_binary()
    tmp = tmp_path_factory.mktemp("edge")
    key = Ed25519PrivateKey.generate()
    async with fake_backend(key) as backend:
        cert, cert_key = self_signed(tmp)
        port, tls_port = free_port(), free_port()
        cfg = gw.GatewayConfig(
            upstreams={b: f"127.0.0.1:{backend}" for b in gw.BACKENDS},
            descriptor_set_path=gw.write_descriptor_set(tmp / "sentinel.pb"),
            listen_port=port, admin_port=free_port(), tls_port=tls_port, tls_cert_file=cert, tls_key_file=cert_key,
            cors_allowed_origins=(APP_ORIGIN,), cors_allow_credentials=True, cors_allow_methods=("GET", "POST"),
            cors_allow_headers=CORS_HEADERS, cors_max_age_seconds=120, access_log_path=str(tmp / "access.log"),
        )
        conf = tmp / "envoy.yaml"
        conf.write_text(gw.render_yaml(cfg))
        edge = TlsGateway(f"https://127.0.0.1:{tls_port}", f"http://127.0.0.1:{port}", tls_port, cert, key)
        async with running_envoy(envoy, conf, tmp, edge.https_url, edge.bearer(), verify=edge.trust):
            yield edge


async def test_https_serves_the_api_with_hsts(edge: TlsGateway) -> None:
    async with httpx.AsyncClient(base_url=edge.https_url, verify=edge.trust, timeout=5) as http:
        r = await http.get(f"/api/v1/tenants/{KNOWN_TENANT}", headers=edge.bearer())
    assert r.status_code == 200, r.text
    assert r.json()["tenant"]["slug"] == "acme"
    assert r.headers["strict-transport-security"] == gw.HSTS
    for name, value in gw.SECURITY_HEADERS.items():
        assert r.headers[name] == value, name
    for leaked in (*gw.GRPC_ONLY_RESPONSE_HEADERS, "server", "x-envoy-upstream-service-time"):
        assert leaked not in r.headers, leaked
    assert r.headers["x-request-id"]


async def test_plain_http_redirects_to_https(edge: TlsGateway) -> None:
    async with httpx.AsyncClient(base_url=edge.http_url, timeout=5) as http:
        for method, path in (("GET", "/api/v1/health?verbose=1"), ("POST", "/api/v1/auth/login")):
            r = await http.request(method, path)
            assert r.status_code == 301, r.text
            assert r.headers["location"] == f"https://127.0.0.1:{edge.tls_port}{path}"
            assert "strict-transport-security" not in r.headers  # never over plain HTTP
            assert r.headers["x-content-type-options"] == "nosniff" and "server" not in r.headers
    # Following the redirect lands on the API (with a verified certificate). The client drops the
    # token on the way (another origin), so the API asks for one: proof it was the HTTPS listener.
    async with httpx.AsyncClient(verify=edge.trust, follow_redirects=True, timeout=5) as http:
        r = await http.get(f"{edge.http_url}/api/v1/tenants/{KNOWN_TENANT}", headers=edge.bearer())
    assert str(r.url).startswith(edge.https_url) and r.history[0].status_code == 301
    assert r.status_code == 401 and r.json()["code"] == 16
    assert r.headers["strict-transport-security"] == gw.HSTS


async def test_an_untrusted_client_cannot_be_fooled(edge: TlsGateway) -> None:
    """The certificate is checked: a client trusting only the system CAs refuses this one."""
    async with httpx.AsyncClient(timeout=5) as http:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await http.get(f"{edge.https_url}/api/v1/health")


async def test_native_grpc_over_tls(edge: TlsGateway) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=edge.cert.read_bytes())
    async with grpc.aio.secure_channel(f"localhost:{edge.tls_port}", credentials) as channel:
        reply = await tenant_service_pb2_grpc.TenantServiceStub(channel).GetTenant(
            tenant_service_pb2.GetTenantRequest(id=KNOWN_TENANT), metadata=tuple(edge.bearer().items()))
    assert reply.tenant.id == KNOWN_TENANT


async def test_cors_preflight_follows_the_configuration(edge: TlsGateway) -> None:
    preflight = {"access-control-request-method": "POST", "access-control-request-headers": "authorization,x-trace-tag"}
    async with httpx.AsyncClient(base_url=edge.https_url, verify=edge.trust, timeout=5) as http:
        r = await http.options("/api/v1/tenants", headers={"origin": APP_ORIGIN, **preflight})
        assert r.status_code == 200, r.text
        assert r.headers["access-control-allow-origin"] == APP_ORIGIN
        assert r.headers["access-control-allow-credentials"] == "true"
        assert r.headers["access-control-allow-methods"] == "GET, POST"
        assert r.headers["access-control-allow-headers"].split(",") == list(CORS_HEADERS)
        assert r.headers["access-control-max-age"] == "120"
        # Preflights are answered at the edge: no token needed, nothing forwarded.
        for origin in ("https://evil.example", APP_ORIGIN + ".evil.example", APP_ORIGIN.upper()):
            r = await http.options("/api/v1/tenants", headers={"origin": origin, **preflight})
            assert "access-control-allow-origin" not in r.headers, origin
            assert "access-control-allow-credentials" not in r.headers, origin
        # The actual call: the browser may read the rate-limit and request-id headers.
        r = await http.get(f"/api/v1/tenants/{KNOWN_TENANT}", headers={"origin": APP_ORIGIN, **edge.bearer()})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == APP_ORIGIN
        exposed = r.headers["access-control-expose-headers"].split(",")
        assert {"x-request-id", "retry-after", "ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"} <= set(
            exposed)


def test_cors_refuses_credentials_for_every_origin(tmp_path: Path) -> None:
    cfg = gw.GatewayConfig(upstreams=gw.DEV_UPSTREAMS, descriptor_set_path=tmp_path / "x.pb",
                           cors_allowed_origins=("*",), cors_allow_credentials=True)
    with pytest.raises(ValueError, match="credentials"):
        gw.render(cfg)
    with pytest.raises(ValueError, match="both"):
        gw.render(gw.GatewayConfig(upstreams=gw.DEV_UPSTREAMS, descriptor_set_path=tmp_path / "x.pb",
                                   tls_cert_file=tmp_path / "c.pem"))


async def test_request_id_is_propagated_or_generated(edge: TlsGateway) -> None:
    async with httpx.AsyncClient(base_url=edge.https_url, verify=edge.trust, timeout=5) as http:
        mine = await http.get(f"/api/v1/tenants/{KNOWN_TENANT}", headers={**edge.bearer(), "x-request-id": "abc-123"})
        assert mine.status_code == 200 and mine.headers["x-request-id"] == "abc-123"
        # Envoy's own replies echo it too, in the header and the JSON body.
        refused = await http.get(f"/api/v1/tenants/{KNOWN_TENANT}", headers={"x-request-id": "abc-456"})
        assert refused.status_code == 401 and refused.headers["x-request-id"] == "abc-456"
        assert refused.json()["request_id"] == "abc-456"
        fresh = [(await http.get("/api/v1/nope", headers=edge.bearer())).headers["x-request-id"] for _ in range(2)]
    assert fresh[0] != fresh[1] and all(len(uuid.UUID(rid).hex) == 32 for rid in fresh)
