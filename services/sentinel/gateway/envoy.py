"""Render Envoy's bootstrap (API v3) from the proto contracts.

One listener serves REST/JSON (``grpc_json_transcoder``) and native gRPC. The transcoder runs
*before* routing and ``jwt_authn`` and rewrites a REST request to its gRPC form
(``POST /<package>.<Service>/<Method>``, ``content-type: application/grpc``) and clears the
route cache, so a single set of routes and a single set of JWT rules, both keyed on gRPC
paths, cover both protocols. Everything here is derived from
:func:`sentinel.platform.contracts.rpcs`: adding an RPC needs no edit in this module.

The output is plain data (dicts/lists/str/int/bool) so callers can dump it as YAML or JSON,
and the NixOS module can run the same generator at build time.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from sentinel.gateway import strict_json
from sentinel.platform import contracts
from sentinel.platform.apikeys import PREFIX as API_KEY_PREFIX
from sentinel.policy.v1 import policy_pb2
from sentinel.ratelimit import rules as ratelimit_rules

#: Backends, in a stable order (cluster order in the rendered file).
BACKENDS: tuple[str, ...] = ("tenant", "user", "audit", "scheduler")

#: Proto packages whose second component is not itself a backend. ``sentinel.common.v1``
#: defines the public ``HealthService``; every service process serves it, and the tenant
#: process is the one that reports the platform (peers + database), so the edge sends it there.
PACKAGE_BACKEND_OVERRIDES: Mapping[str, str] = {"common": "tenant"}

#: Where ``gateway/envoy.dev.yaml`` expects the descriptor set, relative to Envoy's working
#: directory (the repository root in dev; ``sentinel gateway render`` writes it there).
DEV_DESCRIPTOR_SET_PATH = Path(".sentinel/gateway/sentinel.pb")

DEV_UPSTREAMS: Mapping[str, str] = {
    "tenant": "127.0.0.1:50051",
    "user": "127.0.0.1:50052",
    "audit": "127.0.0.1:50053",
    "scheduler": "127.0.0.1:50054",
}

JWT_PROVIDER = "sentinel"
#: Verified tokens each Envoy worker remembers (least recently used dropped first), and the
#: longest token it keeps (ours are ~600 bytes; longer ones are verified every time).
JWT_CACHE_SIZE = 10_000
JWT_CACHE_MAX_TOKEN_BYTES = 4096
JWKS_CLUSTER = "jwks"
#: Client addresses each Envoy keeps a rate-limit bucket for (least recently seen dropped first).
EDGE_TRACKED_ADDRESSES = 100_000
#: Added by the address-tier filters to the responses they refuse, renamed by the Lua filter.
EDGE_POLICY_HEADER = "x-sentinel-edge-policy"
MAX_REGEX_PROGRAM_SIZE = 10_000
HEALTH_PREFIX = "/grpc.health.v1.Health/"
#: The edge's own HTTP probes, answered by Envoy (``health_check`` filter): live while it runs;
#: ready while it is not draining and every service has at least one healthy instance.
LIVENESS_PATH = "/healthz"
READINESS_PATH = "/readyz"
UNREADY_MESSAGE = "not ready: a service has no instance passing its health check, or Envoy is draining"

#: The API description at the edge (public, GET/HEAD only), served by Envoy itself from the files
#: :func:`sentinel.gateway.openapi.write_docs` puts in ``GatewayConfig.docs_dir``.
OPENAPI_PATH = "/openapi.json"
DOCS_PATH = "/docs"
OPENAPI_FILE = "openapi.json"
DOCS_FILE = "index.html"
#: Envoy refuses a ``direct_response`` body over ``max_direct_response_body_size_bytes``
#: (default 4 KiB) when it loads the config; the OpenAPI document is far larger.
MAX_DOCS_BYTES = 4 << 20

#: Upstream timeouts. Unary calls get ``ROUTE_TIMEOUT`` (a client's smaller ``grpc-timeout``
#: wins); server-streaming calls have no total timeout and rely on the stream idle timeout.
ROUTE_TIMEOUT = "15s"
READ_PER_TRY_TIMEOUT = "5s"
STREAM_IDLE_TIMEOUT = "300s"

#: HTTP status of an Envoy-generated reply → the gRPC code put in its JSON body, so REST
#: clients see the same ``{"code": …}`` shape as errors coming from the services
#: (``convert_grpc_status``). 413 uses RESOURCE_EXHAUSTED: that is what gRPC itself returns
#: for an oversized message, so both protocols agree.
LOCAL_REPLY_GRPC_CODES: Mapping[int, int] = {
    400: 3,  # INVALID_ARGUMENT (e.g. unknown query parameter, bad JSON)
    401: 16,  # UNAUTHENTICATED (jwt_authn)
    403: 7,  # PERMISSION_DENIED
    404: 5,  # NOT_FOUND (no such REST path / route)
    408: 4,  # DEADLINE_EXCEEDED (request_timeout)
    413: 8,  # RESOURCE_EXHAUSTED (body larger than max_request_bytes)
    429: 8,  # RESOURCE_EXHAUSTED (rate limits)
    431: 8,  # RESOURCE_EXHAUSTED (headers too large)
    500: 13,  # INTERNAL
    502: 14,  # UNAVAILABLE
    503: 14,  # UNAVAILABLE (no healthy upstream, overload)
    504: 4,  # DEADLINE_EXCEEDED (upstream timeout)
}
UNKNOWN_GRPC_CODE = 2

#: Sent on HTTPS responses only (RFC 6797 §7.2: never over plain HTTP).
HSTS = "max-age=31536000; includeSubDomains"
SECURITY_HEADERS: Mapping[str, str] = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
    # An API has no use for any powerful browser feature.
    "permissions-policy": "accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), "
                          "microphone=(), payment=(), usb=(), interest-cohort=()",
    # API responses are per caller: never stored by browsers or shared caches.
    "cache-control": "no-store",
}

CORS_ALLOW_HEADERS = (
    "authorization", "content-type", "idempotency-key", "x-request-id", "x-api-key",
    "grpc-timeout", "x-grpc-web", "x-user-agent",
)
CORS_EXPOSE_HEADERS = ("x-request-id", "grpc-status", "grpc-message", "grpc-status-details-bin", "retry-after",
                       "ratelimit-limit", "ratelimit-remaining", "ratelimit-reset", "ratelimit-policy")

#: gRPC transport headers a REST client has no use for (the status is already the HTTP code
#: and the JSON body); native gRPC responses keep them.
GRPC_ONLY_RESPONSE_HEADERS = ("grpc-status", "grpc-message", "grpc-status-details-bin", "grpc-accept-encoding",
                              "grpc-encoding")

#: Appended to the strict-JSON Lua filter. It sits before the transcoder, so on the way back it
#: sees the transcoded response: anything that is not gRPC is REST (or an Envoy local reply).
#:
#: Rate-limit headers: the address tier (Envoy's local buckets) says ``x-ratelimit-*``, the
#: services' tenant and principal tiers ``ratelimit-*``. Clients get one set, ``RateLimit-*``
#: of the tightest counter: the edge's when it refused the call (it adds EDGE_POLICY_HEADER
#: then) or has fewer requests left, else the service's. An edge refusal also gets Retry-After.
REST_RESPONSE_LUA = """
local GRPC_ONLY = {__GRPC_ONLY__}
local function edge_rate_limit(headers)
  local limit = headers:get("x-ratelimit-limit")
  local remaining = headers:get("x-ratelimit-remaining")
  local reset = headers:get("x-ratelimit-reset")
  local policy = headers:get("__EDGE_POLICY__")
  for _, name in ipairs({"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "__EDGE_POLICY__"}) do
    headers:remove(name)
  end
  if limit == nil or remaining == nil then return end
  local theirs = tonumber(headers:get("ratelimit-remaining") or "")
  if policy == nil and theirs ~= nil and theirs <= tonumber(remaining) then return end
  headers:replace("ratelimit-limit", limit)
  headers:replace("ratelimit-remaining", remaining)
  if reset ~= nil then headers:replace("ratelimit-reset", reset) end
  if policy ~= nil then
    headers:replace("ratelimit-policy", policy)
    headers:replace("retry-after", reset or "1")
  else
    headers:remove("ratelimit-policy")  -- it described the service's counter
  end
end
function envoy_on_response(handle)
  local headers = handle:headers()
  headers:remove("x-envoy-upstream-healthchecked-cluster")  -- the probes' internal cluster name
  edge_rate_limit(headers)
  local ctype = headers:get("content-type")
  if ctype and string.find(string.lower(ctype), "^%s*application/grpc") then return end
  for _, name in ipairs(GRPC_ONLY) do headers:remove(name) end
end
""".replace("__GRPC_ONLY__", ", ".join(f'"{h}"' for h in GRPC_ONLY_RESPONSE_HEADERS)).replace(
    "__EDGE_POLICY__", EDGE_POLICY_HEADER)

_ANY = "type.googleapis.com/"


@dataclass(frozen=True)
class GatewayConfig:
    # backend name ("tenant", "user", "audit", "scheduler") -> "host:port", or a sequence of them
    # (several instances of the service: one endpoint each, round-robin, see _backend_cluster).
    upstreams: Mapping[str, str | Sequence[str]]
    descriptor_set_path: Path  # where write_descriptor_set() put the .pb
    listen_host: str = "127.0.0.1"
    listen_port: int = 8000
    admin_host: str = "127.0.0.1"
    admin_port: int = 9901
    jwt_issuer: str = "sentinel"
    jwt_audience: str = "sentinel-api"
    # "" => fetch from this Envoy's own listener: http://<listen_host>:<listen_port>/.well-known/jwks.json
    jwks_uri: str = ""
    # CORS: browsers on these origins may call the API (exact origins, e.g. "https://app.example.com").
    cors_allowed_origins: tuple[str, ...] = ()
    # Let browsers send cookies/HTTP auth cross-origin (Access-Control-Allow-Credentials). Bearer
    # tokens in the Authorization header do not need it, so it is off unless asked for.
    cors_allow_credentials: bool = False
    cors_allow_methods: tuple[str, ...] = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
    cors_allow_headers: tuple[str, ...] = CORS_ALLOW_HEADERS
    cors_max_age_seconds: int = 600
    max_request_bytes: int = 1 << 20
    access_log_path: str = "/dev/stdout"
    # Limits that rarely need changing; not part of the devstack contract.
    max_connections: int = 10_000
    # TLS at the edge: both files set => HTTPS on tls_port, and listen_port only redirects to it.
    tls_cert_file: Path | None = None  # PEM chain
    tls_key_file: Path | None = None
    tls_port: int = 8443
    # Rate limits (SENTINEL_RATE_LIMITS overrides, merged over sentinel.ratelimit.rules'
    # defaults): Envoy enforces their address tier; the services count the others. None: no
    # address limits at the edge.
    rate_limits: Mapping[str, Any] | None = None
    # Directory holding openapi.json and index.html (sentinel.gateway.openapi.write_docs): served
    # at /openapi.json and /docs. None: neither path exists (the transcoder answers 404).
    docs_dir: Path | None = None


    @property
    def tls_enabled(self) -> bool:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS needs both tls_cert_file and tls_key_file")
        return self.tls_cert_file is not None


def dev_config() -> GatewayConfig:
    """The configuration ``gateway/envoy.dev.yaml`` is rendered from (dev ports, §2)."""
    return GatewayConfig(upstreams=dict(DEV_UPSTREAMS), descriptor_set_path=DEV_DESCRIPTOR_SET_PATH,
                         docs_dir=DEV_DESCRIPTOR_SET_PATH.parent, rate_limits={})


#: GatewayConfig fields as JSON (``sentinel gateway render --config``, which the NixOS module runs at
#: build time): the JSON type each takes. Paths are strings; ``null`` where the field allows None.
_JSON_PATHS = ("descriptor_set_path", "tls_cert_file", "tls_key_file", "docs_dir")
_JSON_OPTIONAL = ("tls_cert_file", "tls_key_file", "docs_dir", "rate_limits")
_JSON_STRING_LISTS = ("cors_allowed_origins", "cors_allow_methods", "cors_allow_headers")
_JSON_REQUIRED = ("upstreams", "descriptor_set_path")


def config_from_json(data: object) -> GatewayConfig:
    """A :class:`GatewayConfig` from JSON data: an object whose keys are its field names.

    ``upstreams`` maps each backend to ``"host:port"`` or a list of them (one per instance), the
    paths are strings, the tuples are lists of strings. Unknown keys, missing required ones
    (``upstreams``, ``descriptor_set_path``) and wrong types are refused with a ValueError naming
    the key, so a typo in a deployment's options cannot silently fall back to a default.
    """
    if not isinstance(data, dict):
        raise ValueError("gateway config: expected a JSON object")
    known = {f.name: f for f in fields(GatewayConfig)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"gateway config: unknown key(s) {', '.join(unknown)}")
    missing = [k for k in _JSON_REQUIRED if k not in data]
    if missing:
        raise ValueError(f"gateway config: missing key(s) {', '.join(missing)}")
    values: dict[str, Any] = {}
    for key, value in data.items():
        if value is None and key in _JSON_OPTIONAL:
            values[key] = None
        elif key == "upstreams":
            if not isinstance(value, dict) or not all(
                    isinstance(v, str) or (isinstance(v, list) and all(isinstance(a, str) for a in v))
                    for v in value.values()):
                raise ValueError("gateway config: upstreams must map each backend to \"host:port\" or a list of them")
            values[key] = {name: v if isinstance(v, str) else list(v) for name, v in value.items()}
        elif key == "rate_limits":
            if not isinstance(value, dict):
                raise ValueError("gateway config: rate_limits must be a JSON object (SENTINEL_RATE_LIMITS) or null")
            ratelimit_rules.load(value)  # a bad key is named now, not when Envoy is started
            values[key] = value
        elif key in _JSON_STRING_LISTS:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"gateway config: {key} must be a list of strings")
            values[key] = tuple(value)
        else:
            default = known[key].default
            expected: type = str if key in _JSON_PATHS else type(default)
            # bool is an int subclass: 1 is not true and true is not 1 here.
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise ValueError(f"gateway config: {key} must be a JSON {expected.__name__}, not {value!r}")
            values[key] = Path(str(value)) if key in _JSON_PATHS else value
    return GatewayConfig(**values)


def response_body_bindings() -> list[str]:
    """RPCs whose REST binding sets ``response_body``.

    Envoy (up to at least 1.40) refuses to load a binding whose ``response_body`` names a field
    that is not ``google.api.HttpBody`` (envoyproxy/envoy#11136), so the contracts must not use
    it; REST returns the whole response message (e.g. ``{"tenant": {...}}``).
    """
    return [rpc.full_method for rpc in contracts.rpcs() if any(h.response_body for h in rpc.http)]


def write_descriptor_set(path: Path) -> Path:
    """Serialize the contracts' FileDescriptorSet (Sentinel + imports + google.rpc) for the transcoder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = contracts.file_descriptor_set().SerializeToString(deterministic=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)  # atomic: a running Envoy never reads half a file
    return path


# --------------------------------------------------------------------------- contract data


def backend_for(service_full_name: str) -> str:
    """``sentinel.user.v1.AuthService`` → ``user``: the package's second component."""
    parts = service_full_name.split(".")
    if len(parts) < 3 or parts[0] != "sentinel":
        raise ValueError(f"{service_full_name}: not a sentinel.<backend>.vN service")
    backend = PACKAGE_BACKEND_OVERRIDES.get(parts[1], parts[1])
    if backend not in BACKENDS:
        raise ValueError(f"{service_full_name}: no backend named {backend!r}")
    return backend


def service_names() -> list[str]:
    """Every Sentinel gRPC service, in contract order (the transcoder's ``services``)."""
    out: list[str] = []
    for rpc in contracts.rpcs():
        if rpc.service.full_name not in out:
            out.append(rpc.service.full_name)
    return out


def _retryable(rpc: contracts.Rpc) -> bool:
    # Only reads are retried: a retried write could apply twice (idempotency keys are
    # optional for clients), and a stream may already have delivered messages.
    return not rpc.mutating and not rpc.streaming


# --------------------------------------------------------------------------- helpers


def _any(type_name: str, **body: Any) -> dict[str, Any]:
    return {"@type": _ANY + type_name, **body}


def _split_host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{value!r}: expected host:port")
    return host.strip("[]"), int(port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _cluster_base(name: str, host: str, port: int, *more: tuple[str, int]) -> dict[str, Any]:
    """A round-robin cluster of ``host:port`` and any ``more`` (host, port) endpoints (instances)."""
    endpoints = [(host, port), *more]
    all_ips = all(_is_ip(h) for h, _ in endpoints)
    cluster: dict[str, Any] = {
        "name": name,
        # An IP needs no resolver; a name (NixOS, containers) is re-resolved continuously
        # (STRICT_DNS resolves every endpoint on its own, and takes IP literals too).
        "type": "STATIC" if all_ips else "STRICT_DNS",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket_address(h, p)}} for h, p in endpoints]}],
        },
    }
    if not all_ips:
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    return cluster


def _header(key: str, value: str) -> dict[str, Any]:
    return {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}


def _security_headers(tls: bool) -> list[dict[str, Any]]:
    headers = {**SECURITY_HEADERS, **({"strict-transport-security": HSTS} if tls else {})}
    return [_header(k, v) for k, v in headers.items()]


# --------------------------------------------------------------------------- pieces


def upstream_addresses(name: str, value: str | Sequence[str]) -> list[str]:
    """``GatewayConfig.upstreams[name]`` as a list of distinct, valid ``host:port`` (one per instance)."""
    addresses = [value] if isinstance(value, str) else list(value)
    if not addresses:
        raise ValueError(f"GatewayConfig.upstreams[{name!r}] has no address")
    for address in addresses:
        if not isinstance(address, str):
            raise ValueError(f"GatewayConfig.upstreams[{name!r}]: {address!r} is not a host:port string")
        _split_host_port(address)
    if len(set(addresses)) != len(addresses):
        raise ValueError(f"GatewayConfig.upstreams[{name!r}] lists an address twice: {addresses}")
    return addresses


def _circuit_breakers() -> dict[str, Any]:
    """Circuit breakers of every backend cluster, sized for a small deployment.

    Envoy counts them per cluster (all its hosts and workers together). A small deployment is a
    few instances per service, each with a database pool of 15 connections (10 + 5 overflow).

    - ``max_connections``: upstream HTTP/2 opens one connection per Envoy worker per host (more
      only past the service's concurrent-stream limit), so this caps a misbehaving pool, not
      load: room for 64 workers x 4 instances.
    - ``max_pending_requests``: requests waiting for a connection to be set up (HTTP/2 queues little).
    - ``max_requests``: in flight to the whole cluster. Past a few hundred, requests only queue for
      the instances' ~30 database connections; failing fast with 503 (UNAVAILABLE, which clients
      retry with backoff) beats piling up work that will miss its deadline. The benchmark runs 32.
    - retries: a ``retry_budget`` instead of a fixed ``max_retries`` (the budget replaces it):
      retries may add up to 50% of the requests in flight, at least 10 at a time. Losing one of
      two instances puts half of what is in flight into retry at once, which Envoy's default
      ``max_retries`` of 3 would turn into client-visible 503s (``upstream_rq_retry_overflow``);
      the budget still bounds a retry storm when every instance is failing.
    """
    return {"thresholds": [{
        "priority": "DEFAULT",
        "max_connections": 256,
        "max_pending_requests": 128,
        "max_requests": 512,
        "retry_budget": {"budget_percent": {"value": 50.0}, "min_retry_concurrency": 10},
    }]}


def _outlier_detection() -> dict[str, Any]:
    """Passive health of every backend cluster: an instance that stops answering is taken out of
    the rotation after a few failed calls, long before the active health check (2 x 5 s) notices.

    ``split_external_local_origin_errors``: failures Envoy sees itself (connection refused or timed
    out, reset) count towards ``consecutive_local_origin_failure``; ``consecutive_5xx`` and
    ``consecutive_gateway_failure`` count only answers the service sent (a gRPC status counts as its
    HTTP code: UNAVAILABLE 503, DEADLINE_EXCEEDED 504, INTERNAL/UNKNOWN/DATA_LOSS 500). Envoy
    enforces gateway failures only when told to (``enforcing_consecutive_gateway_failure`` defaults
    to 0).

    ``max_ejection_percent`` 50: of two instances one may be ejected (1/2 = 50%), never both; the
    only instance of a service is never ejected (100% > 50%). A successful active health check
    un-ejects a host at once (``successful_active_health_check_uneject_host``, on by default), so a
    restarted instance gets traffic again within one health-check interval; otherwise an ejection
    lasts ``base_ejection_time`` x the number of ejections (at most ``max_ejection_time``).
    """
    return {
        "split_external_local_origin_errors": True,
        "consecutive_local_origin_failure": 3,
        "enforcing_consecutive_local_origin_failure": 100,
        "consecutive_5xx": 5,
        "enforcing_consecutive_5xx": 100,
        "consecutive_gateway_failure": 5,
        "enforcing_consecutive_gateway_failure": 100,
        "interval": "5s",
        "base_ejection_time": "10s",
        "max_ejection_time": "120s",
        "max_ejection_percent": 50,
    }


def _backend_cluster(name: str, addresses: str | Sequence[str]) -> dict[str, Any]:
    (host, port), *more = [_split_host_port(a) for a in upstream_addresses(name, addresses)]
    cluster = _cluster_base(name, host, port, *more)
    cluster["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _any(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            explicit_http_config={"http2_protocol_options": {
                "connection_keepalive": {"interval": "30s", "timeout": "5s"},
            }},
            common_http_protocol_options={"idle_timeout": "300s"},
        ),
    }
    cluster["health_checks"] = [{
        "timeout": "1s",
        "interval": "5s",
        "interval_jitter": "1s",
        "unhealthy_threshold": 2,
        "healthy_threshold": 1,
        # "" is the whole process (every service sets it SERVING once it accepts calls).
        "grpc_health_check": {"service_name": ""},
    }]
    cluster["circuit_breakers"] = _circuit_breakers()
    cluster["outlier_detection"] = _outlier_detection()
    return cluster


def jwks_uri(cfg: GatewayConfig) -> str:
    if cfg.jwks_uri:
        return cfg.jwks_uri
    host = cfg.listen_host
    if host in ("0.0.0.0", "::", ""):  # a wildcard listener is reachable on loopback
        host = "127.0.0.1" if host != "::" else "::1"
    if ":" in host:
        host = f"[{host}]"
    if cfg.tls_enabled:  # the plain port only redirects
        return f"https://{host}:{cfg.tls_port}/.well-known/jwks.json"
    return f"http://{host}:{cfg.listen_port}/.well-known/jwks.json"


def _jwks_cluster(uri: str, trusted_ca: Path | None = None) -> dict[str, Any]:
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"jwks_uri {uri!r}: expected http(s)://host[:port]/path")
    tls = parts.scheme == "https"
    cluster = _cluster_base(JWKS_CLUSTER, parts.hostname, parts.port or (443 if tls else 80))
    if tls:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": _any("envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext", sni=parts.hostname,
                                 **({"common_tls_context": {"validation_context": {
                                     "trusted_ca": {"filename": str(trusted_ca)}}}} if trusted_ca else {})),
        }
    return cluster


def _route_action(cluster: str, *, streaming: bool = False, retry: bool = False) -> dict[str, Any]:
    action: dict[str, Any] = {"cluster": cluster}
    if streaming:
        # A server stream (audit export) may legitimately outlive any fixed timeout.
        action["timeout"] = "0s"
        action["idle_timeout"] = STREAM_IDLE_TIMEOUT
    else:
        action["timeout"] = ROUTE_TIMEOUT
        # Honour a shorter client deadline (grpc-timeout) but never exceed the route's.
        action["max_stream_duration"] = {"grpc_timeout_header_max": ROUTE_TIMEOUT}
    if retry:
        action["retry_policy"] = read_retry_policy()
    return action


#: Retry conditions under which no byte of the request reached the service, so that retrying is
#: safe for any RPC, writes included: the connection could not be made (``connect-failure``:
#: refused, e.g. an instance just killed, or timed out), the service refused the stream before
#: processing it (``refused-stream``: HTTP/2 REFUSED_STREAM, RFC 9113 8.7), or
#: the stream was reset before Envoy had sent any of it (``reset-before-request``, Envoy >= 1.31:
#: a pooled connection that died under it). Any other failure of a write (a reset after the request
#: went out, a timeout, UNAVAILABLE from the service) may come after the write was applied, so it
#: goes to the client, which can retry with its ``idempotency-key``.
CONNECTION_RETRY_ON: tuple[str, ...] = ("connect-failure", "refused-stream", "reset-before-request")
#: Reads are idempotent: besides the above, a reset at any point (the instance died mid-call) and
#: the gRPC statuses UNAVAILABLE and CANCELLED are retried, on another instance.
READ_RETRY_ON: tuple[str, ...] = (*CONNECTION_RETRY_ON, "reset", "unavailable", "cancelled")


def _retry_policy(retry_on: Iterable[str]) -> dict[str, Any]:
    return {
        "retry_on": ",".join(retry_on),
        "num_retries": 2,
        "retry_back_off": {"base_interval": "0.05s", "max_interval": "0.5s"},
        # A retry goes to another instance when there is one: the first attempt's host is
        # skipped (re-picked up to 3 times, then any host is taken, e.g. with one instance).
        "retry_host_predicate": [{
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": _any("envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"),
        }],
        "host_selection_retry_max_attempts": 3,
    }


def read_retry_policy() -> dict[str, Any]:
    """Route-level policy of every unary read (``_retryable``)."""
    return {**_retry_policy(READ_RETRY_ON), "per_try_timeout": READ_PER_TRY_TIMEOUT}


def connection_retry_policy() -> dict[str, Any]:
    """The virtual host's policy: every route without its own (writes, streams, health) retries
    only where nothing reached the service (``CONNECTION_RETRY_ON``). No per-try timeout: a
    write is never cut short to be tried again."""
    return _retry_policy(CONNECTION_RETRY_ON)


def _docs_routes(cfg: GatewayConfig) -> list[dict[str, Any]]:
    """``GET /openapi.json`` and ``GET /docs``: direct responses from the files in ``docs_dir``.

    The transcoder runs before routing and would answer these paths with 404 itself
    (``reject_unknown_method``), so it is disabled on these two routes (a route-level
    ``FilterConfig``); ``jwt_rules()`` lets them through without a token. Other methods fall
    through to the REST catch-all (the transcoder's 404).
    """
    if cfg.docs_dir is None:
        return []
    from sentinel.gateway import openapi  # imports this module

    pages = (
        ("openapi", OPENAPI_PATH, OPENAPI_FILE, {"content-type": "application/json"}),
        ("docs", DOCS_PATH, DOCS_FILE, {"content-type": "text/html; charset=utf-8",
                                        "content-security-policy": openapi.docs_csp()}),
    )
    return [{
        "name": name,
        "match": {"path": path, "headers": [{"name": ":method",
                                             "string_match": {"safe_regex": {"regex": "^(GET|HEAD)$"}}}]},
        "direct_response": {"status": 200, "body": {"filename": str(cfg.docs_dir / file)}},
        # Route-level headers win over the virtual host's (most_specific_header_mutations_wins).
        "response_headers_to_add": [_header(k, v) for k, v in headers.items()],
        "typed_per_filter_config": {
            "envoy.filters.http.grpc_json_transcoder": _any("envoy.config.route.v3.FilterConfig", disabled=True)},
    } for name, path, file, headers in pages]


def _routes(cfg: GatewayConfig) -> list[dict[str, Any]]:
    rpcs = contracts.rpcs()
    routes: list[dict[str, Any]] = []
    # Internal RPCs (service to service, e.g. AppendEvents) do not exist at the edge.
    for rpc in rpcs:
        if rpc.policy.tenant_scope == policy_pb2.TENANT_SCOPE_INTERNAL:
            routes.append({"name": rpc.full_method.strip("/").replace("/", ".") + ".internal",
                           "match": {"path": rpc.full_method},
                           "direct_response": {"status": 404, "body": {"inline_string": "no such method"}}})
    # Per-method routes (exact paths): reads get retries, streams lose the total timeout.
    for rpc in rpcs:
        if not (rpc.streaming or _retryable(rpc)):
            continue
        backend = backend_for(rpc.service.full_name)
        routes.append({
            "name": rpc.full_method.strip("/").replace("/", "."),
            "match": {"path": rpc.full_method},
            "route": _route_action(backend, streaming=rpc.streaming, retry=_retryable(rpc)),
        })
    # Then one prefix per service: writes, no retries.
    for svc in service_names():
        backend = backend_for(svc)
        routes.append({"name": svc, "match": {"prefix": f"/{svc}/"}, "route": _route_action(backend)})
    # Native gRPC health through the edge (load balancers, grpc_health_probe).
    routes.append({"name": "grpc.health", "match": {"prefix": HEALTH_PREFIX},
                   "route": _route_action(backend_for("sentinel.common.v1.HealthService"))})
    # The OpenAPI document and the docs page, before the catch-alls.
    routes += _docs_routes(cfg)
    # Native gRPC to an unknown service: Envoy answers 404, which gRPC clients see as UNIMPLEMENTED.
    routes.append({"name": "unknown_grpc", "match": {"prefix": "/", "grpc": {}},
                   "direct_response": {"status": 404, "body": {"inline_string": "no such service"}}})
    # REST as the CORS filter sees it, before transcoding. The CORS filter needs a route with a
    # cluster here (it ignores direct responses), but nothing is forwarded on it: the transcoder
    # rewrites every known REST path to its gRPC route (and clears the route cache), and answers
    # any other REST path with a JSON 404 (reject_unknown_method).
    routes.append({"name": "rest", "match": {"prefix": "/"}, "route": _route_action(BACKENDS[0])})
    return routes


def _cors_policy(cfg: GatewayConfig) -> dict[str, Any]:
    if "*" in cfg.cors_allowed_origins and cfg.cors_allow_credentials:
        # Browsers refuse the combination (Fetch standard), and it would be unsafe if they did not.
        raise ValueError("CORS: credentials cannot be allowed for every origin ('*')")
    return _any(
        "envoy.extensions.filters.http.cors.v3.CorsPolicy",
        allow_origin_string_match=[{"prefix": ""} if o == "*" else {"exact": o} for o in cfg.cors_allowed_origins],
        allow_methods=", ".join(cfg.cors_allow_methods),
        allow_headers=",".join(cfg.cors_allow_headers),
        expose_headers=",".join(CORS_EXPOSE_HEADERS),
        max_age=str(cfg.cors_max_age_seconds),
        allow_credentials=cfg.cors_allow_credentials,
    )


def _route_config(cfg: GatewayConfig) -> dict[str, Any]:
    vhost: dict[str, Any] = {
        "name": "sentinel",
        "domains": ["*"],
        "routes": _routes(cfg),
        "response_headers_to_add": _security_headers(cfg.tls_enabled),
        "response_headers_to_remove": ["server", "x-powered-by"],
        # Routes without their own retry policy (writes, streams) retry only where nothing
        # reached the service; a route-level policy (reads) replaces this one entirely.
        "retry_policy": connection_retry_policy(),
    }
    if cfg.cors_allowed_origins:
        vhost["typed_per_filter_config"] = {"envoy.filters.http.cors": _cors_policy(cfg)}
    route_config: dict[str, Any] = {
        "name": "sentinel",
        "virtual_hosts": [vhost],
        # Nothing a client sends may look like an edge-verified identity to the services
        # (Envoy's conventional payload header; add issue 3's API-key marker here too).
        "request_headers_to_remove": ["x-jwt-payload"],
    }
    if cfg.docs_dir is not None:
        route_config["max_direct_response_body_size_bytes"] = MAX_DOCS_BYTES
        # The docs page's own CSP (and content types) must beat the virtual host's headers.
        route_config["most_specific_header_mutations_wins"] = True
    return route_config


def jwt_rules() -> list[dict[str, Any]]:
    """``jwt_authn`` rules on gRPC paths (the transcoder has already rewritten REST paths).

    Public RPCs, gRPC infrastructure and the two documentation paths (``/openapi.json``,
    ``/docs``: direct responses, never forwarded) are listed first without ``requires``; the
    final catch-all requires a valid token, so a new RPC is protected unless its contract says public.
    """
    rules: list[dict[str, Any]] = [{"match": {"path": rpc.full_method}} for rpc in contracts.rpcs() if rpc.public]
    rules += [{"match": {"prefix": prefix}} for prefix in contracts.INFRASTRUCTURE_PREFIXES]
    # The OpenAPI document and the docs page (Envoy's direct responses; nothing is forwarded).
    rules += [{"match": {"path": path}} for path in (OPENAPI_PATH, DOCS_PATH)]
    # API keys (`authorization: Bearer snt_…` or `x-api-key`) are not JWTs: jwt_authn lets them
    # through and every service authenticates the key itself (format and checksum first, then a
    # tenant-bound lookup, cached), exactly as it re-verifies every JWT.
    rules += [
        {"match": {"prefix": "/", "headers": [
            {"name": "authorization", "string_match": {"prefix": "Bearer " + API_KEY_PREFIX, "ignore_case": True}}]}},
        {"match": {"prefix": "/", "headers": [{"name": "x-api-key", "present_match": True}]}},
    ]
    rules.append({"match": {"prefix": "/"}, "requires": {"provider_name": JWT_PROVIDER}})
    return rules


def _jwt_filter(cfg: GatewayConfig) -> dict[str, Any]:
    uri = jwks_uri(cfg)
    provider = {
        "issuer": cfg.jwt_issuer,
        "audiences": [cfg.jwt_audience],
        "require_expiration": True,
        "clock_skew_seconds": 5,
        # The scheme is case-insensitive (RFC 7235), as in the services' own parser.
        "from_headers": [{"name": "authorization", "value_prefix": "Bearer "},
                         {"name": "authorization", "value_prefix": "bearer "}],
        # Keep the header: every service verifies the token again (defence in depth).
        "forward": True,
        # For the access log (tenant and subject of every call).
        "payload_in_metadata": "jwt_payload",
        # A client sends the same token for its ~10 minutes: Envoy verifies its signature once per
        # worker and then checks only the cached result and the expiry (a token is still dropped
        # from the cache when it expires). The services verify every call anyway, revocation included.
        "jwt_cache_config": {"jwt_cache_size": JWT_CACHE_SIZE, "jwt_max_token_size": JWT_CACHE_MAX_TOKEN_BYTES},
        "remote_jwks": {
            "http_uri": {"uri": uri, "cluster": JWKS_CLUSTER, "timeout": "2s"},
            "cache_duration": "300s",
            # Default JWKS is served through this very listener: fetch in the background so the
            # listener is not held back waiting for itself, and retry soon after a failure
            # (the user service may start after Envoy).
            "async_fetch": {"fast_listener": True, "failed_refetch_duration": "1s"},
            "retry_policy": {"num_retries": 3,
                             "retry_back_off": {"base_interval": "0.2s", "max_interval": "2s"}},
        },
    }
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": _any(
            "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            providers={JWT_PROVIDER: provider},
            rules=jwt_rules(),
        ),
    }


def _transcoder_filter(cfg: GatewayConfig) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.grpc_json_transcoder",
        "typed_config": _any(
            "envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
            proto_descriptor=str(cfg.descriptor_set_path),
            services=service_names(),
            print_options={
                "add_whitespace": False,
                "always_print_primitive_fields": True,
                "always_print_enums_as_ints": False,
                "preserve_proto_field_names": True,
                # Server streams (audit export and follow) as NDJSON: one message per line.
                "stream_newline_delimited": True,
            },
            # Only the google.api.http bindings are REST; no implicit POST /pkg.Svc/Method.
            auto_mapping=False,
            convert_grpc_status=True,
            case_insensitive_enum_parsing=True,
            request_validation_options={
                "reject_unknown_method": True,
                "reject_unknown_query_parameters": True,
                "reject_binding_body_field_collisions": True,
            },
            max_request_body_size=cfg.max_request_bytes,
            max_response_body_size=max(cfg.max_request_bytes, 16 << 20),
        ),
    }


def _path_regex(methods: Iterable[str]) -> str:
    """RE2 matching exactly these gRPC paths (the transcoder has rewritten REST paths to them)."""
    return "^(" + "|".join(re.escape(m) for m in sorted(methods)) + ")$"


def address_limit_filters(rules: ratelimit_rules.Rules) -> list[dict[str, Any]]:
    """The address tier: one local token bucket per client address and class, in this Envoy.

    Why local: this tier shields the edge from floods by address, so it must cost nothing per
    request and work before any credential is checked; every Envoy keeps its own buckets (N
    Envoys admit up to N times an address's limit). The tenant and principal tiers, which must
    hold across instances, are counted by the services in Redis.

    One filter per class (auth, write, read; from the contracts): each refuses only calls of its
    class, has its own stats (``edge_ip_<class>.http_local_rate_limit.rate_limited``), and adds the
    policy header to what it refuses. The address is the TCP peer Envoy saw, never a header.
    """
    classes = ratelimit_rules.classification()
    by_class = {k: [m for m, c in classes.items() if c == k] for k in ratelimit_rules.CLASSES}
    filters = []
    for klass in ratelimit_rules.CLASSES:
        limit = rules.ip[klass]
        if limit is None:
            continue
        # Reads: everything that is not auth or write (unknown paths included).
        paths = by_class["auth"] + by_class["write"] if klass == "read" else by_class[klass]
        match = {"expect_match": klass != "read",
                 "headers": [{"name": ":path", "string_match": {"safe_regex": {"regex": _path_regex(paths)}}}]}
        bucket = {"max_tokens": limit.requests, "tokens_per_fill": limit.requests, "fill_interval": f"{limit.seconds}s"}
        filters.append({"name": f"sentinel.edge_rate_limit.{klass}", "typed_config": _any(
            "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            stat_prefix=f"edge_ip_{klass}",
            filter_enabled={"default_value": {"numerator": 100, "denominator": "HUNDRED"},
                            "runtime_key": f"sentinel.edge_rate_limit.{klass}.enabled"},
            filter_enforced={"default_value": {"numerator": 100, "denominator": "HUNDRED"},
                             "runtime_key": f"sentinel.edge_rate_limit.{klass}.enforced"},
            rate_limits=[{"actions": [
                {"header_value_match": {"descriptor_key": "class", "descriptor_value": klass, **match}},
                {"remote_address": {}},
            ]}],
            # An empty value: one bucket per distinct address (a "dynamic descriptor").
            descriptors=[{"entries": [{"key": "class", "value": klass}, {"key": "remote_address"}],
                          "token_bucket": bucket}],
            max_dynamic_descriptors=EDGE_TRACKED_ADDRESSES,
            # Shared by the worker threads of this Envoy, not per connection.
            local_rate_limit_per_downstream_connection=False,
            enable_x_ratelimit_headers="DRAFT_VERSION_03",
            # 429 for REST; RESOURCE_EXHAUSTED (not UNAVAILABLE) for native gRPC clients.
            rate_limited_as_resource_exhausted=True,
            response_headers_to_add=[{"header": {"key": EDGE_POLICY_HEADER,
                                                 "value": f"{limit.requests};w={limit.seconds}"},
                                      "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
        )})
    return filters


def probe_filters() -> list[dict[str, Any]]:
    """``GET /healthz`` and ``GET /readyz`` answered by Envoy itself, before any other filter
    (no token, no transcoding, no rate limit). Readiness reads the active health checks: below
    the minimum share of healthy hosts in any backend cluster (i.e. none) it answers 503, as it
    does while Envoy drains."""
    def probe(name: str, path: str, clusters: Mapping[str, float]) -> dict[str, Any]:
        config: dict[str, Any] = {"pass_through_mode": False, "headers": [
            {"name": ":path", "string_match": {"exact": path}},
            {"name": ":method", "string_match": {"safe_regex": {"regex": "^(GET|HEAD)$"}}}]}
        if clusters:
            config["cluster_min_healthy_percentages"] = {c: {"value": v} for c, v in clusters.items()}
        return {"name": f"sentinel.probe.{name}",
                "typed_config": _any("envoy.extensions.filters.http.health_check.v3.HealthCheck", **config)}

    # Any healthy host is enough. Envoy truncates the share to whole percent (0.5 would be 0, which
    # always passes), so 1 %: one healthy host of up to 100 per service.
    return [probe("healthz", LIVENESS_PATH, {}),
            probe("readyz", READINESS_PATH, dict.fromkeys(BACKENDS, 1.0))]


def _http_filters(cfg: GatewayConfig, *, address_limits: bool = True) -> list[dict[str, Any]]:
    filters: list[dict[str, Any]] = []
    if cfg.cors_allowed_origins:
        # First, so preflight OPTIONS requests are answered before transcoding or auth.
        filters.append({"name": "envoy.filters.http.cors",
                        "typed_config": _any("envoy.extensions.filters.http.cors.v3.Cors")})
    # The transcoder drops unknown JSON fields silently (envoyproxy/envoy#46623); this Lua
    # filter refuses them with 400 while the body is still JSON, so it runs just before it.
    filters.append(strict_json.lua_filter(max_body_bytes=cfg.max_request_bytes, local_reply_json=True,
                                          extra_source=REST_RESPONSE_LUA))
    # After the Lua filter, whose response side strips the probes' internal header.
    filters += probe_filters()
    # Transcoder before jwt_authn: it rewrites REST to the gRPC path, so the JWT rules and
    # the routes see one path per RPC whatever the protocol.
    filters.append(_transcoder_filter(cfg))
    # After the transcoder (the class comes from the gRPC path), before jwt_authn: a flood is
    # refused before any signature is checked.
    if address_limits and cfg.rate_limits is not None:
        filters += address_limit_filters(ratelimit_rules.load(cfg.rate_limits))
    filters.append(_jwt_filter(cfg))
    # Caps native gRPC bodies too (the transcoder only sees REST); over the limit → 413.
    filters.append({"name": "envoy.filters.http.buffer",
                    "typed_config": _any("envoy.extensions.filters.http.buffer.v3.Buffer",
                                         max_request_bytes=cfg.max_request_bytes)})
    filters.append({"name": "envoy.filters.http.router",
                    "typed_config": _any("envoy.extensions.filters.http.router.v3.Router",
                                         suppress_envoy_headers=True)})
    return filters


def _local_reply_body(code: int) -> dict[str, Any]:
    return {
        "json_format": {
            "code": code,
            "message": "%LOCAL_REPLY_BODY%",
            "request_id": "%REQ(X-REQUEST-ID)%",
        },
        "content_type": "application/json",
    }


#: Which local replies get the JSON body. gRPC clients must keep Envoy's plain text (it becomes
#: ``grpc-message``; the status is already ``grpc-status`` in a trailers-only reply). The
#: request headers seen here are post-transcoding, so a REST call is recognised by the
#: transcoder's ``x-envoy-original-path`` or by a content-type that is not gRPC (or none).
_REST_REQUEST_FILTER: dict[str, Any] = {"or_filter": {"filters": [
    {"header_filter": {"header": {"name": "x-envoy-original-path", "present_match": True}}},
    {"header_filter": {"header": {"name": "content-type", "string_match": {"prefix": "application/grpc"},
                                  "invert_match": True}}},
    # A missing header never matches a string matcher, inverted or not (e.g. a plain GET).
    {"header_filter": {"header": {"name": "content-type", "present_match": False}}},
]}}


def _status_filter(op: str, status: int, key: str) -> dict[str, Any]:
    return {"status_code_filter": {"comparison": {
        "op": op, "value": {"default_value": status, "runtime_key": f"sentinel.local_reply.{key}"},
    }}}


#: Messages for local replies whose filter leaves the body empty (REST JSON ``message``, and
#: ``grpc-message`` for native gRPC clients).
LOCAL_REPLY_MESSAGES: Mapping[int, str] = {
    429: ratelimit_rules.REFUSED_MESSAGE,
}


def _local_reply_config(tls: bool) -> dict[str, Any]:
    """Envoy's own error replies (jwt_authn 401, transcoder 400/404, buffer 413, 429, 503, ...) as JSON.

    No top-level ``body_format``: it would also rewrite replies to native gRPC clients.
    """
    matchers = [(_status_filter("EQ", status, str(status)), code, LOCAL_REPLY_MESSAGES.get(status))
                for status, code in LOCAL_REPLY_GRPC_CODES.items()]
    matchers.append((_status_filter("GE", 400, "other"), UNKNOWN_GRPC_CODE, None))
    # The readiness probe's 503 says why (Envoy's own reply has no body).
    unready = {"and_filter": {"filters": [_status_filter("EQ", 503, "readyz"), {"header_filter": {
        "header": {"name": ":path", "string_match": {"exact": READINESS_PATH}}}}]}}
    mappers: list[dict[str, Any]] = [{"filter": unready, "body_format_override": _local_reply_body(14),
                                      "headers_to_add": _security_headers(tls),
                                      "body": {"inline_string": UNREADY_MESSAGE}}]
    for status_filter, code, message in matchers:
        mapper: dict[str, Any] = {
            "filter": {"and_filter": {"filters": [status_filter, _REST_REQUEST_FILTER]}},
            "body_format_override": _local_reply_body(code),
            # Route-level response headers do not reach every local reply; add them here too.
            "headers_to_add": _security_headers(tls),
        }
        if message:
            mapper["body"] = {"inline_string": message}
        mappers.append(mapper)
    # Native gRPC clients: only the message (it becomes grpc-message).
    mappers += [{"filter": _status_filter("EQ", status, f"{status}_grpc"), "body": {"inline_string": message}}
                for status, message in LOCAL_REPLY_MESSAGES.items()]
    return {"mappers": mappers}


ACCESS_LOG_FORMAT: Mapping[str, str] = {
    "start_time": "%START_TIME%",
    "method": "%REQ(X-ENVOY-ORIGINAL-METHOD?:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "grpc_method": "%REQ(:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "grpc_status": "%GRPC_STATUS_NUMBER%",
    "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "route": "%ROUTE_NAME%",
    "duration_ms": "%DURATION%",
    "response_duration_ms": "%RESPONSE_DURATION%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "upstream_host": "%UPSTREAM_HOST%",
    "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "user_agent": "%REQ(USER-AGENT)%",
    "tenant_id": "%DYNAMIC_METADATA(envoy.filters.http.jwt_authn:jwt_payload:tid)%",
    "subject": "%DYNAMIC_METADATA(envoy.filters.http.jwt_authn:jwt_payload:sub)%",
}


def _access_log(path: str) -> list[dict[str, Any]]:
    return [{
        "name": "envoy.access_loggers.file",
        "typed_config": _any(
            "envoy.extensions.access_loggers.file.v3.FileAccessLog",
            path=path,
            log_format={"json_format": dict(ACCESS_LOG_FORMAT)},
        ),
    }]


def _http_connection_manager(cfg: GatewayConfig, *, address_limits: bool = True) -> dict[str, Any]:
    return _any(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix="ingress",
        codec_type="AUTO",  # HTTP/1.1 for REST, HTTP/2 (h2c prior knowledge) for gRPC
        # Edge proxy: the peer address is the client; x-forwarded-for from clients is not trusted.
        use_remote_address=True,
        xff_num_trusted_hops=0,
        generate_request_id=True,
        # A client's own X-Request-Id is kept (its logs and ours then share the id); Envoy makes
        # one only when there is none. It is a correlation id, never trusted for anything else.
        preserve_external_request_id=True,
        always_set_request_id_in_response=True,
        # Path hygiene before any matching, so JWT rules and routes cannot be bypassed
        # with //, /./ or %2F tricks.
        normalize_path=True,
        merge_slashes=True,
        path_with_escaped_slashes_action="REJECT_REQUEST",
        strip_any_host_port=True,
        # Do not advertise Envoy; upstream "server" headers are removed by the route config.
        server_header_transformation="PASS_THROUGH",
        stream_idle_timeout=STREAM_IDLE_TIMEOUT,
        request_timeout="30s",
        request_headers_timeout="10s",
        max_request_headers_kb=60,
        common_http_protocol_options={
            "idle_timeout": "300s",
            "max_headers_count": 100,
            # "x_tenant" vs "x-tenant" ambiguity is a classic header-smuggling vector.
            "headers_with_underscores_action": "REJECT_REQUEST",
        },
        http2_protocol_options={
            "max_concurrent_streams": 100,
            "initial_stream_window_size": 65536,
            "initial_connection_window_size": 1048576,
        },
        access_log=_access_log(cfg.access_log_path),
        local_reply_config=_local_reply_config(cfg.tls_enabled),
        route_config=_route_config(cfg),
        http_filters=_http_filters(cfg, address_limits=address_limits),
    )


def _downstream_tls(cfg: GatewayConfig) -> dict[str, Any]:
    return {"name": "envoy.transport_sockets.tls", "typed_config": _any(
        "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        common_tls_context={
            "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
            "alpn_protocols": ["h2", "http/1.1"],  # gRPC needs h2; REST clients may use either
            "tls_certificates": [{"certificate_chain": {"filename": str(cfg.tls_cert_file)},
                                  "private_key": {"filename": str(cfg.tls_key_file)}}],
        },
    )}


def _redirect_connection_manager(cfg: GatewayConfig) -> dict[str, Any]:
    """The plain-HTTP port when TLS is on: every request gets a 301 to the same path over HTTPS."""
    return _any(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix="ingress_http",
        use_remote_address=True,
        normalize_path=True,
        merge_slashes=True,
        server_header_transformation="PASS_THROUGH",
        request_headers_timeout="10s",
        access_log=_access_log(cfg.access_log_path),
        route_config={"name": "redirect", "virtual_hosts": [{
            "name": "redirect", "domains": ["*"],
            "routes": [{"name": "https_redirect", "match": {"prefix": "/"},
                        "redirect": {"https_redirect": True, "port_redirect": cfg.tls_port}}],
            "response_headers_to_add": _security_headers(tls=False),
            "response_headers_to_remove": ["server"],
        }]},
        http_filters=[{"name": "envoy.filters.http.router",
                       "typed_config": _any("envoy.extensions.filters.http.router.v3.Router",
                                            suppress_envoy_headers=True)}],
    )


def _chain(hcm: dict[str, Any], transport_socket: dict[str, Any] | None = None) -> dict[str, Any]:
    chain: dict[str, Any] = {"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                          "typed_config": hcm}]}
    if transport_socket is not None:
        chain["transport_socket"] = transport_socket
    return chain


def _listener(name: str, host: str, port: int, chains: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": name, "address": _socket_address(host, port),
            "per_connection_buffer_limit_bytes": 1 << 20, "filter_chains": chains}


def _api_chains(cfg: GatewayConfig, transport_socket: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The API's filter chain; then, for ``ip_exempt`` networks, the same without address limits
    (Envoy picks the most specific chain by the connection's source address, the TCP peer)."""
    chains = [_chain(_http_connection_manager(cfg), transport_socket)]
    exempt = () if cfg.rate_limits is None else ratelimit_rules.load(cfg.rate_limits).ip_exempt
    if exempt:
        chains.append({"filter_chain_match": {"source_prefix_ranges": [
            {"address_prefix": str(net.network_address), "prefix_len": net.prefixlen} for net in exempt]},
            **_chain(_http_connection_manager(cfg, address_limits=False), transport_socket)})
    return chains


def _listeners(cfg: GatewayConfig) -> list[dict[str, Any]]:
    """The API listener first (plain, or HTTPS on ``tls_port``), then the redirecting plain port."""
    if not cfg.tls_enabled:
        return [_listener("ingress", cfg.listen_host, cfg.listen_port, _api_chains(cfg, None))]
    return [
        _listener("ingress", cfg.listen_host, cfg.tls_port, _api_chains(cfg, _downstream_tls(cfg))),
        _listener("ingress_http", cfg.listen_host, cfg.listen_port, [_chain(_redirect_connection_manager(cfg))]),
    ]


def render(cfg: GatewayConfig) -> dict[str, Any]:
    """The Envoy bootstrap (v3) as plain data."""
    missing = [b for b in BACKENDS if b not in cfg.upstreams]
    if missing:
        raise ValueError(f"GatewayConfig.upstreams lacks {', '.join(missing)}")
    unknown = sorted(set(cfg.upstreams) - set(BACKENDS))
    if unknown:
        raise ValueError(f"GatewayConfig.upstreams has unknown backends {', '.join(unknown)}")
    clusters = [_backend_cluster(name, cfg.upstreams[name]) for name in BACKENDS]
    # Fetching the JWKS from this Envoy's own HTTPS listener: trust exactly its certificate.
    self_fetch = cfg.tls_enabled and not cfg.jwks_uri
    clusters.append(_jwks_cluster(jwks_uri(cfg), cfg.tls_cert_file if self_fetch else None))
    bootstrap: dict[str, Any] = {
        "node": {"id": "sentinel-gateway", "cluster": "sentinel"},
        "admin": {"address": _socket_address(cfg.admin_host, cfg.admin_port)},
        "static_resources": {
            "listeners": _listeners(cfg),
            "clusters": clusters,
        },
        # The address tier's class matchers list every auth or write RPC: one regex each, larger
        # than RE2's default program-size cap (100). Linear-time matching whatever the size.
        "layered_runtime": {"layers": [
            {"name": "static", "static_layer": {"re2.max_program_size.error_level": MAX_REGEX_PROGRAM_SIZE,
                                                "re2.max_program_size.warn_level": MAX_REGEX_PROGRAM_SIZE}},
            {"name": "admin", "admin_layer": {}},
        ]},
        # Edge best practice: bound downstream connections (Envoy warns when unset).
        "overload_manager": {"resource_monitors": [{
            "name": "envoy.resource_monitors.global_downstream_max_connections",
            "typed_config": _any(
                "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                max_active_downstream_connections=cfg.max_connections,
            ),
        }]},
    }
    return bootstrap


def envoy_args(config_path: Path, *, log_level: str = "info") -> list[str]:
    """Recommended command-line arguments (after the binary) to run a rendered config.

    ``--disable-hot-restart``: no shared memory, so several Envoys (tests, dev) never clash.
    ``--file-flush-interval-msec``: the access log otherwise reaches the file only every 10 s.
    """
    return ["-c", str(config_path), "--disable-hot-restart", "--log-level", log_level,
            "--file-flush-interval-msec", "500"]


HEADER = """\
# Envoy bootstrap for Sentinel. GENERATED by sentinel.gateway.envoy from the proto contracts:
# do not edit by hand. Regenerate with `sentinel gateway render` (see gateway/README.md).
"""


def render_yaml(cfg: GatewayConfig) -> str:
    return HEADER + yaml.safe_dump(render(cfg), sort_keys=False, default_flow_style=False, width=100)
