"""The interceptor chain (metrics, logging, errors, authn, policy, idempotency) on a real server.

A grpc.aio server on an ephemeral port runs the production chain (``default_chain``) in front
of stub servicers that record what the interceptors decided (principal, tenant, scope). Calls
that need no database are exercised end to end; the idempotency store is covered by its pure
helpers (the database path is in the integration suite).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import grpc
import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import empty_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY
from sentinel.audit.v1 import audit_pb2, audit_service_pb2, audit_service_pb2_grpc
from sentinel.platform import calls, contracts
from sentinel.platform.auth import PLATFORM_TENANT_ID, Principal, TokenSigner, TokenVerifier
from sentinel.platform.errors import (
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    SentinelError,
    Unauthenticated,
)
from sentinel.platform.interceptors import Chain, _peer_ip, default_chain
from sentinel.platform.interceptors.audit import AuditInterceptor, AuditTransaction
from sentinel.platform.interceptors.authn import AuthnInterceptor
from sentinel.platform.interceptors.errors import STATUS_DETAILS_KEY, ErrorsInterceptor
from sentinel.platform.interceptors.idempotency import (
    MAX_KEY_LENGTH,
    IdempotencyInterceptor,
    request_hash,
    request_key,
)
from sentinel.platform.interceptors.input import InputInterceptor, nul_fields
from sentinel.platform.interceptors.logging import LoggingInterceptor
from sentinel.platform.interceptors.metrics import MetricsInterceptor, method_label
from sentinel.platform.interceptors.policy import PolicyInterceptor, field_value
from sentinel.platform.interceptors.tracing import TracingInterceptor
from sentinel.platform.service_identity import ServiceTokens, ServiceVerifier
from sentinel.tenant.v1 import tenant_pb2, tenant_service_pb2, tenant_service_pb2_grpc
from sentinel.user.v1 import user_pb2, user_service_pb2, user_service_pb2_grpc

SERVICE = "ktest"
ISS, AUD = "sentinel-ktest", "sentinel-api-ktest"
TENANT_A = uuid.UUID("0190f6b4-8a5e-7c3d-9f1a-00000000000a")
TENANT_B = uuid.UUID("0190f6b4-8a5e-7c3d-9f1a-00000000000b")
USER = "0190f6b4-8a5e-7c3d-9f1a-000000000001"
HUMAN_ROLES = ("viewer", "member", "admin", "owner")
SECRET_DETAIL = "password=hunter2 at /srv/sentinel/secret.py"

#: What the servicers saw, one entry per handled call.
SEEN: list[dict[str, Any]] = []


def _record() -> calls.Call:
    call = calls.require_call()
    SEEN.append({
        "method": call.method, "tenant_id": call.tenant_id, "platform_scope": call.platform_scope,
        "db_tenant_id": call.db_tenant_id, "principal": call.principal, "request_id": call.request_id,
        "peer_ip": call.peer_ip, "user_agent": call.user_agent,
    })
    return call


# --------------------------------------------------------------------------- stub servicers


class Auth(user_service_pb2_grpc.AuthServiceServicer):
    async def WhoAmI(self, request: Any, context: Any) -> user_service_pb2.WhoAmIResponse:
        call = _record()
        assert call.principal is not None
        return user_service_pb2.WhoAmIResponse(user_id=call.principal.subject,
                                               tenant_id=str(call.principal.tenant_id))

    async def Logout(self, request: Any, context: Any) -> user_service_pb2.LogoutResponse:
        _record()
        return user_service_pb2.LogoutResponse()

    async def GetJwks(self, request: Any, context: Any) -> user_service_pb2.GetJwksResponse:
        _record()
        return user_service_pb2.GetJwksResponse()


class Users(user_service_pb2_grpc.UserServiceServicer):
    async def GetUser(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        call = _record()
        if request.id == "boom":
            raise RuntimeError(SECRET_DETAIL)
        if request.id == "conn":
            raise ConnectionRefusedError("database at 10.0.0.5:5432 refused the connection")
        if request.id == "invalid":
            raise InvalidArgument("id is bad", [FieldViolation("id", "not a UUID")], reason="BAD_ID")
        if request.id == "missing":
            raise NotFound("user not found")
        if request.id == "notimpl":
            raise NotImplementedError(SECRET_DETAIL)  # a handler bug, not an unimplemented method
        if request.id == "abort":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "aborted by the handler")
        if request.id == "slow":
            await asyncio.sleep(30)  # until the client gives up
        return user_service_pb2.GetUserResponse(user=user_pb2.User(id=request.id, tenant_id=str(call.tenant_id)))

    async def CreateUser(self, request: Any, context: Any) -> user_service_pb2.CreateUserResponse:
        call = _record()
        return user_service_pb2.CreateUserResponse(user=user_pb2.User(id="new", tenant_id=str(call.tenant_id)))


class Tenants(tenant_service_pb2_grpc.TenantServiceServicer):
    async def ListTenants(self, request: Any, context: Any) -> tenant_service_pb2.ListTenantsResponse:
        _record()
        return tenant_service_pb2.ListTenantsResponse()

    async def CreateTenant(self, request: Any, context: Any) -> tenant_service_pb2.CreateTenantResponse:
        _record()
        return tenant_service_pb2.CreateTenantResponse(tenant=tenant_pb2.Tenant(slug=request.slug))


class Audit(audit_service_pb2_grpc.AuditServiceServicer):
    async def AppendEvents(self, request: Any, context: Any) -> audit_service_pb2.AppendEventsResponse:
        _record()
        return audit_service_pb2.AppendEventsResponse(appended=len(request.events))

    async def StreamAuditEvents(self, request: Any,
                                context: Any) -> AsyncIterator[audit_service_pb2.StreamAuditEventsResponse]:
        call = _record()
        for seq in (1, 2):
            yield audit_service_pb2.StreamAuditEventsResponse(
                event=audit_pb2.AuditEvent(sequence=seq, tenant_id=str(call.tenant_id)))
        if request.after_sequence == 99:
            raise NotFound("the chain ended")


async def _ping(request: empty_pb2.Empty, context: Any) -> empty_pb2.Empty:
    _record()
    return empty_pb2.Empty()


# --------------------------------------------------------------------------- fixtures


SERVICE_KEYS = {name: Ed25519PrivateKey.generate() for name in ("tenant", "user")}


@dataclasses.dataclass
class Stack:
    channel: grpc.aio.Channel
    signer: TokenSigner

    def token(self, role: str = "admin", tenant: uuid.UUID = TENANT_A, subject: str = USER,
              session_id: str = "s-1") -> str:
        if role == "service":  # services sign with their own key (service_identity)
            name = subject.removeprefix("service:")
            return ServiceTokens(name, SERVICE_KEYS[name], issuer=ISS).token()
        return self.signer.sign(Principal(subject, tenant, role, session_id=session_id), ttl_seconds=300)

    def auth(self, role: str = "admin", tenant: uuid.UUID = TENANT_A, **kw: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token(role, tenant, **kw)}"),)

    @property
    def users(self) -> user_service_pb2_grpc.UserServiceStub:
        return user_service_pb2_grpc.UserServiceStub(self.channel)

    @property
    def authn(self) -> user_service_pb2_grpc.AuthServiceStub:
        return user_service_pb2_grpc.AuthServiceStub(self.channel)

    @property
    def tenants(self) -> tenant_service_pb2_grpc.TenantServiceStub:
        return tenant_service_pb2_grpc.TenantServiceStub(self.channel)

    @property
    def audit(self) -> audit_service_pb2_grpc.AuditServiceStub:
        return audit_service_pb2_grpc.AuditServiceStub(self.channel)


@pytest_asyncio.fixture(scope="module")
async def stack() -> AsyncIterator[Stack]:
    signer = TokenSigner("k1", Ed25519PrivateKey.generate(), issuer=ISS, audience=AUD)
    verifier = TokenVerifier({"k1": signer.public_key()}, issuer=ISS, audience=AUD)
    services = ServiceVerifier({n: k.public_key() for n, k in SERVICE_KEYS.items()}, issuer=ISS)
    server = grpc.aio.server(interceptors=[default_chain(SERVICE, verifier, services)])
    user_service_pb2_grpc.add_AuthServiceServicer_to_server(Auth(), server)
    user_service_pb2_grpc.add_UserServiceServicer_to_server(Users(), server)
    tenant_service_pb2_grpc.add_TenantServiceServicer_to_server(Tenants(), server)
    audit_service_pb2_grpc.add_AuditServiceServicer_to_server(Audit(), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("sentinel.test.v1.Probe", {
        "Ping": grpc.unary_unary_rpc_method_handler(
            _ping, request_deserializer=empty_pb2.Empty.FromString,
            response_serializer=empty_pb2.Empty.SerializeToString),
    }),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Stack(channel, signer)
    finally:
        await channel.close()
        await server.stop(None)


@pytest.fixture(autouse=True)
def clear_seen() -> Iterator[None]:
    SEEN.clear()
    yield
    SEEN.clear()


def _status(err: grpc.aio.AioRpcError) -> status_pb2.Status:
    for key, value in err.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY:
            assert isinstance(value, bytes)
            return status_pb2.Status.FromString(value)
    raise AssertionError(f"no {STATUS_DETAILS_KEY} in the trailers of {err!r}")


def _info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    info = error_details_pb2.ErrorInfo()
    assert _status(err).details[0].Unpack(info)
    return info


@contextlib.asynccontextmanager
async def _fails(code: grpc.StatusCode, reason: str | None = None) -> AsyncIterator[list[grpc.aio.AioRpcError]]:
    box: list[grpc.aio.AioRpcError] = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        yield box
    err = info.value
    box.append(err)
    assert err.code() == code, (err.code(), err.details())
    if reason is not None:
        assert _info(err).reason == reason
        assert _info(err).domain == f"sentinel.{SERVICE}"


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"service": SERVICE, **labels}) or 0.0


async def _settled() -> None:
    """Let the server side finish unwinding: the client sees an aborted call's status before
    the server's interceptors have left their scopes (where the metrics are recorded)."""
    for _ in range(50):
        if _sample("sentinel_requests_in_flight") == 0:
            return
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------- authentication


async def test_missing_token_is_unauthenticated(stack: Stack) -> None:
    async with _fails(grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING"):
        await stack.users.GetUser(user_service_pb2.GetUserRequest(id="u"))
    assert SEEN == []


@pytest.mark.parametrize(("header", "reason"), [
    ("Basic dXNlcjpwYXNz", "TOKEN_MALFORMED"),
    ("Bearer ", "TOKEN_MALFORMED"),
    ("Bearer not-a-jwt", "TOKEN_MALFORMED"),
    ("Bearer eyJhbGciOiJub25lIiwia2lkIjoiazEifQ.eyJzdWIiOiJ4In0.", "TOKEN_INVALID"),
])
async def test_bad_tokens_are_unauthenticated(stack: Stack, header: str, reason: str) -> None:
    async with _fails(grpc.StatusCode.UNAUTHENTICATED, reason):
        await stack.users.GetUser(user_service_pb2.GetUserRequest(id="u"), metadata=(("authorization", header),))
    assert SEEN == []


async def test_token_of_another_key_is_unauthenticated(stack: Stack) -> None:
    other = TokenSigner("k1", Ed25519PrivateKey.generate(), issuer=ISS, audience=AUD)
    token = other.sign(Principal(USER, TENANT_A, "admin"), ttl_seconds=300)
    async with _fails(grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID"):
        await stack.users.GetUser(user_service_pb2.GetUserRequest(id="u"),
                                  metadata=(("authorization", f"Bearer {token}"),))


async def test_refresh_token_is_not_an_access_token(stack: Stack) -> None:
    token = stack.signer.sign(Principal(USER, TENANT_A, "admin"), ttl_seconds=300, use="refresh")
    async with _fails(grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID"):
        await stack.users.GetUser(user_service_pb2.GetUserRequest(id="u"),
                                  metadata=(("authorization", f"Bearer {token}"),))


async def test_public_rpc_needs_no_token_and_never_sees_a_principal(stack: Stack) -> None:
    await stack.authn.GetJwks(user_service_pb2.GetJwksRequest())
    # A token sent to a public RPC is not used: the handler runs without principal or tenant.
    await stack.authn.GetJwks(user_service_pb2.GetJwksRequest(), metadata=stack.auth("admin"))
    await stack.authn.GetJwks(user_service_pb2.GetJwksRequest(), metadata=(("authorization", "Bearer x.y.z"),))
    assert [(s["principal"], s["tenant_id"]) for s in SEEN] == [(None, None)] * 3
    async with _fails(grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MALFORMED"):
        await stack.authn.GetJwks(user_service_pb2.GetJwksRequest(), metadata=(("authorization", "Basic eA=="),))


async def test_infrastructure_methods_bypass_the_chain(stack: Stack) -> None:
    reply = await health_pb2_grpc.HealthStub(stack.channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


# --------------------------------------------------------------------------- policy: permissions and scopes


@pytest.mark.parametrize("role", [*HUMAN_ROLES, "platform_admin"])
async def test_self_service_rpcs_work_for_every_human_role(stack: Stack, role: str) -> None:
    tenant = PLATFORM_TENANT_ID if role == "platform_admin" else TENANT_A
    me = await stack.authn.WhoAmI(user_service_pb2.WhoAmIRequest(), metadata=stack.auth(role, tenant))
    assert (me.user_id, me.tenant_id) == (USER, str(tenant))
    await stack.authn.Logout(user_service_pb2.LogoutRequest(), metadata=stack.auth(role, tenant))
    assert [s["tenant_id"] for s in SEEN] == [tenant, tenant]


async def test_service_tokens_cannot_use_self_service_rpcs(stack: Stack) -> None:
    service = stack.auth("service", subject="service:tenant", session_id="")
    async with _fails(grpc.StatusCode.PERMISSION_DENIED, "MISSING_PERMISSION") as box:
        await stack.authn.WhoAmI(user_service_pb2.WhoAmIRequest(), metadata=service)
    assert dict(_info(box[0]).metadata) == {"permission": "session.self"}
    async with _fails(grpc.StatusCode.PERMISSION_DENIED, "MISSING_PERMISSION"):
        await stack.authn.Logout(user_service_pb2.LogoutRequest(), metadata=service)
    assert SEEN == []


async def test_unknown_role_has_no_permissions(stack: Stack) -> None:
    async with _fails(grpc.StatusCode.PERMISSION_DENIED, "MISSING_PERMISSION"):
        await stack.authn.WhoAmI(user_service_pb2.WhoAmIRequest(), metadata=stack.auth("superuser"))


async def test_missing_permission_is_denied_before_the_handler(stack: Stack) -> None:
    async with _fails(grpc.StatusCode.PERMISSION_DENIED, "MISSING_PERMISSION") as box:
        await stack.users.CreateUser(user_service_pb2.CreateUserRequest(email="a@example.com"),
                                     metadata=stack.auth("viewer"))
    assert "users.write" in (box[0].details() or "")
    assert SEEN == []


async def test_tenant_scope_binds_the_callers_tenant(stack: Stack) -> None:
    reply = await stack.users.GetUser(user_service_pb2.GetUserRequest(id="u"), metadata=stack.auth("viewer"))
    assert reply.user.tenant_id == str(TENANT_A)
    # Naming another tenant is ignored for everyone but platform administrators.
    reply = await stack.users.GetUser(user_service_pb2.GetUserRequest(id="u", tenant_id=str(TENANT_B)),
                                      metadata=stack.auth("owner"))
    assert reply.user.tenant_id == str(TENANT_A)
    # ... even a non-UUID value: it is never read.
    await stack.users.GetUser(user_service_pb2.GetUserRequest(id="u", tenant_id="junk"), metadata=stack.auth())
    assert [(s["tenant_id"], s["platform_scope"], s["db_tenant_id"]) for s in SEEN] == [
        (TENANT_A, False, TENANT_A)] * 3


async def test_platform_admin_names_the_target_tenant(stack: Stack) -> None:
    admin = stack.auth("platform_admin", PLATFORM_TENANT_ID)
    reply = await stack.users.GetUser(user_service_pb2.GetUserRequest(id="u", tenant_id=str(TENANT_B)),
                                      metadata=admin)
    assert reply.user.tenant_id == str(TENANT_B)
    await stack.users.GetUser(user_service_pb2.GetUserRequest(id="u"), metadata=admin)
    assert [(s["tenant_id"], s["platform_scope"]) for s in SEEN] == [(TENANT_B, False),
                                                                      (PLATFORM_TENANT_ID, False)]


async def test_platform_admin_with_a_bad_tenant_field_is_invalid_argument(stack: Stack) -> None:
    async with _fails(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT") as box:
        await stack.users.GetUser(user_service_pb2.GetUserRequest(id="u", tenant_id="not-a-uuid"),
                                  metadata=stack.auth("platform_admin", PLATFORM_TENANT_ID))
    bad = error_details_pb2.BadRequest()
    assert _status(box[0]).details[1].Unpack(bad)
    assert [(v.field, v.description) for v in bad.field_violations] == [("tenant_id", "not a UUID")]
    assert SEEN == []


async def test_platform_role_outside_the_platform_tenant_is_not_a_platform_admin(stack: Stack) -> None:
    forged_admin = stack.auth("platform_admin", TENANT_A)
    await stack.users.GetUser(user_service_pb2.GetUserRequest(id="u", tenant_id=str(TENANT_B)),
                              metadata=forged_admin)
    assert SEEN[-1]["tenant_id"] == TENANT_A
    async with _fails(grpc.StatusCode.PERMISSION_DENIED, "PLATFORM_ADMIN_REQUIRED"):
        await stack.tenants.CreateTenant(tenant_service_pb2.CreateTenantRequest(slug="x"), metadata=forged_admin)
    await stack.tenants.ListTenants(tenant_service_pb2.ListTenantsRequest(), metadata=forged_admin)
    assert SEEN[-1]["platform_scope"] is False


async def test_list_tenants_is_platform_wide_only_for_platform_admins(stack: Stack) -> None:
    await stack.tenants.ListTenants(tenant_service_pb2.ListTenantsRequest(), metadata=stack.auth("owner"))
    await stack.tenants.ListTenants(tenant_service_pb2.ListTenantsRequest(),
                                    metadata=stack.auth("platform_admin", PLATFORM_TENANT_ID))
    assert [(s["tenant_id"], s["platform_scope"]) for s in SEEN] == [(TENANT_A, False),
                                                                      (PLATFORM_TENANT_ID, True)]


async def test_platform_scope(stack: Stack) -> None:
    async with _fails(grpc.StatusCode.PERMISSION_DENIED, "MISSING_PERMISSION"):
        await stack.tenants.CreateTenant(tenant_service_pb2.CreateTenantRequest(slug="x"),
                                         metadata=stack.auth("owner"))
    reply = await stack.tenants.CreateTenant(tenant_service_pb2.CreateTenantRequest(slug="x"),
                                             metadata=stack.auth("platform_admin", PLATFORM_TENANT_ID))
    assert reply.tenant.slug == "x"
    assert [(s["platform_scope"], s["db_tenant_id"]) for s in SEEN] == [(True, PLATFORM_TENANT_ID)]


async def test_internal_scope_is_for_services_only(stack: Stack) -> None:
    reply = await stack.audit.AppendEvents(
        audit_service_pb2.AppendEventsRequest(events=[audit_pb2.AuditEvent()]),
        metadata=stack.auth("service", subject="service:user", session_id=""))
    assert reply.appended == 1
    assert SEEN[-1]["tenant_id"] == PLATFORM_TENANT_ID  # a service acts for the platform
    for role, tenant in (("owner", TENANT_A), ("platform_admin", PLATFORM_TENANT_ID)):
        async with _fails(grpc.StatusCode.PERMISSION_DENIED, "MISSING_PERMISSION"):
            await stack.audit.AppendEvents(audit_service_pb2.AppendEventsRequest(), metadata=stack.auth(role, tenant))


async def test_service_role_cannot_be_forged_with_the_user_signing_key(stack: Stack) -> None:
    # Whoever holds the user service's JWT key still cannot claim to be a service.
    forged = stack.signer.sign(Principal("service:user", PLATFORM_TENANT_ID, "service"), ttl_seconds=300)
    async with _fails(grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID"):
        await stack.audit.AppendEvents(audit_service_pb2.AppendEventsRequest(),
                                       metadata=(("authorization", f"Bearer {forged}"),))


async def test_a_service_key_signs_only_for_its_own_service(stack: Stack) -> None:
    # The tenant service's key, claiming to be the user service: refused.
    impostor = ServiceTokens("tenant", SERVICE_KEYS["tenant"], issuer=ISS)
    token = jwt.encode({**jwt.decode(impostor.token(), options={"verify_signature": False}),
                        "sub": "service:user"}, SERVICE_KEYS["tenant"], algorithm="EdDSA",
                       headers={"kid": "service-tenant"})
    async with _fails(grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID"):
        await stack.audit.AppendEvents(audit_service_pb2.AppendEventsRequest(),
                                       metadata=(("authorization", f"Bearer {token}"),))
    # An unknown service (no public key) is refused too.
    stranger = ServiceTokens("billing", Ed25519PrivateKey.generate(), issuer=ISS)
    async with _fails(grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID"):
        await stack.audit.AppendEvents(audit_service_pb2.AppendEventsRequest(), metadata=stranger.metadata())


async def test_method_without_a_contract_is_refused(stack: Stack) -> None:
    ping = stack.channel.unary_unary("/sentinel.test.v1.Probe/Ping",
                                     request_serializer=empty_pb2.Empty.SerializeToString,
                                     response_deserializer=empty_pb2.Empty.FromString)
    async with _fails(grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING"):
        await ping(empty_pb2.Empty())
    async with _fails(grpc.StatusCode.PERMISSION_DENIED, "NO_POLICY"):
        await ping(empty_pb2.Empty(), metadata=stack.auth("platform_admin", PLATFORM_TENANT_ID))
    assert SEEN == []
    assert _sample("sentinel_requests_total", method="unknown", code="PERMISSION_DENIED") >= 1


async def test_unimplemented_methods_still_need_a_token(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    async with _fails(grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING"):
        await stack.users.ListUsers(user_service_pb2.ListUsersRequest())
    # The generated base servicer answers UNIMPLEMENTED (not INTERNAL, and nothing is logged as a crash).
    caplog.set_level(logging.ERROR, logger="sentinel.errors")
    async with _fails(grpc.StatusCode.UNIMPLEMENTED, "UNIMPLEMENTED"):
        await stack.users.ListUsers(user_service_pb2.ListUsersRequest(), metadata=stack.auth())
    assert not [r for r in caplog.records if r.name == "sentinel.errors"]


# --------------------------------------------------------------------------- policy interceptor without a server


def _call(method: str, principal: Principal | None, request: Any = None, **policy: Any) -> calls.Call:
    rpc = contracts.rpc_for(method)
    assert rpc is not None
    if policy:
        doctored = type(rpc.policy)()
        doctored.CopyFrom(rpc.policy)
        for name, value in policy.items():
            setattr(doctored, name, value)
        rpc = dataclasses.replace(rpc, policy=doctored)
    return calls.Call(method=method, rpc=rpc, metadata={}, context=None,  # type: ignore[arg-type]
                      request=request, principal=principal)


async def _enter(call: calls.Call) -> None:
    async with PolicyInterceptor().scope(call):
        pass


async def test_policy_refuses_a_non_public_rpc_without_a_permission() -> None:
    # policy.proto: "Empty only for PUBLIC". A contract slip must fail closed, not admit everyone.
    owner = Principal(USER, TENANT_A, "owner")
    for method in ("/sentinel.user.v1.AuthService/WhoAmI", "/sentinel.user.v1.UserService/GetUser"):
        with pytest.raises(PermissionDenied) as info:
            await _enter(_call(method, owner, permission=""))
        assert info.value.reason == "NO_POLICY"


async def test_policy_internal_scope_refuses_non_services() -> None:
    # A human holding the permission an INTERNAL RPC declares is still refused.
    owner = Principal(USER, TENANT_A, "owner")
    with pytest.raises(PermissionDenied) as info:
        await _enter(_call("/sentinel.audit.v1.AuditService/AppendEvents", owner, permission="tenants.read"))
    assert info.value.reason == "SERVICE_ONLY"


async def test_policy_without_principal_is_unauthenticated() -> None:
    with pytest.raises(Unauthenticated):
        await _enter(_call("/sentinel.user.v1.UserService/GetUser", None))


async def test_policy_public_scope_sets_no_tenant() -> None:
    call = _call("/sentinel.user.v1.AuthService/Login", None)
    await _enter(call)
    assert (call.tenant_id, call.platform_scope) == (None, False)


def test_field_value_follows_dotted_paths() -> None:
    request = tenant_service_pb2.UpdateTenantRequest(tenant=tenant_pb2.Tenant(id="t-1"))
    assert field_value(request, "tenant.id") == "t-1"
    assert field_value(request, "tenant.plan") == ""  # not a string
    assert field_value(request, "tenant.nope") == ""
    assert field_value(user_service_pb2.GetUserRequest(), "tenant_id") == ""


# --------------------------------------------------------------------------- errors


async def test_sentinel_errors_carry_error_info_and_bad_request(stack: Stack) -> None:
    async with _fails(grpc.StatusCode.INVALID_ARGUMENT, "BAD_ID") as box:
        await stack.users.GetUser(user_service_pb2.GetUserRequest(id="invalid"), metadata=stack.auth())
    err = box[0]
    assert err.details() == "id is bad"
    status = _status(err)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert status.message == "id is bad"
    bad = error_details_pb2.BadRequest()
    assert status.details[1].Unpack(bad)
    assert [(v.field, v.description) for v in bad.field_violations] == [("id", "not a UUID")]


async def test_unexpected_errors_are_internal_without_internals(stack: Stack,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="sentinel.errors")
    async with _fails(grpc.StatusCode.INTERNAL, "INTERNAL") as box:
        await stack.users.GetUser(user_service_pb2.GetUserRequest(id="boom"),
                                  metadata=(*stack.auth(), ("x-request-id", "req-boom-1")))
    err = box[0]
    details = err.details() or ""
    assert "req-boom-1" in details
    for leak in ("hunter2", "secret.py", "RuntimeError", "Traceback"):
        assert leak not in details
        assert leak not in _status(err).message
        assert leak.encode() not in _status(err).SerializeToString()
    # ... but the server log has the traceback, tied to the request id.
    records = [r for r in caplog.records if r.name == "sentinel.errors" and r.getMessage() == "unhandled error"]
    assert len(records) == 1
    assert getattr(records[0], "request_id", None) == "req-boom-1"
    assert records[0].exc_info is not None and "hunter2" in str(records[0].exc_info[1])


async def test_not_implemented_error_from_a_handler_is_internal(stack: Stack) -> None:
    async with _fails(grpc.StatusCode.INTERNAL, "INTERNAL") as box:
        await stack.users.GetUser(user_service_pb2.GetUserRequest(id="notimpl"), metadata=stack.auth())
    assert "hunter2" not in (box[0].details() or "")


async def test_connection_errors_are_unavailable(stack: Stack) -> None:
    async with _fails(grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE") as box:
        await stack.users.GetUser(user_service_pb2.GetUserRequest(id="conn"), metadata=stack.auth())
    assert "10.0.0.5" not in (box[0].details() or "")


async def test_handler_aborts_pass_through(stack: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.users.GetUser(user_service_pb2.GetUserRequest(id="abort"), metadata=stack.auth())
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.details() == "aborted by the handler"


def test_connection_error_classification() -> None:
    from sentinel.platform.interceptors.errors import _is_connection_error

    assert _is_connection_error(ConnectionResetError())
    assert _is_connection_error(TimeoutError())  # an OSError
    assert not _is_connection_error(ValueError())
    # What db.read_only's raw asyncpg connection raises: lost connection, server shutting down.
    assert _is_connection_error(asyncpg.ConnectionDoesNotExistError("connection was closed"))
    assert _is_connection_error(asyncpg.AdminShutdownError("terminating connection"))
    assert not _is_connection_error(asyncpg.UniqueViolationError("duplicate key"))
    assert not _is_connection_error(SentinelError("x"))


# --------------------------------------------------------------------------- streaming


async def test_server_streaming_is_authorised_and_bound(stack: Stack) -> None:
    stream = stack.audit.StreamAuditEvents(audit_service_pb2.StreamAuditEventsRequest(), metadata=stack.auth())
    events = [e async for e in stream]
    assert [(e.event.sequence, e.event.tenant_id) for e in events] == [(1, str(TENANT_A)), (2, str(TENANT_A))]


async def test_server_streaming_without_token_is_unauthenticated(stack: Stack) -> None:
    stream = stack.audit.StreamAuditEvents(audit_service_pb2.StreamAuditEventsRequest())
    async with _fails(grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING"):
        _ = [e async for e in stream]
    assert SEEN == []


async def test_server_streaming_error_after_items(stack: Stack) -> None:
    stream = stack.audit.StreamAuditEvents(audit_service_pb2.StreamAuditEventsRequest(after_sequence=99),
                                           metadata=stack.auth())
    got: list[int] = []
    async with _fails(grpc.StatusCode.NOT_FOUND, "NOT_FOUND"):
        async for event in stream:
            got.append(event.event.sequence)
    assert got == [1, 2]


# --------------------------------------------------------------------------- call state: request id, peer


async def test_request_id_from_envoy_is_kept_and_bounded(stack: Stack) -> None:
    await stack.users.GetUser(user_service_pb2.GetUserRequest(id="u"),
                              metadata=(*stack.auth(), ("x-request-id", "r" * 300)))
    await stack.users.GetUser(user_service_pb2.GetUserRequest(id="u"),
                              metadata=(*stack.auth(), ("x-request-id", "abc-123")))
    await stack.users.GetUser(user_service_pb2.GetUserRequest(id="u"), metadata=stack.auth())
    await stack.users.GetUser(user_service_pb2.GetUserRequest(id="u"), metadata=stack.auth())
    ids = [s["request_id"] for s in SEEN]
    assert ids[0] == "r" * 100
    assert ids[1] == "abc-123"
    assert len(ids[2]) == 32 and int(ids[2], 16) >= 0 and ids[2] != ids[3]


async def test_peer_ip_and_user_agent(stack: Stack) -> None:
    await stack.users.GetUser(user_service_pb2.GetUserRequest(id="u"), metadata=stack.auth())
    await stack.users.GetUser(user_service_pb2.GetUserRequest(id="u"),
                              metadata=(*stack.auth(), ("x-forwarded-for", "203.0.113.9, 10.0.0.1")))
    # The last entry is the one the edge appended; earlier ones are client-supplied (spoofable).
    assert [s["peer_ip"] for s in SEEN] == ["127.0.0.1", "10.0.0.1"]
    assert SEEN[0]["user_agent"].startswith("grpc-python")


@pytest.mark.parametrize(("peer", "ip"), [
    ("ipv4:127.0.0.1:54321", "127.0.0.1"), ("ipv6:[::1]:54321", "::1"),
    ("ipv6:[2001:db8::7]:443", "2001:db8::7"), ("unix:/run/sentinel.sock", "/run/sentinel.sock"), ("", ""),
])
def test_peer_ip_parsing(peer: str, ip: str) -> None:
    class Context:
        def peer(self) -> str:
            return peer

    assert _peer_ip(Context(), {}) == ip  # type: ignore[arg-type]
    assert _peer_ip(Context(), {"x-forwarded-for": " 198.51.100.1 "}) == "198.51.100.1"  # type: ignore[arg-type]


async def test_call_context_is_only_bound_inside_a_call(stack: Stack) -> None:
    assert calls.current_call() is None
    with pytest.raises(RuntimeError):
        calls.require_call()
    await stack.users.GetUser(user_service_pb2.GetUserRequest(id="u"), metadata=stack.auth())
    assert calls.current_call() is None


# --------------------------------------------------------------------------- metrics and access log


async def test_metrics_count_requests_errors_and_duration(stack: Stack) -> None:
    method = "UserService/GetUser"
    ok0 = _sample("sentinel_requests_total", method=method, code="OK")
    nf0 = _sample("sentinel_requests_total", method=method, code="NOT_FOUND")
    err_nf0 = _sample("sentinel_errors_total", method=method, code="NOT_FOUND")
    err_ok0 = _sample("sentinel_errors_total", method=method, code="OK")
    dur0 = _sample("sentinel_request_duration_seconds_count", method=method)
    await stack.users.GetUser(user_service_pb2.GetUserRequest(id="u"), metadata=stack.auth())
    with pytest.raises(grpc.aio.AioRpcError):
        await stack.users.GetUser(user_service_pb2.GetUserRequest(id="missing"), metadata=stack.auth())
    await _settled()
    assert _sample("sentinel_requests_total", method=method, code="OK") == ok0 + 1
    assert _sample("sentinel_requests_total", method=method, code="NOT_FOUND") == nf0 + 1
    assert _sample("sentinel_errors_total", method=method, code="NOT_FOUND") == err_nf0 + 1
    assert _sample("sentinel_errors_total", method=method, code="OK") == err_ok0 == 0
    assert _sample("sentinel_request_duration_seconds_count", method=method) == dur0 + 2
    assert _sample("sentinel_requests_in_flight") == 0


async def test_metrics_record_auth_failures_and_internal_errors(stack: Stack) -> None:
    method = "UserService/GetUser"
    unauth0 = _sample("sentinel_requests_total", method=method, code="UNAUTHENTICATED")
    internal0 = _sample("sentinel_requests_total", method=method, code="INTERNAL")
    with pytest.raises(grpc.aio.AioRpcError):
        await stack.users.GetUser(user_service_pb2.GetUserRequest(id="u"))
    with pytest.raises(grpc.aio.AioRpcError):
        await stack.users.GetUser(user_service_pb2.GetUserRequest(id="boom"), metadata=stack.auth())
    await _settled()
    assert _sample("sentinel_requests_total", method=method, code="UNAUTHENTICATED") == unauth0 + 1
    assert _sample("sentinel_requests_total", method=method, code="INTERNAL") == internal0 + 1


async def test_a_call_the_client_abandons_is_cancelled_not_a_server_error(stack: Stack) -> None:
    method = "UserService/GetUser"
    cancelled0 = _sample("sentinel_requests_total", method=method, code="CANCELLED")
    unknown0 = _sample("sentinel_errors_total", method=method, code="UNKNOWN")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.users.GetUser(user_service_pb2.GetUserRequest(id="slow"), metadata=stack.auth(), timeout=0.3)
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    for _ in range(200):  # the server learns of it a little later than the client gives up
        if _sample("sentinel_requests_total", method=method, code="CANCELLED") > cancelled0:
            break
        await asyncio.sleep(0.01)
    assert _sample("sentinel_requests_total", method=method, code="CANCELLED") == cancelled0 + 1
    assert _sample("sentinel_errors_total", method=method, code="UNKNOWN") == unknown0


def test_metric_labels_never_carry_ids() -> None:
    call = _call("/sentinel.user.v1.UserService/GetUser", None)
    assert method_label(call) == "UserService/GetUser"
    unknown = calls.Call(method="/evil.Svc/" + "x" * 50, rpc=None, metadata={}, context=None)  # type: ignore[arg-type]
    assert method_label(unknown) == "unknown"


async def test_access_log_line(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sentinel.access")
    await stack.users.GetUser(user_service_pb2.GetUserRequest(id="u"),
                              metadata=(*stack.auth("viewer"), ("x-request-id", "log-1")))
    with pytest.raises(grpc.aio.AioRpcError):
        await stack.users.GetUser(user_service_pb2.GetUserRequest(id="u"), metadata=(("x-request-id", "log-2"),))
    lines = {r.request_id: r for r in caplog.records if r.name == "sentinel.access"}  # type: ignore[attr-defined]
    ok, denied = lines["log-1"], lines["log-2"]
    assert (ok.method, ok.code, ok.tenant_id, ok.principal, ok.peer) == (  # type: ignore[attr-defined]
        "/sentinel.user.v1.UserService/GetUser", "OK", str(TENANT_A), USER, "127.0.0.1")
    assert ok.duration_ms >= 0  # type: ignore[attr-defined]
    assert (denied.code, denied.tenant_id, denied.principal) == ("UNAUTHENTICATED", None, None)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- idempotency (no database)


async def test_mutating_call_without_a_key_proceeds_without_the_store(stack: Stack) -> None:
    reply = await stack.users.CreateUser(user_service_pb2.CreateUserRequest(email="a@example.com"),
                                         metadata=stack.auth("admin"))
    assert reply.user.id == "new"
    assert len(SEEN) == 1


def _key_call(request: Any, headers: dict[str, str] | None = None) -> calls.Call:
    return calls.Call(method="/sentinel.user.v1.UserService/CreateUser",
                      rpc=contracts.rpc_for("/sentinel.user.v1.UserService/CreateUser"),
                      metadata=headers or {}, context=None, request=request)  # type: ignore[arg-type]


def test_request_key_prefers_the_field_over_the_header() -> None:
    req = user_service_pb2.CreateUserRequest(request_id="field-key")
    assert request_key(_key_call(req, {"idempotency-key": "header-key"})) == "field-key"
    assert request_key(_key_call(user_service_pb2.CreateUserRequest(), {"idempotency-key": "header-key"})) == \
        "header-key"
    assert request_key(_key_call(user_service_pb2.CreateUserRequest())) == ""
    # Requests without a request_id field use the header only.
    assert request_key(_key_call(user_service_pb2.DeleteUserRequest(id="x"), {"idempotency-key": "h"})) == "h"


def test_request_key_length_is_bounded() -> None:
    assert request_key(_key_call(user_service_pb2.CreateUserRequest(request_id="k" * MAX_KEY_LENGTH)))
    with pytest.raises(InvalidArgument) as info:
        request_key(_key_call(user_service_pb2.CreateUserRequest(request_id="k" * (MAX_KEY_LENGTH + 1))))
    assert [v.field for v in info.value.violations] == ["request_id"]
    with pytest.raises(InvalidArgument):
        request_key(_key_call(user_service_pb2.CreateUserRequest(),
                              {"idempotency-key": "k" * (MAX_KEY_LENGTH + 1)}))


def test_request_hash_ignores_the_key_but_not_the_content() -> None:
    a = user_service_pb2.CreateUserRequest(email="a@example.com", password="p" * 12, request_id="k1")
    same = user_service_pb2.CreateUserRequest(email="a@example.com", password="p" * 12, request_id="k2")
    other = user_service_pb2.CreateUserRequest(email="b@example.com", password="p" * 12, request_id="k1")
    assert request_hash(a) == request_hash(same)
    assert request_hash(a) != request_hash(other)
    assert a.request_id == "k1"  # the request itself is not modified
    assert len(request_hash(a)) == 64
    assert request_hash(user_service_pb2.DeleteUserRequest(id="x")) != request_hash(
        user_service_pb2.DeleteUserRequest(id="y"))


async def test_idempotency_skips_reads_and_calls_without_tenant() -> None:
    async def proceed() -> str:
        return "handler"

    interceptor = IdempotencyInterceptor()
    read = calls.Call(method="/sentinel.user.v1.UserService/GetUser",
                      rpc=contracts.rpc_for("/sentinel.user.v1.UserService/GetUser"), metadata={},
                      context=None, request=user_service_pb2.GetUserRequest(), tenant_id=TENANT_A)  # type: ignore[arg-type]
    assert await interceptor.invoke(read, proceed) == "handler"
    # A keyed create with no tenant decided (never the case after the policy) is not stored.
    keyed = _key_call(user_service_pb2.CreateUserRequest(request_id="k"))
    assert await interceptor.invoke(keyed, proceed) == "handler"


# --------------------------------------------------------------------------- composition


def test_default_chain_order() -> None:
    chain = default_chain(SERVICE, None)
    assert isinstance(chain, Chain)
    # Input checks come first inside errors (a NUL byte never reaches a query, or the audit
    # outbox); audit sits inside errors (it sees the raw exception) and outside authn and policy
    # (it sees their refusals); its transaction wraps idempotency, so a replay is known before it records.
    assert [type(i) for i in chain.interceptors] == [MetricsInterceptor, TracingInterceptor, LoggingInterceptor,
                                                     ErrorsInterceptor, InputInterceptor, AuditInterceptor,
                                                     AuthnInterceptor, PolicyInterceptor]
    assert [type(i) for i in chain.unary] == [AuditTransaction, IdempotencyInterceptor]


def test_nul_characters_are_found_at_any_depth() -> None:
    from google.protobuf import field_mask_pb2

    clean = user_service_pb2.UpdateUserRequest(user=user_pb2.User(id="u", display_name="Ada"),
                                               update_mask=field_mask_pb2.FieldMask(paths=["display_name"]))
    assert list(nul_fields(clean)) == []
    dirty = user_service_pb2.UpdateUserRequest(user=user_pb2.User(id="u", display_name="A\x00da"),
                                               update_mask=field_mask_pb2.FieldMask(paths=["display_name", "x\x00"]),
                                               request_id="k\x00")
    assert sorted(nul_fields(dirty)) == ["request_id", "update_mask.paths", "user.display_name"]


async def test_a_nul_character_is_invalid_argument_before_any_handler(stack: Stack) -> None:
    async with _fails(grpc.StatusCode.INVALID_ARGUMENT) as box:
        await stack.authn.Login(user_service_pb2.LoginRequest(tenant="acme", email="a\x00@b.example", password="x"))
    assert "email contains a NUL character" in (box[0].details() or "")
    assert SEEN == []


async def test_authn_without_verifier_refuses_tokens() -> None:
    call = calls.Call(method="/sentinel.user.v1.UserService/GetUser",
                      rpc=contracts.rpc_for("/sentinel.user.v1.UserService/GetUser"),
                      metadata={"authorization": "Bearer x"}, context=None)  # type: ignore[arg-type]
    with pytest.raises(Unauthenticated):
        async with AuthnInterceptor(None).scope(call):
            pass
    assert call.principal is None
