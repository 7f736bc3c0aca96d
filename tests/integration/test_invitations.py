"""Invitations: invite by e-mail with a role, single-use hashed token valid 72 h, accept sets the
password, resend and revoke; over gRPC and REST."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
from sentinel.common.v1 import common_pb2
from sentinel.platform import opaque
from sentinel.user.v1 import invitation_service_pb2 as ivp
from sentinel.user.v1 import invitation_service_pb2_grpc as ivg
from sentinel.user.v1 import user_service_pb2 as usp
from sentinel.user.v1 import user_service_pb2_grpc as usg

from tests.integration.conftest import PASSWORD, World

pytestmark = pytest.mark.integration
NEW_PASSWORD = "a brand new invitee passphrase"


def invitations(world: World) -> Any:
    return ivg.InvitationServiceStub(world.channels["user"])


def email(world: World) -> str:
    return f"new-{uuid.uuid4().hex[:8]}@{world.a.slug}.example.com"


async def invite(world: World, address: str, role: int = common_pb2.ROLE_MEMBER) -> ivp.CreateInvitationResponse:
    reply: ivp.CreateInvitationResponse = await invitations(world).CreateInvitation(
        ivp.CreateInvitationRequest(email=address, role=role), metadata=world.a.owner.metadata)
    return reply


async def refused(call: Any, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value.details()
    return str(err.value.details())


async def test_invite_accept_and_log_in(world: World, stack: Any) -> None:
    address = email(world)
    created = await invite(world, address, common_pb2.ROLE_ADMIN)
    inv = created.invitation
    assert created.secret.startswith("sti_") and inv.state == ivp.INVITATION_STATE_PENDING
    assert inv.inviter_id == world.a.owner.user_id and inv.role == common_pb2.ROLE_ADMIN
    assert inv.expire_time.ToDatetime() - inv.create_time.ToDatetime() == dt.timedelta(hours=72)

    async with httpx.AsyncClient(base_url=stack.rest_url, timeout=10) as http:
        r = await http.post("/api/v1/invitations:accept", json={"token": created.secret, "password": NEW_PASSWORD,
                                                                 "display_name": "Newcomer"})
        assert r.status_code == 200, r.text
        user = r.json()["user"]
        assert user["email"] == address and user["role"] == "ROLE_ADMIN" and user["tenant_id"] == world.a.id
        # Single use.
        again = await http.post("/api/v1/invitations:accept", json={"token": created.secret, "password": NEW_PASSWORD})
        assert again.status_code == 401 and "not valid" in again.json()["message"], again.text
        login = await http.post("/api/v1/auth/login", json={"tenant": world.a.slug, "email": address,
                                                            "password": NEW_PASSWORD})
        assert login.status_code == 200, login.text
    listed = (await invitations(world).ListInvitations(ivp.ListInvitationsRequest(page_size=1000),
                                                       metadata=world.a.owner.metadata)).invitations
    mine = next(i for i in listed if i.id == inv.id)
    assert mine.state == ivp.INVITATION_STATE_ACCEPTED and mine.user_id == user["id"] and mine.HasField("accept_time")
    assert created.secret not in str(listed)
    # Only the hash is stored.
    owner = await asyncpg.connect(stack.owner_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        async with owner.transaction():
            await owner.execute("SELECT set_config('sentinel.tenant_id', $1, true)", world.a.id)
            row = await owner.fetchrow("SELECT * FROM invitations WHERE id = $1", uuid.UUID(inv.id))
    finally:
        await owner.close()
    assert row is not None and created.secret[4:] not in str(dict(row))
    assert bytes(row["token_hash"]) == opaque.parse(created.secret, prefix="sti_", what="t", reason="R").secret_hash


async def test_two_accepts_at_once_make_one_user(world: World) -> None:
    address = email(world)
    created = await invite(world, address)
    request = ivp.AcceptInvitationRequest(token=created.secret, password=NEW_PASSWORD)
    results = await asyncio.gather(*(invitations(world).AcceptInvitation(request) for _ in range(3)),
                                   return_exceptions=True)
    ok = [r for r in results if isinstance(r, ivp.AcceptInvitationResponse)]
    errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(ok) == 1 and len(errors) == 2
    assert all(e.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.ALREADY_EXISTS) for e in errors)
    users = (await usg.UserServiceStub(world.channels["user"]).ListUsers(
        usp.ListUsersRequest(page_size=1000), metadata=world.a.owner.metadata)).users
    assert [u.email for u in users].count(address) == 1


async def test_resend_replaces_the_token_and_revoke_withdraws_it(world: World) -> None:
    created = await invite(world, email(world))
    owner = world.a.owner.metadata
    resent = await invitations(world).ResendInvitation(ivp.ResendInvitationRequest(id=created.invitation.id),
                                                       metadata=owner)
    assert resent.secret and resent.secret != created.secret
    assert resent.invitation.expire_time.ToDatetime() >= created.invitation.expire_time.ToDatetime()
    await refused(invitations(world).AcceptInvitation(ivp.AcceptInvitationRequest(
        token=created.secret, password=NEW_PASSWORD)), grpc.StatusCode.UNAUTHENTICATED)  # the old token is dead
    revoked = (await invitations(world).RevokeInvitation(ivp.RevokeInvitationRequest(id=created.invitation.id),
                                                         metadata=owner)).invitation
    assert revoked.state == ivp.INVITATION_STATE_REVOKED
    await refused(invitations(world).AcceptInvitation(ivp.AcceptInvitationRequest(
        token=resent.secret, password=NEW_PASSWORD)), grpc.StatusCode.UNAUTHENTICATED)
    assert "create a new one" in await refused(invitations(world).ResendInvitation(
        ivp.ResendInvitationRequest(id=created.invitation.id), metadata=owner), grpc.StatusCode.FAILED_PRECONDITION)


async def test_an_expired_invitation_cannot_be_accepted_until_resent(world: World, stack: Any) -> None:
    created = await invite(world, email(world))
    owner_conn = await asyncpg.connect(stack.owner_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        async with owner_conn.transaction():  # 72 hours later
            await owner_conn.execute("SELECT set_config('sentinel.tenant_id', $1, true)", world.a.id)
            await owner_conn.execute("UPDATE invitations SET expire_time = now() - interval '1 second' "
                                     "WHERE id = $1", uuid.UUID(created.invitation.id))
    finally:
        await owner_conn.close()
    listed = (await invitations(world).ListInvitations(ivp.ListInvitationsRequest(page_size=1000),
                                                       metadata=world.a.owner.metadata)).invitations
    assert next(i for i in listed if i.id == created.invitation.id).state == ivp.INVITATION_STATE_EXPIRED
    request = ivp.AcceptInvitationRequest(token=created.secret, password=NEW_PASSWORD)
    await refused(invitations(world).AcceptInvitation(request), grpc.StatusCode.UNAUTHENTICATED)
    resent = await invitations(world).ResendInvitation(ivp.ResendInvitationRequest(id=created.invitation.id),
                                                       metadata=world.a.owner.metadata)
    assert resent.invitation.state == ivp.INVITATION_STATE_PENDING
    accepted = await invitations(world).AcceptInvitation(ivp.AcceptInvitationRequest(token=resent.secret,
                                                                                      password=NEW_PASSWORD))
    assert accepted.user.email == created.invitation.email


async def test_invitations_are_validated(world: World) -> None:
    owner = world.a.owner.metadata
    address = email(world)
    await invite(world, address)
    assert "resend" in await refused(invitations(world).CreateInvitation(ivp.CreateInvitationRequest(
        email=address.upper()), metadata=owner), grpc.StatusCode.ALREADY_EXISTS)  # case-insensitive
    await refused(invitations(world).CreateInvitation(ivp.CreateInvitationRequest(
        email=f"owner@{world.a.slug}.example.com"), metadata=owner), grpc.StatusCode.ALREADY_EXISTS)  # a user
    await refused(invitations(world).CreateInvitation(ivp.CreateInvitationRequest(email="not-an-email"),
                                                      metadata=owner), grpc.StatusCode.INVALID_ARGUMENT)
    await refused(invitations(world).CreateInvitation(ivp.CreateInvitationRequest(
        email=email(world), role=common_pb2.ROLE_PLATFORM_ADMIN), metadata=owner), grpc.StatusCode.PERMISSION_DENIED)
    await refused(invitations(world).CreateInvitation(ivp.CreateInvitationRequest(email=email(world)),
                                                      metadata=world.a.member.metadata),
                  grpc.StatusCode.PERMISSION_DENIED)  # members invite nobody
    created = await invite(world, email(world))
    for token, code in (("", grpc.StatusCode.INVALID_ARGUMENT), ("sti_short", grpc.StatusCode.UNAUTHENTICATED),
                        (created.secret[:-2] + "AA", grpc.StatusCode.UNAUTHENTICATED)):
        await refused(invitations(world).AcceptInvitation(ivp.AcceptInvitationRequest(
            token=token, password=NEW_PASSWORD)), code)
    # A weak password is refused and the invitation stays usable.
    await refused(invitations(world).AcceptInvitation(ivp.AcceptInvitationRequest(
        token=created.secret, password="password1234")), grpc.StatusCode.INVALID_ARGUMENT)
    assert (await invitations(world).AcceptInvitation(ivp.AcceptInvitationRequest(
        token=created.secret, password=PASSWORD))).user.id
