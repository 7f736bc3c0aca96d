"""Recording: what the services put in a tenant's trail, with what context, and that nothing is
lost or doubled when the audit service dies mid-flow (the transactional outbox)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format
from sentinel.audit.v1 import audit_pb2
from sentinel.audit.v1 import audit_service_pb2 as asp
from sentinel.audit.v1 import audit_service_pb2_grpc as asg
from sentinel.common.v1 import common_pb2
from sentinel.platform.auth import PLATFORM_TENANT_ID
from sentinel.platform.ids import uuid7
from sentinel.platform.service_identity import ServiceTokens
from sentinel.user.v1 import service_account_service_pb2 as sap
from sentinel.user.v1 import service_account_service_pb2_grpc as sag
from sentinel.user.v1 import user_pb2
from sentinel.user.v1 import user_service_pb2 as usp
from sentinel.user.v1 import user_service_pb2_grpc as usg

from tests.integration.conftest import PASSWORD, Tenant, World, audit_settled, make_tenant

pytestmark = pytest.mark.integration

SECRET_PASSWORD = "a very secret passphrase 42"


def audit(world: World) -> Any:
    return asg.AuditServiceStub(world.channels["audit"])


def users(world: World) -> Any:
    return usg.UserServiceStub(world.channels["user"])


def auth(world: World) -> Any:
    return usg.AuthServiceStub(world.channels["user"])


async def trail(world: World, t: Tenant, **filters: Any) -> list[audit_pb2.AuditEvent]:
    """The tenant's events oldest first, once everything recorded so far has been delivered."""
    await audit_settled()
    events, token = [], ""
    while True:
        page = await audit(world).ListAuditEvents(asp.ListAuditEventsRequest(
            order=asp.SORT_ORDER_OLDEST_FIRST, page_size=200, page_token=token,
            filter=asp.AuditFilter(**filters)), metadata=t.owner.metadata)
        events += page.events
        token = page.next_page_token
        if not token:
            return events


async def test_set_up_of_a_tenant_is_in_its_trail(world: World) -> None:
    t = await make_tenant(world.channels, world.admin, "rec")
    events = await trail(world, t)
    assert [e.action for e in events[:t.audit_base]] == [
        "tenant.create", "user.create", "auth.login", "user.create", "auth.login",
        "service_account.create", "api_key.create", "invitation.create"]
    created = events[0]
    # The platform administrator created it: recorded in the platform's trail and the tenant's.
    assert (created.actor.type, created.actor.id, created.actor.tenant_id) == (
        audit_pb2.ACTOR_TYPE_USER, world.admin.user_id, str(PLATFORM_TENANT_ID))
    assert (created.target.type, created.target.id, created.diff["slug"]) == ("tenant", t.id, t.slug)
    owner_created = events[1]
    assert (owner_created.target.type, owner_created.target.id) == ("user", t.owner.user_id)
    assert owner_created.diff["role"] == "ROLE_OWNER" and owner_created.diff["password"] == "[redacted]"
    login = events[2]
    assert (login.actor.id, login.target.id, login.outcome) == (t.owner.user_id, t.owner.user_id,
                                                               audit_pb2.OUTCOME_SUCCESS)
    assert all(e.source_ip and e.request_id and e.user_agent for e in events)
    verdict = await audit(world).VerifyAuditChain(asp.VerifyAuditChainRequest(), metadata=t.owner.metadata)
    assert verdict.valid and verdict.events_checked >= t.audit_base


async def test_a_change_records_who_what_and_the_call_context(world: World) -> None:
    t = await make_tenant(world.channels, world.admin, "ctx")
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    md = (*t.owner.metadata, ("x-request-id", "req-ctx-1"), ("traceparent", f"00-{trace}-00f067aa0ba902b7-01"))
    user = (await users(world).CreateUser(usp.CreateUserRequest(
        email="new@ctx.example.com", password=SECRET_PASSWORD, role=common_pb2.ROLE_VIEWER), metadata=md)).user
    await users(world).UpdateUser(usp.UpdateUserRequest(
        user=user_pb2.User(id=user.id, display_name="Renamed", email="ignored@ctx.example.com"),
        update_mask=field_mask_pb2.FieldMask(paths=["display_name"])), metadata=t.owner.metadata)
    await users(world).DeleteUser(usp.DeleteUserRequest(id=user.id), metadata=t.owner.metadata)
    create, update, delete = await trail(world, t, target_id=user.id)
    assert (create.action, create.request_id, create.trace_id, create.source_ip) == (
        "user.create", "req-ctx-1", trace, "127.0.0.1")
    assert create.user_agent.startswith("grpc-python")  # the client's own
    assert (create.actor.type, create.actor.id, create.actor.tenant_id) == (audit_pb2.ACTOR_TYPE_USER,
                                                                            t.owner.user_id, "")
    assert json_format.MessageToDict(create.diff) == {"email": "new@ctx.example.com", "role": "ROLE_VIEWER",
                                                      "password": "[redacted]"}
    # An update records only what it changed; a delete names its target.
    assert (update.action, json_format.MessageToDict(update.diff)) == ("user.update",
                                                                       {"user": {"display_name": "Renamed"}})
    assert (delete.action, delete.target.type, delete.outcome) == ("user.delete", "user", audit_pb2.OUTCOME_SUCCESS)


async def test_refused_and_failed_calls_are_recorded_and_change_nothing(world: World) -> None:
    t = await make_tenant(world.channels, world.admin, "deny")
    with pytest.raises(grpc.aio.AioRpcError) as denied:  # members cannot create users
        await users(world).CreateUser(usp.CreateUserRequest(email="x@deny.example.com", password=PASSWORD),
                                      metadata=t.member.metadata)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await users(world).CreateUser(usp.CreateUserRequest(email="not an e-mail", password=PASSWORD),
                                      metadata=t.owner.metadata)
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    refused, failed = (await trail(world, t))[t.audit_base:]
    assert (refused.action, refused.outcome, refused.status_code, refused.actor.id) == (
        "user.create", audit_pb2.OUTCOME_DENIED, "PERMISSION_DENIED", t.member.user_id)
    assert (failed.action, failed.outcome, failed.status_code) == ("user.create", audit_pb2.OUTCOME_FAILURE,
                                                                   "INVALID_ARGUMENT")
    listed = await users(world).ListUsers(usp.ListUsersRequest(), metadata=t.owner.metadata)
    assert len(listed.users) == 2  # neither attempt left a user behind


async def test_a_replayed_request_is_recorded_once(world: World) -> None:
    t = await make_tenant(world.channels, world.admin, "replay")
    request = usp.CreateUserRequest(email="once@replay.example.com", password=PASSWORD, request_id=str(uuid.uuid4()))
    first = await users(world).CreateUser(request, metadata=t.owner.metadata)
    again = await users(world).CreateUser(request, metadata=t.owner.metadata)
    assert first == again
    assert len(await trail(world, t, action="user.create", target_id=first.user.id)) == 1


async def test_authentication_events(world: World) -> None:
    t = await make_tenant(world.channels, world.admin, "authn")
    owner_email = f"owner@{t.slug}.example.com"
    with pytest.raises(grpc.aio.AioRpcError):
        await auth(world).Login(usp.LoginRequest(tenant=t.slug, email=owner_email, password="wrong password!!"))
    with pytest.raises(grpc.aio.AioRpcError):
        await auth(world).Login(usp.LoginRequest(tenant=t.slug, email="nobody@authn.example.com", password="x" * 12))
    tokens = await auth(world).Login(usp.LoginRequest(tenant=t.slug, email=owner_email, password=PASSWORD))
    refreshed = await auth(world).RefreshToken(usp.RefreshTokenRequest(refresh_token=tokens.refresh_token))
    await asyncio.sleep(1.2)  # past the test stack's 1 s grace for a client's own retry
    with pytest.raises(grpc.aio.AioRpcError):  # the spent refresh token again: the session ends
        await auth(world).RefreshToken(usp.RefreshTokenRequest(refresh_token=tokens.refresh_token))
    later = await auth(world).Login(usp.LoginRequest(tenant=t.slug, email=owner_email, password=PASSWORD))
    await auth(world).Logout(usp.LogoutRequest(), metadata=(("authorization", f"Bearer {later.access_token}"),))
    events = (await trail(world, t))[t.audit_base:]
    summary = [(e.action, audit_pb2.Outcome.Name(e.outcome), e.target.id) for e in events]
    owner = t.owner.user_id
    assert summary == [
        ("auth.login", "OUTCOME_DENIED", owner),  # wrong password: attributed to the account
        ("auth.login", "OUTCOME_DENIED", ""),  # unknown e-mail: no account, the e-mail in the diff
        ("auth.login", "OUTCOME_SUCCESS", owner),
        ("auth.refresh", "OUTCOME_SUCCESS", owner),
        ("auth.refresh", "OUTCOME_DENIED", owner),
        ("auth.login", "OUTCOME_SUCCESS", owner),
        ("auth.logout", "OUTCOME_SUCCESS", owner),
    ]
    assert events[1].diff["email"] == "nobody@authn.example.com"
    assert events[4].diff["reason"] == "REFRESH_REUSED" and events[4].diff["session_revoked"]
    # Nothing of the secrets involved is anywhere in the trail.
    text = json.dumps([json_format.MessageToDict(e) for e in await trail(world, t)])
    for secret in (PASSWORD, "wrong password!!", tokens.access_token, tokens.refresh_token,
                   refreshed.refresh_token, later.access_token, t.api_key.token if t.api_key else "x"):
        assert secret not in text


async def test_refused_api_keys_are_recorded_in_their_tenant(world: World) -> None:
    t = await make_tenant(world.channels, world.admin, "keys")
    assert t.api_key is not None
    accounts = sag.ServiceAccountServiceStub(world.channels["user"])
    await accounts.RevokeApiKey(sap.RevokeApiKeyRequest(service_account_id=t.service_account_id, id=t.api_key_id),
                                metadata=t.owner.metadata)
    with pytest.raises(grpc.aio.AioRpcError) as err:  # a read with the revoked key
        await users(world).ListUsers(usp.ListUsersRequest(), metadata=t.api_key.metadata)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    tampered = t.api_key.token[:-6] + ("AAAAAA" if not t.api_key.token.endswith("AAAAAA") else "BBBBBB")
    with pytest.raises(grpc.aio.AioRpcError):  # mangled: not a key at all, nothing to record
        await users(world).ListUsers(usp.ListUsersRequest(), metadata=(("x-api-key", tampered),))
    refused = await trail(world, t, action="auth.api_key")
    assert [(e.outcome, e.actor.type, e.target.type, e.target.id, e.diff["reason"]) for e in refused] == [
        (audit_pb2.OUTCOME_DENIED, audit_pb2.ACTOR_TYPE_ANONYMOUS, "api_key", t.api_key_id, "API_KEY_REVOKED")]


def service_tokens(stack: Any, name: str) -> ServiceTokens:
    return ServiceTokens.from_file(stack.service_keys_dir / f"{name}.key.pem", issuer="sentinel")


def an_event(tenant_id: str, **fields: Any) -> audit_pb2.AuditEvent:
    event = audit_pb2.AuditEvent(**{"id": str(uuid7()), "tenant_id": tenant_id, "action": "test.append",
                                    "outcome": audit_pb2.OUTCOME_SUCCESS, **fields})
    event.event_time.GetCurrentTime()
    return event


async def test_append_events_deduplicates_and_refuses_a_bad_batch_whole(world: World, stack: Any) -> None:
    t = await make_tenant(world.channels, world.admin, "append")
    md = service_tokens(stack, "user").metadata()
    good = an_event(t.id)
    reply = await audit(world).AppendEvents(asp.AppendEventsRequest(events=[good, good]), metadata=md)
    assert (reply.appended, reply.duplicates) == (1, 1)
    reply = await audit(world).AppendEvents(asp.AppendEventsRequest(events=[good]), metadata=md)
    assert (reply.appended, reply.duplicates) == (0, 1)  # sent again after a lost answer: skipped
    for bad in (an_event(t.id, sequence=5), an_event(t.id, hash="0" * 64), an_event(t.id, action=""),
                an_event(str(uuid.uuid4())), an_event("not-a-uuid")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await audit(world).AppendEvents(asp.AppendEventsRequest(events=[an_event(t.id), bad]), metadata=md)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
    assert len(await trail(world, t, action="test.append")) == 1  # no partial batch was written
    # Neither users nor platform administrators may append.
    for principal in (t.owner, world.admin):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await audit(world).AppendEvents(asp.AppendEventsRequest(events=[an_event(t.id)]),
                                            metadata=principal.metadata)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_no_event_is_lost_or_doubled_when_the_audit_service_dies(world: World, stack: Any) -> None:
    t = await make_tenant(world.channels, world.admin, "fault")
    created: list[str] = []

    async def create(n: int) -> None:
        for i in range(n):
            reply = await users(world).CreateUser(usp.CreateUserRequest(
                email=f"u{len(created)}-{i}@fault.example.com", password=PASSWORD, role=common_pb2.ROLE_VIEWER),
                metadata=t.owner.metadata)
            created.append(reply.user.id)

    stack.kill_service("audit")  # down: the users are created all the same
    try:
        await create(5)
        assert not [e for e in await pending_in_chain(t) if e in created]
    finally:
        stack.start_service("audit")
    # Killed again and again while users are being created and events delivered.
    writer = asyncio.create_task(create(30))
    for _ in range(3):
        await asyncio.sleep(0.4)
        stack.kill_service("audit")
        await asyncio.sleep(0.3)
        await asyncio.to_thread(stack.start_service, "audit")
    await writer
    events = await trail(world, t, action="user.create")
    targets = [e.target.id for e in events if e.target.id in created]
    assert sorted(targets) == sorted(created) and len(created) == 35  # each exactly once
    verdict = await audit(world).VerifyAuditChain(asp.VerifyAuditChainRequest(), metadata=t.owner.metadata)
    assert verdict.valid, verdict


async def pending_in_chain(t: Tenant) -> list[str]:
    """Target ids in the tenant's chain, read from the database (the audit service is down)."""
    from sentinel.audit import store

    return [str(e["target_id"]) async for page in store.events(uuid.UUID(t.id)) for e in page]
