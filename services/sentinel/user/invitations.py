"""InvitationService handlers: invite by e-mail, resend, revoke, accept with a single-use token."""

from __future__ import annotations

import datetime as dt
from typing import Any

import grpc
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from sentinel.platform import auditlog, db, opaque, revocation
from sentinel.platform.calls import require_call
from sentinel.platform.convert import timestamp
from sentinel.platform.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    NotFound,
    Unauthenticated,
    require,
)
from sentinel.platform.ids import parse_uuid, uuid7
from sentinel.platform.limits import enforce_plan_limit
from sentinel.platform.pagination import page_size
from sentinel.platform.server import Runtime
from sentinel.platform.validation import email as check_email
from sentinel.platform.validation import text as check_text
from sentinel.user.models import Invitation, User
from sentinel.user.passwords import MAX_PASSWORD, Passwords, check_password
from sentinel.user.service import ROLE, check_grant
from sentinel.user.service import to_proto as user_to_proto
from sentinel.user.v1 import invitation_service_pb2, invitation_service_pb2_grpc

pb = invitation_service_pb2
Context = grpc.aio.ServicerContext[Any, Any]
PREFIX = "sti_"
#: One answer for every token that cannot be used, so a token's fate is not revealed.
UNUSABLE = "this invitation token is not valid (used, withdrawn or expired); ask for a new invitation"


def state_of(row: Invitation, now: dt.datetime) -> pb.InvitationState.ValueType:
    if row.state == "pending" and row.expire_time <= now:
        return pb.INVITATION_STATE_EXPIRED
    return pb.InvitationState.Value(f"INVITATION_STATE_{row.state.upper()}")


def to_proto(row: Invitation) -> pb.Invitation:
    return pb.Invitation(
        id=str(row.id), tenant_id=str(row.tenant_id), email=row.email, role=ROLE.value(row.role),
        state=state_of(row, dt.datetime.now(dt.UTC)), inviter_id=str(row.inviter_id or ""),
        create_time=timestamp(row.create_time), expire_time=timestamp(row.expire_time),
        accept_time=timestamp(row.accept_time), user_id=str(row.user_id or ""))


def not_found(invitation_id: object) -> NotFound:
    return NotFound(f"invitation {invitation_id} not found", reason="INVITATION_NOT_FOUND")


class InvitationApi(invitation_service_pb2_grpc.InvitationServiceServicer):
    def __init__(self, runtime: Runtime, passwords: Passwords) -> None:
        self.settings = runtime.settings
        self.page_tokens = runtime.page_tokens
        self.passwords = passwords
        self.ttl = dt.timedelta(hours=self.settings.invitation_ttl_hours)

    async def CreateInvitation(self, request: pb.CreateInvitationRequest,
                               context: Context) -> pb.CreateInvitationResponse:
        call = require_call()
        assert call.principal is not None and call.tenant_id is not None
        violations: list[FieldViolation] = []
        check_email("email", request.email, violations)
        role = ROLE.text(request.role, "role", default="member")
        require(violations)
        check_grant(call.principal, role, "role")
        invitation_id = uuid7()
        secret, token_hash = opaque.generate(PREFIX, call.tenant_id, invitation_id)
        async with db.unit_of_work() as session:
            taken = await session.scalar(select(User.id).where(func.lower(User.email) == request.email.lower()))
            if taken is not None:
                raise AlreadyExists("a user with this e-mail already exists in the tenant",
                                    reason="USER_EMAIL_TAKEN")
            row = Invitation(id=invitation_id, tenant_id=call.tenant_id, email=request.email, role=role,
                             state="pending", token_hash=token_hash, inviter_id=call.principal.user_id,
                             expire_time=func.now() + self.ttl)
            session.add(row)
            try:
                await session.flush()
            except IntegrityError:
                raise AlreadyExists("this e-mail already has a pending invitation; resend it instead",
                                    reason="INVITATION_PENDING") from None
            await session.refresh(row)
            return pb.CreateInvitationResponse(invitation=to_proto(row), secret=secret)

    async def ListInvitations(self, request: pb.ListInvitationsRequest,
                              context: Context) -> pb.ListInvitationsResponse:
        call = require_call()
        size = page_size(request.page_size)
        cursor = self.page_tokens.cursor_for(request.page_token, tenant=call.tenant_id, scope="ListInvitations")
        async with db.unit_of_work() as session:
            rows, token = await self.page_tokens.fetch_page(session, select(Invitation), Invitation, size=size,
                                                            cursor=cursor, tenant=call.tenant_id,
                                                            scope="ListInvitations")
        return pb.ListInvitationsResponse(invitations=[to_proto(r) for r in rows], next_page_token=token)

    async def ResendInvitation(self, request: pb.ResendInvitationRequest,
                               context: Context) -> pb.ResendInvitationResponse:
        call = require_call()
        assert call.principal is not None and call.tenant_id is not None
        invitation_id = parse_uuid(request.id, "id")
        async with db.unit_of_work() as session:
            row = await session.get(Invitation, invitation_id, with_for_update=True)
            if row is None:
                raise not_found(invitation_id)
            if row.state != "pending":
                raise FailedPrecondition(f"invitation {invitation_id} is {row.state}; create a new one",
                                         reason="INVITATION_CLOSED")
            check_grant(call.principal, row.role, "role")  # resending re-grants the role
            secret, token_hash = opaque.generate(PREFIX, call.tenant_id, invitation_id)
            await session.execute(update(Invitation).where(Invitation.id == invitation_id).values(
                token_hash=token_hash, expire_time=func.now() + self.ttl, inviter_id=call.principal.user_id))
            await session.refresh(row)
            return pb.ResendInvitationResponse(invitation=to_proto(row), secret=secret)

    async def RevokeInvitation(self, request: pb.RevokeInvitationRequest,
                               context: Context) -> pb.RevokeInvitationResponse:
        invitation_id = parse_uuid(request.id, "id")
        async with db.unit_of_work() as session:
            row = await session.get(Invitation, invitation_id, with_for_update=True)
            if row is None:
                raise not_found(invitation_id)
            if row.state == "accepted":
                raise FailedPrecondition(f"invitation {invitation_id} was already accepted; "
                                         "disable or delete the user instead", reason="INVITATION_CLOSED")
            if row.state == "pending":
                await session.execute(update(Invitation).where(Invitation.id == invitation_id)
                                      .values(state="revoked"))
                await session.refresh(row)
            return pb.RevokeInvitationResponse(invitation=to_proto(row))

    async def AcceptInvitation(self, request: pb.AcceptInvitationRequest,
                               context: Context) -> pb.AcceptInvitationResponse:
        unusable = Unauthenticated(UNUSABLE, reason="INVITATION_INVALID")
        if not request.token:
            require([FieldViolation("token", "is required")])
        parsed = opaque.parse(request.token, prefix=PREFIX, what="invitation token", reason="INVITATION_INVALID")
        violations: list[FieldViolation] = []
        check_text("display_name", request.display_name, max_len=200, out=violations)
        if len(request.password) > MAX_PASSWORD:
            violations.append(FieldViolation("password", f"at most {MAX_PASSWORD} characters"))
        require(violations)
        blocked = revocation.tenants.blocked(parsed.tenant_id)
        if blocked is not None:
            raise blocked.refusal(parsed.tenant_id, own=True)
        async with db.unit_of_work(tenant_id=parsed.tenant_id, platform=False) as session:
            row = await session.get(Invitation, parsed.record_id)
        if row is not None:  # a real invitation: its tenant's trail records the attempt
            auditlog.note(tenant_id=parsed.tenant_id, target=("invitation", str(row.id)),
                          diff={"email": row.email, "display_name": request.display_name})
        if row is None or row.token_hash != parsed.secret_hash or state_of(row, dt.datetime.now(dt.UTC)) != \
                pb.INVITATION_STATE_PENDING:
            raise unusable
        check_password("password", request.password, self.settings.password_min_length, violations, email=row.email)
        require(violations)
        password_hash = await self.passwords.hash(request.password)
        async with db.unit_of_work(tenant_id=parsed.tenant_id, platform=False) as session:
            # Single use: only the first of two concurrent accepts flips the row.
            user_id = uuid7()
            claimed = (await session.execute(
                update(Invitation).where(Invitation.id == row.id, Invitation.state == "pending",
                                         Invitation.token_hash == parsed.secret_hash,
                                         Invitation.expire_time > func.now())
                .values(state="accepted", accept_time=func.now(), user_id=user_id))).rowcount  # type: ignore[attr-defined]
            if not claimed:
                raise unusable
            await enforce_plan_limit(session, self.settings.plan_max_users, resource="users",
                                     count=select(func.count()).select_from(User), reason="PLAN_USER_LIMIT")
            user = User(id=user_id, tenant_id=parsed.tenant_id, email=row.email,
                        display_name=request.display_name, role=row.role, state="active",
                        password_hash=password_hash, version=1)
            session.add(user)
            try:
                await session.flush()
            except IntegrityError:
                raise AlreadyExists("a user with this e-mail already exists in the tenant; log in instead",
                                    reason="USER_EMAIL_TAKEN") from None
            await session.refresh(user)
            await auditlog.record(session, tenant_id=parsed.tenant_id, actor=("USER", str(user_id)))
            return pb.AcceptInvitationResponse(user=user_to_proto(user))
