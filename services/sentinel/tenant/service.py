"""TenantService handlers: convert the proto, run the query in the unit of work, convert back.

Authorisation and tenant binding happened in the interceptors; RLS makes other tenants'
rows invisible here, so "not yours" and "does not exist" are the same NOT_FOUND.
"""

from __future__ import annotations

from typing import Any

import grpc
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from sentinel.platform import db
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
from sentinel.tenant.models import Tenant
from sentinel.tenant.v1 import tenant_pb2, tenant_service_pb2, tenant_service_pb2_grpc

STATE = EnumText(tenant_pb2.TenantState, "TENANT_STATE_")
PLAN = EnumText(tenant_pb2.TenantPlan, "TENANT_PLAN_")
UPDATABLE = ("display_name", "plan")
RESERVED_SLUGS = frozenset({"platform", "admin", "api", "sentinel", "system", "root"})
Context = grpc.aio.ServicerContext[Any, Any]


def to_proto(row: Tenant) -> tenant_pb2.Tenant:
    return tenant_pb2.Tenant(
        id=str(row.id), slug=row.slug, display_name=row.display_name, plan=PLAN.value(row.plan),
        state=STATE.value(row.state), create_time=timestamp(row.create_time),
        update_time=timestamp(row.update_time), etag=etag(row.id, row.version),
    )


def not_found(tenant_id: object) -> NotFound:
    return NotFound(f"tenant {tenant_id} not found", reason="TENANT_NOT_FOUND")


class TenantApi(tenant_service_pb2_grpc.TenantServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.page_tokens = runtime.page_tokens

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
        tenant_id = parse_uuid(request.id, "id")
        if tenant_id == PLATFORM_TENANT_ID:
            raise FailedPrecondition("the platform tenant cannot be deleted", reason="PLATFORM_TENANT")
        async with db.unit_of_work() as session:
            row = await session.get(Tenant, tenant_id, with_for_update=True)
            if row is None:
                raise not_found(tenant_id)
            check_etag(request.etag, row.id, row.version, "tenant")
            await session.execute(delete(Tenant).where(Tenant.id == tenant_id))
        return tenant_service_pb2.DeleteTenantResponse()


def spec() -> ServiceSpec:
    def register(server: grpc.aio.Server, runtime: Runtime) -> None:
        tenant_service_pb2_grpc.add_TenantServiceServicer_to_server(TenantApi(runtime), server)

    return ServiceSpec(
        name="tenant",
        implements=[tenant_service_pb2.DESCRIPTOR.services_by_name["TenantService"].full_name],
        register=register,
    )
