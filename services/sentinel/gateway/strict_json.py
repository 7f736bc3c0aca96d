"""Reject unknown JSON fields in REST request bodies, in front of Envoy's transcoder.

Envoy's ``grpc_json_transcoder`` silently drops JSON keys that match no proto field
(envoyproxy/envoy#46623: there is no option to make it strict), so a client sending
``{"slug": "x", "is_admin": true}`` never learns that ``is_admin`` was ignored. The contract
says an unknown field is a 400 ``{"code": 3, ...}`` (INVALID_ARGUMENT) that never reaches a
service. This module renders an ``envoy.filters.http.lua`` filter that runs *before* the
transcoder, on the original REST request, and enforces that.

The schema is derived from :func:`sentinel.platform.contracts.rpcs`, like the rest of the
gateway config: for every ``google.api.http`` binding with a body it records which JSON keys
the transcoder accepts (a field's proto ``name`` and its ``json_name``), recursing into
message-typed fields. Nodes whose content the transcoder interprets freely (maps, the
well-known types such as ``Struct``/``Any``/``Timestamp``, scalars) accept anything.

Behaviour of the generated Lua (``envoy_on_request``):

* GET/DELETE/HEAD/OPTIONS return at once: nothing is buffered, reads are not slowed.
* gRPC requests (``content-type: application/grpc*``) are not REST and pass through. Every
  other content type (none, ``application/json``, even curl's default
  ``application/x-www-form-urlencoded``) is parsed as JSON by the transcoder, so it is checked.
* Requests whose method+path match no binding with a body pass through (the transcoder
  answers unknown paths itself).
* The body is parsed by a small recursive-descent JSON parser. Keys are decoded exactly
  (all escapes, ``\\uXXXX`` incl. surrogate pairs), so ``"is\\u005fadmin"`` is ``is_admin``.
  The parser is deliberately *lenient* (a superset of JSON): the transcoder's own parser
  (protobuf's JSON stream parser) accepts bare keys (``{is_admin: true}``), single-quoted
  strings, trailing commas, unknown escapes and raw control characters (checked on Envoy
  1.40), so a strict parser here would wave exactly those bodies through unchecked. A body it
  cannot parse at all is left to the transcoder, which answers 400 itself.
* Body ``*`` = the request message minus the fields bound by the path; body ``<field>`` = that
  field's whole message (a path-bound sub-field such as ``{tenant.id}`` stays allowed: the
  transcoder accepts an equal value and rejects a different one itself).
* An unknown key at any checked level → 400
  ``{"code":3,"message":"unknown field \\"tenant.is_admin\\" in request body (allowed: ...)"}``,
  the path being relative to the request body. A key bound by the URL path under body ``*``
  (``{"id": ...}`` for ``/jobs/{id}:cancel``) → 400 saying so. Nesting deeper than
  :data:`MAX_JSON_DEPTH` → 400 as well; a body over ``max_body_bytes`` → 413 ``{"code":8,...}``.

Place it after ``envoy.filters.http.cors`` (preflights are answered first) and before
``envoy.filters.http.grpc_json_transcoder`` (after it the body is protobuf); jwt_authn comes
after the transcoder in this gateway, so the check runs before authentication. Envoy sends a
Lua ``respond()`` through ``local_reply_config`` like any local reply: see ``local_reply_json``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from sentinel.platform import contracts

FILTER_NAME = "sentinel.strict_json"
LUA_FILTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"

#: Deepest JSON nesting (objects + arrays) accepted in a REST body.
MAX_JSON_DEPTH = 32
#: Descriptor recursion guard: below this many message levels a node accepts anything.
MAX_SCHEMA_DEPTH = 8
#: Same default as ``GatewayConfig.max_request_bytes``.
DEFAULT_MAX_BODY_BYTES = 1 << 20

#: Messages the transcoder maps to/from JSON specially: any JSON shape is theirs to judge.
OPAQUE_MESSAGES = frozenset({
    "google.protobuf.Any",
    "google.protobuf.Struct",
    "google.protobuf.Value",
    "google.protobuf.ListValue",
    "google.protobuf.FieldMask",
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.Empty",
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
    "google.api.HttpBody",
})

#: HTTP methods never checked (no body, or CORS preflight).
SKIP_METHODS = ("GET", "DELETE", "HEAD", "OPTIONS")


# --------------------------------------------------------------------------- schema


@dataclass
class Node:
    """One JSON object level: allowed key → child node (``None``: accept any value)."""

    type_name: str
    keys: dict[str, Node | None] = field(default_factory=dict)
    #: Proto field names, sorted: what the error message lists.
    allowed: tuple[str, ...] = ()
    #: Keys of fields bound by the URL path (body ``*``): rejected with their own message.
    bound: tuple[str, ...] = ()


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    pattern: str  # anchored Lua pattern for the (query-stripped, normalised) path
    node: Node
    full_method: str


def _is_message(fd: FieldDescriptor) -> bool:
    return fd.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP)


def _is_map(fd: FieldDescriptor) -> bool:
    mt = fd.message_type
    return bool(_is_message(fd) and mt is not None and mt.GetOptions().map_entry)


class _Builder:
    def __init__(self) -> None:
        self._memo: dict[tuple[str, frozenset[tuple[str, ...]]], Node] = {}

    def node(self, desc: Descriptor, exclude: frozenset[tuple[str, ...]] = frozenset(),
             depth: int = 0) -> Node | None:
        """The node for ``desc`` without the (possibly nested) field paths in ``exclude``."""
        if desc.full_name in OPAQUE_MESSAGES or depth >= MAX_SCHEMA_DEPTH:
            return None
        memo_key = (desc.full_name, exclude)
        if memo_key in self._memo:  # also closes recursion cycles (A.b: B, B.a: A)
            return self._memo[memo_key]
        node = Node(desc.full_name)
        self._memo[memo_key] = node
        top_excluded = {p[0] for p in exclude if len(p) == 1}
        names: list[str] = []
        bound: set[str] = set()
        for fd in desc.fields:
            if fd.name in top_excluded:
                bound.update((fd.name, fd.json_name))
                continue
            child: Node | None = None
            if _is_message(fd) and not _is_map(fd) and fd.message_type is not None:
                sub = frozenset(p[1:] for p in exclude if len(p) > 1 and p[0] == fd.name)
                child = self.node(fd.message_type, sub, depth + 1)
            names.append(fd.name)
            node.keys[fd.name] = child
            node.keys[fd.json_name] = child
        node.allowed = tuple(sorted(names))
        node.bound = tuple(sorted(bound))
        return node


_VAR = re.compile(r"\{([^}=]+)(?:=([^}]*))?\}")


def path_fields(template: str) -> list[str]:
    """Field paths bound by a path template: ``/v1/{tenant.id}:x`` → ``["tenant.id"]``."""
    return [m.group(1).strip() for m in _VAR.finditer(template)]


def _lua_escape(literal: str) -> str:
    # In a Lua pattern "%" + any non-alphanumeric character is that character, literally.
    return re.sub(r"([^A-Za-z0-9])", r"%\1", literal)


def _segments_pattern(segments: str) -> str:
    out: list[str] = []
    for seg in segments.split("/"):
        if seg == "**":
            out.append(".*")
        elif seg == "*":
            out.append("[^/]+")
        else:
            out.append(_lua_escape(seg))
    return "/".join(out)


def template_pattern(template: str) -> str:
    """An anchored Lua pattern for an HTTP rule path template.

    ``{var}`` and ``*`` match one segment (``[^/]+``), ``**`` (and ``{var=**}``) any rest,
    ``{var=a/*}`` its own sub-template; the rest is literal (magic characters escaped).
    """
    out: list[str] = []
    pos = 0
    for m in _VAR.finditer(template):
        out.append(_segments_pattern(template[pos:m.start()]))
        out.append(_segments_pattern(m.group(2)) if m.group(2) else "[^/]+")
        pos = m.end()
    out.append(_segments_pattern(template[pos:]))
    return "^" + "".join(out) + "$"


def _body_node(builder: _Builder, rpc: contracts.Rpc, rule: contracts.HttpRule) -> Node | None:
    bound = [tuple(p.split(".")) for p in path_fields(rule.path)]
    request = rpc.method.input_type
    if rule.body == "*":
        return builder.node(request, frozenset(bound))
    # body: "<field>" (possibly a dotted path): the body is that field's JSON value, the whole
    # message type. Fields of it that the path also binds ({tenant.id}) stay allowed: the
    # transcoder accepts an equal value and rejects a different one itself, and a client
    # sending back a resource it read (id included) is normal REST.
    desc: Descriptor | None = request
    fd: FieldDescriptor | None = None
    prefix = tuple(rule.body.split("."))
    for part in prefix:
        if desc is None or part not in desc.fields_by_name:
            raise LookupError(f"{rpc.full_method}: body field {rule.body!r} not in {request.full_name}")
        fd = desc.fields_by_name[part]
        desc = fd.message_type if _is_message(fd) else None
    if fd is None or desc is None or _is_map(fd) or fd.is_repeated:
        return None  # scalar / map / repeated body: nothing to check key-wise
    return builder.node(desc)


def _specificity(template: str) -> tuple[int, int, int]:
    literal = _VAR.sub("", template)
    return (literal.count("/") - template.count("*"), len(literal), -len(path_fields(template)))


def routes(rpcs: Iterable[contracts.Rpc] | None = None) -> list[Route]:
    """Every REST binding with a body that has keys to check, most specific template first."""
    builder = _Builder()
    out: list[Route] = []
    for rpc in contracts.rpcs() if rpcs is None else rpcs:
        for rule in rpc.http:
            if not rule.body or rule.method in SKIP_METHODS:
                continue
            node = _body_node(builder, rpc, rule)
            if node is not None:
                out.append(Route(rule.method, rule.path, template_pattern(rule.path), node, rpc.full_method))
    out.sort(key=lambda r: _specificity(r.template), reverse=True)
    return out


def allowed_keys(node: Node | None) -> set[str]:
    """Every key accepted at ``node`` (proto names and json names); empty for 'anything'."""
    return set() if node is None else set(node.keys)


# --------------------------------------------------------------------------- Lua


def _lua_str(s: str) -> str:
    # JSON string syntax is valid Lua for the ASCII identifiers and paths used here; keep
    # non-ASCII out so the two never disagree.
    return json.dumps(s, ensure_ascii=True)


def _schema_table(rts: list[Route]) -> str:
    ids: dict[int, int] = {}
    order: list[Node] = []

    def visit(node: Node) -> None:
        if id(node) in ids:
            return
        ids[id(node)] = len(order) + 1
        order.append(node)
        for child in node.keys.values():
            if child is not None:
                visit(child)

    for r in rts:
        visit(r.node)
    lines = ["local N = {}"]
    for i, node in enumerate(order, 1):
        bound = ", ".join(f"[{_lua_str(k)}] = true" for k in node.bound)
        lines.append(f"N[{i}] = {{ name = {_lua_str(node.type_name)}, "
                     f"allowed = {_lua_str(', '.join(node.allowed))}, keys = {{}}, bound = {{ {bound} }} }}")
    for i, node in enumerate(order, 1):
        for key in sorted(node.keys):
            child = node.keys[key]
            value = "true" if child is None else f"N[{ids[id(child)]}]"
            lines.append(f"N[{i}].keys[{_lua_str(key)}] = {value}")
    lines.append("local ROUTES = {")
    for r in rts:
        lines.append(f"  {{ method = {_lua_str(r.method)}, pattern = {_lua_str(r.pattern)}, "
                     f"node = N[{ids[id(r.node)]}] }},  -- {r.full_method} {r.template}")
    lines.append("}")
    return "\n".join(lines)


_LUA_RUNTIME = r"""
local MAX_DEPTH = __MAX_DEPTH__
local MAX_BODY = __MAX_BODY__
local REPLY_JSON = __REPLY_JSON__
local SKIP = { GET = true, DELETE = true, HEAD = true, OPTIONS = true }

local byte, sub, find, char, format = string.byte, string.sub, string.find, string.char, string.format
local concat = table.concat

-- ------------------------------------------------------------------ JSON output helpers
local function utf8_clean(s)
  -- s with every invalid UTF-8 sequence replaced by U+FFFD (so the reply stays valid JSON).
  if not find(s, "[\128-\255]") then return s end
  local out, i, n = {}, 1, #s
  while i <= n do
    local c = byte(s, i)
    local len = (c < 0x80 and 1) or (c >= 0xC2 and c <= 0xDF and 2) or (c >= 0xE0 and c <= 0xEF and 3)
      or (c >= 0xF0 and c <= 0xF4 and 4) or 0
    local ok = len > 0 and i + len - 1 <= n
    if ok and len > 1 then
      for k = i + 1, i + len - 1 do
        local cc = byte(s, k)
        if cc < 0x80 or cc > 0xBF then ok = false break end
      end
      if ok then
        local c2 = byte(s, i + 1)
        if (c == 0xE0 and c2 < 0xA0) or (c == 0xED and c2 > 0x9F)
          or (c == 0xF0 and c2 < 0x90) or (c == 0xF4 and c2 > 0x8F) then ok = false end
      end
    end
    if ok then out[#out + 1] = sub(s, i, i + len - 1) i = i + len
    else out[#out + 1] = "\239\191\189" i = i + 1 end
  end
  return concat(out)
end

local ESC = { ['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f', ['\n'] = '\\n',
  ['\r'] = '\\r', ['\t'] = '\\t' }
local function json_str(s)
  -- The content of a JSON string literal (without the quotes).
  return (string.gsub(utf8_clean(s), '[%z\1-\31"\\\127]', function(c)
    return ESC[c] or format("\\u%04x", byte(c))
  end))
end

local function shorten(s)
  if #s > 200 then return sub(s, 1, 200) .. "..." end
  return s
end

-- ------------------------------------------------------------------ JSON parser
-- Errors are raised as tables: { kind = "unknown"|"depth"|"malformed", ... }.
local parse_value

local function malformed(pos, what)
  error({ kind = "malformed", pos = pos, what = what }, 0)
end

local function skip_ws(s, i)
  local _, e = find(s, "^[ \t\r\n]+", i)
  if e then return e + 1 end
  return i
end

local function utf8_char(cp)
  if cp < 0x80 then return char(cp) end
  if cp < 0x800 then return char(0xC0 + math.floor(cp / 0x40), 0x80 + cp % 0x40) end
  if cp < 0x10000 then
    return char(0xE0 + math.floor(cp / 0x1000), 0x80 + math.floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
  end
  return char(0xF0 + math.floor(cp / 0x40000), 0x80 + math.floor(cp / 0x1000) % 0x40,
    0x80 + math.floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
end

local SIMPLE = { ['"'] = '"', ["'"] = "'", ['\\'] = '\\', ['/'] = '/', b = '\b', f = '\f', n = '\n',
  r = '\r', t = '\t' }

-- Parse a string starting at s[i] (the opening quote, " or '); returns (decoded, next index).
local function parse_string(s, i)
  local q = sub(s, i, i)
  local stop = (q == '"') and '["\\]' or "['\\]"
  local j = i + 1
  local e = find(s, stop, j)
  if not e then malformed(i, "unterminated string") end
  if sub(s, e, e) == q then return sub(s, j, e - 1), e + 1 end  -- fast path: no escapes
  local buf = {}
  while true do
    e = find(s, stop, j)
    if not e then malformed(i, "unterminated string") end
    buf[#buf + 1] = sub(s, j, e - 1)
    local c = sub(s, e, e)
    if c == q then return concat(buf), e + 1 end
    local x = sub(s, e + 1, e + 1)
    if x == "u" then
      local hex = sub(s, e + 2, e + 5)
      if not find(hex, "^%x%x%x%x$") then malformed(e, "bad \\u escape") end
      local cp = tonumber(hex, 16)
      j = e + 6
      if cp >= 0xD800 and cp <= 0xDBFF then
        local lo = sub(s, j, j + 1) == "\\u" and sub(s, j + 2, j + 5)
        local lcp = lo and find(lo, "^%x%x%x%x$") and tonumber(lo, 16)
        if lcp and lcp >= 0xDC00 and lcp <= 0xDFFF then
          cp = 0x10000 + (cp - 0xD800) * 0x400 + (lcp - 0xDC00)
          j = j + 6
        else
          cp = 0xFFFD  -- lone high surrogate
        end
      elseif cp >= 0xDC00 and cp <= 0xDFFF then
        cp = 0xFFFD  -- lone low surrogate
      end
      buf[#buf + 1] = utf8_char(cp)
    elseif x ~= "" then
      buf[#buf + 1] = SIMPLE[x] or x  -- lenient: unknown escapes stand for themselves
      j = e + 2
    else
      malformed(e, "unterminated string")
    end
  end
end

-- Skip a string value (only keys need decoding); returns the index after the closing quote.
-- Plain find() of the quote is a memchr; a quote preceded by an odd number of backslashes is
-- escaped. (A pattern class such as '["\]' is matched byte by byte: ~20x slower on 60 KB.)
local function skip_string(s, i)
  local q = sub(s, i, i)
  local j = i + 1
  while true do
    local e = find(s, q, j, true)
    if not e then malformed(i, "unterminated string") end
    local k = e - 1
    while k > i and byte(s, k) == 92 do k = k - 1 end  -- 92 = backslash
    if (e - 1 - k) % 2 == 0 then return e + 1 end
    j = e + 1
  end
end

local next_bs = 0  -- position of the next backslash at or after the current key (false: none)

local function unknown(path, key, node)
  error({ kind = "unknown", path = path, key = key, node = node }, 0)
end

local function join(path, key)
  if path == "" then return key end
  return path .. "." .. key
end

-- node: schema node (table with .keys) to check an object against, or nil (anything goes).
local function parse_object(s, i, node, path, depth)
  -- s[i] == "{"
  i = skip_ws(s, i + 1)
  if sub(s, i, i) == "}" then return i + 1 end
  while true do
    local c = sub(s, i, i)
    local key
    if c == '"' or c == "'" then
      local e = skip_string(s, i)  -- fast scan to the end; decode only when escaped
      -- next_bs caches the next backslash in the body, so the total scanning stays O(n).
      if next_bs ~= false and next_bs <= i then next_bs = find(s, "\\", i + 1, true) or false end
      if next_bs and next_bs < e then
        key, i = parse_string(s, i)
      else
        key, i = sub(s, i + 1, e - 2), e
      end
    else
      -- Lenient: a bare (unquoted) key, as protobuf's JSON stream parser accepts.
      local _, e = find(s, "^[%w_$]+", i)
      if not e then malformed(i, "expected key") end
      key, i = sub(s, i, e), e + 1
    end
    local child = true
    if node then
      child = node.keys[key]
      if child == nil then
        if node.bound[key] then error({ kind = "bound", path = path, key = key }, 0) end
        unknown(path, key, node)
      end
    end
    i = skip_ws(s, i)
    if sub(s, i, i) ~= ":" then malformed(i, "expected ':'") end
    i = parse_value(s, skip_ws(s, i + 1), child ~= true and child or nil, join(path, key), depth)
    i = skip_ws(s, i)
    c = sub(s, i, i)
    if c == "," then
      i = skip_ws(s, i + 1)
      if sub(s, i, i) == "}" then return i + 1 end  -- lenient: trailing comma
    elseif c == "}" then
      return i + 1
    else
      malformed(i, "expected ',' or '}'")
    end
  end
end

local function parse_array(s, i, node, path, depth)
  -- s[i] == "["; node applies to every element (repeated message field).
  i = skip_ws(s, i + 1)
  if sub(s, i, i) == "]" then return i + 1 end
  local n = 0
  while true do
    i = parse_value(s, i, node, path .. "[" .. n .. "]", depth)
    n = n + 1
    i = skip_ws(s, i)
    local c = sub(s, i, i)
    if c == "," then
      i = skip_ws(s, i + 1)
      if sub(s, i, i) == "]" then return i + 1 end
    elseif c == "]" then
      return i + 1
    else
      malformed(i, "expected ',' or ']'")
    end
  end
end

parse_value = function(s, i, node, path, depth)
  local c = sub(s, i, i)
  if c == "{" then
    if depth >= MAX_DEPTH then error({ kind = "depth" }, 0) end
    return parse_object(s, i, node, path, depth + 1)
  elseif c == "[" then
    if depth >= MAX_DEPTH then error({ kind = "depth" }, 0) end
    return parse_array(s, i, node, path, depth + 1)
  elseif c == '"' or c == "'" then
    return skip_string(s, i)
  end
  -- number / true / false / null (lenient: any bare word such as NaN, -Infinity, 1e5).
  local _, e = find(s, "^[%w_.+-]+", i)
  if not e then malformed(i, "unexpected character") end
  return e + 1
end

-- Checks a whole body; returns nil when fine (or not ours to judge), else (status, code, message).
-- A non-table error is a bug in this script: returned as (nil, nil, nil, err) and logged, and the
-- request passes (fail open: the transcoder still validates everything but unknown keys).
local function check(s, node)
  next_bs = 0
  local ok, err = pcall(function()
    local i = skip_ws(s, 1)
    if sub(s, 1, 3) == "\239\187\191" then i = skip_ws(s, 4) end  -- UTF-8 BOM
    if sub(s, i, i) ~= "{" then return end  -- not an object: the transcoder decides
    parse_value(s, i, node, "", 0)
    -- Trailing bytes: the transcoder's concern; the object itself has been checked.
  end)
  if ok then return nil end
  if type(err) ~= "table" then return nil, nil, nil, tostring(err) end
  if err.kind == "unknown" then
    return "400", 3, 'unknown field "' .. json_str(shorten(join(err.path, err.key)))
      .. '" in request body (allowed: ' .. err.node.allowed .. ')'
  elseif err.kind == "bound" then
    return "400", 3, 'field "' .. json_str(shorten(join(err.path, err.key)))
      .. '" is bound by the URL path and must not be in the request body'
  elseif err.kind == "depth" then
    return "400", 3, "request body nested deeper than " .. MAX_DEPTH .. " levels"
  end
  return nil  -- malformed: the transcoder rejects it with its own 400
end

local function reject(handle, status, code, message)
  if REPLY_JSON then
    handle:respond({ [":status"] = status, ["content-type"] = "application/json" },
      '{"code":' .. code .. ',"message":"' .. json_str(message) .. '"}')
  else
    -- local_reply_config renders {"code": ..., "message": <this body>, ...} from the status.
    handle:respond({ [":status"] = status, ["content-type"] = "text/plain" }, message)
  end
end

local function find_route(method, path)
  path = string.gsub(path, "[?#].*$", "")
  path = string.gsub(path, "//+", "/")
  if #path > 1 then path = string.gsub(path, "/+$", "") end
  for _, r in ipairs(ROUTES) do
    if r.method == method and find(path, r.pattern) then return r end
  end
  return nil
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local method = headers:get(":method")
  if method == nil or SKIP[method] then return end
  local ctype = headers:get("content-type")
  if ctype and find(string.lower(ctype), "^%s*application/grpc") then return end
  local route = find_route(method, headers:get(":path") or "")
  if route == nil then return end
  local body = handle:body()
  if body == nil then return end
  local n = body:length()
  if n == 0 then return end
  if n > MAX_BODY then
    reject(handle, "413", 8, "request body larger than " .. MAX_BODY .. " bytes")
    return
  end
  local status, code, message, bug = check(body:getBytes(0, n), route.node)
  if status then
    reject(handle, status, code, message)
  elseif bug then
    handle:logErr("sentinel.strict_json: check failed, request let through: " .. bug)
  end
end
"""


def lua_source(*, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, local_reply_json: bool = False,
               rpcs: Iterable[contracts.Rpc] | None = None, extra_source: str = "") -> str:
    """The Lua script: the generated schema tables followed by the fixed runtime.

    ``local_reply_json``: the connection manager's ``local_reply_config`` already turns local
    replies into ``{"code": ..., "message": "%LOCAL_REPLY_BODY%", ...}`` (the Sentinel gateway
    does, keyed on the status: 400 → 3, 413 → 8). Envoy routes a Lua ``respond()`` through it,
    so the script must then send the bare message as ``text/plain``; otherwise (False) it sends
    the JSON body itself. ``rpcs``: the contracts' by default (tests pass synthetic ones).
    ``extra_source``: more Lua appended (e.g. an ``envoy_on_response``), so one filter, one Lua
    call per request, serves both.
    """
    header = ("-- GENERATED by sentinel.gateway.strict_json from the proto contracts: do not edit.\n"
              "-- Rejects unknown JSON keys in REST request bodies before grpc_json_transcoder.\n")
    runtime = (_LUA_RUNTIME.replace("__MAX_DEPTH__", str(MAX_JSON_DEPTH))
               .replace("__MAX_BODY__", str(int(max_body_bytes)))
               .replace("__REPLY_JSON__", "false" if local_reply_json else "true"))
    return header + _schema_table(routes(rpcs)) + "\n" + runtime + extra_source


def lua_filter(*, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, local_reply_json: bool = False,
               extra_source: str = "") -> dict[str, Any]:
    """The ``http_filters`` entry; put it right before ``envoy.filters.http.grpc_json_transcoder``.

    In the Sentinel gateway (which has a JSON ``local_reply_config``) use
    ``lua_filter(max_body_bytes=cfg.max_request_bytes, local_reply_json=True)``.
    """
    return {
        "name": FILTER_NAME,
        "typed_config": {
            "@type": LUA_FILTER_TYPE,
            "default_source_code": {"inline_string": lua_source(max_body_bytes=max_body_bytes,
                                                                local_reply_json=local_reply_json,
                                                                extra_source=extra_source)},
        },
    }
