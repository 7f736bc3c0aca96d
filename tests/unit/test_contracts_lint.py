"""Policy lint of the proto contracts (DESIGN.md §3), read from ``sentinel.platform.contracts``.

Each rule is a function ``Rpc -> list[problem]`` so that it can be run against a doctored RPC
(see the ``test_lint_reports_*`` tests at the end) as well as against every real one.
Known violations are listed in ``KNOWN`` with a reason; they are strict xfails so the marker
has to go when the contract is fixed.
"""

from __future__ import annotations

import dataclasses
import re
import types
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

import pytest
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor, FileDescriptor
from sentinel.platform import contracts
from sentinel.platform.auth import PERMISSIONS
from sentinel.policy.v1 import policy_pb2

Rpc = contracts.Rpc
Rule = Callable[[Rpc], list[str]]

#: PUBLIC (unauthenticated) RPCs. Adding one here must be a conscious, reviewed decision.
PUBLIC_ALLOW_LIST = {
    "/sentinel.common.v1.HealthService/GetHealth",
    "/sentinel.user.v1.AuthService/Login",
    "/sentinel.user.v1.AuthService/RefreshToken",
    "/sentinel.user.v1.AuthService/GetJwks",
    # The invitee has no account yet; the single-use token is the credential.
    "/sentinel.user.v1.InvitationService/AcceptInvitation",
}
HTTP_PREFIXES = ("/api/v1/", "/.well-known/")
HTTP_BODY = "google.api.HttpBody"
#: Roles that can reach each scope (a permission only the wrong kind of role holds is dead).
TENANT_ROLES = ("viewer", "member", "admin", "owner", "platform_admin")
SCOPE_ROLES: dict[int, tuple[str, ...]] = {
    policy_pb2.TENANT_SCOPE_AUTHENTICATED: (*TENANT_ROLES, "service"),
    policy_pb2.TENANT_SCOPE_TENANT: TENANT_ROLES,
    policy_pb2.TENANT_SCOPE_PLATFORM: ("platform_admin",),
    policy_pb2.TENANT_SCOPE_INTERNAL: ("service",),
}


# --------------------------------------------------------------------------- helpers


def resolve_field(message: Descriptor, dotted: str) -> FieldDescriptor | None:
    """Follow ``a.b.c`` through singular message fields; None when a segment is missing."""
    desc: Descriptor | None = message
    field: FieldDescriptor | None = None
    for part in dotted.split("."):
        if desc is None:
            return None
        field = desc.fields_by_name.get(part)
        if field is None:
            return None
        desc = field.message_type if field.type == FieldDescriptor.TYPE_MESSAGE and not field.is_repeated else None
    return field


def is_string_field(field: FieldDescriptor | None) -> bool:
    return field is not None and field.type == FieldDescriptor.TYPE_STRING and not field.is_repeated


def has_field(message: Descriptor, name: str, kind: int) -> bool:
    field = message.fields_by_name.get(name)
    return field is not None and field.type == kind and not field.is_repeated


# --------------------------------------------------------------------------- per-RPC rules


def rule_scope_specified(rpc: Rpc) -> list[str]:
    if rpc.policy.tenant_scope == policy_pb2.TENANT_SCOPE_UNSPECIFIED:
        return [f"{rpc.full_method}: tenant_scope is UNSPECIFIED"]
    if rpc.policy.tenant_scope not in policy_pb2.TenantScope.values():
        return [f"{rpc.full_method}: unknown tenant_scope {rpc.policy.tenant_scope}"]
    return []


def rule_permission_granted(rpc: Rpc) -> list[str]:
    """Non-PUBLIC: a permission held by a role that can reach the scope.

    Self-service AUTHENTICATED RPCs (WhoAmI, Logout) declare ``session.self``, which every
    human role holds; the policy interceptor refuses a non-public RPC that declares none.
    """
    p = rpc.policy
    if rpc.public:
        return [f"{rpc.full_method}: PUBLIC RPC declares permission {p.permission!r}"] if p.permission else []
    if not p.permission:
        return [f"{rpc.full_method}: non-public RPC without a permission"]
    roles = SCOPE_ROLES.get(p.tenant_scope, ())
    if not any(p.permission in PERMISSIONS.get(role, frozenset()) for role in roles):
        return [f"{rpc.full_method}: no role of {roles} grants {p.permission!r}"]
    return []


def rule_permission_strict(rpc: Rpc) -> list[str]:
    """policy.proto: permission is 'Empty only for PUBLIC'."""
    if not rpc.public and not rpc.policy.permission:
        return [f"{rpc.full_method}: permission is empty but the scope is not PUBLIC"]
    return []


#: Public mutating RPCs run before any tenant is known, so the kernel cannot key a replay to
#: a tenant; each is safe to repeat for its own reason.
NOT_DEDUPLICATED = {
    "/sentinel.user.v1.AuthService/Login": "a repeat opens one more session, nothing else",
    "/sentinel.user.v1.AuthService/RefreshToken": "a spent token is refused (rotation)",
    "/sentinel.user.v1.InvitationService/AcceptInvitation": "the token works once",
}


def rule_mutating_audited_and_idempotent(rpc: Rpc) -> list[str]:
    """Every mutating RPC is audited and idempotent: ``idempotent: true`` and a string
    ``request_id`` field, which the kernel's interceptor deduplicates (issue 2, item 7).

    Only the public RPCs of NOT_DEDUPLICATED are exempt; server-streaming ones (exports) are
    reads that are audited.
    """
    if not rpc.mutating:
        return []
    problems = []
    p = rpc.policy
    if not p.audit_action:
        problems.append(f"{rpc.full_method}: mutating RPC without audit_action")
    if rpc.streaming or (rpc.public and rpc.full_method in NOT_DEDUPLICATED):
        return problems
    if not p.idempotent:
        problems.append(f"{rpc.full_method}: mutating RPC not declared idempotent")
    if not is_string_field(rpc.method.input_type.fields_by_name.get("request_id")):
        problems.append(f"{rpc.full_method}: mutating RPC without a string request_id field")
    return problems


def rule_creates_take_request_id(rpc: Rpc) -> list[str]:
    """README: creates take ``request_id`` and repeats replay the first response."""
    if not rpc.method.name.startswith("Create"):
        return []
    problems = []
    if not is_string_field(rpc.method.input_type.fields_by_name.get("request_id")):
        problems.append(f"{rpc.full_method}: create RPC without a string request_id field")
    if not rpc.policy.idempotent:
        problems.append(f"{rpc.full_method}: create RPC not declared idempotent")
    if not rpc.mutating:
        problems.append(f"{rpc.full_method}: create RPC is not mutating (idempotency interceptor skips it)")
    return problems


def rule_audit_action_shape(rpc: Rpc) -> list[str]:
    action = rpc.policy.audit_action
    if action and not re.fullmatch(r"[a-z]+(_[a-z]+)*\.[a-z]+(_[a-z]+)*", action):
        return [f"{rpc.full_method}: audit_action {action!r} is not '<resource>.<verb>'"]
    return []


def rule_tenant_field(rpc: Rpc) -> list[str]:
    p = rpc.policy
    request = rpc.method.input_type
    problems = []
    if p.tenant_field:
        if p.tenant_scope != policy_pb2.TENANT_SCOPE_TENANT:
            problems.append(f"{rpc.full_method}: tenant_field set on a non-TENANT scope (ignored)")
        if not is_string_field(resolve_field(request, p.tenant_field)):
            problems.append(f"{rpc.full_method}: tenant_field {p.tenant_field!r} is not a string field "
                            f"of {request.full_name}")
    elif p.tenant_scope == policy_pb2.TENANT_SCOPE_TENANT and "tenant_id" in request.fields_by_name:
        # A tenant_id the policy never reads would be silently ignored for platform admins.
        problems.append(f"{rpc.full_method}: request has tenant_id but the policy has no tenant_field")
    return problems


def rule_http(rpc: Rpc) -> list[str]:
    problems = []
    request = rpc.method.input_type
    for h in rpc.http:
        if not h.path.startswith(HTTP_PREFIXES):
            problems.append(f"{rpc.full_method}: HTTP path {h.path} is outside {HTTP_PREFIXES}")
        if h.method == "GET" and h.body:
            problems.append(f"{rpc.full_method}: GET {h.path} has a body ({h.body!r})")
        if h.method == "GET" and not rpc.policy.idempotent:
            problems.append(f"{rpc.full_method}: GET {h.path} is not declared idempotent")
        for var in re.findall(r"\{([^}=]+)(?:=[^}]*)?\}", h.path):
            if resolve_field(request, var) is None:
                problems.append(f"{rpc.full_method}: path variable {{{var}}} is not a field of {request.full_name}")
        if h.body and h.body != "*" and resolve_field(request, h.body) is None:
            problems.append(f"{rpc.full_method}: body {h.body!r} is not a field of {request.full_name}")
    if rpc.http and rpc.policy.tenant_scope == policy_pb2.TENANT_SCOPE_INTERNAL:
        problems.append(f"{rpc.full_method}: INTERNAL RPC is exposed over HTTP")
    return problems


def rule_public_allow_list(rpc: Rpc) -> list[str]:
    if rpc.public and rpc.full_method not in PUBLIC_ALLOW_LIST:
        return [f"{rpc.full_method}: PUBLIC scope but not on the public allow-list"]
    return []


def rule_no_client_streaming(rpc: Rpc) -> list[str]:
    # interceptors.Chain passes client-streaming handlers through without authn/policy.
    if rpc.method.client_streaming:
        return [f"{rpc.full_method}: client-streaming RPCs bypass the interceptor chain"]
    return []


def rule_list_paginated(rpc: Rpc) -> list[str]:
    if not rpc.method.name.startswith("List"):
        return []
    problems = []
    request, response = rpc.method.input_type, rpc.method.output_type
    if not has_field(request, "page_size", FieldDescriptor.TYPE_INT32):
        problems.append(f"{rpc.full_method}: {request.name} lacks int32 page_size")
    if not has_field(request, "page_token", FieldDescriptor.TYPE_STRING):
        problems.append(f"{rpc.full_method}: {request.name} lacks string page_token")
    if not has_field(response, "next_page_token", FieldDescriptor.TYPE_STRING):
        problems.append(f"{rpc.full_method}: {response.name} lacks string next_page_token")
    return problems


def rule_message_names(rpc: Rpc) -> list[str]:
    problems = []
    name = rpc.method.name
    package = rpc.service.file.package
    request, response = rpc.method.input_type, rpc.method.output_type
    if request.full_name != f"{package}.{name}Request":
        problems.append(f"{rpc.full_method}: request is {request.full_name}, expected {package}.{name}Request")
    if response.full_name != HTTP_BODY and response.full_name != f"{package}.{name}Response":
        problems.append(f"{rpc.full_method}: response is {response.full_name}, expected {package}.{name}Response")
    return problems


PER_RPC_RULES: tuple[Rule, ...] = (
    rule_scope_specified,
    rule_permission_granted,
    rule_mutating_audited_and_idempotent,
    rule_creates_take_request_id,
    rule_audit_action_shape,
    rule_tenant_field,
    rule_http,
    rule_public_allow_list,
    rule_no_client_streaming,
    rule_list_paginated,
    rule_message_names,
)


# --------------------------------------------------------------------------- whole-catalog rules


def lint_unique_messages(rpcs: Iterable[Rpc]) -> list[str]:
    """Each request/response message belongs to exactly one RPC (HttpBody excepted)."""
    used = Counter()
    for rpc in rpcs:
        used[rpc.method.input_type.full_name] += 1
        if rpc.method.output_type.full_name != HTTP_BODY:
            used[rpc.method.output_type.full_name] += 1
    return [f"{name} is used by {n} RPCs" for name, n in sorted(used.items()) if n > 1]


def lint_unique_methods(rpcs: Iterable[Rpc]) -> list[str]:
    seen = Counter(r.full_method for r in rpcs)
    return [f"{m} is registered {n} times" for m, n in seen.items() if n > 1]


def lint_http_routes(rpcs: Iterable[Rpc]) -> list[str]:
    routes = Counter((h.method, re.sub(r"\{[^}]+\}", "{}", h.path)) for r in rpcs for h in r.http)
    return [f"HTTP route {m} {p} is bound {n} times" for (m, p), n in routes.items() if n > 1]


def lint_enum(enum: EnumDescriptor | tuple[str, list[tuple[str, int]]]) -> list[str]:
    """buf style: ``FOO_BAR_UNSPECIFIED = 0`` and every value prefixed ``FOO_BAR_``."""
    if isinstance(enum, tuple):
        name, values = enum
    else:
        name, values = enum.full_name, [(v.name, v.number) for v in enum.values]
    short = name.rsplit(".", 1)[-1]
    prefix = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", short).upper() + "_"
    problems = []
    zero = [n for n, number in values if number == 0]
    if zero != [prefix + "UNSPECIFIED"]:
        problems.append(f"{name}: zero value is {zero}, expected {prefix}UNSPECIFIED")
    problems += [f"{name}: value {n} lacks the prefix {prefix}" for n, _ in values if not n.startswith(prefix)]
    return problems


def sentinel_files() -> list[FileDescriptor]:
    seen: dict[str, FileDescriptor] = {}

    def visit(fd: FileDescriptor) -> None:
        if fd.name in seen or not fd.package.startswith("sentinel."):
            return
        seen[fd.name] = fd
        for dep in fd.dependencies:
            visit(dep)

    for mod in contracts.SERVICE_MODULES:
        visit(mod.DESCRIPTOR)
    return list(seen.values())


def all_enums() -> list[EnumDescriptor]:
    def nested(desc: Descriptor) -> Iterator[EnumDescriptor]:
        yield from desc.enum_types
        for inner in desc.nested_types:
            yield from nested(inner)

    out: list[EnumDescriptor] = []
    for fd in sentinel_files():
        out += fd.enum_types_by_name.values()
        for msg in fd.message_types_by_name.values():
            out += nested(msg)
    return out


def lint(rpcs: Iterable[Rpc]) -> list[str]:
    """Every per-RPC and catalog rule: the list a CI job would print."""
    rpcs = list(rpcs)
    problems = [p for rpc in rpcs for rule in PER_RPC_RULES for p in rule(rpc)]
    return problems + lint_unique_messages(rpcs) + lint_unique_methods(rpcs) + lint_http_routes(rpcs)


# --------------------------------------------------------------------------- the lint on the real contracts

RPCS = contracts.rpcs()

#: (rule, method name) → why it currently fails. Strict xfail: remove the entry once fixed.
#: Empty now; keep the mechanism for the next known finding.
KNOWN: dict[tuple[str, str], str] = {}


def _cases(rule: Rule) -> list[object]:
    cases = []
    for rpc in RPCS:
        reason = KNOWN.get((rule.__name__, rpc.method.name))
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        cases.append(pytest.param(rule, rpc, id=f"{rule.__name__}-{rpc.method.name}", marks=marks))
    return cases


@pytest.mark.parametrize(("rule", "rpc"), [c for rule in PER_RPC_RULES for c in _cases(rule)])
def test_rpc_policy(rule: Rule, rpc: Rpc) -> None:
    assert rule(rpc) == []


def test_contracts_are_not_empty() -> None:
    # Guards the parametrisation above against an empty registry passing vacuously.
    services = {r.service.full_name for r in RPCS}
    assert {"sentinel.tenant.v1.TenantService", "sentinel.user.v1.UserService",
            "sentinel.user.v1.AuthService", "sentinel.audit.v1.AuditService",
            "sentinel.scheduler.v1.SchedulerService", "sentinel.common.v1.HealthService"} <= services
    assert len(RPCS) >= 30


def test_policy_registry_covers_every_rpc() -> None:
    registry = contracts.policy_registry()
    assert set(registry) == {r.full_method for r in RPCS}
    for rpc in RPCS:
        assert contracts.rpc_for(rpc.full_method) is rpc
    assert contracts.rpc_for("/sentinel.user.v1.UserService/Nope") is None


def test_public_allow_list_is_exact() -> None:
    # Both directions: a listed RPC that stopped being public should be removed from the list too.
    assert {r.full_method for r in RPCS if r.public} == PUBLIC_ALLOW_LIST


def test_request_and_response_messages_are_unique() -> None:
    assert lint_unique_messages(RPCS) == []
    assert lint_unique_methods(RPCS) == []


def test_http_routes_are_unique() -> None:
    assert lint_http_routes(RPCS) == []


@pytest.mark.parametrize("enum", all_enums(), ids=lambda e: e.full_name)
def test_enum_style(enum: EnumDescriptor) -> None:
    assert lint_enum(enum) == []


def test_enums_found() -> None:
    names = {e.full_name for e in all_enums()}
    assert {"sentinel.common.v1.Role", "sentinel.policy.v1.TenantScope", "sentinel.tenant.v1.TenantState",
            "sentinel.audit.v1.SortOrder", "sentinel.scheduler.v1.JobState"} <= names


def test_permission_empty_only_for_public() -> None:
    assert [p for rpc in RPCS for p in rule_permission_strict(rpc)] == []


# --------------------------------------------------------------------------- the lint can fail


def _rpc(method: str) -> Rpc:
    return next(r for r in RPCS if r.method.name == method)


def _with_policy(rpc: Rpc, **changes: object) -> Rpc:
    policy = policy_pb2.Policy()
    policy.CopyFrom(rpc.policy)
    for name, value in changes.items():
        setattr(policy, name, value)
    return dataclasses.replace(rpc, policy=policy)


def test_lint_is_clean_apart_from_known_findings() -> None:
    problems = lint(RPCS)
    expected = {m for (_, m) in KNOWN}
    assert all(any(f"/{m}:" in p for m in expected) for p in problems), problems
    if KNOWN:
        assert problems, "expected the known findings"


def test_self_service_rpcs_are_for_human_principals() -> None:
    # Every human role (platform admins included) can call WhoAmI/Logout; service tokens cannot.
    for name in ("WhoAmI", "Logout"):
        rpc = _rpc(name)
        assert rpc.policy.tenant_scope == policy_pb2.TENANT_SCOPE_AUTHENTICATED
        assert all(rpc.policy.permission in PERMISSIONS[role] for role in TENANT_ROLES), name
        assert rpc.policy.permission not in PERMISSIONS["service"], name


def test_verify_audit_chain_is_a_read() -> None:
    rpc = _rpc("VerifyAuditChain")
    assert not rpc.mutating
    assert [(h.method, h.path, h.body) for h in rpc.http] == [("GET", "/api/v1/audit:verify", "")]


def test_lint_reports_mutating_rpc_without_audit_action() -> None:
    broken = _with_policy(_rpc("CreateUser"), audit_action="")
    problems = lint([broken])
    assert any("mutating RPC without audit_action" in p for p in problems), problems


def test_lint_reports_mutating_rpc_that_is_not_idempotent() -> None:
    broken = _with_policy(_rpc("DeleteUser"), idempotent=False)
    problems = rule_mutating_audited_and_idempotent(broken)
    assert any("not declared idempotent" in p for p in problems), problems


def test_lint_reports_mutating_rpc_without_request_id() -> None:
    rpc = _rpc("DeleteUser")
    without = dataclasses.replace(rpc, method=_rpc("GetUser").method)  # GetUserRequest: no request_id
    broken = _with_policy(without, audit_action="user.delete")
    assert any("without a string request_id" in p for p in rule_mutating_audited_and_idempotent(broken))


def test_lint_exempts_only_the_listed_public_rpcs() -> None:
    assert rule_mutating_audited_and_idempotent(_rpc("Login")) == []
    assert not _rpc("Login").policy.idempotent
    assert set(NOT_DEDUPLICATED) <= PUBLIC_ALLOW_LIST


def test_lint_reports_create_without_idempotency() -> None:
    broken = _with_policy(_rpc("CreateTenant"), idempotent=False)
    assert any("not declared idempotent" in p for p in rule_creates_take_request_id(broken))


def test_lint_reports_unspecified_scope() -> None:
    broken = _with_policy(_rpc("GetUser"), tenant_scope=policy_pb2.TENANT_SCOPE_UNSPECIFIED)
    assert rule_scope_specified(broken)


def test_lint_reports_ungranted_or_missing_permission() -> None:
    assert rule_permission_granted(_with_policy(_rpc("GetUser"), permission="users.impersonate"))
    assert rule_permission_granted(_with_policy(_rpc("GetUser"), permission=""))
    # Only platform admins reach PLATFORM scope: a permission only tenants hold is dead.
    assert rule_permission_granted(_with_policy(_rpc("CreateTenant"), permission="audit.append"))


def test_lint_reports_new_public_rpc() -> None:
    broken = _with_policy(_rpc("ListUsers"), tenant_scope=policy_pb2.TENANT_SCOPE_PUBLIC, permission="")
    assert any("allow-list" in p for p in lint([broken]))


def test_lint_reports_bad_tenant_field() -> None:
    assert rule_tenant_field(_with_policy(_rpc("GetUser"), tenant_field="tenant"))
    assert rule_tenant_field(_with_policy(_rpc("UpdateTenant"), tenant_field="tenant.nope"))
    # A path through a non-string leaf (an enum) is not a tenant id either.
    assert rule_tenant_field(_with_policy(_rpc("UpdateTenant"), tenant_field="tenant.plan"))
    assert rule_tenant_field(_with_policy(_rpc("GetUser"), tenant_field=""))  # request has tenant_id
    assert rule_tenant_field(_rpc("UpdateTenant")) == []  # the dotted path works


def test_lint_reports_bad_http_bindings() -> None:
    rpc = _rpc("GetUser")
    get = rpc.http[0]
    assert rule_http(dataclasses.replace(rpc, http=(dataclasses.replace(get, path="/v1/users/{id}"),)))
    assert rule_http(dataclasses.replace(rpc, http=(dataclasses.replace(get, body="*"),)))
    assert rule_http(dataclasses.replace(rpc, http=(dataclasses.replace(get, path="/api/v1/users/{uid}"),)))


def test_lint_reports_unpaginated_list_and_misnamed_messages() -> None:
    assert rule_list_paginated(_rpc("ListPeriodicJobs")) == []
    # A List* RPC whose messages lack all three fields (GetJwks' request and response have none).
    jwks = _rpc("GetJwks").method
    fake = types.SimpleNamespace(name="ListThings", input_type=jwks.input_type, output_type=jwks.output_type)
    assert len(rule_list_paginated(dataclasses.replace(_rpc("ListPeriodicJobs"), method=fake))) == 3
    # A second RPC reusing CreateUser's messages: the uniqueness rule catches it.
    other = _rpc("CreateUser")
    broken = dataclasses.replace(_rpc("GetUser"), method=other.method)
    assert lint_unique_messages([other, broken])
    assert lint_unique_methods([other, broken])
    assert rule_message_names(dataclasses.replace(_rpc("GetUser"), service=_rpc("CreateTenant").service))


def test_lint_reports_bad_enums() -> None:
    assert lint_enum(("pkg.Color", [("COLOR_RED", 0), ("COLOR_BLUE", 1)]))
    assert lint_enum(("pkg.Color", [("COLOR_UNSPECIFIED", 0), ("BLUE", 1)]))
    assert lint_enum(("pkg.JobState", [("JOB_UNSPECIFIED", 0)]))
    assert lint_enum(("pkg.JobState", [("JOB_STATE_UNSPECIFIED", 0), ("JOB_STATE_DONE", 1)])) == []
