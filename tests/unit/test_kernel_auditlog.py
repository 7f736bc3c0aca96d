"""What the kernel records for a call: redacted diffs, derived targets and actors, outcomes."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format
from sentinel.platform import auditlog, calls, contracts
from sentinel.platform.auth import PLATFORM_TENANT_ID, Principal
from sentinel.platform.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from sentinel.tenant.v1 import tenant_pb2, tenant_service_pb2
from sentinel.user.v1 import service_account_service_pb2, user_pb2, user_service_pb2

TENANT = uuid.UUID("0190f6b4-8a5e-7c3d-9f1a-00000000000a")
ADMIN = Principal("0190f6b4-8a5e-7c3d-9f1a-000000000001", TENANT, "admin", session_id="s")
PASSWORD = "correct horse battery staple"


def _call(method: str, request: object, principal: Principal | None = ADMIN, **metadata: str) -> calls.Call:
    call = calls.Call(method=method, rpc=contracts.rpc_for(method), metadata=dict(metadata),
                      context=None, request=request, request_id="req-1", peer_ip="203.0.113.9",  # type: ignore[arg-type]
                      user_agent="curl/8")
    call.principal = principal
    call.tenant_id = principal.tenant_id if principal else None
    return call


def test_a_job_file_is_described_in_the_diff_never_copied() -> None:
    from sentinel.scheduler import kinds  # registers how CreateJob requests are recorded
    from sentinel.scheduler.v1 import job_pb2, scheduler_service_pb2

    csv = "email,display_name,role,password_hash\nada@example.com,Ada,member,$2b$04$" + "x" * 53 + "\n"
    request = scheduler_service_pb2.CreateJobRequest(kind=job_pb2.JOB_KIND_USER_IMPORT, max_attempts=2)
    request.params.update({"csv": csv})
    assert auditlog.request_diff(request) == {"kind": "JOB_KIND_USER_IMPORT", "max_attempts": 2,
                                              "params": {"csv": f"[csv, {len(csv)} bytes]"}}
    # A request whose kind is unknown (refused) has every parameter described.
    odd = scheduler_service_pb2.CreateJobRequest()
    odd.params.update({"csv": csv, "n": 1})
    assert auditlog.request_diff(odd)["params"] == {"csv": f"[csv, {len(csv)} bytes]", "n": "[n, 3 bytes]"}
    assert kinds.split_input(kinds.KINDS["tenant_export"], {"n": 1}) == ({"n": 1}, {})


def test_every_free_form_request_field_has_a_described_diff() -> None:
    """A Struct (or Any) in a request can carry anything, secrets included, under names the
    redaction cannot judge: its request type must say how it is recorded (DESCRIBE_REQUEST)."""
    import sentinel.scheduler.kinds  # noqa: F401 - registers CreateJob

    free_form = {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.Any"}

    def holds_free_form(message: object, seen: frozenset[str] = frozenset()) -> bool:
        for field in message.fields:  # type: ignore[attr-defined]
            kind = field.message_type
            if kind is None or kind.full_name in seen:
                continue
            if kind.full_name in free_form or holds_free_form(kind, seen | {kind.full_name}):
                return True
        return False

    found = {r.method.input_type.full_name for r in contracts.rpcs()
             if (r.mutating or r.policy.audit_action) and holds_free_form(r.method.input_type)}
    assert found, "the contracts have a free-form request field (CreateJob's params): the check sees it"
    assert found <= set(auditlog.DESCRIBE_REQUEST), found - set(auditlog.DESCRIBE_REQUEST)


def test_passwords_and_tokens_never_reach_the_diff() -> None:
    create = user_service_pb2.CreateUserRequest(email="a@example.com", display_name="A", password=PASSWORD,
                                                request_id="k1")
    diff = auditlog.request_diff(create)
    assert diff == {"email": "a@example.com", "display_name": "A", "password": auditlog.REDACTED}
    change = user_service_pb2.ChangePasswordRequest(current_password=PASSWORD, new_password=PASSWORD + "!")
    assert PASSWORD not in str(auditlog.request_diff(change))
    refresh = user_service_pb2.RefreshTokenRequest(refresh_token="eyJhbGciOi.secret.sig")
    assert auditlog.request_diff(refresh) == {"refresh_token": auditlog.REDACTED}


def test_secret_looking_names_are_redacted_at_any_depth() -> None:
    value = {"outer": {"api_secret": "s3cr3t", "private_key": "k", "signature": "x", "note": "fine"},
             "items": [{"token": "t"}]}
    assert auditlog.redact(value) == {
        "outer": {"api_secret": auditlog.REDACTED, "private_key": auditlog.REDACTED,
                  "signature": auditlog.REDACTED, "note": "fine"},
        "items": [{"token": auditlog.REDACTED}]}


def test_long_text_is_cut() -> None:
    out = auditlog.redact({"display_name": "x" * 5000})
    assert len(out["display_name"]) == auditlog.MAX_TEXT + 1


def test_an_update_records_only_the_masked_fields() -> None:
    request = user_service_pb2.UpdateUserRequest(
        user=user_pb2.User(id="u-1", display_name="New", email="untouched@example.com"),
        update_mask=field_mask_pb2.FieldMask(paths=["display_name"]), request_id="k")
    assert auditlog.request_diff(request) == {"user": {"display_name": "New"}}
    # A field cleared by the mask is recorded as cleared, not left out.
    cleared = user_service_pb2.UpdateUserRequest(user=user_pb2.User(id="u-1"),
                                                 update_mask=field_mask_pb2.FieldMask(paths=["display_name"]))
    assert auditlog.request_diff(cleared) == {"user": {"display_name": ""}}


def test_any_update_mask_can_be_recorded() -> None:
    # json_format cannot print paths like "a_1" (no camelCase form): the diff reads the mask itself.
    request = user_service_pb2.UpdateUserRequest(user=user_pb2.User(id="u", display_name="X"),
                                                 update_mask=field_mask_pb2.FieldMask(paths=["a_1", "display_name"]))
    assert auditlog.request_diff(request) == {"user": {"display_name": "X"}}


def test_target_comes_from_the_response_then_the_request() -> None:
    created = user_service_pb2.CreateUserResponse(user=user_pb2.User(id="new-user"))
    assert auditlog.derive_target("user.create", user_service_pb2.CreateUserRequest(), created, ADMIN) == \
        ("user", "new-user")
    assert auditlog.derive_target("user.delete", user_service_pb2.DeleteUserRequest(id="gone"), None, ADMIN) == \
        ("user", "gone")
    key = service_account_service_pb2.RevokeApiKeyRequest(service_account_id="sa", id="key-1")
    assert auditlog.derive_target("api_key.revoke", key, None, ADMIN) == ("api_key", "key-1")
    # Self-service actions target the caller.
    assert auditlog.derive_target("auth.logout", None, None, ADMIN) == ("user", ADMIN.subject)


def test_event_carries_the_call_context() -> None:
    request = user_service_pb2.CreateUserRequest(email="a@example.com", password=PASSWORD)
    call = _call("/sentinel.user.v1.UserService/CreateUser", request,
                 traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    event = auditlog.build(call, tenant_id=TENANT, response=user_service_pb2.CreateUserResponse(
        user=user_pb2.User(id="u-9")))
    as_dict = json_format.MessageToDict(event, preserving_proto_field_name=True)
    assert as_dict["action"] == "user.create"
    assert as_dict["actor"] == {"type": "ACTOR_TYPE_USER", "id": ADMIN.subject}
    assert as_dict["target"] == {"type": "user", "id": "u-9"}
    assert as_dict["outcome"] == "OUTCOME_SUCCESS"
    assert (as_dict["request_id"], as_dict["source_ip"], as_dict["user_agent"]) == ("req-1", "203.0.113.9", "curl/8")
    assert as_dict["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert PASSWORD not in str(as_dict)
    uuid.UUID(as_dict["id"])  # a fresh UUIDv7 per event
    assert auditlog.build(call, tenant_id=TENANT).id != event.id


def test_actor_tenant_is_set_when_a_platform_admin_acts_in_a_tenant() -> None:
    admin = Principal("0190f6b4-8a5e-7c3d-9f1a-0000000000aa", PLATFORM_TENANT_ID, "platform_admin")
    call = _call("/sentinel.user.v1.UserService/DeleteUser", user_service_pb2.DeleteUserRequest(id="u"), admin)
    call.tenant_id = TENANT
    event = auditlog.build(call, tenant_id=TENANT)
    assert event.actor.tenant_id == str(PLATFORM_TENANT_ID)
    assert auditlog.cross_tenant_read(call)
    own = _call("/sentinel.user.v1.UserService/GetUser", user_service_pb2.GetUserRequest(id="u"), ADMIN)
    assert not auditlog.cross_tenant_read(own)


def test_platform_actions_on_a_tenant_are_copied_into_its_trail() -> None:
    admin = Principal("0190f6b4-8a5e-7c3d-9f1a-0000000000aa", PLATFORM_TENANT_ID, "platform_admin")
    call = _call("/sentinel.tenant.v1.TenantService/SuspendTenant",
                 tenant_service_pb2.SuspendTenantRequest(id=str(TENANT), reason="unpaid"), admin)
    call.platform_scope = True
    event = auditlog.build(call, tenant_id=PLATFORM_TENANT_ID,
                           response=tenant_service_pb2.SuspendTenantResponse(tenant=tenant_pb2.Tenant(id=str(TENANT))))
    both = auditlog.also_in_target(call, event)
    assert [e.tenant_id for e in both] == [str(PLATFORM_TENANT_ID), str(TENANT)]
    assert both[0].id != both[1].id and both[1].action == "tenant.suspend"
    assert both[1].diff["reason"] == "unpaid"


@pytest.mark.parametrize(("exc", "outcome", "code"), [
    (PermissionDenied("no"), "DENIED", "PERMISSION_DENIED"),
    (Unauthenticated("no"), "DENIED", "UNAUTHENTICATED"),
    (InvalidArgument("bad"), "FAILURE", "INVALID_ARGUMENT"),
    (NotFound("gone"), "FAILURE", "NOT_FOUND"),
    (RuntimeError("bug"), "FAILURE", "INTERNAL"),
])
def test_outcome_of_an_exception(exc: Exception, outcome: str, code: str) -> None:
    assert auditlog.outcome_of(exc) == (outcome, code)
    assert grpc.StatusCode[code]


def test_failed_calls_are_recorded_in_the_tenant_they_were_for() -> None:
    call = _call("/sentinel.user.v1.AuthService/Login", user_service_pb2.LoginRequest(), None)
    assert auditlog.failure_tenant(call) is None  # nothing known: not recorded
    call.audit.tenant_id = TENANT
    assert auditlog.failure_tenant(call) == TENANT
    denied = _call("/sentinel.user.v1.UserService/CreateUser", user_service_pb2.CreateUserRequest(), ADMIN)
    denied.tenant_id = None  # refused before the policy bound a tenant
    assert auditlog.failure_tenant(denied) == TENANT


def test_internal_rpcs_are_not_audited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auditlog.db, "initialised", lambda: True)
    monkeypatch.setattr(auditlog, "enabled", True)
    append = _call("/sentinel.audit.v1.AuditService/AppendEvents", None,
                   Principal("service:user", PLATFORM_TENANT_ID, "service", kind="service"))
    assert not auditlog.audited(append)  # recording the recording would never end
    assert auditlog.audited(_call("/sentinel.user.v1.UserService/CreateUser", None))
    monkeypatch.setattr(auditlog, "enabled", False)
    assert not auditlog.audited(_call("/sentinel.user.v1.UserService/CreateUser", None))
