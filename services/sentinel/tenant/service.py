"""TenantService handlers: convert the proto, run the query in the unit of work, convert back.

Authorisation and tenant binding happened in the interceptors; RLS makes other tenants'
rows invisible here, so "not yours" and "does not exist" are the same NOT_FOUND.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import grpc
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from sentinel.platform import db, revocation
from sentinel.platform.auth import PLATFORM_TENANT_ID
from sentinel.platform.calls import require_call
from sentinel.platform.convert import EnumText, timestamp, update_paths
from sentinel.platform.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    NotFound,
    PermissionDenied,
    require,
)
from sentinel.platform.ids import parse_uuid, uuid7
from sentinel.platform.pagination import check_etag, etag, page_size
from sentinel.platform.server import Runtime, ServiceSpec
from sentinel.platform.validation import slug as check_slug
from sentinel.platform.validation import text as check_text
from sentinel.tenant import servicelevel
from sentinel.tenant.models import Tenant
from sentinel.tenant.v1 import tenant_pb2, tenant_service_pb2, tenant_service_pb2_grpc

STATE = EnumText(tenant_pb2.TenantState, "TENANT_STATE_")
PLAN = EnumText(tenant_pb2.TenantPlan, "TENANT_PLAN_")
UPDATABLE = ("display_name", "plan", "audit_retention_days")
RETENTION_DAYS = (90, 36500)
RESERVED_SLUGS = frozenset({"platform", "admin", "api", "sentinel", "system", "root"})
Context = grpc.aio.ServicerContext[Any, Any]


def to_proto(row: Tenant) -> tenant_pb2.Tenant:
    return tenant_pb2.Tenant(
        id=str(row.id), slug=row.slug, display_name=row.display_name, plan=PLAN.value(row.plan),
        state=STATE.value(row.state), create_time=timestamp(row.create_time),
        update_time=timestamp(row.update_time), etag=etag(row.id, row.version),
        suspension_reason=row.suspension_reason, delete_time=timestamp(row.delete_time),
        purge_time=timestamp(row.purge_time), audit_retention_days=row.audit_retention_days,
    )


def not_found(tenant_id: object) -> NotFound:
    return NotFound(f"tenant {tenant_id} not found", reason="TENANT_NOT_FOUND")


class TenantApi(tenant_service_pb2_grpc.TenantServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.page_tokens = runtime.page_tokens
        self.settings = runtime.settings

    async def CreateTenant(self, request: tenant_service_pb2.CreateTenantRequest,
                           context: Context) -> tenant_service_pb2.CreateTenantResponse:
        violations: list[FieldViolation] = []
        check_slug("slug", request.slug, violations)
        if request.slug in RESERVED_SLUGS:
            violations.append(FieldViolation("slug", f"'{request.slug}' is reserved"))
        check_text("display_name", request.display_name, min_len=1, max_len=200, out=violations)
        plan = PLAN.text(request.plan, "plan", default="free")
        require(violations)
        row = Tenant(id=uuid7(), slug=request.slug, display_name=request.display_name, plan=plan,
                     state="active", version=1)
        async with db.unit_of_work() as session:
            session.add(row)
            try:
                await session.flush()
            except IntegrityError:
                raise AlreadyExists(f"a tenant with slug '{request.slug}' already exists",
                                    reason="TENANT_SLUG_TAKEN") from None
            await session.refresh(row)
            return tenant_service_pb2.CreateTenantResponse(tenant=to_proto(row))

    async def GetTenant(self, request: tenant_service_pb2.GetTenantRequest,
                        context: Context) -> tenant_service_pb2.GetTenantResponse:
        tenant_id = parse_uuid(request.id, "id")
        async with db.unit_of_work() as session:
            row = await session.get(Tenant, tenant_id)
            if row is None:
                raise not_found(tenant_id)
            return tenant_service_pb2.GetTenantResponse(tenant=to_proto(row))

    async def GetServiceLevel(self, request: tenant_service_pb2.GetServiceLevelRequest,
                              context: Context) -> tenant_service_pb2.GetServiceLevelResponse:
        tenant_id = parse_uuid(request.tenant_id, "tenant_id")
        if tenant_id != require_call().tenant_id:
            raise not_found(tenant_id)  # another tenant's id: exactly like one that does not exist
        async with db.unit_of_work() as session:
            if await session.get(Tenant, tenant_id) is None:
                raise not_found(tenant_id)
            level = await servicelevel.get_service_level(session, tenant_id, dt.datetime.now(dt.UTC))
        return tenant_service_pb2.GetServiceLevelResponse(service_level=level)

    async def RankTenantUsage(self, request: tenant_service_pb2.RankTenantUsageRequest,
                              context: Context) -> tenant_service_pb2.RankTenantUsageResponse:
        minutes, service, limit = servicelevel.check_ranking(request)
        async with db.unit_of_work() as session:
            return await servicelevel.rank_tenant_usage(
                session, dt.datetime.now(dt.UTC), minutes=minutes, service=service, limit=limit,
                noisy_share=self.settings.noisy_neighbour_share)

    async def ListTenants(self, request: tenant_service_pb2.ListTenantsRequest,
                          context: Context) -> tenant_service_pb2.ListTenantsResponse:
        size = page_size(request.page_size)
        state = STATE.text(request.state, "state", default="")
        call = require_call()
        scope = f"ListTenants|{state}"
        cursor = self.page_tokens.cursor_for(request.page_token, tenant=call.tenant_id, scope=scope)
        query = select(Tenant)
        if state:
            query = query.where(Tenant.state == state)
        async with db.unit_of_work() as session:
            rows, token = await self.page_tokens.fetch_page(session, query, Tenant, size=size, cursor=cursor,
                                                            tenant=call.tenant_id, scope=scope)
        return tenant_service_pb2.ListTenantsResponse(tenants=[to_proto(r) for r in rows],
                                                      next_page_token=token)

    async def UpdateTenant(self, request: tenant_service_pb2.UpdateTenantRequest,
                           context: Context) -> tenant_service_pb2.UpdateTenantResponse:
        tenant_id = parse_uuid(request.tenant.id, "tenant.id")
        paths = update_paths(request.tenant, request.update_mask, UPDATABLE)
        violations: list[FieldViolation] = []
        values: dict[str, object] = {}
        if "display_name" in paths:
            check_text("tenant.display_name", request.tenant.display_name, min_len=1, max_len=200,
                       out=violations)
            values["display_name"] = request.tenant.display_name
        if "plan" in paths:
            values["plan"] = PLAN.text(request.tenant.plan, "tenant.plan")
        if "audit_retention_days" in paths:
            days = request.tenant.audit_retention_days
            if not RETENTION_DAYS[0] <= days <= RETENTION_DAYS[1]:
                violations.append(FieldViolation("tenant.audit_retention_days",
                                                 f"must be {RETENTION_DAYS[0]}-{RETENTION_DAYS[1]} days"))
            values["audit_retention_days"] = days
        require(violations)
        principal = require_call().principal
        if "plan" in values and not (principal and principal.is_platform_admin):
            raise PermissionDenied("only platform administrators can change a tenant's plan",
                                   reason="PLAN_CHANGE_DENIED")
        async with db.unit_of_work() as session:
            row = await session.get(Tenant, tenant_id, with_for_update=True)
            if row is None:
                raise not_found(tenant_id)
            check_etag(request.tenant.etag, row.id, row.version, "tenant")
            if values:
                await session.execute(
                    update(Tenant).where(Tenant.id == tenant_id)
                    .values(**values, version=Tenant.version + 1, update_time=func.now()))
                await session.refresh(row)
            return tenant_service_pb2.UpdateTenantResponse(tenant=to_proto(row))

    async def DeleteTenant(self, request: tenant_service_pb2.DeleteTenantRequest,
                           context: Context) -> tenant_service_pb2.DeleteTenantResponse:
        grace = dt.timedelta(days=self.settings.tenant_deletion_grace_days)

        def pending_deletion(row: Tenant) -> dict[str, object] | None:
            if row.state == "pending_deletion":
                return None  # already requested: keep the first purge time
            if row.state == "deleted":
                raise FailedPrecondition(f"tenant {row.id} is already deleted", reason="TENANT_DELETED")
            return {"state": "pending_deletion", "delete_time": func.now(), "purge_time": func.now() + grace}

        row = await self._transition(request.id, request.etag, pending_deletion)
        return tenant_service_pb2.DeleteTenantResponse(tenant=to_proto(row))

    async def SuspendTenant(self, request: tenant_service_pb2.SuspendTenantRequest,
                            context: Context) -> tenant_service_pb2.SuspendTenantResponse:
        violations: list[FieldViolation] = []
        check_text("reason", request.reason, min_len=1, max_len=500, out=violations)
        require(violations)

        def suspended(row: Tenant) -> dict[str, object] | None:
            if row.state == "suspended":
                return None
            if row.state != "active":
                raise self._not_in(row, "suspended", "only an active tenant can be suspended")
            return {"state": "suspended", "suspension_reason": request.reason}

        row = await self._transition(request.id, request.etag, suspended)
        return tenant_service_pb2.SuspendTenantResponse(tenant=to_proto(row))

    async def ResumeTenant(self, request: tenant_service_pb2.ResumeTenantRequest,
                           context: Context) -> tenant_service_pb2.ResumeTenantResponse:
        def resumed(row: Tenant) -> dict[str, object] | None:
            if row.state == "active":
                return None
            if row.state != "suspended":
                raise self._not_in(row, "resumed", "restore it first" if row.state == "pending_deletion"
                                   else "it cannot be resumed")
            return {"state": "active", "suspension_reason": ""}

        row = await self._transition(request.id, request.etag, resumed)
        return tenant_service_pb2.ResumeTenantResponse(tenant=to_proto(row))

    async def RestoreTenant(self, request: tenant_service_pb2.RestoreTenantRequest,
                            context: Context) -> tenant_service_pb2.RestoreTenantResponse:
        def restored(row: Tenant) -> dict[str, object] | None:
            if row.state in ("active", "suspended"):
                return None  # nothing pending: already restored
            if row.state != "pending_deletion":
                raise self._not_in(row, "restored", "it has been purged")
            # Back to where it was: a suspension survives a delete-and-restore.
            return {"state": "suspended" if row.suspension_reason else "active",
                    "delete_time": None, "purge_time": None}

        row = await self._transition(request.id, request.etag, restored)
        return tenant_service_pb2.RestoreTenantResponse(tenant=to_proto(row))

    @staticmethod
    def _not_in(row: Tenant, verb: str, hint: str) -> FailedPrecondition:
        state = row.state.replace("_", " ")
        return FailedPrecondition(f"tenant {row.id} is {state} and cannot be {verb}: {hint}",
                                  reason="TENANT_STATE", metadata={"state": row.state})

    async def _transition(self, raw_id: str, request_etag: str,
                          change: Callable[[Tenant], dict[str, object] | None]) -> Tenant:
        """Apply a lifecycle change to one tenant (locked, etag-checked) and announce it.

        ``change`` returns the new column values, or None when the tenant is already in the
        target state (a repeated call succeeds and changes nothing).
        """
        tenant_id = parse_uuid(raw_id, "id")
        if tenant_id == PLATFORM_TENANT_ID:
            raise FailedPrecondition("the platform tenant cannot be suspended or deleted",
                                     reason="PLATFORM_TENANT")
        async with db.unit_of_work() as session:
            row = await session.get(Tenant, tenant_id, with_for_update=True)
            if row is None:
                raise not_found(tenant_id)
            check_etag(request_etag, row.id, row.version, "tenant")
            values = change(row)
            if values is not None:
                await session.execute(
                    update(Tenant).where(Tenant.id == tenant_id)
                    .values(**values, version=Tenant.version + 1, update_time=func.now()))
                await session.refresh(row)
        # After the commit: every service refuses (or admits again) the tenant's calls at once.
        await revocation.announce_tenant_state(self.settings, row.id, row.state, row.suspension_reason)
        return row


def spec() -> ServiceSpec:
    def register(server: grpc.aio.Server, runtime: Runtime) -> None:
        tenant_service_pb2_grpc.add_TenantServiceServicer_to_server(TenantApi(runtime), server)

    return ServiceSpec(
        name="tenant",
        implements=[tenant_service_pb2.DESCRIPTOR.services_by_name["TenantService"].full_name],
        register=register,
    )
