"""OpenAPI 3.1 description of the REST API Envoy serves, generated from the compiled descriptors.

Everything comes from :func:`sentinel.platform.contracts.rpcs` and the message/enum descriptors,
like the Envoy config, so the document cannot drift from what the transcoder accepts:

* one operation per ``google.api.http`` binding (``additional_bindings`` included), with the
  path template as Envoy matches it, path parameters (``{tenant.id}`` keeps its dotted name),
  query parameters for every request field the URL and body leave free (nested messages with
  dots, ``filter.action``), and the request body for ``body: "*"`` (minus the path fields) or
  ``body: "<field>"``;
* schemas in the proto3 JSON mapping exactly as Envoy prints it with this gateway's options
  (``preserve_proto_field_names``: snake_case names; int64/uint64 as strings; enums as names;
  ``Timestamp`` as an RFC 3339 string; ``Duration``/``FieldMask`` as strings; ``Struct`` as an
  object, ``Value`` as any JSON value; wrappers as their nullable scalar; bytes as base64);
  ``google.api.field_behavior`` gives ``readOnly`` (OUTPUT_ONLY), ``writeOnly`` (INPUT_ONLY) and
  ``required`` (REQUIRED); unknown JSON fields are refused (``additionalProperties: false``);
* ``google.api.HttpBody`` responses as their raw content type, server streams as Envoy's
  ``stream_newline_delimited`` output (one JSON message per line, labelled ``application/json``);
* security (a JWT or an API key; ``security: []`` for ``TENANT_SCOPE_PUBLIC``), the shared error
  response (``google.rpc.Status`` JSON from the services, Envoy's own ``{code, message,
  request_id}``) with the HTTP ↔ gRPC mapping, and each RPC's policy as ``x-sentinel-policy``.

Summaries and descriptions are the proto comments. The generated ``_pb2`` modules carry no
source info, so :func:`source_comments` compiles ``proto/`` with ``grpc_tools`` (a development
dependency) and uses the comments only for files whose structure matches the compiled
descriptors; without them (an installed wheel) the summary is the method name.

``python -m sentinel.gateway.openapi [-o FILE] [--docs-dir DIR]`` prints or writes the document;
:func:`write_docs` puts ``openapi.json`` and the docs page where Envoy serves them from
(``GatewayConfig.docs_dir``: ``GET /openapi.json`` and ``GET /docs``).
"""

from __future__ import annotations

import argparse
import base64
import copy
import functools
import hashlib
import importlib.metadata
import json
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from google.api import field_behavior_pb2
from google.protobuf import any_pb2, descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor, FileDescriptor
from google.rpc import code_pb2, error_details_pb2

from sentinel.gateway import envoy
from sentinel.platform import contracts
from sentinel.platform.apikeys import PREFIX as API_KEY_PREFIX
from sentinel.policy.v1 import policy_pb2

OPENAPI_VERSION = "3.1.0"
TITLE = "Sentinel API"

#: The docs page (self-contained HTML + JS; it fetches /openapi.json), in the repository. The
#: wheel ships ``services/sentinel`` alone: see :func:`docs_template`.
DOCS_TEMPLATE = Path(__file__).resolve().parents[3] / "gateway" / "docs" / "index.html"


def docs_template() -> Path:
    """The docs page: in the checkout this module lives in, else ``gateway/docs/index.html`` under the
    working directory (an installed package run from the repository, e.g. Nix's test build).
    :data:`DOCS_TEMPLATE` when neither exists (reading it then names the missing file)."""
    for candidate in (DOCS_TEMPLATE, Path.cwd() / "gateway" / "docs" / "index.html"):
        if candidate.is_file():
            return candidate
    return DOCS_TEMPLATE

_SCHEMAS = "#/components/schemas/"
_RESPONSES = "#/components/responses/"
_ANY_URL = "type.googleapis.com/"

#: HTTP statuses every operation documents with the shared error body; anything else
#: (408, 413, 431, 499, 501, 502, 504) is the ``default`` response.
ERROR_STATUSES: tuple[int, ...] = (400, 401, 403, 404, 409, 429, 500, 503)

#: gRPC code → HTTP status of a service error, as Envoy's ``convert_grpc_status`` maps it
#: (checked against Envoy 1.40). FAILED_PRECONDITION is 400, not 412 (google/rpc/code.proto).
GRPC_TO_HTTP: Mapping[str, int] = {
    "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "UNAUTHENTICATED": 401, "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501, "INTERNAL": 500,
    "UNAVAILABLE": 503, "DATA_LOSS": 500,
}

#: ``google.api.HttpBody`` responses: the content types the service may set (raw bytes).
HTTP_BODY_CONTENT_TYPES: Mapping[str, tuple[str, ...]] = {
    # Audit exports are NDJSON; tenant exports and user-import reports are JSON (scheduler.kinds).
    "/sentinel.scheduler.v1.SchedulerService/GetJobResult": ("application/x-ndjson", "application/json"),
}
#: Error details the services put in ``google.rpc.Status.details`` (ErrorInfo always first).
ERROR_DETAIL_TYPES: tuple[Descriptor, ...] = (
    error_details_pb2.ErrorInfo.DESCRIPTOR,
    error_details_pb2.BadRequest.DESCRIPTOR,
    error_details_pb2.RetryInfo.DESCRIPTOR,
)

_INT32 = {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
_UINT32 = {"type": "integer", "format": "uint32", "minimum": 0, "maximum": 2**32 - 1}
_INT64 = {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$",
          "description": "64-bit integer as a decimal string (proto3 JSON)."}
_UINT64 = {"type": "string", "format": "uint64", "pattern": "^[0-9]+$",
           "description": "Unsigned 64-bit integer as a decimal string (proto3 JSON)."}


def _float(fmt: str) -> dict[str, Any]:
    return {"anyOf": [{"type": "number", "format": fmt},
                      {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]}]}


_BYTES = {"type": "string", "format": "byte", "contentEncoding": "base64"}

_SCALARS: Mapping[int, Mapping[str, Any]] = {
    FieldDescriptor.TYPE_DOUBLE: _float("double"),
    FieldDescriptor.TYPE_FLOAT: _float("float"),
    FieldDescriptor.TYPE_INT64: _INT64,
    FieldDescriptor.TYPE_SINT64: _INT64,
    FieldDescriptor.TYPE_SFIXED64: _INT64,
    FieldDescriptor.TYPE_UINT64: _UINT64,
    FieldDescriptor.TYPE_FIXED64: _UINT64,
    FieldDescriptor.TYPE_INT32: _INT32,
    FieldDescriptor.TYPE_SINT32: _INT32,
    FieldDescriptor.TYPE_SFIXED32: _INT32,
    FieldDescriptor.TYPE_UINT32: _UINT32,
    FieldDescriptor.TYPE_FIXED32: _UINT32,
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: _BYTES,
}


def _nullable(schema: Mapping[str, Any]) -> dict[str, Any]:
    if "anyOf" in schema:
        return {"anyOf": [*schema["anyOf"], {"type": "null"}]}
    out = dict(schema)
    out["type"] = [schema["type"], "null"]
    return out


#: Well-known types with their own JSON form (schemas registered under their full name).
WELL_KNOWN: Mapping[str, Mapping[str, Any]] = {
    "google.protobuf.Timestamp": {
        "type": "string", "format": "date-time",
        "description": "RFC 3339 time. Envoy prints UTC with a `Z` and 0, 3, 6 or 9 fractional digits, "
                       "e.g. `2026-01-02T03:04:05.123Z`; offsets are accepted on input."},
    "google.protobuf.Duration": {
        "type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$",
        "description": "Seconds with up to 9 fractional digits and an `s` suffix, e.g. `1.5s`."},
    "google.protobuf.FieldMask": {
        "type": "string",
        "description": "Comma-separated field paths, e.g. `display_name,plan` (lowerCamelCase `displayName` "
                       "is accepted too)."},
    "google.protobuf.Struct": {"type": "object", "description": "Any JSON object."},
    "google.protobuf.Value": {"description": "Any JSON value."},
    "google.protobuf.ListValue": {"type": "array", "description": "Any JSON array."},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False, "maxProperties": 0},
    "google.protobuf.Any": {
        "type": "object", "required": ["@type"],
        "properties": {"@type": {"type": "string", "description": "`type.googleapis.com/<full message name>`"}},
        "description": "A message of any type: `@type` and that message's fields."},
    "google.protobuf.DoubleValue": _nullable(_float("double")),
    "google.protobuf.FloatValue": _nullable(_float("float")),
    "google.protobuf.Int64Value": _nullable(_INT64),
    "google.protobuf.UInt64Value": _nullable(_UINT64),
    "google.protobuf.Int32Value": _nullable(_INT32),
    "google.protobuf.UInt32Value": _nullable(_UINT32),
    "google.protobuf.BoolValue": {"type": ["boolean", "null"]},
    "google.protobuf.StringValue": {"type": ["string", "null"]},
    "google.protobuf.BytesValue": _nullable(_BYTES),
}
#: Well-known types a query parameter can carry (their JSON form is a single string/scalar).
QUERY_WELL_KNOWN = frozenset({
    "google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask",
    "google.protobuf.DoubleValue", "google.protobuf.FloatValue", "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value", "google.protobuf.Int32Value", "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue", "google.protobuf.StringValue", "google.protobuf.BytesValue",
})
HTTP_BODY = "google.api.HttpBody"
#: Deepest nesting of query parameters (``a.b.c``); the contracts use one level.
MAX_QUERY_DEPTH = 4


# --------------------------------------------------------------------------- proto comments


def _element_names(fdp: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    """Source-info path → full name of every service, method, message, field, enum and value."""
    names: dict[tuple[int, ...], str] = {(12,): f"file:{fdp.name}"}  # 12 = syntax: the header comment

    def enum(e: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], scope: str) -> None:
        full = f"{scope}.{e.name}"
        names[path] = full
        for i, v in enumerate(e.value):
            names[(*path, 2, i)] = f"{full}.{v.name}"

    def message(m: descriptor_pb2.DescriptorProto, path: tuple[int, ...], scope: str) -> None:
        full = f"{scope}.{m.name}"
        names[path] = full
        for i, f in enumerate(m.field):
            names[(*path, 2, i)] = f"{full}.{f.name}"
        for i, n in enumerate(m.nested_type):
            message(n, (*path, 3, i), full)
        for i, e in enumerate(m.enum_type):
            enum(e, (*path, 4, i), full)

    for i, m in enumerate(fdp.message_type):
        message(m, (4, i), fdp.package)
    for i, e in enumerate(fdp.enum_type):
        enum(e, (5, i), fdp.package)
    for i, s in enumerate(fdp.service):
        names[(6, i)] = f"{fdp.package}.{s.name}"
        for j, method in enumerate(s.method):
            names[(6, i, 2, j)] = f"{fdp.package}.{s.name}.{method.name}"
    return names


def _clean_comment(text: str) -> str:
    lines = [line[1:] if line.startswith(" ") else line for line in text.strip("\n").split("\n")]
    return "\n".join(lines).strip()


def _compiled_sources() -> descriptor_pb2.FileDescriptorSet | None:
    """``proto/`` compiled with source info, or None outside a checkout with grpcio-tools."""
    try:
        from grpc_tools import protoc

        from sentinel import protogen
    except ImportError:
        return None
    files = [str(p.relative_to(protogen.PROTO_ROOT)) for p in protogen.proto_files()]
    if not files:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sources.pb"
        args = ["protoc", *(f"-I{p}" for p in protogen.include_paths()), "--include_source_info",
                f"--descriptor_set_out={out}", *files]
        if protoc.main(args) != 0 or not out.exists():
            return None
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


@functools.cache
def source_comments() -> Mapping[str, str]:
    """Leading comments by full name (``sentinel.tenant.v1.TenantService.CreateTenant``,
    ``sentinel.tenant.v1.Tenant.id``, ``file:<name>`` for a file's header), from ``proto/``.

    A file's comments are used only when its compiled structure (every element's name and
    position) equals the runtime descriptor's, so a stale checkout cannot mislabel anything.
    Empty when the sources or grpcio-tools are not available.
    """
    compiled = _compiled_sources()
    if compiled is None:
        return {}
    runtime: dict[str, FileDescriptor] = {}
    for rpc in contracts.rpcs():
        stack = [rpc.service.file]
        while stack:
            fd = stack.pop()
            if fd.name not in runtime:
                runtime[fd.name] = fd
                stack.extend(fd.dependencies)
    out: dict[str, str] = {}
    for fdp in compiled.file:
        found = runtime.get(fdp.name)
        if found is None:
            continue
        live = descriptor_pb2.FileDescriptorProto()
        found.CopyToProto(live)
        names = _element_names(fdp)
        if names != _element_names(live):
            continue  # the sources differ from the generated modules: trust neither
        for loc in fdp.source_code_info.location:
            name = names.get(tuple(loc.path))
            if name and loc.leading_comments.strip():
                out[name] = _clean_comment(loc.leading_comments)
    return out


def _summary(comment: str, fallback: str) -> str:
    text = " ".join(comment.split())
    if not text:
        return fallback
    m = re.match(r"(.+?[.!?])(\s|$)", text)
    return m.group(1) if m else text


# --------------------------------------------------------------------------- schemas


def _behaviors(f: FieldDescriptor) -> set[int]:
    opts = f.GetOptions()
    return set(opts.Extensions[field_behavior_pb2.field_behavior])


def _message_type(f: FieldDescriptor) -> Descriptor:
    assert f.message_type is not None, f.full_name
    return f.message_type


def _enum_type(f: FieldDescriptor) -> EnumDescriptor:
    assert f.enum_type is not None, f.full_name
    return f.enum_type


def _is_map(f: FieldDescriptor) -> bool:
    return f.type == FieldDescriptor.TYPE_MESSAGE and bool(_message_type(f).GetOptions().map_entry)


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _SCHEMAS + name}


class _Schemas:
    """Collects ``components.schemas``: every message and enum reachable from the API."""

    def __init__(self, comments: Mapping[str, str]) -> None:
        self.comments = comments
        self.schemas: dict[str, Any] = {}

    def _describe(self, schema: dict[str, Any], full_name: str, extra: Sequence[str] = ()) -> dict[str, Any]:
        parts = [p for p in (self.comments.get(full_name, ""), *extra) if p]
        if parts:
            schema["description"] = "\n\n".join(parts)
        return schema

    def enum(self, e: EnumDescriptor) -> dict[str, Any]:
        if e.full_name not in self.schemas:
            lines = [f"* `{v.name}`" + (f": {' '.join(self.comments[c].split())}"
                                        if (c := f"{e.full_name}.{v.name}") in self.comments else "")
                     for v in e.values]
            self.schemas[e.full_name] = self._describe(
                {"type": "string", "enum": [v.name for v in e.values], "title": e.name}, e.full_name,
                ["Values (names on output; case-insensitive names or numbers accepted on input):\n" + "\n".join(lines)])
        return _ref(e.full_name)

    def message(self, d: Descriptor) -> dict[str, Any]:
        if d.full_name not in self.schemas:
            if d.full_name in WELL_KNOWN:
                self.schemas[d.full_name] = {"title": d.name, **copy.deepcopy(dict(WELL_KNOWN[d.full_name]))}
            else:
                self.schemas[d.full_name] = {}  # placeholder: recursive messages end here
                self.schemas[d.full_name] = self._message(d)
        return _ref(d.full_name)

    def _message(self, d: Descriptor, *, type_url: bool = False) -> dict[str, Any]:
        props: dict[str, Any] = {}
        required: list[str] = []
        if type_url:
            props["@type"] = {"const": _ANY_URL + d.full_name}
            required.append("@type")
        for f in d.fields:
            props[f.name] = self.property(f)
            if field_behavior_pb2.REQUIRED in _behaviors(f):
                required.append(f.name)
        schema: dict[str, Any] = {"type": "object", "title": d.name, "properties": props}
        if required:
            schema["required"] = required
        # Unknown fields are refused with 400 (sentinel.strict_json), and Envoy prints none.
        schema["additionalProperties"] = False
        groups = [[f.name for f in o.fields] for o in d.oneofs if len(o.fields) > 1]
        exclusive = [{"not": {"required": [a, b]}} for g in groups for i, a in enumerate(g) for b in g[i + 1:]]
        if exclusive:
            schema["allOf"] = exclusive
        extra = [f"Exactly one or none of: {', '.join(f'`{n}`' for n in g)} (oneof)." for g in groups]
        return self._describe(schema, d.full_name, extra)

    def packed(self, d: Descriptor) -> dict[str, Any]:
        """A message as it appears inside ``google.protobuf.Any`` (with ``@type``)."""
        if d.full_name not in self.schemas:
            self.schemas[d.full_name] = {}
            self.schemas[d.full_name] = self._message(d, type_url=True)
        return _ref(d.full_name)

    def value(self, f: FieldDescriptor) -> dict[str, Any]:
        """The JSON schema of one value of ``f`` (an element, for a repeated field)."""
        if f.type == FieldDescriptor.TYPE_ENUM:
            return self.enum(_enum_type(f))
        if f.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
            return self.message(_message_type(f))
        return copy.deepcopy(dict(_SCALARS[f.type]))

    def field(self, f: FieldDescriptor) -> dict[str, Any]:
        if _is_map(f):
            entry = _message_type(f)
            key, val = entry.fields_by_name["key"], entry.fields_by_name["value"]
            schema: dict[str, Any] = {"type": "object", "additionalProperties": self.value(val)}
            if key.type != FieldDescriptor.TYPE_STRING:
                key_schema = self.value(key)
                schema["propertyNames"] = ({"enum": ["true", "false"]} if key.type == FieldDescriptor.TYPE_BOOL
                                           else {"pattern": "^-?[0-9]+$"} if "pattern" not in key_schema
                                           else {"pattern": key_schema["pattern"]})
            return schema
        if f.is_repeated:
            return {"type": "array", "items": self.value(f)}
        return self.value(f)

    def property(self, f: FieldDescriptor) -> dict[str, Any]:
        schema = self.field(f)
        behaviors = _behaviors(f)
        notes = []
        if field_behavior_pb2.OUTPUT_ONLY in behaviors:
            schema["readOnly"] = True
            notes.append("Output only: set by the server (ignored or refused on input).")
        if field_behavior_pb2.INPUT_ONLY in behaviors:
            schema["writeOnly"] = True
            notes.append("Input only: never returned.")
        if field_behavior_pb2.IMMUTABLE in behaviors:
            notes.append("Immutable after creation.")
        if f.GetOptions().deprecated:
            schema["deprecated"] = True
        return self._describe(schema, f.full_name, notes)


# --------------------------------------------------------------------------- operations


def _path_fields(template: str) -> list[str]:
    """Field paths bound by a template: ``/api/v1/tenants/{tenant.id}`` → ``["tenant.id"]``."""
    return [m.group(1) for m in re.finditer(r"\{([^}=]+)(?:=[^}]*)?\}", template)]


def openapi_path(template: str) -> str:
    """``{name=pattern}`` → ``{name}``; everything else (``:suspend`` verbs) stays."""
    return re.sub(r"\{([^}=]+)=[^}]*\}", r"{\1}", template)


def _resolve(d: Descriptor, dotted: str) -> FieldDescriptor:
    f: FieldDescriptor | None = None
    for part in dotted.split("."):
        if f is not None:
            d = _message_type(f)
        f = d.fields_by_name[part]
    assert f is not None
    return f


def _query_params(schemas: _Schemas, d: Descriptor, bound: set[str], prefix: str = "",
                  depth: int = 0) -> Iterator[dict[str, Any]]:
    """Query parameters the transcoder binds: every field not bound by the path or body,
    nested messages flattened with dots. Maps, repeated messages, Struct/Value/Any are not bindable."""
    for f in d.fields:
        name = prefix + f.name
        if name in bound:
            continue
        behaviors = _behaviors(f)
        if field_behavior_pb2.OUTPUT_ONLY in behaviors:
            continue
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            full = _message_type(f).full_name
            if _is_map(f) or f.is_repeated:
                continue
            if full not in QUERY_WELL_KNOWN:
                if full in WELL_KNOWN or depth + 1 >= MAX_QUERY_DEPTH:
                    continue
                yield from _query_params(schemas, _message_type(f), bound, name + ".", depth + 1)
                continue
        param: dict[str, Any] = {"name": name, "in": "query", "schema": schemas.field(f)}
        description = schemas.comments.get(f.full_name, "")
        if description:
            param["description"] = description
        if field_behavior_pb2.REQUIRED in behaviors and not prefix:
            param["required"] = True
        if f.is_repeated:
            param["style"], param["explode"] = "form", True
        yield param


def _policy(rpc: contracts.Rpc) -> dict[str, Any]:
    p = rpc.policy
    return {
        "permission": p.permission or None,
        "tenant_scope": policy_pb2.TenantScope.Name(p.tenant_scope),
        "audit_action": p.audit_action or None,
        "idempotent": p.idempotent,
        "tenant_field": p.tenant_field or None,
    }


def _error_responses() -> dict[str, Any]:
    out: dict[str, Any] = {str(status): {"$ref": f"{_RESPONSES}Error{status}"} for status in ERROR_STATUSES}
    out["default"] = {"$ref": f"{_RESPONSES}Error"}
    return out


_REQUEST_ID_HEADER = {"x-request-id": {"description": "The request id Envoy assigned (also in the access log).",
                                       "schema": {"type": "string"}}}


def _success(schemas: _Schemas, rpc: contracts.Rpc) -> dict[str, Any]:
    out = rpc.method.output_type
    if out.full_name == HTTP_BODY:
        types = HTTP_BODY_CONTENT_TYPES.get(rpc.full_method, ("*/*",))
        return {"description": "The raw body (`google.api.HttpBody`), with the content type the service sets: "
                               + ", ".join(f"`{t}`" for t in types) + ".",
                "headers": _REQUEST_ID_HEADER,
                "content": {t: {"schema": {}} for t in types}}
    if rpc.method.server_streaming:
        item = schemas.message(out)
        return {"description": f"A stream of `{out.name}` messages, one JSON object per line (newline-delimited "
                               "JSON, written as the service sends them: Envoy's `stream_newline_delimited`). "
                               "Envoy labels the stream `application/json`; each line, not the whole body, is "
                               f"one `{out.full_name}`. An error before the first message is a normal error "
                               "response; one after it ends the stream.",
                "headers": _REQUEST_ID_HEADER,
                "content": {"application/json": {"x-itemSchema": item}}}
    return {"description": "OK", "headers": _REQUEST_ID_HEADER,
            "content": {"application/json": {"schema": schemas.message(out)}}}


def _operation(schemas: _Schemas, rpc: contracts.Rpc, rule: contracts.HttpRule, operation_id: str) -> dict[str, Any]:
    req = rpc.method.input_type
    comment = schemas.comments.get(rpc.method.full_name, "")
    path_fields = _path_fields(rule.path)
    params: list[dict[str, Any]] = []
    for name in path_fields:
        f = _resolve(req, name)
        param: dict[str, Any] = {"name": name, "in": "path", "required": True, "schema": schemas.field(f)}
        if schemas.comments.get(f.full_name):
            param["description"] = schemas.comments[f.full_name]
        params.append(param)
    if rule.body != "*":
        bound = set(path_fields)
        if rule.body:
            bound.add(rule.body)
        params += _query_params(schemas, req, bound)
    mutating_unary = rpc.mutating and not rpc.streaming
    if mutating_unary and "request_id" in req.fields_by_name:
        params.append({"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string"},
                       "description": "Same as `request_id`: a repeat within 24 h returns the first response; "
                                      "the same key with a different request is 409 (ABORTED)."})

    op: dict[str, Any] = {
        "operationId": operation_id,
        "tags": [rpc.service.name],
        "summary": _summary(comment, rpc.method.name),
    }
    notes = [comment] if comment else []
    notes.append(f"gRPC: `{rpc.full_method}`.")
    op["description"] = "\n\n".join(notes)
    if params:
        op["parameters"] = params
    if rule.body == "*":
        schema = schemas.message(req)
        top_level = {p for p in path_fields if "." not in p}
        if top_level:
            # The path's fields are not in the body (the gateway refuses them there).
            schema = copy.deepcopy(schemas.schemas[req.full_name])
            for name in top_level:
                schema["properties"].pop(name, None)
            if "required" in schema:
                schema["required"] = [r for r in schema["required"] if r not in top_level]
                if not schema["required"]:
                    del schema["required"]
            schema["title"] = f"{req.name} (body)"
        required_fields = any(field_behavior_pb2.REQUIRED in _behaviors(f) and f.name not in top_level
                              for f in req.fields)
        op["requestBody"] = {"required": required_fields,
                             "content": {"application/json": {"schema": schema}}}
    elif rule.body:
        f = req.fields_by_name[rule.body]
        op["requestBody"] = {"required": field_behavior_pb2.REQUIRED in _behaviors(f),
                             "description": f"The `{rule.body}` field of `{req.full_name}`.",
                             "content": {"application/json": {"schema": schemas.field(f)}}}
    op["responses"] = {"200": _success(schemas, rpc), **_error_responses()}
    op["security"] = [] if rpc.public else [{"bearerAuth": []}, {"apiKey": []}]
    op["x-grpc-method"] = rpc.full_method
    op["x-sentinel-policy"] = _policy(rpc)
    if rpc.method.GetOptions().deprecated:
        op["deprecated"] = True
    return op


def _rest_rpcs() -> list[contracts.Rpc]:
    """RPCs reachable over REST: a binding, and not internal (Envoy answers those with 404)."""
    return [rpc for rpc in contracts.rpcs()
            if rpc.http and rpc.policy.tenant_scope != policy_pb2.TENANT_SCOPE_INTERNAL]


# --------------------------------------------------------------------------- errors


def _code_schema() -> dict[str, Any]:
    code_enum = code_pb2.DESCRIPTOR.enum_types_by_name["Code"]
    values = sorted(code_enum.values, key=lambda v: v.number)
    rows = "\n".join(f"* `{v.number}` {v.name}" + (f" → HTTP {GRPC_TO_HTTP[v.name]}" if v.name in GRPC_TO_HTTP else "")
                     for v in values)
    return {"type": "integer", "title": "Code", "enum": [v.number for v in values],
            "description": "The gRPC status code (`google.rpc.Code`) as a number:\n" + rows}


def _error_schema(schemas: _Schemas) -> dict[str, Any]:
    for d in ERROR_DETAIL_TYPES:
        schemas.packed(d)
    known = [{"if": {"properties": {"@type": {"const": _ANY_URL + d.full_name}}, "required": ["@type"]},
              "then": _ref(d.full_name)} for d in ERROR_DETAIL_TYPES]
    any_ref = schemas.message(any_pb2.Any.DESCRIPTOR)
    return {
        "type": "object",
        "title": "Error",
        "required": ["code", "message"],
        "properties": {
            "code": _ref("google.rpc.Code"),
            "message": {"type": "string", "description": "Human-readable; not for programs (use `details`)."},
            "details": {
                "type": "array",
                "description": "From the services only (`google.rpc.Status.details`): `google.rpc.ErrorInfo` "
                               "(a stable `reason`) first, then `google.rpc.BadRequest` (every bad field) or "
                               "`google.rpc.RetryInfo` (with `Retry-After`).",
                "items": {"allOf": [any_ref, *known]},
            },
            "request_id": {"type": ["string", "null"],
                           "description": "From Envoy's own replies only: the `x-request-id` (null when Envoy "
                                          "refused the request before assigning one)."},
        },
        "additionalProperties": False,
        "description": "The JSON error body. Errors from the services are `google.rpc.Status` "
                       "(`code`, `message`, `details`; Envoy's `convert_grpc_status`); Envoy's own replies "
                       "(token missing or invalid, unknown path or query parameter, malformed JSON, body too "
                       "large, upstream unavailable, ...) are `code`, `message`, `request_id`.",
    }


def _mapping_table() -> str:
    rows = ["| HTTP | gRPC code (service errors) |", "|---|---|"]
    by_status: dict[int, list[str]] = {}
    for name, status in GRPC_TO_HTTP.items():
        by_status.setdefault(status, []).append(name)
    rows += [f"| {status} | {', '.join(names)} |" for status, names in sorted(by_status.items())]
    local = ["| HTTP | gRPC code in Envoy's own replies |", "|---|---|"]
    code_names = {v.number: v.name for v in code_pb2.DESCRIPTOR.enum_types_by_name["Code"].values}
    local += [f"| {status} | {code} {code_names[code]} |" for status, code in envoy.LOCAL_REPLY_GRPC_CODES.items()]
    local.append(f"| other ≥ 400 | {envoy.UNKNOWN_GRPC_CODE} {code_names[envoy.UNKNOWN_GRPC_CODE]} |")
    return "\n".join(rows) + "\n\n" + "\n".join(local)


def _responses(error_ref: dict[str, Any]) -> dict[str, Any]:
    reasons = {
        400: "Invalid request: bad field values (INVALID_ARGUMENT, `BadRequest` details), a failed precondition "
             "(FAILED_PRECONDITION, e.g. the tenant is suspended), OUT_OF_RANGE; or refused by Envoy (unknown "
             "query parameter or JSON field, malformed JSON, `%2F` in the path).",
        401: "UNAUTHENTICATED: missing, forged or expired token, or a bad API key.",
        403: "PERMISSION_DENIED: the role or key scopes lack the permission (or a token for another audience).",
        404: "NOT_FOUND: no such resource (or not visible to the caller), or no REST binding for the path.",
        409: "ALREADY_EXISTS, or ABORTED (stale `etag`, or an idempotency key reused for another request).",
        429: "RESOURCE_EXHAUSTED: throttled (with `Retry-After` and `RetryInfo`) or a plan limit reached.",
        500: "INTERNAL, UNKNOWN or DATA_LOSS.",
        503: "UNAVAILABLE: a service is down or overloaded.",
    }
    headers = {**_REQUEST_ID_HEADER,
               "retry-after": {"description": "Seconds to wait (429 from the login throttle).",
                               "schema": {"type": "string"}}}
    content = {"application/json": {"schema": error_ref}}
    out: dict[str, Any] = {f"Error{status}": {"description": text, "headers": headers, "content": content}
                           for status, text in reasons.items()}
    out["Error"] = {"description": "Any other error: 408/504 DEADLINE_EXCEEDED, 413/431 RESOURCE_EXHAUSTED (body or "
                                   "headers too large), 499 CANCELLED, 501 UNIMPLEMENTED, 502 UNAVAILABLE.",
                    "headers": headers, "content": content}
    return out


# --------------------------------------------------------------------------- document


def _version() -> str:
    try:
        return importlib.metadata.version("sentinel")
    except importlib.metadata.PackageNotFoundError:
        return "0"


INTRO = """\
REST/JSON API of Sentinel, served by Envoy's gRPC-JSON transcoder from the same contracts as the
native gRPC API (`proto/sentinel/**`). This document is generated from the compiled descriptors.

**JSON mapping** (proto3, as Envoy prints it): field names are the proto names (snake_case;
lowerCamelCase aliases are accepted on input); every scalar, enum and repeated field is always
present in responses, unset messages are omitted; 64-bit integers are decimal strings; enums are
their names (case-insensitive names or numbers accepted on input); times are RFC 3339 strings.
Unknown JSON fields and query parameters are refused with 400. Single resources come back
wrapped, e.g. `{"tenant": {...}}`.

**Authentication**: an EdDSA access token from `POST /api/v1/auth/login` as `Authorization: Bearer
<jwt>`, or an API key as `x-api-key: snt_...` or `Authorization: Bearer snt_...`. Operations with
`security: []` are public. `x-sentinel-policy` is each RPC's declared policy (permission, tenant
scope, audit action, idempotency).

**Idempotency**: mutating calls take `request_id` (or the `Idempotency-Key` header); a repeat within
24 hours returns the first response.

**Lists**: `page_size` (default 50, max 1000), opaque `page_token`, `next_page_token`.

**Errors**: a JSON body (`Error`) with the gRPC code; the HTTP status follows from it:

"""


def document(comments: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document (plain data). ``comments`` defaults to :func:`source_comments`."""
    comments = source_comments() if comments is None else comments
    schemas = _Schemas(comments)
    schemas.schemas["google.rpc.Code"] = _code_schema()
    error = _error_schema(schemas)
    schemas.schemas["Error"] = error

    paths: dict[str, dict[str, Any]] = {}
    tags: dict[str, dict[str, Any]] = {}
    used_ids: set[str] = set()
    for rpc in _rest_rpcs():
        svc = rpc.service
        if svc.name not in tags:
            text = comments.get(svc.full_name) or comments.get(f"file:{svc.file.name}", "")
            tags[svc.name] = {"name": svc.name, **({"description": text} if text else {}),
                              "x-grpc-service": svc.full_name}
        for i, rule in enumerate(rpc.http):
            base = f"{svc.name}_{rpc.method.name}"
            op_id = base if i == 0 else f"{base}_{rule.method}"
            n = 2
            while op_id in used_ids:
                op_id, n = f"{base}_{rule.method}{n}", n + 1
            used_ids.add(op_id)
            item = paths.setdefault(openapi_path(rule.path), {})
            method = rule.method.lower()
            if method in item:
                raise ValueError(f"{rule.method} {rule.path}: bound by {item[method]['x-grpc-method']} "
                                 f"and {rpc.full_method}")
            item[method] = _operation(schemas, rpc, rule, op_id)

    api_key_desc = (f"An API key of a service account (`{API_KEY_PREFIX}...`) in `x-api-key`; "
                    f"`Authorization: Bearer {API_KEY_PREFIX}...` works the same. The services verify it.")
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": TITLE,
            "version": _version(),
            "description": INTRO + _mapping_table(),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "/", "description": "This gateway (Envoy)"}],
        "tags": list(tags.values()),
        "security": [{"bearerAuth": []}, {"apiKey": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                               "description": "Access token from `POST /api/v1/auth/login` (EdDSA/Ed25519 JWT, "
                                              "10 minutes; keys at `/.well-known/jwks.json`). Envoy verifies it "
                                              "and every service verifies it again."},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key", "description": api_key_desc},
            },
            "responses": _responses(_ref("Error")),
            "schemas": dict(sorted(schemas.schemas.items())),
        },
    }


def render_json(doc: Mapping[str, Any] | None = None) -> str:
    return json.dumps(document() if doc is None else doc, indent=1, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------- docs page


def _inline(tag: str, html: str) -> str:
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
    if len(blocks) != 1:
        raise ValueError(f"the docs page must have exactly one inline <{tag}> (found {len(blocks)})")
    return str(blocks[0])


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def docs_csp(template: Path | None = None) -> str:
    """The docs page's Content-Security-Policy: its one inline script and style by hash, fetches to
    this origin only, nothing else (no CDN, fonts, frames, forms or base URI)."""
    html = (template or docs_template()).read_text(encoding="utf-8")
    return (f"default-src 'none'; script-src {_sha256(_inline('script', html))}; "
            f"style-src {_sha256(_inline('style', html))}; connect-src 'self'; img-src 'self' data:; "
            "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


def _write(path: Path, data: bytes) -> None:
    if len(data) > envoy.MAX_DOCS_BYTES:
        raise ValueError(f"{path.name}: {len(data)} bytes, over Envoy's direct-response limit {envoy.MAX_DOCS_BYTES}")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)  # atomic, like the descriptor set


def write_docs(directory: Path, *, template: Path | None = None) -> tuple[Path, Path]:
    """Write ``openapi.json`` and the docs page (``index.html``) for ``GatewayConfig.docs_dir``."""
    html = (template or docs_template()).read_bytes()
    directory.mkdir(parents=True, exist_ok=True)
    spec, page = directory / envoy.OPENAPI_FILE, directory / envoy.DOCS_FILE
    _write(spec, render_json().encode())
    _write(page, html)
    return spec, page


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sentinel.gateway.openapi",
                                     description="Print or write the OpenAPI 3.1 document of the REST API.")
    parser.add_argument("-o", "--output", type=Path, help="write the document here (default: stdout)")
    parser.add_argument("--docs-dir", type=Path,
                        help=f"also write {envoy.OPENAPI_FILE} and {envoy.DOCS_FILE} there (GatewayConfig.docs_dir, "
                             f"e.g. {envoy.DEV_DESCRIPTOR_SET_PATH.parent})")
    ns = parser.parse_args(argv)
    text = render_json()
    if ns.output:
        ns.output.write_text(text, encoding="utf-8")
    elif not ns.docs_dir:
        sys.stdout.write(text)
    if ns.docs_dir:
        for path in write_docs(ns.docs_dir):
            print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
