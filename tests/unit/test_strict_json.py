"""The strict-JSON Lua filter: schema generation from the contracts, and behaviour in real Envoy.

Envoy's grpc_json_transcoder drops unknown JSON keys (envoyproxy/envoy#46623);
``sentinel.gateway.strict_json`` renders a Lua filter placed before it that answers 400
instead. The second half starts the real Envoy binary (Lua filter → transcoder → router) in
front of an in-test gRPC TenantService that records what it receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import time
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from google.protobuf import descriptor_pb2, descriptor_pool
from sentinel.gateway import strict_json as sj
from sentinel.platform import contracts
from sentinel.tenant.v1 import tenant_pb2, tenant_service_pb2, tenant_service_pb2_grpc

from tests.support import envoy_binary, free_port

TENANT_ID = "0190f6b4-8a5e-7c3d-9f1a-2b3c4d5e6f70"


# --------------------------------------------------------------------------- schema


def _route(full_method: str, method: str) -> sj.Route:
    matches = [r for r in sj.routes() if r.full_method == full_method and r.method == method]
    assert len(matches) == 1, matches
    return matches[0]


def _names_and_json_names(desc: Any, exclude: Collection[str] = ()) -> set[str]:
    return {n for f in desc.fields if f.name not in exclude for n in (f.name, f.json_name)}


def test_every_body_binding_has_a_route() -> None:
    expected = {(r.full_method, h.method, h.path) for r in contracts.rpcs() for h in r.http
                if h.body and h.method not in sj.SKIP_METHODS}
    got = {(r.full_method, r.method, r.template) for r in sj.routes()}
    assert got == expected
    assert not any(r.method in sj.SKIP_METHODS for r in sj.routes())


def test_create_tenant_body_star_is_the_request_message() -> None:
    route = _route("/sentinel.tenant.v1.TenantService/CreateTenant", "POST")
    request = tenant_service_pb2.CreateTenantRequest.DESCRIPTOR
    assert sj.allowed_keys(route.node) == _names_and_json_names(request)
    # Literal checks, independent of the descriptor walk.
    keys = sj.allowed_keys(route.node)
    assert {"slug", "display_name", "displayName", "plan", "request_id", "requestId"} <= keys
    assert "is_admin" not in keys and "isAdmin" not in keys and "id" not in keys
    assert route.node.allowed == ("display_name", "plan", "request_id", "slug")
    assert route.pattern == "^/api/v1/tenants$"


def test_update_tenant_body_field_is_that_message() -> None:
    for method in ("PATCH", "PUT"):
        route = _route("/sentinel.tenant.v1.TenantService/UpdateTenant", method)
        assert route.node.type_name == "sentinel.tenant.v1.Tenant"
        # The whole Tenant, "id" included although {tenant.id} binds it: the transcoder accepts
        # an equal value (a client PUTting back what it read) and rejects a different one.
        assert sj.allowed_keys(route.node) == _names_and_json_names(tenant_pb2.Tenant.DESCRIPTOR)
        assert {"id", "display_name", "displayName", "plan", "etag"} <= sj.allowed_keys(route.node)
        assert route.node.bound == ()
        assert "update_mask" not in sj.allowed_keys(route.node)  # a request field, not in the body
        # Timestamps are opaque: any JSON value, not descended into.
        assert route.node.keys["create_time"] is None and route.node.keys["createTime"] is None
        assert route.pattern == "^/api/v1/tenants/[^/]+$"


def test_path_fields_are_excluded_for_body_star() -> None:
    for route in sj.routes():
        rule = next(h for h in contracts.rpc_for(route.full_method).http  # type: ignore[union-attr]
                    if (h.method, h.path) == (route.method, route.template))
        if rule.body != "*":
            continue
        desc = contracts.rpc_for(route.full_method).method.input_type  # type: ignore[union-attr]
        top = {p.split(".")[0] for p in sj.path_fields(rule.path) if "." not in p}
        assert sj.allowed_keys(route.node) == _names_and_json_names(desc, top), route
    cancel = _route("/sentinel.scheduler.v1.SchedulerService/CancelJob", "POST")
    assert "id" not in sj.allowed_keys(cancel.node) and "etag" in sj.allowed_keys(cancel.node)
    assert cancel.node.bound == ("id",)
    assert cancel.pattern == "^/api/v1/jobs/[^/]+%:cancel$"


@pytest.mark.parametrize(("template", "pattern"), [
    ("/api/v1/tenants", "^/api/v1/tenants$"),
    ("/api/v1/tenants/{id}", "^/api/v1/tenants/[^/]+$"),
    ("/api/v1/tenants/{id}:suspend", "^/api/v1/tenants/[^/]+%:suspend$"),
    ("/api/v1/periodic-jobs/{name}:run", "^/api/v1/periodic%-jobs/[^/]+%:run$"),
    ("/v1/{name=projects/*/files/**}", "^/v1/projects/[^/]+/files/.*$"),
    ("/v1/a.b/*", "^/v1/a%.b/[^/]+$"),
])
def test_template_pattern(template: str, pattern: str) -> None:
    assert sj.template_pattern(template) == pattern


def _synthetic_rpc() -> contracts.Rpc:
    """A service whose request has nesting, a cycle, a map, a repeated message and a WKT."""
    from google.protobuf import struct_pb2, timestamp_pb2

    pool = descriptor_pool.DescriptorPool()
    for mod in (struct_pb2, timestamp_pb2):
        fdp = descriptor_pb2.FileDescriptorProto()
        mod.DESCRIPTOR.CopyToProto(fdp)
        pool.Add(fdp)
    f = descriptor_pb2.FileDescriptorProto(name="t.proto", package="t", syntax="proto3",
                                           dependency=["google/protobuf/struct.proto",
                                                       "google/protobuf/timestamp.proto"])
    t = descriptor_pb2.FieldDescriptorProto
    node = f.message_type.add(name="Node")
    node.field.add(name="label", number=1, type=t.TYPE_STRING, label=t.LABEL_OPTIONAL)
    node.field.add(name="child", number=2, type=t.TYPE_MESSAGE, type_name=".t.Node", label=t.LABEL_OPTIONAL)
    entry = node.nested_type.add(name="TagsEntry", options=descriptor_pb2.MessageOptions(map_entry=True))
    entry.field.add(name="key", number=1, type=t.TYPE_STRING, label=t.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=t.TYPE_MESSAGE, type_name=".t.Node", label=t.LABEL_OPTIONAL)
    node.field.add(name="tags", number=3, type=t.TYPE_MESSAGE, type_name=".t.Node.TagsEntry",
                   label=t.LABEL_REPEATED)
    node.field.add(name="items", number=4, type=t.TYPE_MESSAGE, type_name=".t.Node", label=t.LABEL_REPEATED)
    node.field.add(name="meta", number=5, type=t.TYPE_MESSAGE, type_name=".google.protobuf.Struct",
                   label=t.LABEL_OPTIONAL)
    node.field.add(name="when", number=6, type=t.TYPE_MESSAGE, type_name=".google.protobuf.Timestamp",
                   label=t.LABEL_OPTIONAL, json_name="at")
    req = f.message_type.add(name="Req")
    req.field.add(name="id", number=1, type=t.TYPE_STRING, label=t.LABEL_OPTIONAL)
    req.field.add(name="root", number=2, type=t.TYPE_MESSAGE, type_name=".t.Node", label=t.LABEL_OPTIONAL)
    svc = f.service.add(name="S")
    svc.method.add(name="M", input_type=".t.Req", output_type=".t.Req")
    pool.Add(f)
    service = pool.FindServiceByName("t.S")
    rules = (contracts.HttpRule("POST", "/v1/things/{id}", "*", ""),
             contracts.HttpRule("PATCH", "/v1/things/{root.label}", "root", ""))
    return contracts.Rpc(service, service.methods_by_name["M"], contracts.Policy(), rules)


def test_recursion_maps_repeated_and_well_known_types() -> None:
    rpc = _synthetic_rpc()
    by_method = {r.method: r for r in sj.routes([rpc])}
    star = by_method["POST"].node
    assert sj.allowed_keys(star) == {"root"}  # "id" comes from the path
    root = star.keys["root"]
    assert root is not None and root.type_name == "t.Node"
    # json_name is honoured (custom "at", not the default "when"); the proto name too.
    assert sj.allowed_keys(root) == {"label", "child", "tags", "items", "meta", "when", "at"}
    assert root.keys["child"] is root and root.keys["items"] is root  # cycle closed, arrays share it
    assert root.keys["tags"] is None and root.keys["meta"] is None and root.keys["at"] is None
    assert star.bound == ("id",)
    patched = by_method["PATCH"].node
    assert patched is root  # body "root": the whole Node, shared with the body-"*" schema
    # A nested path field under body "*" is excluded one level down.
    rules = (contracts.HttpRule("POST", "/v1/things/{root.label}", "*", ""),)
    nested = sj.routes([contracts.Rpc(rpc.service, rpc.method, rpc.policy, rules)])[0].node
    assert sj.allowed_keys(nested) == {"id", "root"}
    nroot = nested.keys["root"]
    assert nroot is not None and "label" not in sj.allowed_keys(nroot) and nroot.bound == ("label",)
    assert nroot.keys["child"] is not None and "label" in sj.allowed_keys(nroot.keys["child"])
    src = sj.lua_source(rpcs=[rpc])
    assert 'pattern = "^/v1/things/[^/]+$"' in src


def test_lua_filter_shape() -> None:
    f = sj.lua_filter(max_body_bytes=4096)
    assert f["name"] == "sentinel.strict_json"
    tc = f["typed_config"]
    assert tc["@type"] == "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
    src = tc["default_source_code"]["inline_string"]
    assert src == sj.lua_source(max_body_bytes=4096)
    assert "function envoy_on_request(handle)" in src and "local MAX_BODY = 4096" in src
    assert "__MAX" not in src


# --------------------------------------------------------------------------- real Envoy


#: Like the gateway's ``local_reply_config``: local replies → ``{"code", "message", "request_id"}``.
LOCAL_REPLY_CONFIG = {"mappers": [
    {"filter": {"status_code_filter": {"comparison": {"op": "EQ", "value": {"default_value": status,
                                                                          "runtime_key": f"t.{status}"}}}},
     "body_format_override": {"json_format": {"code": code, "message": "%LOCAL_REPLY_BODY%",
                                              "request_id": "%REQ(X-REQUEST-ID)%"},
                              "content_type": "application/json"}}
    for status, code in ((400, 3), (413, 8))
]}


def synthetic_bootstrap(*, port: int, admin_port: int) -> dict[str, Any]:
    """Only the Lua filter (schema of :func:`_synthetic_rpc`) and a 200 direct response.

    It has a JSON ``local_reply_config`` like the gateway, so the filter runs with
    ``local_reply_json=True`` (bare message; Envoy renders the JSON).
    """
    src = sj.lua_source(rpcs=[_synthetic_rpc()], max_body_bytes=4096, local_reply_json=True)
    lua = {"name": sj.FILTER_NAME, "typed_config": {
        "@type": sj.LUA_FILTER_TYPE, "default_source_code": {"inline_string": src}}}
    router = {"name": "envoy.filters.http.router",
              "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
    out = bootstrap(port=port, admin_port=admin_port, backend_port=1, descriptor=Path("unused"), strict=False)
    hcm = out["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"] = [lua, router]
    hcm["local_reply_config"] = LOCAL_REPLY_CONFIG
    hcm["route_config"]["virtual_hosts"][0]["routes"] = [
        {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "passed"}}}]
    return out


def bootstrap(*, port: int, admin_port: int, backend_port: int, descriptor: Path,
              strict: bool = True) -> dict[str, Any]:
    filters: list[dict[str, Any]] = [sj.lua_filter()] if strict else []
    filters.append({
        "name": "envoy.filters.http.grpc_json_transcoder",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
            "proto_descriptor": str(descriptor),
            "services": [s.full_name for s in contracts.services()],
            "print_options": {"preserve_proto_field_names": True, "always_print_primitive_fields": True},
            "auto_mapping": False,
            "convert_grpc_status": True,
            "request_validation_options": {"reject_unknown_method": True,
                                           "reject_unknown_query_parameters": True,
                                           "reject_binding_body_field_collisions": True},
        },
    })
    filters.append({"name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
    hcm = {
        "@type": ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                  ".HttpConnectionManager"),
        "stat_prefix": "ingress",
        "codec_type": "AUTO",
        "normalize_path": True,
        "merge_slashes": True,
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "backend", "timeout": "5s"}}]}]},
        "http_filters": filters,
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "ingress",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                "typed_config": hcm}]}],
            }],
            "clusters": [{
                "name": "backend",
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {"cluster_name": "backend", "endpoints": [{"lb_endpoints": [{"endpoint": {
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": backend_port}}}}]}]},
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}},
                    },
                },
            }],
        },
    }


@dataclass
class Recorder(tenant_service_pb2_grpc.TenantServiceServicer):
    calls: list[tuple[str, Any]] = field(default_factory=list)

    async def CreateTenant(self, request: tenant_service_pb2.CreateTenantRequest,
                           context: grpc.aio.ServicerContext[Any, Any]) -> tenant_service_pb2.CreateTenantResponse:
        self.calls.append(("CreateTenant", request))
        return tenant_service_pb2.CreateTenantResponse(tenant=tenant_pb2.Tenant(
            id=TENANT_ID, slug=request.slug, display_name=request.display_name, plan=request.plan))

    async def GetTenant(self, request: tenant_service_pb2.GetTenantRequest,
                        context: grpc.aio.ServicerContext[Any, Any]) -> tenant_service_pb2.GetTenantResponse:
        self.calls.append(("GetTenant", request))
        return tenant_service_pb2.GetTenantResponse(tenant=tenant_pb2.Tenant(id=request.id, slug="acme"))

    async def UpdateTenant(self, request: tenant_service_pb2.UpdateTenantRequest,
                           context: grpc.aio.ServicerContext[Any, Any]) -> tenant_service_pb2.UpdateTenantResponse:
        self.calls.append(("UpdateTenant", request))
        return tenant_service_pb2.UpdateTenantResponse(tenant=request.tenant)


@dataclass
class Edge:
    strict: str  # base URL with the Lua filter
    plain: str  # the same chain without it (for comparison / overhead)
    synthetic: str  # Lua filter only, schema of _synthetic_rpc(), 200 "passed" otherwise
    backend: Recorder
    logs: list[Path]


async def _start_envoy(envoy: str, conf: Path, log: Path) -> asyncio.subprocess.Process:
    args = [envoy, "-c", str(conf), "--base-id", str(random.randint(1_000, 2_000_000_000)),
            "--log-level", "warn", "--concurrency", "2"]
    with log.open("w") as out:
        return await asyncio.create_subprocess_exec(*args, stdout=out, stderr=subprocess.STDOUT)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout=5)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@pytest.fixture(scope="module")
async def edge(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Edge]:
    envoy = envoy_binary()
    tmp = tmp_path_factory.mktemp("strict_json")
    recorder = Recorder()  # type: ignore[abstract]  # partial fake: the rest answer UNIMPLEMENTED
    server = grpc.aio.server()
    tenant_service_pb2_grpc.add_TenantServiceServicer_to_server(recorder, server)
    backend_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    descriptor = tmp / "sentinel.pb"
    descriptor.write_bytes(contracts.file_descriptor_set().SerializeToString(deterministic=True))
    procs: list[asyncio.subprocess.Process] = []
    urls: list[str] = []
    logs: list[Path] = []
    try:
        for kind in ("strict", "plain", "synthetic"):
            port = free_port()
            conf, log = tmp / f"envoy-{kind}.yaml", tmp / f"envoy-{kind}.log"
            if kind == "synthetic":
                config = synthetic_bootstrap(port=port, admin_port=free_port())
            else:
                config = bootstrap(port=port, admin_port=free_port(), backend_port=backend_port,
                                   descriptor=descriptor, strict=kind == "strict")
            conf.write_text(yaml.safe_dump(config))
            procs.append(await _start_envoy(envoy, conf, log))
            urls.append(f"http://127.0.0.1:{port}")
            logs.append(log)
        async with httpx.AsyncClient(timeout=2) as client:
            deadline = time.monotonic() + 10
            for proc, url, log in zip(procs, urls, logs, strict=True):
                while True:
                    if proc.returncode is not None:
                        raise AssertionError(f"envoy exited {proc.returncode}: {log.read_text()}")
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(f"{url}/api/v1/tenants/{TENANT_ID}")).status_code == 200:
                            break
                    if time.monotonic() > deadline:
                        raise AssertionError(f"envoy not ready: {log.read_text()}")
                    await asyncio.sleep(0.05)
        recorder.calls.clear()
        yield Edge(urls[0], urls[1], urls[2], recorder, logs)
    finally:
        for proc in procs:
            await _stop(proc)
        await server.stop(grace=None)


@pytest.fixture
async def http(edge: Edge) -> AsyncIterator[httpx.AsyncClient]:
    edge.backend.calls.clear()
    async with httpx.AsyncClient(base_url=edge.strict, timeout=5) as client:
        yield client


def _json_post(body: str) -> dict[str, Any]:
    return {"content": body.encode(), "headers": {"content-type": "application/json"}}


async def test_valid_body_reaches_the_service(edge: Edge, http: httpx.AsyncClient) -> None:
    r = await http.post("/api/v1/tenants", json={"slug": "ok-slug", "display_name": "Acme", "plan": "TENANT_PLAN_FREE"})
    assert r.status_code == 200, r.text
    assert r.json()["tenant"]["slug"] == "ok-slug"
    [(name, req)] = edge.backend.calls
    assert name == "CreateTenant"
    assert (req.slug, req.display_name, req.plan) == ("ok-slug", "Acme", tenant_pb2.TENANT_PLAN_FREE)


async def test_unknown_top_level_key_is_400_and_never_forwarded(edge: Edge, http: httpx.AsyncClient) -> None:
    r = await http.post("/api/v1/tenants", json={"slug": "ok-slug", "display_name": "x", "is_admin": True})
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"code": 3, "message": 'unknown field "is_admin" in request body '
                                              "(allowed: display_name, plan, request_id, slug)"}
    assert edge.backend.calls == []


async def test_camel_case_known_key_is_accepted(edge: Edge, http: httpx.AsyncClient) -> None:
    r = await http.post("/api/v1/tenants", json={"slug": "camel", "displayName": "Camel Co", "requestId": "r1"})
    assert r.status_code == 200, r.text
    [(_, req)] = edge.backend.calls
    assert (req.display_name, req.request_id) == ("Camel Co", "r1")


async def test_escaped_key_is_decoded_before_the_check(edge: Edge, http: httpx.AsyncClient) -> None:
    r = await http.post("/api/v1/tenants", **_json_post(r'{"slug":"x","is\u005fadmin":true}'))
    assert r.status_code == 400, r.text
    assert r.json()["message"].startswith('unknown field "is_admin" in request body')
    # An escaped *known* key is known: "display\u005fname" is display_name.
    r = await http.post("/api/v1/tenants", **_json_post(r'{"slug":"esc","display\u005fname":"E\u00e9"}'))
    assert r.status_code == 200, r.text
    assert edge.backend.calls[-1][1].display_name == "E\u00e9"
    # Escapes inside *values* do not end the string early and hide the next key.
    for body in (r'{"slug":"a\"b","is_admin":1}', r'{"slug":"a\\","is_admin":1}', r'{"slug":"\u0022","is_admin":1}',
                 r'{"slug":"a\\b","is\u005fadmin":1}'):  # a backslash in a value, then an escaped key
        r = await http.post("/api/v1/tenants", **_json_post(body))
        assert r.status_code == 400 and '"is_admin"' in r.json()["message"], (body, r.text)
    # A key needing escapes in the reply stays valid JSON.
    r = await http.post("/api/v1/tenants", **_json_post(r'{"a\"b\\c\n\ud83d\ude00":1}'))
    assert r.status_code == 400, r.text
    # The key is shown JSON-escaped inside the message, so it is unambiguous.
    assert r.json()["message"].startswith('unknown field "a\\"b\\\\c\\n\U0001f600" in request body')
    assert len(edge.backend.calls) == 1


async def test_unknown_nested_key_in_patch_is_400(edge: Edge, http: httpx.AsyncClient) -> None:
    path = f"/api/v1/tenants/{TENANT_ID}"
    r = await http.patch(path, json={"display_name": "New", "is_admin": True})
    assert r.status_code == 400, r.text
    assert r.json() == {"code": 3, "message": 'unknown field "is_admin" in request body (allowed: '
                                              "audit_retention_days, create_time, delete_time, display_name, "
                                              "etag, id, plan, purge_time, slug, state, suspension_reason, "
                                              "update_time)"}
    r = await http.put(path + "?update_mask=displayName", json={"displayName": "New", "etag": "e1"})
    assert r.status_code == 200, r.text
    [(name, req)] = edge.backend.calls
    assert name == "UpdateTenant"
    assert (req.tenant.id, req.tenant.display_name, req.tenant.etag) == (TENANT_ID, "New", "e1")
    # A resource sent back as read, id included, is fine (the id equals the path's).
    r = await http.put(path, json={"id": TENANT_ID, "slug": "acme", "display_name": "Back"})
    assert r.status_code == 200, r.text
    # Timestamps are opaque to the check; the transcoder parses them.
    r = await http.patch(path, json={"create_time": "2024-01-01T00:00:00Z"})
    assert r.status_code == 200, r.text


async def test_path_bound_field_in_star_body_is_400(edge: Edge, http: httpx.AsyncClient) -> None:
    r = await http.post("/api/v1/jobs/j1:cancel", json={"id": "j1", "etag": "e"})
    assert r.status_code == 400, r.text
    assert r.json() == {"code": 3, "message": 'field "id" is bound by the URL path and must not be in the request body'}


async def test_lenient_syntax_the_transcoder_accepts_is_checked_too(edge: Edge, http: httpx.AsyncClient) -> None:
    # The transcoder's JSON parser accepts bare keys, single quotes and trailing commas (and
    # would silently drop is_admin); the filter's parser must not be stricter than that.
    for body in ('{slug: "x", is_admin: true}', "{'slug': 'x', 'is_admin': true}", '{"is_admin": 1,}'):
        r = await http.post("/api/v1/tenants", **_json_post(body))
        assert r.status_code == 400, (body, r.text)
        assert r.json()["message"].startswith('unknown field "is_admin"'), body
    r = await http.post("/api/v1/tenants", **_json_post("{slug: 'bare', 'display_name': \"B\",}"))
    assert r.status_code == 200, r.text
    [(_, req)] = edge.backend.calls
    assert (req.slug, req.display_name) == ("bare", "B")


async def test_form_content_type_is_still_checked(edge: Edge, http: httpx.AsyncClient) -> None:
    # curl -d sends application/x-www-form-urlencoded; the transcoder parses it as JSON anyway.
    body = b'{"slug":"form","display_name":"F","is_admin":true}'
    r = await http.post("/api/v1/tenants", content=body,
                        headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400 and "is_admin" in r.json()["message"], r.text
    r = await http.post("/api/v1/tenants", content=body.replace(b',"is_admin":true', b""),
                        headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, r.text
    assert edge.backend.calls[-1][1].slug == "form"


async def test_malformed_json_is_left_to_the_transcoder(edge: Edge, http: httpx.AsyncClient) -> None:
    for body in ('{"slug": "x",', '{"slug" "x"}', "not json", '{"slug": "x"}}'):
        r = await http.post("/api/v1/tenants", **_json_post(body))
        assert r.status_code == 400, (body, r.status_code, r.text)
    assert edge.backend.calls == []


async def test_too_deep_nesting_is_400(edge: Edge, http: httpx.AsyncClient) -> None:
    deep = '{"display_name":' + "[" * 40 + "]" * 40 + "}"
    r = await http.post("/api/v1/tenants", **_json_post(deep))
    assert r.status_code == 400 and r.json()["code"] == 3, r.text
    assert "nested deeper" in r.json()["message"]
    assert edge.backend.calls == []


async def test_reads_and_other_paths_are_unaffected(edge: Edge, http: httpx.AsyncClient) -> None:
    r = await http.get(f"/api/v1/tenants/{TENANT_ID}")
    assert r.status_code == 200, r.text
    assert r.json()["tenant"]["id"] == TENANT_ID
    # Query string and trailing slash do not hide a route from the check.
    r = await http.post("/api/v1/tenants/?x=1", json={"slug": "s", "is_admin": True})
    assert r.status_code == 400 and "is_admin" in r.text, r.text
    assert [c[0] for c in edge.backend.calls] == ["GetTenant"]


@pytest.mark.parametrize(("method", "path", "body", "expected"), [
    ("POST", "/v1/things/t1", {"root": {"label": "a", "child": {"child": {"label": "b"}}}}, None),
    ("POST", "/v1/things/t1", {"root": {"child": {"child": {"zz": 1}}}}, "root.child.child.zz"),
    ("POST", "/v1/things/t1", {"root": {"items": [{"label": "a"}, {"bad": 1}]}}, "root.items[1].bad"),
    # Maps, Struct and Timestamp values are not descended into; json_name "at" is known.
    ("POST", "/v1/things/t1", {"root": {"tags": {"any": {"zz": 1}}, "meta": {"zz": [1, {"y": 2}]},
                                        "at": "2024-01-01T00:00:00Z", "when": "x"}}, None),
    ("POST", "/v1/things/t1", {"id": "t1"}, "bound:id"),
    ("PATCH", "/v1/things/t1", {"label": "a", "items": [{"child": {"nope": True}}]}, "items[0].child.nope"),
    ("PATCH", "/v1/things/t1", {"label": "a", "meta": None, "child": None}, None),
    ("PUT", "/v1/things/t1", {"zz": 1}, None),  # no such binding: not checked
    ("POST", "/v1/things/t1/extra", {"zz": 1}, None),  # anchored pattern
])
async def test_nested_schema_through_envoy(edge: Edge, method: str, path: str, body: Any, expected: str | None) -> None:
    async with httpx.AsyncClient(base_url=edge.synthetic, timeout=5) as client:
        r = await client.request(method, path, json=body)
    if expected is None:
        assert (r.status_code, r.text) == (200, "passed")
    elif expected.startswith("bound:"):
        assert r.status_code == 400 and r.json()["message"].startswith(f'field "{expected[6:]}" is bound'), r.text
    else:
        assert r.status_code == 400, r.text
        assert r.json()["message"].startswith(f'unknown field "{expected}" in request body (allowed: '), r.text


async def test_local_reply_json_mode_is_rendered_by_envoy(edge: Edge) -> None:
    async with httpx.AsyncClient(base_url=edge.synthetic, timeout=5) as client:
        r = await client.post("/v1/things/t1", content=b'{"root": {"w\\u00e9\\"ird": 1}}',
                              headers={"x-request-id": "rid-1"})
    assert r.status_code == 400 and r.headers["content-type"] == "application/json", r.text
    assert r.json() == {"code": 3, "request_id": "rid-1", "message": (
        'unknown field "root.w\u00e9\\"ird" in request body '
        "(allowed: child, items, label, meta, tags, when)")}


async def test_synthetic_body_limit_and_depth(edge: Edge) -> None:
    async with httpx.AsyncClient(base_url=edge.synthetic, timeout=5) as client:
        r = await client.post("/v1/things/t1", content=b'{"root":{"label":"' + b"x" * 5000 + b'"}}')
        assert r.status_code == 413 and r.json()["code"] == 8, r.text
        assert r.json()["message"] == "request body larger than 4096 bytes"
        def nested(arrays: int) -> str:  # two objects + `arrays` arrays
            return '{"root":{"meta":' + "[" * arrays + "]" * arrays + "}}"

        r = await client.post("/v1/things/t1", content=nested(30))  # 32 levels: the limit
        assert (r.status_code, r.text) == (200, "passed")
        r = await client.post("/v1/things/t1", content=nested(31))
        assert r.status_code == 400 and "nested deeper than 32" in r.json()["message"], r.text
