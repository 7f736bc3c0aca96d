"""UserService handlers. Tenant binding and permissions come from the interceptors; the
rules here are the ones only this service knows (roles a caller may grant, last owner)."""

from __future__ import annotations

import functools
from typing import Any

import grpc
from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.exc import IntegrityError

from sentinel.common.v1 import common_pb2
from sentinel.platform import db, revocation
from sentinel.platform.auth import PLATFORM_TENANT_ID, RANK, Principal, RotatingSigner, TokenSigner
from sentinel.platform.calls import require_call
from sentinel.platform.convert import EnumText, timestamp, update_paths
from sentinel.platform.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    require,
)
from sentinel.platform.ids import parse_uuid, uuid7
from sentinel.platform.limits import enforce_plan_limit
from sentinel.platform.pagination import check_etag, etag, keyset_after, keyset_order, page_params, page_size
from sentinel.platform.server import Runtime, ServiceSpec
from sentinel.platform.validation import email as check_email
from sentinel.platform.validation import text as check_text
from sentinel.user.models import Session, User
from sentinel.user.passwords import Passwords, check_password
from sentinel.user.v1 import (
    invitation_service_pb2,
    invitation_service_pb2_grpc,
    service_account_service_pb2,
    service_account_service_pb2_grpc,
    user_pb2,
    user_service_pb2,
    user_service_pb2_grpc,
)

ROLE = EnumText(common_pb2.Role, "ROLE_")
STATE = EnumText(user_pb2.UserState, "USER_STATE_")
UPDATABLE = ("email", "display_name", "role", "state")
Context = grpc.aio.ServicerContext[Any, Any]
# The hot read, without the ORM (db.read_only); RLS binds it to the caller's tenant.
USER_BY_ID = db.Query(select(User).where(User.id == bindparam("id")))


@functools.cache
def list_users_query(role: bool, state: bool, after: bool) -> db.Query:
    """ListUsers' statement for one combination of filters (at most eight, compiled once each)."""
    query = select(User)
    if role:
        query = query.where(User.role == bindparam("role"))
    if state:
        query = query.where(User.state == bindparam("state"))
    if after:
        query = query.where(keyset_after(User))
    return db.Query(keyset_order(query, User))


def to_proto(row: User | db.Fetched) -> user_pb2.User:
    return user_pb2.User(
        id=str(row.id), tenant_id=str(row.tenant_id), email=row.email, display_name=row.display_name,
        role=ROLE.value(row.role), state=STATE.value(row.state), create_time=timestamp(row.create_time),
        update_time=timestamp(row.update_time), last_login_time=timestamp(row.last_login_time),
        etag=etag(row.id, row.version),
    )


def not_found(user_id: object) -> NotFound:
    return NotFound(f"user {user_id} not found", reason="USER_NOT_FOUND")


def check_grant(principal: Principal, role: str, field: str) -> None:
    """Nobody grants a role above their own; platform_admin exists only in the platform tenant."""
    if role == "platform_admin" and require_call().tenant_id != PLATFORM_TENANT_ID:
        raise PermissionDenied("ROLE_PLATFORM_ADMIN exists only in the platform tenant",
                               reason="ROLE_NOT_ALLOWED", metadata={"field": field})
    if RANK.get(role, 99) > RANK.get(principal.role, 0):
        raise PermissionDenied(f"your role '{principal.role}' cannot grant '{role}'",
                               reason="ROLE_ABOVE_CALLER", metadata={"field": field})


async def end_sessions(session: Any, user_id: Any) -> list[Any]:
    """Mark the user's open sessions revoked; returns their ids to announce after the commit."""
    return list(await session.scalars(
        update(Session).where(Session.user_id == user_id, Session.revoke_time.is_(None))
        .values(revoke_time=func.now()).returning(Session.id)))


async def owners_left(session: Any, excluding: Any) -> int:
    count = await session.scalar(
        select(func.count()).select_from(User).where(User.role == "owner", User.id != excluding,
                                                     User.state == "active"))
    return int(count or 0)


class UserApi(user_service_pb2_grpc.UserServiceServicer):
    def __init__(self, runtime: Runtime, passwords: Passwords) -> None:
        self.settings = runtime.settings
        self.page_tokens = runtime.page_tokens
        self.passwords = passwords

    async def CreateUser(self, request: user_service_pb2.CreateUserRequest,
                         context: Context) -> user_service_pb2.CreateUserResponse:
        call = require_call()
        assert call.principal is not None and call.tenant_id is not None
        violations: list[FieldViolation] = []
        check_email("email", request.email, violations)
        check_text("display_name", request.display_name, max_len=200, out=violations)
        check_password("password", request.password, self.settings.password_min_length, violations,
                       email=request.email)
        role = ROLE.text(request.role, "role", default="member")
        require(violations)
        check_grant(call.principal, role, "role")
        password_hash = await self.passwords.hash(request.password)
        row = User(id=uuid7(), tenant_id=call.tenant_id, email=request.email,
                   display_name=request.display_name, role=role, state="active",
                   password_hash=password_hash, version=1)
        async with db.unit_of_work() as session:
            await enforce_plan_limit(session, self.settings.plan_max_users, resource="users",
                                     count=select(func.count()).select_from(User), reason="PLAN_USER_LIMIT")
            session.add(row)
            try:
                await session.flush()
            except IntegrityError:
                raise AlreadyExists("a user with this e-mail already exists in the tenant",
                                    reason="USER_EMAIL_TAKEN") from None
            await session.refresh(row)
            return user_service_pb2.CreateUserResponse(user=to_proto(row))

    async def GetCurrentUser(self, request: user_service_pb2.GetCurrentUserRequest,
                             context: Context) -> user_service_pb2.GetCurrentUserResponse:
        principal = require_call().principal
        user_id = principal.user_id if principal else None
        async with db.unit_of_work() as session:
            row = await session.get(User, user_id) if user_id else None
        if row is None or row.state == "disabled":
            raise Unauthenticated("your account no longer exists or is disabled; log in again",
                                  reason="USER_NOT_ACTIVE")
        return user_service_pb2.GetCurrentUserResponse(user=to_proto(row))

    async def GetUser(self, request: user_service_pb2.GetUserRequest,
                      context: Context) -> user_service_pb2.GetUserResponse:
        user_id = parse_uuid(request.id, "id")
        async with db.read_only() as reader:
            row = await reader.one(USER_BY_ID, id=user_id)
        if row is None:
            raise not_found(user_id)
        return user_service_pb2.GetUserResponse(user=to_proto(row))

    async def ListUsers(self, request: user_service_pb2.ListUsersRequest,
                        context: Context) -> user_service_pb2.ListUsersResponse:
        size = page_size(request.page_size)
        role = ROLE.text(request.role, "role", default="")
        state = STATE.text(request.state, "state", default="")
        call = require_call()
        scope = f"ListUsers|{role}|{state}"
        cursor = self.page_tokens.cursor_for(request.page_token, tenant=call.tenant_id, scope=scope)
        query = list_users_query(bool(role), bool(state), cursor is not None)
        filters = {k: v for k, v in (("role", role), ("state", state)) if v}
        async with db.read_only() as reader:
            fetched = await reader.all(query, **filters, **page_params(size, cursor))
        rows, token = self.page_tokens.page_of(fetched, size=size, tenant=call.tenant_id, scope=scope)
        return user_service_pb2.ListUsersResponse(users=[to_proto(r) for r in rows], next_page_token=token)

    async def UpdateUser(self, request: user_service_pb2.UpdateUserRequest,
                         context: Context) -> user_service_pb2.UpdateUserResponse:
        call = require_call()
        principal = call.principal
        assert principal is not None
        user_id = parse_uuid(request.user.id, "user.id")
        paths = update_paths(request.user, request.update_mask, UPDATABLE)
        violations: list[FieldViolation] = []
        values: dict[str, object] = {}
        if "email" in paths:
            check_email("user.email", request.user.email, violations)
            values["email"] = request.user.email
        if "display_name" in paths:
            check_text("user.display_name", request.user.display_name, max_len=200, out=violations)
            values["display_name"] = request.user.display_name
        if "role" in paths:
            values["role"] = ROLE.text(request.user.role, "user.role")
        if "state" in paths:
            values["state"] = STATE.text(request.user.state, "user.state")
            # An administrator's lock or unlock replaces a temporary failed-login lock.
            values["locked_until"] = None
        require(violations)
        if "role" in values:
            check_grant(principal, str(values["role"]), "user.role")
        async with db.unit_of_work() as session:
            row = await session.get(User, user_id, with_for_update=True)
            if row is None:
                raise not_found(user_id)
            check_etag(request.user.etag, row.id, row.version, "user")
            if RANK.get(row.role, 0) > RANK.get(principal.role, 0):
                raise PermissionDenied("you cannot change a user whose role is above yours",
                                       reason="TARGET_ABOVE_CALLER")
            losing_owner = row.role == "owner" and (
                values.get("role", "owner") != "owner" or values.get("state", "active") != "active")
            if losing_owner and await owners_left(session, row.id) == 0:
                raise FailedPrecondition("a tenant needs at least one active owner; make another "
                                         "user owner first", reason="LAST_OWNER")
            # Tokens carry the role: a new role, or an account no longer active, ends its sessions.
            ends_sessions = values.get("role", row.role) != row.role or values.get("state", "active") != "active"
            ended: list[Any] = []
            if values:
                try:
                    await session.execute(
                        update(User).where(User.id == user_id)
                        .values(**values, version=User.version + 1, update_time=func.now()))
                except IntegrityError:
                    raise AlreadyExists("a user with this e-mail already exists in the tenant",
                                        reason="USER_EMAIL_TAKEN") from None
                if ends_sessions:
                    ended = await end_sessions(session, user_id)
                await session.refresh(row)
            response = user_service_pb2.UpdateUserResponse(user=to_proto(row))
        await revocation.announce(self.settings, ended)
        return response

    async def DeleteUser(self, request: user_service_pb2.DeleteUserRequest,
                         context: Context) -> user_service_pb2.DeleteUserResponse:
        principal = require_call().principal
        assert principal is not None
        user_id = parse_uuid(request.id, "id")
        if principal.user_id == user_id:
            raise FailedPrecondition("you cannot delete yourself", reason="SELF_DELETE")
        async with db.unit_of_work() as session:
            row = await session.get(User, user_id, with_for_update=True)
            if row is None:
                raise not_found(user_id)
            check_etag(request.etag, row.id, row.version, "user")
            if RANK.get(row.role, 0) > RANK.get(principal.role, 0):
                raise PermissionDenied("you cannot delete a user whose role is above yours",
                                       reason="TARGET_ABOVE_CALLER")
            if row.role == "owner" and await owners_left(session, row.id) == 0:
                raise FailedPrecondition("the last owner of a tenant cannot be deleted",
                                         reason="LAST_OWNER")
            ended = await end_sessions(session, user_id)  # their rows go with the user; the tokens must too
            await session.execute(delete(User).where(User.id == user_id))
        await revocation.announce(self.settings, ended)
        return user_service_pb2.DeleteUserResponse()

    async def RevokeUserSessions(self, request: user_service_pb2.RevokeUserSessionsRequest,
                                 context: Context) -> user_service_pb2.RevokeUserSessionsResponse:
        principal = require_call().principal
        assert principal is not None
        user_id = parse_uuid(request.id, "id")
        async with db.unit_of_work() as session:
            row = await session.get(User, user_id)
            if row is None:
                raise not_found(user_id)
            if RANK.get(row.role, 0) > RANK.get(principal.role, 0):
                raise PermissionDenied("you cannot end the sessions of a user whose role is above yours",
                                       reason="TARGET_ABOVE_CALLER")
            revoked = await end_sessions(session, user_id)
        await revocation.announce(self.settings, revoked)
        return user_service_pb2.RevokeUserSessionsResponse(revoked_sessions=len(revoked))


def spec() -> ServiceSpec:
    from sentinel.user.auth import AuthApi
    from sentinel.user.invitations import InvitationApi
    from sentinel.user.service_accounts import ServiceAccountApi

    def register(server: grpc.aio.Server, runtime: Runtime) -> None:
        settings = runtime.settings
        signer: TokenSigner | RotatingSigner
        if settings.jwt_signing_keys_dir is not None and settings.jwt_public_keys_dir is not None:
            signer = RotatingSigner(settings.jwt_signing_keys_dir, settings.jwt_public_keys_dir,
                                    issuer=settings.jwt_issuer, audience=settings.jwt_audience,
                                    activation_seconds=settings.jwt_key_activation_seconds,
                                    reload_seconds=settings.jwt_keys_reload_seconds)
        elif settings.jwt_signing_key_file is not None:
            signer = TokenSigner.from_file(settings.jwt_signing_key_file, issuer=settings.jwt_issuer,
                                           audience=settings.jwt_audience)
        else:
            raise RuntimeError("the user service needs SENTINEL_JWT_SIGNING_KEYS_DIR (with "
                               "SENTINEL_JWT_PUBLIC_KEYS_DIR) or SENTINEL_JWT_SIGNING_KEY_FILE")
        passwords = Passwords(settings)
        user_service_pb2_grpc.add_UserServiceServicer_to_server(UserApi(runtime, passwords), server)
        user_service_pb2_grpc.add_AuthServiceServicer_to_server(AuthApi(runtime, passwords, signer), server)
        service_account_service_pb2_grpc.add_ServiceAccountServiceServicer_to_server(
            ServiceAccountApi(runtime), server)
        invitation_service_pb2_grpc.add_InvitationServiceServicer_to_server(InvitationApi(runtime, passwords), server)

    services = user_service_pb2.DESCRIPTOR.services_by_name
    accounts = service_account_service_pb2.DESCRIPTOR.services_by_name["ServiceAccountService"]
    invitations = invitation_service_pb2.DESCRIPTOR.services_by_name["InvitationService"]
    return ServiceSpec(name="user", implements=[services["UserService"].full_name, services["AuthService"].full_name,
                                                accounts.full_name, invitations.full_name], register=register)
