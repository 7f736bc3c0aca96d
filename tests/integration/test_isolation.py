"""The isolation suite, generated from the proto descriptors (DESIGN.md §10).

For every RPC, the owner of tenant B (the most privileged tenant role) attacks tenant A:
A's ids in every id-like field, A's tenant id in ``tenant_id``, A's page tokens, over gRPC
(direct to the service) and over REST (through Envoy). Nothing of A may come back, nothing
of A may change, and "A's" must look exactly like "does not exist". A new RPC is covered
without editing this file, as long as its fields follow the naming conventions below.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from sentinel.platform import contracts
from sentinel.policy.v1 import policy_pb2

from tests.integration.clients import Principal, new_request, rest_call, unary
from tests.integration.conftest import PASSWORD, World, audit_settled, login

pytestmark = pytest.mark.integration

#: Services whose API is not implemented yet answer UNIMPLEMENTED; nothing to prove there.
IMPLEMENTED = {"sentinel.tenant.v1.TenantService", "sentinel.user.v1.UserService",
               "sentinel.user.v1.AuthService", "sentinel.user.v1.ServiceAccountService",
               "sentinel.user.v1.InvitationService", "sentinel.audit.v1.AuditService",
               "sentinel.scheduler.v1.SchedulerService"}
#: RPCs of implemented services that still answer UNIMPLEMENTED (the rest of their issue).
PENDING: set[str] = set()
PROCESS = {"tenant": "tenant", "user": "user", "audit": "audit", "scheduler": "scheduler", "common": "tenant"}

TENANT_RPCS = [r for r in contracts.rpcs() if not r.public and not r.streaming]


def process_of(rpc: contracts.Rpc) -> str:
    return PROCESS[rpc.service.full_name.split(".")[1]]


def resource_id(world: World, rpc: contracts.Rpc) -> str:
    """The id of A's resource that this RPC's service manages."""
    if rpc.service.name == "TenantService":
        return world.a.id
    if rpc.service.name == "UserService":
        return world.a.member.user_id
    if rpc.service.name == "AuditService":
        return world.a.audit_event_id
    if rpc.service.name == "InvitationService":
        return world.a.invitation_id
    if rpc.service.name == "ServiceAccountService":
        return world.a.api_key_id if "ApiKey" in rpc.method.name else world.a.service_account_id
    if rpc.service.name == "SchedulerService":
        return world.a.job_id
    return str(uuid.uuid4())


def fill(message: Message, world: World, rpc: contracts.Rpc, page_token: str) -> None:
    """Populate a request with A's identifiers and otherwise valid values."""
    for field in message.DESCRIPTOR.fields:
        name = field.name
        if field.is_repeated:
            if name == "scopes":
                getattr(message, name).append("users.read")
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.full_name.startswith("sentinel."):
                fill(getattr(message, name), world, rpc, page_token)
            continue
        if field.type == FieldDescriptor.TYPE_ENUM and name == "role":
            setattr(message, name, field.enum_type.values_by_name["ROLE_VIEWER"].number)  # the humblest
            continue
        if field.type == FieldDescriptor.TYPE_ENUM and name == "kind" and "JOB_KIND_TENANT_EXPORT" in \
                field.enum_type.values_by_name:  # a job that would carry A's data out, if it could
            setattr(message, name, field.enum_type.values_by_name["JOB_KIND_TENANT_EXPORT"].number)
            continue
        if field.type != FieldDescriptor.TYPE_STRING:
            continue
        value = {
            "id": resource_id(world, rpc),
            "tenant_id": world.a.id,
            "service_account_id": world.a.service_account_id,
            "page_token": page_token,
            "email": f"probe-{uuid.uuid4().hex[:8]}@example.com",
            "password": PASSWORD,
            "display_name": "isolation probe",
            "slug": f"probe-{uuid.uuid4().hex[:8]}",
            "request_id": uuid.uuid4().hex,
        }.get(name)
        if value is not None:
            setattr(message, name, value)


def a_markers(world: World) -> list[str]:
    return [world.a.id, world.a.slug, *world.a.user_ids, world.a.service_account_id, world.a.api_key_id,
            world.a.invitation_id, world.a.audit_event_id, world.a.job_id]


def aims_at_a(world: World, request: Message) -> bool:
    """Whether the filled request names anything of A (an id, a tenant id)."""
    text = json_format.MessageToJson(request)
    return any(marker in text for marker in a_markers(world))


async def a_snapshot(world: World) -> str:
    """Everything A can see of itself, as A sees it (etags change on any write), its audit trail
    included: an attack by B must leave no trace in A's trail (B's own trail records it)."""
    await audit_settled()
    parts = []
    for rpc in contracts.rpcs():
        if rpc.method.name in {"GetTenant", "ListUsers", "ListTenants", "ListServiceAccounts", "ListApiKeys",
                               "ListInvitations", "ListAuditEvents", "ListJobs"}:
            req = new_request(rpc)
            if "id" in req.DESCRIPTOR.fields_by_name:
                req.id = world.a.id  # type: ignore[attr-defined]
            if "service_account_id" in req.DESCRIPTOR.fields_by_name:
                req.service_account_id = world.a.service_account_id  # type: ignore[attr-defined]
            reply = await unary(world.channels[process_of(rpc)], rpc, req, world.a.owner.token)
            parts.append(json_format.MessageToJson(reply, sort_keys=True))
    return "\n".join(parts)


async def a_page_token(world: World, rpc: contracts.Rpc) -> str:
    """A real page token minted for A by the list RPC (empty if this RPC does not page)."""
    req = new_request(rpc)
    if "page_size" not in req.DESCRIPTOR.fields_by_name or rpc.service.full_name not in IMPLEMENTED \
            or rpc.full_method in PENDING or rpc.policy.tenant_scope == policy_pb2.TENANT_SCOPE_PLATFORM:
        return ""  # (A's owner cannot list what only platform administrators may)
    req.page_size = 1  # type: ignore[attr-defined]
    if "service_account_id" in req.DESCRIPTOR.fields_by_name:
        req.service_account_id = world.a.service_account_id  # type: ignore[attr-defined]
    reply = await unary(world.channels[process_of(rpc)], rpc, req, world.a.owner.token)
    return str(getattr(reply, "next_page_token", ""))


def without_own_attempts(world: World, payload: str) -> str:
    """B's trail records B's refused attempts on A's resources, with the ids B itself sent: that
    is B's own data. Those events (B's tenant, B's actor, not a success) are left out before the
    leak check; anything else of A's anywhere in the reply still fails it."""
    if '"events"' not in payload:
        return payload
    body = json.loads(payload)

    def own_attempt(event: dict[str, Any]) -> bool:
        actor = event.get("actor", {})
        return (event.get("tenantId", event.get("tenant_id")) == world.b.id
                and not actor.get("tenantId", actor.get("tenant_id"))
                and event.get("outcome") in ("OUTCOME_DENIED", "OUTCOME_FAILURE"))

    body["events"] = [e for e in body.get("events", []) if not own_attempt(e)]
    return json.dumps(body)


def assert_nothing_of_a(world: World, payload: str, where: str) -> None:
    payload = without_own_attempts(world, payload)
    for marker in a_markers(world):
        assert marker not in payload, f"{where} leaked tenant A's {marker}"


async def attacker(world: World, credential: str) -> Principal:
    """B's most privileged credential of the given kind."""
    if credential == "api_key":
        assert world.b.api_key is not None
        return world.b.api_key
    return await fresh_session(world)


async def fresh_session(world: World) -> Principal:
    """B's owner in a session of this test's own: an RPC that ends its session (Logout) or
    changes it must not disarm the attacker of the next test."""
    token, user_id = await login(world.channels["user"], world.b.slug, f"owner@{world.b.slug}.example.com",
                                 PASSWORD)
    return Principal("bravo-owner", world.b.id, user_id, token)


def rpc_id(rpc: contracts.Rpc) -> str:
    return f"{rpc.service.name}.{rpc.method.name}"


@pytest.mark.parametrize("credential", ["session", "api_key"])
@pytest.mark.parametrize("rpc", TENANT_RPCS, ids=rpc_id)
async def test_grpc_cross_tenant(world: World, rpc: contracts.Rpc, credential: str) -> None:
    if rpc.service.full_name not in IMPLEMENTED:
        pytest.skip(f"{rpc.service.full_name} is not implemented yet (health only)")
    if rpc.full_method in PENDING:
        pytest.skip(f"{rpc.full_method} is not implemented yet")
    before = await a_snapshot(world)
    channel = world.channels[process_of(rpc)]
    who = await attacker(world, credential)
    tokens = [""]
    if "page_token" in rpc.method.input_type.fields_by_name:
        tokens.append(await a_page_token(world, rpc))
    for token in dict.fromkeys(tokens):
        request = new_request(rpc)
        fill(request, world, rpc, token)
        try:
            reply = await unary(channel, rpc, request, who.token)
        except grpc.aio.AioRpcError as err:
            if rpc.policy.tenant_scope in (policy_pb2.TENANT_SCOPE_PLATFORM, policy_pb2.TENANT_SCOPE_INTERNAL) or (
                    credential == "api_key" and err.code() == grpc.StatusCode.PERMISSION_DENIED):
                # Platform and internal RPCs are refused; a key lacks session.self and what admins lack.
                assert err.code() == grpc.StatusCode.PERMISSION_DENIED
                continue
            allowed = {grpc.StatusCode.NOT_FOUND}
            if token or not aims_at_a(world, request):
                # A's page token is refused; a self-service request (nothing of A in it, e.g.
                # ChangePassword) may fail on its own unfilled fields.
                allowed.add(grpc.StatusCode.INVALID_ARGUMENT)
            assert err.code() in allowed, f"{rpc_id(rpc)}: {err.code()} {err.details()}"
            continue
        assert rpc.policy.tenant_scope not in (policy_pb2.TENANT_SCOPE_PLATFORM, policy_pb2.TENANT_SCOPE_INTERNAL), \
            "B's owner ran a platform or internal RPC"
        assert_nothing_of_a(world, json_format.MessageToJson(reply), rpc_id(rpc))
    assert await a_snapshot(world) == before, f"{rpc_id(rpc)} changed tenant A"


@pytest.mark.parametrize("rpc", [r for r in TENANT_RPCS if r.http], ids=rpc_id)
async def test_rest_cross_tenant(world: World, stack: Any, rpc: contracts.Rpc) -> None:
    if rpc.service.full_name not in IMPLEMENTED:
        pytest.skip(f"{rpc.service.full_name} is not implemented yet (health only)")
    if rpc.full_method in PENDING:
        pytest.skip(f"{rpc.full_method} is not implemented yet")
    before = await a_snapshot(world)
    token = await a_page_token(world, rpc) if "page_token" in rpc.method.input_type.fields_by_name else ""
    attacker = (await fresh_session(world)).token
    with httpx.Client(base_url=stack.rest_url, timeout=10) as client:
        for rule in rpc.http:
            for page_token in dict.fromkeys(["", token]):
                request = new_request(rpc)
                fill(request, world, rpc, page_token)
                response = rest_call(client, rule, request, attacker)
                where = f"{rule.method} {rule.path}"
                if rpc.policy.tenant_scope == policy_pb2.TENANT_SCOPE_PLATFORM:
                    assert response.status_code == 403, f"{where}: {response.status_code} {response.text}"
                    continue
                if response.status_code >= 400:
                    allowed = {404} | ({400} if page_token or not aims_at_a(world, request) else set())
                    assert response.status_code in allowed, f"{where}: {response.status_code} {response.text}"
                    assert response.json()["code"] in (5, 3)
                else:
                    assert_nothing_of_a(world, response.text, where)
    assert await a_snapshot(world) == before, f"{rpc_id(rpc)} changed tenant A over REST"


ID_RPCS = [r for r in TENANT_RPCS if r.service.full_name in IMPLEMENTED and r.full_method not in PENDING
           and r.policy.tenant_scope == policy_pb2.TENANT_SCOPE_TENANT
           and any(f in r.method.input_type.fields_by_name for f in ("id", "tenant", "user"))]


@pytest.mark.parametrize("rpc", ID_RPCS, ids=rpc_id)
async def test_not_yours_looks_like_missing(world: World, rpc: contracts.Rpc) -> None:
    """B probing A's id gets exactly what B gets for an id that does not exist."""
    channel = world.channels[process_of(rpc)]
    results = []
    for target in (resource_id(world, rpc), str(uuid.uuid4())):
        request = new_request(rpc)
        fill(request, world, rpc, "")
        _set_ids(request, target)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await unary(channel, rpc, request, world.b.owner.token)
        results.append((info.value.code(), (info.value.details() or "").replace(target, "<id>")))
    assert results[0] == results[1]
    assert results[0][0] == grpc.StatusCode.NOT_FOUND


def _set_ids(message: Message, value: str) -> None:
    for field in message.DESCRIPTOR.fields:
        if field.name == "id":
            message.id = value
        elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.full_name.startswith("sentinel.") \
                and not field.is_repeated:
            _set_ids(getattr(message, field.name), value)


async def test_login_cannot_cross_tenants(world: World) -> None:
    """A's credentials do not open B's tenant, and the error is the generic one."""
    from sentinel.user.v1 import user_service_pb2 as usp
    from sentinel.user.v1 import user_service_pb2_grpc as usg

    stub = usg.AuthServiceStub(world.channels["user"])
    email = f"owner@{world.a.slug}.example.com"
    with pytest.raises(grpc.aio.AioRpcError) as cross:
        await stub.Login(usp.LoginRequest(tenant=world.b.slug, email=email, password=PASSWORD))
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await stub.Login(usp.LoginRequest(tenant=world.b.slug, email="nobody@example.com", password=PASSWORD))
    assert cross.value.code() == unknown.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert cross.value.details() == unknown.value.details()


def test_suite_covers_every_tenant_rpc() -> None:
    """Guard: the generated suite really enumerates the contracts (not an empty list)."""
    names = {rpc_id(r) for r in TENANT_RPCS}
    assert {"UserService.GetUser", "UserService.ListUsers", "UserService.DeleteUser",
            "TenantService.UpdateTenant", "TenantService.DeleteTenant", "AuthService.WhoAmI"} <= names
    assert {rpc_id(r) for r in ID_RPCS} >= {"UserService.GetUser", "UserService.UpdateUser",
                                            "UserService.DeleteUser", "TenantService.GetTenant"}
