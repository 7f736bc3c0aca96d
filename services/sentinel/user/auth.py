"""AuthService: login, refresh-token rotation, logout, WhoAmI and the JWKS.

Failed logins never say which part was wrong, and cost the same argon2 verification
whether or not the tenant or user exists.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid
from typing import Any

import grpc
from sqlalchemy import and_, func, or_, select, text, update

from sentinel.common.v1 import common_pb2
from sentinel.platform import auditlog, db, kv, revocation
from sentinel.platform.auth import (
    PLATFORM_TENANT_ID,
    ROLE_BY_NAME,
    Principal,
    RotatingSigner,
    TokenSigner,
    TokenVerifier,
    public_jwk,
)
from sentinel.platform.calls import require_call
from sentinel.platform.errors import (
    Aborted,
    FailedPrecondition,
    FieldViolation,
    ResourceExhausted,
    Unauthenticated,
    require,
)
from sentinel.platform.ids import uuid7
from sentinel.platform.server import Runtime
from sentinel.user.models import Session, User
from sentinel.user.passwords import MAX_PASSWORD, Passwords, check_password
from sentinel.user.throttle import MESSAGE, LoginThrottle
from sentinel.user.v1 import user_service_pb2, user_service_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]
BAD_CREDENTIALS = "invalid tenant, e-mail or password"
_RESOLVE = text("SELECT id, state FROM sentinel_resolve_tenant(:slug)")


def _hash(token_id: str) -> str:
    return hashlib.sha256(token_id.encode()).hexdigest()


class AuthApi(user_service_pb2_grpc.AuthServiceServicer):
    def __init__(self, runtime: Runtime, passwords: Passwords, signer: TokenSigner | RotatingSigner) -> None:
        self.settings = runtime.settings
        self.passwords = passwords
        self.signer = signer
        self.throttle = LoginThrottle(kv.client(runtime.settings), runtime.settings)
        verifier = runtime.verifier
        assert verifier is not None, "the user service needs SENTINEL_JWT_PUBLIC_KEYS_DIR"
        self.verifier: TokenVerifier = verifier

    def _tokens(self, principal: Principal, session_id: uuid.UUID, refresh_id: str) -> dict[str, Any]:
        access = self.signer.sign(principal, ttl_seconds=self.settings.access_token_ttl_seconds)
        refresh_principal = Principal(principal.subject, principal.tenant_id, principal.role,
                                      session_id=str(session_id), token_id=refresh_id)
        refresh = self.signer.sign(refresh_principal, ttl_seconds=self.settings.refresh_token_ttl_seconds,
                                   use="refresh")
        return {"access_token": access, "refresh_token": refresh, "token_type": "Bearer",
                "expires_in": self.settings.access_token_ttl_seconds}

    async def Login(self, request: user_service_pb2.LoginRequest,
                    context: Context) -> user_service_pb2.LoginResponse:
        violations = [FieldViolation(f, "is required") for f in ("tenant", "email", "password")
                      if not getattr(request, f)]
        if len(request.password) > 1024 or len(request.email) > 320 or len(request.tenant) > 63:
            violations.append(FieldViolation("login", "a field is too long"))
        require(violations)
        call = require_call()
        await self.throttle.check(request.tenant, request.email, call.peer_ip)
        async with db.unit_of_work(tenant_id=None, platform=False) as session:
            tenant = (await session.execute(_RESOLVE, {"slug": request.tenant})).first()
        # The user lookup runs for an unknown tenant too (bound to no tenant, RLS finds nothing),
        # so the time taken does not tell which tenant slugs exist.
        async with db.unit_of_work(tenant_id=tenant.id if tenant else None, platform=False) as session:
            user = await session.scalar(select(User).where(func.lower(User.email) == request.email.lower()))
        # Every outcome from here on is in the tenant's trail (unknown tenant slugs: the platform's).
        auditlog.note(tenant_id=tenant.id if tenant else PLATFORM_TENANT_ID,
                      actor=("USER", str(user.id)) if user else ("ANONYMOUS", ""),
                      target=("user", str(user.id) if user else ""),
                      diff={"tenant": request.tenant, "email": request.email})
        ok = await self.passwords.verify(user.password_hash if user else None, request.password)
        if not ok or user is None or tenant is None:
            lock_seconds = await self.throttle.failed(request.tenant, request.email, call.peer_ip)
            if lock_seconds and user is not None:
                await self._lock(user, lock_seconds)
            raise Unauthenticated(BAD_CREDENTIALS, reason="BAD_CREDENTIALS")
        await self.throttle.succeeded(request.tenant, request.email)
        # Only a caller who knows the password learns why an account cannot log in.
        if tenant.state != "active":
            raise FailedPrecondition(f"the tenant is {tenant.state}; contact your administrator",
                                     reason="TENANT_NOT_ACTIVE")
        now = dt.datetime.now(dt.UTC)
        unlock = user.state == "locked" and user.locked_until is not None and user.locked_until <= now
        if user.state == "locked" and user.locked_until is not None and not unlock:
            # Same answer as the throttle: the lock outlived its Redis key (e.g. Redis restarted).
            raise ResourceExhausted(MESSAGE, retry_after_seconds=(user.locked_until - now).total_seconds(),
                                    reason="LOGIN_THROTTLED")
        if user.state != "active" and not unlock:
            raise FailedPrecondition(f"the account is {user.state}; contact your administrator",
                                     reason="USER_NOT_ACTIVE")
        session_id, refresh_id = uuid7(), secrets.token_urlsafe(24)
        principal = Principal(str(user.id), user.tenant_id, user.role, session_id=str(session_id))
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.settings.refresh_token_ttl_seconds)
        rehash = self.passwords.needs_rehash(user.password_hash)
        new_hash = await self.passwords.hash(request.password) if rehash else None
        async with db.unit_of_work(tenant_id=user.tenant_id, platform=False) as session:
            session.add(Session(id=session_id, tenant_id=user.tenant_id, user_id=user.id,
                                refresh_token_hash=_hash(refresh_id), expire_time=expires,
                                source_ip=call.peer_ip[:100], user_agent=call.user_agent[:300]))
            values: dict[str, Any] = {"last_login_time": func.now()}
            if new_hash:
                values["password_hash"] = new_hash
            if unlock:
                values.update(state="active", locked_until=None)
            await session.execute(update(User).where(User.id == user.id).values(**values))
            auditlog.note(diff={"email": request.email, "session_id": str(session_id)})
            await auditlog.record(session, tenant_id=user.tenant_id)
        return user_service_pb2.LoginResponse(**self._tokens(principal, session_id, refresh_id))

    async def _lock(self, user: User, seconds: float) -> None:
        """Mark the account LOCKED until the throttle's lock ends (visible to its admins)."""
        until = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
        async with db.unit_of_work(tenant_id=user.tenant_id, platform=False) as session:
            await session.execute(
                update(User).where(User.id == user.id, or_(User.state == "active", and_(
                    User.state == "locked", User.locked_until.is_not(None))))
                .values(state="locked", locked_until=until, version=User.version + 1, update_time=func.now()))

    async def RefreshToken(self, request: user_service_pb2.RefreshTokenRequest,
                           context: Context) -> user_service_pb2.RefreshTokenResponse:
        require([FieldViolation("refresh_token", "is required")] if not request.refresh_token else [])
        claims = self.verifier.verify(request.refresh_token, use="refresh")
        invalid = Unauthenticated("the refresh token is invalid or was already used; log in again",
                                  reason="REFRESH_INVALID")
        try:
            session_id = uuid.UUID(claims.session_id)
        except ValueError:
            raise invalid from None
        auditlog.note(tenant_id=claims.tenant_id, actor=("USER", claims.subject), target=("user", claims.subject),
                      diff={"session_id": claims.session_id})
        blocked = revocation.tenants.blocked(claims.tenant_id)
        if blocked is not None:  # a suspended tenant's sessions cannot be extended either
            raise blocked.refusal(claims.tenant_id, own=True)
        new_refresh_id = secrets.token_urlsafe(24)
        reused = False
        async with db.unit_of_work(tenant_id=claims.tenant_id, platform=False) as session:
            row = await session.get(Session, session_id, with_for_update=True)
            if row is None or row.revoke_time is not None or row.expire_time < dt.datetime.now(dt.UTC):
                raise invalid
            user = await session.get(User, row.user_id)
            presented = _hash(claims.token_id)
            now = dt.datetime.now(dt.UTC)
            if presented != row.refresh_token_hash:
                grace = dt.timedelta(seconds=self.settings.refresh_reuse_grace_seconds)
                if presented == row.previous_refresh_token_hash and now - row.last_refresh_time <= grace:
                    # The same client refreshing twice at once (or retrying): one wins, the
                    # other is told to use the new token; the session lives on.
                    auditlog.note(diff={"session_id": claims.session_id, "reason": "REFRESH_RACE"})
                    raise Unauthenticated("this refresh token was just used; use the one that came back",
                                          reason="REFRESH_RACE")
                # A spent refresh token came back: someone holds a copy. End the whole session.
                row.revoke_time = now
                reused = True
                auditlog.note(diff={"session_id": claims.session_id, "reason": "REFRESH_REUSED",
                                    "session_revoked": True})
            elif user is None or user.state != "active":
                raise invalid
            else:
                row.previous_refresh_token_hash = row.refresh_token_hash
                row.refresh_token_hash = _hash(new_refresh_id)
                row.last_refresh_time = now
                await auditlog.record(session, tenant_id=claims.tenant_id)
        if reused:
            await revocation.announce(self.settings, [session_id])
        if reused or user is None:
            raise invalid
        principal = Principal(str(user.id), user.tenant_id, user.role, session_id=str(session_id))
        return user_service_pb2.RefreshTokenResponse(**self._tokens(principal, session_id, new_refresh_id))

    async def Logout(self, request: user_service_pb2.LogoutRequest,
                     context: Context) -> user_service_pb2.LogoutResponse:
        principal = require_call().principal
        assert principal is not None
        if principal.session_id:
            async with db.unit_of_work() as session:
                await session.execute(
                    update(Session).where(Session.id == uuid.UUID(principal.session_id),
                                          Session.revoke_time.is_(None))
                    .values(revoke_time=func.now()))
            await revocation.announce(self.settings, [principal.session_id])
        return user_service_pb2.LogoutResponse()

    async def ChangePassword(self, request: user_service_pb2.ChangePasswordRequest,
                             context: Context) -> user_service_pb2.ChangePasswordResponse:
        principal = require_call().principal
        assert principal is not None
        violations = [] if request.current_password else [FieldViolation("current_password", "is required")]
        if len(request.current_password) > MAX_PASSWORD:
            violations.append(FieldViolation("current_password", "does not match"))
        user_id = uuid.UUID(principal.subject)
        async with db.unit_of_work() as session:
            user = await session.get(User, user_id)
        if user is None or user.state != "active":
            raise Unauthenticated("your account is no longer active; log in again", reason="USER_NOT_ACTIVE")
        check_password("new_password", request.new_password, self.settings.password_min_length, violations,
                       email=user.email)
        if request.new_password and request.new_password == request.current_password:
            violations.append(FieldViolation("new_password", "must differ from the current password"))
        require(violations)
        if not await self.passwords.verify(user.password_hash, request.current_password):
            require([FieldViolation("current_password", "does not match")])
        new_hash = await self.passwords.hash(request.new_password)
        async with db.unit_of_work() as session:
            # The version guards against a concurrent change between the read and this write.
            changed = await session.execute(
                update(User).where(User.id == user_id, User.version == user.version)
                .values(password_hash=new_hash, version=User.version + 1, update_time=func.now()))
            if changed.rowcount != 1:  # type: ignore[attr-defined]
                raise Aborted("your account was changed meanwhile; try again", reason="CONCURRENT_CHANGE")
            others = [Session.user_id == user_id, Session.revoke_time.is_(None)]
            if principal.session_id:
                others.append(Session.id != uuid.UUID(principal.session_id))
            revoked = list(await session.scalars(
                update(Session).where(*others).values(revoke_time=func.now()).returning(Session.id)))
        await revocation.announce(self.settings, revoked)
        return user_service_pb2.ChangePasswordResponse(revoked_sessions=len(revoked))

    async def WhoAmI(self, request: user_service_pb2.WhoAmIRequest,
                     context: Context) -> user_service_pb2.WhoAmIResponse:
        principal = require_call().principal
        assert principal is not None
        return user_service_pb2.WhoAmIResponse(
            user_id=principal.subject, tenant_id=str(principal.tenant_id),
            role=common_pb2.Role.ValueType(ROLE_BY_NAME.get(principal.role, common_pb2.ROLE_UNSPECIFIED)),
            session_id=principal.session_id)

    async def GetJwks(self, request: user_service_pb2.GetJwksRequest,
                      context: Context) -> user_service_pb2.GetJwksResponse:
        keys = [user_service_pb2.Jwk(**public_jwk(kid, key)) for kid, key in self.verifier.keys.items()]
        return user_service_pb2.GetJwksResponse(keys=keys)
