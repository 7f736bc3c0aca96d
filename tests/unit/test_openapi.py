"""The OpenAPI 3.1 document: a real validator, coverage of the contracts, the JSON mapping, and
``/openapi.json`` + ``/docs`` served by a real Envoy (whose transcoded answers must match it).

The Envoy tests reuse test_gateway's fakes (tenant lookups, the JWKS) and add a scheduler and an
audit fake for the two special response kinds: a ``google.api.HttpBody`` download and a
server stream (NDJSON).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.api import httpbody_pb2
from sentinel.audit.v1 import audit_pb2, audit_service_pb2, audit_service_pb2_grpc
from sentinel.gateway import envoy as gw
from sentinel.gateway import openapi
from sentinel.platform import contracts
from sentinel.policy.v1 import policy_pb2
from sentinel.scheduler.v1 import scheduler_service_pb2, scheduler_service_pb2_grpc

from tests.support import envoy_binary, free_port
from tests.unit.test_gateway import KNOWN_TENANT, fake_backend, running_envoy, sign

SCHEMAS = "#/components/schemas/"


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return openapi.document()


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            yield path, method, op


def _op(doc: dict[str, Any], operation_id: str) -> dict[str, Any]:
    return next(op for _, _, op in _operations(doc) if op["operationId"] == operation_id)


def _schema(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return doc["components"]["schemas"][name]  # type: ignore[no-any-return]


def _params(op: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in op.get("parameters", []) if p["in"] == where}


def _validator(doc: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A JSON Schema 2020-12 validator for ``schema`` whose ``#/components/...`` refs resolve."""
    # Imported here: the Nix unit-test build has the runtime dependencies only.
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator
    return validator({**schema, "components": doc["components"]}, format_checker=validator.FORMAT_CHECKER)


def _assert_valid(doc: dict[str, Any], schema: dict[str, Any], instance: Any) -> None:
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in _validator(doc, schema).iter_errors(instance)]
    assert not errors, (errors, instance)


# --------------------------------------------------------------------------- the document


def test_document_validates_as_openapi_3_1(doc: dict[str, Any]) -> None:
    assert doc["openapi"] == "3.1.0"
    validator = pytest.importorskip("openapi_spec_validator").OpenAPIV31SpecValidator
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator(doc).iter_errors()]
    assert not errors, errors[:10]
    # What the CLI prints and Envoy serves is the same, as JSON.
    assert json.loads(openapi.render_json(doc)) == doc


def test_every_binding_is_an_operation_with_its_method_and_path(doc: dict[str, Any]) -> None:
    expected: dict[tuple[str, str], str] = {}
    for rpc in contracts.rpcs():
        for rule in rpc.http:
            if rpc.policy.tenant_scope != policy_pb2.TENANT_SCOPE_INTERNAL:
                expected[(rule.method.lower(), rule.path)] = rpc.full_method
    got = {(method, path): op["x-grpc-method"] for path, method, op in _operations(doc)}
    assert got == expected
    # additional_bindings are operations too (PATCH and PUT of UpdateTenant / UpdateUser).
    assert {"patch", "put"} <= set(doc["paths"]["/api/v1/tenants/{tenant.id}"])
    assert "/api/v1/tenants/{id}:suspend" in doc["paths"]
    ids = [op["operationId"] for _, _, op in _operations(doc)]
    assert len(ids) == len(set(ids))
    assert doc["paths"]["/api/v1/tenants"]["post"]["operationId"] == "TenantService_CreateTenant"
    assert doc["paths"]["/api/v1/tenants/{tenant.id}"]["put"]["operationId"] == "TenantService_UpdateTenant_PUT"
    tags = {t["name"]: t for t in doc["tags"]}
    for rpc in contracts.rpcs():
        if rpc.http and rpc.policy.tenant_scope != policy_pb2.TENANT_SCOPE_INTERNAL:
            assert tags[rpc.service.name]["x-grpc-service"] == rpc.service.full_name
    for _, _, op in _operations(doc):
        assert op["tags"] == [op["x-grpc-method"].split("/")[1].rsplit(".", 1)[1]]
        assert op["operationId"].startswith(op["tags"][0] + "_")


def test_path_parameters_match_the_templates(doc: dict[str, Any]) -> None:
    for path, _, op in _operations(doc):
        in_template = re.findall(r"\{([^}]+)\}", path)
        path_params = _params(op, "path")
        assert sorted(path_params) == sorted(in_template), path
        assert all(p["required"] for p in path_params.values())
    tenant_id = _params(_op(doc, "TenantService_UpdateTenant"), "path")["tenant.id"]
    assert tenant_id["schema"] == {"type": "string"}


def test_query_parameters_are_the_fields_the_url_and_body_leave_free(doc: dict[str, Any]) -> None:
    listing = _params(_op(doc, "AuditService_ListAuditEvents"), "query")
    assert {"tenant_id", "page_size", "page_token", "order", "filter.action", "filter.actor_id",
            "filter.outcome", "filter.start_time", "filter.end_time"} <= set(listing)
    assert listing["filter.outcome"]["schema"] == {"$ref": SCHEMAS + "sentinel.audit.v1.Outcome"}
    assert listing["filter.start_time"]["schema"] == {"$ref": SCHEMAS + "google.protobuf.Timestamp"}
    assert listing["page_size"]["schema"]["type"] == "integer"
    assert _params(_op(doc, "AuditService_VerifyAuditChain"), "query")["from_sequence"]["schema"]["type"] == "string"
    assert set(_params(_op(doc, "TenantService_GetTenant"), "query")) == set()
    assert set(_params(_op(doc, "TenantService_DeleteTenant"), "query")) == {"etag", "request_id"}
    # body: "user" -> the request's other fields are query parameters, not user.*
    assert set(_params(_op(doc, "UserService_UpdateUser"), "query")) == {"update_mask", "tenant_id", "request_id"}
    # body: "*" -> everything that is not in the path is in the body.
    for rpc in contracts.rpcs():
        for rule in rpc.http:
            if rule.body == "*":
                op = doc["paths"][rule.path][rule.method.lower()]
                assert not _params(op, "query"), op["operationId"]
    assert _params(_op(doc, "TenantService_CreateTenant"), "header")["Idempotency-Key"]["required"] is False
    assert "Idempotency-Key" not in _params(_op(doc, "AuthService_Login"), "header")  # exempt: no request_id


def test_request_bodies(doc: dict[str, Any]) -> None:
    create = _op(doc, "UserService_CreateUser")["requestBody"]
    assert create["required"] is True
    assert create["content"]["application/json"]["schema"] == {"$ref": SCHEMAS + "sentinel.user.v1.CreateUserRequest"}
    # body "*" with a path field: the body is the request minus {id} (the gateway refuses it there).
    suspend = _op(doc, "TenantService_SuspendTenant")["requestBody"]["content"]["application/json"]["schema"]
    assert "id" not in suspend["properties"] and suspend["required"] == ["reason"]
    assert suspend["additionalProperties"] is False
    resume = _op(doc, "TenantService_ResumeTenant")["requestBody"]
    assert resume["required"] is False  # nothing required once {id} is in the path: an empty body works
    update = _op(doc, "TenantService_UpdateTenant")["requestBody"]
    assert update["content"]["application/json"]["schema"] == {"$ref": SCHEMAS + "sentinel.tenant.v1.Tenant"}
    for _, method, op in _operations(doc):
        assert ("requestBody" in op) == (method in ("post", "put", "patch")), op["operationId"]


def test_json_mapping_as_envoy_prints_it(doc: dict[str, Any]) -> None:
    tenant = _schema(doc, "sentinel.tenant.v1.Tenant")
    props = tenant["properties"]
    assert set(props) >= {"id", "display_name", "create_time", "audit_retention_days"}  # snake_case
    assert props["id"]["readOnly"] is True and props["id"]["type"] == "string"
    assert "readOnly" not in props["display_name"]
    assert props["create_time"]["$ref"] == SCHEMAS + "google.protobuf.Timestamp" and props["create_time"]["readOnly"]
    assert props["state"]["$ref"] == SCHEMAS + "sentinel.tenant.v1.TenantState"
    assert props["audit_retention_days"]["type"] == "integer"
    assert tenant["additionalProperties"] is False
    assert "Immutable" in props["slug"]["description"]

    create_user = _schema(doc, "sentinel.user.v1.CreateUserRequest")
    assert create_user["properties"]["password"]["writeOnly"] is True
    assert set(create_user["required"]) == {"email", "password"}

    assert _schema(doc, "sentinel.user.v1.LoginResponse")["properties"]["expires_in"]["type"] == "string"
    assert _schema(doc, "sentinel.audit.v1.AuditEvent")["properties"]["sequence"]["format"] == "int64"
    assert _schema(doc, "google.protobuf.Timestamp")["format"] == "date-time"
    assert _schema(doc, "google.protobuf.Struct")["type"] == "object"
    assert _schema(doc, "google.protobuf.FieldMask")["type"] == "string"
    state = _schema(doc, "sentinel.tenant.v1.TenantState")
    assert state["type"] == "string"
    assert state["enum"] == ["TENANT_STATE_UNSPECIFIED", "TENANT_STATE_ACTIVE", "TENANT_STATE_SUSPENDED",
                             "TENANT_STATE_PENDING_DELETION", "TENANT_STATE_DELETED"]
    latency = _schema(doc, "sentinel.common.v1.ComponentHealth")["properties"]["latency_seconds"]
    _assert_valid(doc, latency, "NaN")
    _assert_valid(doc, latency, 0.25)
    # A oneof: one member or none, never two.
    item = {"$ref": SCHEMAS + "sentinel.audit.v1.ExportAuditEventsResponse"}
    _assert_valid(doc, item, {"checkpoint": {"tenant_id": "", "sequence": "2", "hash": "", "key_id": "",
                                             "signature": ""}})
    assert list(_validator(doc, item).iter_errors({"event": {}, "checkpoint": {}}))
    # Every message and enum a schema refers to is in components.
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(doc)))
    assert refs <= set(doc["components"]["schemas"])


def test_security_and_policy(doc: dict[str, Any]) -> None:
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    assert schemes["apiKey"]["in"] == "header" and schemes["apiKey"]["name"] == "x-api-key"
    assert "Bearer snt_" in schemes["apiKey"]["description"]
    by_method = {rpc.full_method: rpc for rpc in contracts.rpcs()}
    public = set()
    for _, _, op in _operations(doc):
        rpc = by_method[op["x-grpc-method"]]
        if rpc.public:
            public.add(rpc.method.name)
            assert op["security"] == [], op["operationId"]
        else:
            assert op["security"] == [{"bearerAuth": []}, {"apiKey": []}], op["operationId"]
        policy = op["x-sentinel-policy"]
        assert policy["tenant_scope"] == policy_pb2.TenantScope.Name(rpc.policy.tenant_scope)
        assert policy["permission"] == (rpc.policy.permission or None)
        assert policy["audit_action"] == (rpc.policy.audit_action or None)
        assert policy["idempotent"] is rpc.policy.idempotent
    assert {"Login", "RefreshToken", "GetHealth", "GetJwks", "AcceptInvitation"} <= public


def test_streams_and_http_bodies(doc: dict[str, Any]) -> None:
    export = _op(doc, "AuditService_ExportAuditEvents")["responses"]["200"]
    # Envoy's stream_newline_delimited labels the NDJSON stream application/json (checked below).
    assert list(export["content"]) == ["application/json"]
    assert export["content"]["application/json"]["x-itemSchema"] == {
        "$ref": SCHEMAS + "sentinel.audit.v1.ExportAuditEventsResponse"}
    assert "one JSON object per line" in export["description"]
    result = _op(doc, "SchedulerService_GetJobResult")["responses"]["200"]
    assert set(result["content"]) == {"application/x-ndjson", "application/json"}
    assert "google.api.HttpBody" not in doc["components"]["schemas"]


def test_error_responses_are_shared_and_mapped(doc: dict[str, Any]) -> None:
    for _, _, op in _operations(doc):
        responses = op["responses"]
        for status in ("400", "401", "403", "404", "409", "429", "500", "503"):
            assert responses[status] == {"$ref": f"#/components/responses/Error{status}"}, op["operationId"]
        assert responses["default"] == {"$ref": "#/components/responses/Error"}
    error = {"$ref": SCHEMAS + "Error"}
    _assert_valid(doc, error, {"code": 16, "message": "Jwt is missing", "request_id": "x"})
    _assert_valid(doc, error, {"code": 3, "message": "m", "request_id": None})
    _assert_valid(doc, error, {"code": 5, "message": "m", "details": [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "R", "domain": "d", "metadata": {}},
        {"@type": "type.googleapis.com/google.rpc.BadRequest",
         "field_violations": [{"field": "f", "description": "bad", "reason": ""}]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retry_delay": "3s"},
        {"@type": "type.googleapis.com/some.Other", "anything": 1}]})
    bad = list(_validator(doc, error).iter_errors({"code": 5, "message": "m", "details": [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": 1}]}))
    assert bad
    # The mapping Envoy applies (convert_grpc_status): FAILED_PRECONDITION is 400, never 412.
    assert openapi.GRPC_TO_HTTP["FAILED_PRECONDITION"] == 400 and 412 not in openapi.GRPC_TO_HTTP.values()
    assert "| 409 | ALREADY_EXISTS, ABORTED |" in doc["info"]["description"]


def test_summaries_come_from_the_proto_comments(doc: dict[str, Any]) -> None:
    comments = openapi.source_comments()
    if not comments:
        pytest.skip("proto sources or grpcio-tools not available: summaries are the method names")
    assert _op(doc, "TenantService_CreateTenant")["summary"] == "Creates a tenant."
    assert "ALREADY_EXISTS (slug taken)" in _op(doc, "TenantService_CreateTenant")["description"]
    assert _op(doc, "AuditService_GetAuditEvent")["summary"] == "GetAuditEvent"  # the RPC has no comment
    assert _schema(doc, "sentinel.tenant.v1.Tenant")["properties"]["id"]["description"].startswith("UUIDv7")
    # Without source info every summary is the method name; nothing is made up.
    bare = openapi.document(comments={})
    for _, _, op in _operations(bare):
        assert op["summary"] == op["x-grpc-method"].rsplit("/", 1)[1]
        assert op["description"] == f"gRPC: `{op['x-grpc-method']}`."


def test_cli_prints_and_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert openapi.main([]) == 0
    assert json.loads(capsys.readouterr().out)["openapi"] == "3.1.0"
    out = tmp_path / "api.json"
    assert openapi.main(["-o", str(out)]) == 0
    assert json.loads(out.read_text())["paths"]
    docs = tmp_path / "gw"
    assert openapi.main(["--docs-dir", str(docs)]) == 0
    assert json.loads((docs / gw.OPENAPI_FILE).read_text()) == json.loads(out.read_text())
    assert (docs / gw.DOCS_FILE).read_bytes() == openapi.docs_template().read_bytes()


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_docs_page_is_self_contained_and_its_csp_hashes_it() -> None:
    html = openapi.docs_template().read_text()
    # Offline: nothing is loaded from anywhere else (the one fetch is /openapi.json, same origin).
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", html)
    assert "@import" not in html and "url(" not in html
    assert not re.search(r"\son[a-z]+\s*=", html)  # no inline handlers (the CSP would block them)
    assert not re.search(r"<[a-z]+[^>]*\sstyle\s*=", html)  # no style attributes either
    assert "innerHTML" not in html  # text from the document is inserted as text
    script = re.search(r"<script>(.*?)</script>", html, re.S)
    style = re.search(r"<style>(.*?)</style>", html, re.S)
    assert script and style
    csp = dict(d.strip().split(" ", 1) for d in openapi.docs_csp().split(";"))
    assert csp == {
        "default-src": "'none'", "script-src": _hash(script.group(1)), "style-src": _hash(style.group(1)),
        "connect-src": "'self'", "img-src": "'self' data:", "frame-ancestors": "'none'", "base-uri": "'none'",
        "form-action": "'none'",
    }
    assert "fetch(\"/openapi.json\"" in html


def _route(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return next(r for r in hcm["route_config"]["virtual_hosts"][0]["routes"] if r["name"] == name)  # type: ignore[no-any-return]


def test_envoy_config_serves_both_paths_before_the_catch_alls() -> None:
    cfg = gw.render(gw.dev_config())
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    names = [r["name"] for r in routes]
    assert names[-4:] == ["openapi", "docs", "unknown_grpc", "rest"]
    for name, path, file in (("openapi", "/openapi.json", "openapi.json"), ("docs", "/docs", "index.html")):
        route = _route(cfg, name)
        assert route["match"]["path"] == path
        assert route["direct_response"]["body"]["filename"] == f".sentinel/gateway/{file}"
        assert route["typed_per_filter_config"]["envoy.filters.http.grpc_json_transcoder"] == {
            "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": True}
    assert hcm["route_config"]["max_direct_response_body_size_bytes"] >= len(openapi.render_json())
    assert hcm["route_config"]["most_specific_header_mutations_wins"] is True
    rules = [r for r in gw.jwt_rules() if r["match"].get("path") in ("/openapi.json", "/docs")]
    assert rules == [{"match": {"path": "/openapi.json"}}, {"match": {"path": "/docs"}}]
    # Without docs_dir neither route exists (and the route config is as before).
    plain = gw.render(replace(gw.dev_config(), docs_dir=None))
    plain_hcm = plain["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert not {"openapi", "docs"} & {r["name"] for r in plain_hcm["route_config"]["virtual_hosts"][0]["routes"]}
    assert "max_direct_response_body_size_bytes" not in plain_hcm["route_config"]


def test_envoy_validates_config_with_docs(tmp_path: Path) -> None:
    openapi.write_docs(tmp_path)
    cfg = gw.GatewayConfig(upstreams=gw.DEV_UPSTREAMS, descriptor_set_path=gw.write_descriptor_set(tmp_path / "s.pb"),
                           docs_dir=tmp_path)
    conf = tmp_path / "envoy.yaml"
    conf.write_text(gw.render_yaml(cfg))
    proc = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(conf), "--disable-hot-restart",
                           "--log-level", "warn"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- real Envoy

JOB_RESULT = b'{"event": {"sequence": "1"}}\n'


class FakeScheduler(scheduler_service_pb2_grpc.SchedulerServiceServicer):
    async def GetJobResult(self, request: scheduler_service_pb2.GetJobResultRequest,
                           context: grpc.aio.ServicerContext[Any, Any]) -> httpbody_pb2.HttpBody:
        return httpbody_pb2.HttpBody(content_type="application/x-ndjson", data=JOB_RESULT)


class FakeAudit(audit_service_pb2_grpc.AuditServiceServicer):
    async def VerifyAuditChain(self, request: audit_service_pb2.VerifyAuditChainRequest,
                               context: grpc.aio.ServicerContext[Any, Any],
                               ) -> audit_service_pb2.VerifyAuditChainResponse:
        return audit_service_pb2.VerifyAuditChainResponse(valid=True, events_checked=2**40,
                                                         head=audit_pb2.Checkpoint(sequence=7))

    async def ExportAuditEvents(self, request: audit_service_pb2.ExportAuditEventsRequest,
                                context: grpc.aio.ServicerContext[Any, Any]
                                ) -> AsyncIterator[audit_service_pb2.ExportAuditEventsResponse]:
        yield audit_service_pb2.ExportAuditEventsResponse(checkpoint=audit_pb2.Checkpoint(sequence=1))
        event = audit_pb2.AuditEvent(id="e1", sequence=1, action="user.create", outcome=audit_pb2.OUTCOME_SUCCESS)
        event.event_time.FromSeconds(1_700_000_000)
        event.diff.update({"email": "a@b.example", "nested": {"n": 1}})
        yield audit_service_pb2.ExportAuditEventsResponse(event=event)


@dataclass
class DocsGateway:
    base_url: str
    key: Ed25519PrivateKey
    docs_dir: Path

    def bearer(self) -> dict[str, str]:
        return {"authorization": f"Bearer {sign(self.key)}"}


@pytest.fixture(scope="module")
async def docs_gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DocsGateway]:
    """Like test_gateway's ``gateway`` fixture, with ``docs_dir`` set and two more fakes."""
    envoy = envoy_binary()
    tmp = tmp_path_factory.mktemp("docs-gateway")
    key = Ed25519PrivateKey.generate()
    def more(server: grpc.aio.Server) -> None:
        scheduler_service_pb2_grpc.add_SchedulerServiceServicer_to_server(FakeScheduler(), server)  # type: ignore[abstract]
        audit_service_pb2_grpc.add_AuditServiceServicer_to_server(FakeAudit(), server)  # type: ignore[abstract]

    async with fake_backend(key, more) as backend_port:
        docs_dir = tmp / "gateway"
        openapi.write_docs(docs_dir)
        port = free_port()
        cfg = gw.GatewayConfig(upstreams={b: f"127.0.0.1:{backend_port}" for b in gw.BACKENDS},
                               descriptor_set_path=gw.write_descriptor_set(docs_dir / "sentinel.pb"),
                               listen_port=port, admin_port=free_port(), access_log_path=str(tmp / "access.log"),
                               docs_dir=docs_dir)
        conf = tmp / "envoy.yaml"
        conf.write_text(gw.render_yaml(cfg))
        gateway = DocsGateway(f"http://127.0.0.1:{port}", key, docs_dir)
        async with running_envoy(envoy, conf, tmp, gateway.base_url, gateway.bearer()):
            yield gateway


@pytest.fixture
async def http(docs_gateway: DocsGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=docs_gateway.base_url, timeout=5) as client:
        yield client


def _common_headers(r: httpx.Response) -> None:
    for name in ("x-content-type-options", "x-frame-options", "referrer-policy", "cache-control",
                 "permissions-policy"):
        assert r.headers[name] == gw.SECURITY_HEADERS[name], name
    # Plain HTTP: no HSTS (RFC 6797 §7.2); the TLS tests check it over HTTPS.
    assert "strict-transport-security" not in r.headers
    assert "server" not in r.headers and r.headers["x-request-id"]


async def test_openapi_json_is_served_publicly(docs_gateway: DocsGateway, http: httpx.AsyncClient) -> None:
    r = await http.get("/openapi.json")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.content == (docs_gateway.docs_dir / gw.OPENAPI_FILE).read_bytes()
    assert r.json() == openapi.document()
    assert r.headers["content-security-policy"] == gw.SECURITY_HEADERS["content-security-policy"]
    _common_headers(r)
    # Public: a forged token changes nothing (no rule requires one here), HEAD works too.
    forged = {"authorization": f"Bearer {sign(Ed25519PrivateKey.generate())}"}
    assert (await http.get("/openapi.json", headers=forged)).status_code == 200
    head = await http.head("/openapi.json")
    assert head.status_code == 200 and head.headers["content-type"] == "application/json"
    # Only GET/HEAD: other methods reach the transcoder, which knows no such binding.
    r = await http.post("/openapi.json", json={})
    assert r.status_code == 404 and r.json()["code"] == 5, r.text


async def test_docs_page_is_served_with_a_strict_csp(http: httpx.AsyncClient) -> None:
    r = await http.get("/docs")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.content == openapi.docs_template().read_bytes()
    csp = r.headers["content-security-policy"]
    assert csp == openapi.docs_csp()
    # The hashes in the header are those of what was served.
    script = re.search(r"<script>(.*?)</script>", r.text, re.S)
    style = re.search(r"<style>(.*?)</style>", r.text, re.S)
    assert script and style
    assert f"script-src {_hash(script.group(1))};" in csp and f"style-src {_hash(style.group(1))};" in csp
    for directive in ("default-src 'none'", "connect-src 'self'", "img-src 'self' data:", "frame-ancestors 'none'",
                      "base-uri 'none'"):
        assert directive in csp
    _common_headers(r)
    assert (await http.get("/docs/")).status_code == 404  # exactly the two paths


async def test_transcoded_answers_match_the_document(docs_gateway: DocsGateway, http: httpx.AsyncClient) -> None:
    doc = (await http.get("/openapi.json")).json()

    def check(operation_id: str, r: httpx.Response) -> None:
        op = _op(doc, operation_id)
        key = str(r.status_code) if str(r.status_code) in op["responses"] else "default"
        response = op["responses"][key]
        if "$ref" in response:
            response = doc["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
        media = r.headers["content-type"].split(";")[0]
        assert media in response["content"], (operation_id, r.status_code, media)
        if "schema" in response["content"][media] and media == "application/json":
            _assert_valid(doc, response["content"][media]["schema"], r.json())

    auth = docs_gateway.bearer()
    check("TenantService_GetTenant", await http.get(f"/api/v1/tenants/{KNOWN_TENANT}", headers=auth))
    check("TenantService_GetTenant", await http.get("/api/v1/tenants/00000000-0000-7000-8000-00000000dead",
                                                    headers=auth))  # 404 from the service, with details
    check("TenantService_GetTenant", await http.get(f"/api/v1/tenants/{KNOWN_TENANT}"))  # Envoy's 401
    check("TenantService_GetTenant", await http.get(f"/api/v1/tenants/{KNOWN_TENANT}?bogus=1", headers=auth))  # 400
    check("TenantService_ListTenants", await http.get("/api/v1/tenants", headers=auth))  # 501 UNIMPLEMENTED: default
    check("AuthService_GetJwks", await http.get("/.well-known/jwks.json"))
    verify = await http.get("/api/v1/audit:verify?from_sequence=3", headers=auth)
    assert verify.json()["events_checked"] == str(2**40)  # int64 as a string, as documented
    check("AuditService_VerifyAuditChain", verify)

    result = await http.get("/api/v1/jobs/j1/result", headers=auth)
    assert result.status_code == 200 and result.content == JOB_RESULT
    check("SchedulerService_GetJobResult", result)

    export = await http.get("/api/v1/audit/events:export", headers=auth)
    assert export.status_code == 200
    media = _op(doc, "AuditService_ExportAuditEvents")["responses"]["200"]["content"]
    assert export.headers["content-type"] in media
    lines = export.text.splitlines()
    assert len(lines) == 2 and export.text.endswith("\n")
    item = media["application/json"]["x-itemSchema"]
    for line in lines:
        _assert_valid(doc, item, json.loads(line))
    event = json.loads(lines[1])["event"]
    assert event["event_time"] == "2023-11-14T22:13:20Z" and event["outcome"] == "OUTCOME_SUCCESS"
    assert event["diff"] == {"email": "a@b.example", "nested": {"n": 1}}
