"""ServiceAccountService handlers: a tenant's service accounts and their API keys.

Authentication with a key happens in the kernel (``sentinel.platform.apikeys``) in every
service; this module only creates, lists and revokes them.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import grpc
from sqlalchemy import delete, func, or_, select, update

from sentinel.platform import apikeys, db, kv, revocation
from sentinel.platform.calls import require_call
from sentinel.platform.config import Settings
from sentinel.platform.convert import timestamp
from sentinel.platform.errors import FieldViolation, InvalidArgument, NotFound, require
from sentinel.platform.ids import parse_uuid, uuid7
from sentinel.platform.limits import enforce_plan_limit
from sentinel.platform.pagination import check_etag, etag, page_size
from sentinel.platform.server import Runtime
from sentinel.platform.validation import text as check_text
from sentinel.user.models import ApiKey, ServiceAccount
from sentinel.user.service import ROLE, check_grant
from sentinel.user.v1 import service_account_pb2, service_account_service_pb2, service_account_service_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]
pb = service_account_service_pb2
KEY_STATE = service_account_pb2.ApiKeyState
MAX_SCOPES = 64
#: A revoked key must stay refused while any process may still hold it authenticated.
REVOCATION_TTL_SECONDS = apikeys.CACHE_SECONDS + 30


def account_to_proto(row: ServiceAccount) -> service_account_pb2.ServiceAccount:
    return service_account_pb2.ServiceAccount(
        id=str(row.id), tenant_id=str(row.tenant_id), display_name=row.display_name, role=ROLE.value(row.role),
        create_time=timestamp(row.create_time), etag=etag(row.id, row.version))


def key_state(row: ApiKey, now: dt.datetime) -> service_account_pb2.ApiKeyState.ValueType:
    if row.revoke_time is not None:
        return KEY_STATE.API_KEY_STATE_REVOKED
    if row.expire_time is not None and row.expire_time <= now:
        return KEY_STATE.API_KEY_STATE_EXPIRED
    return KEY_STATE.API_KEY_STATE_ACTIVE


def key_to_proto(row: ApiKey) -> service_account_pb2.ApiKey:
    return service_account_pb2.ApiKey(
        id=str(row.id), service_account_id=str(row.service_account_id), display_name=row.display_name,
        scopes=sorted(row.scopes), prefix=row.prefix, state=key_state(row, dt.datetime.now(dt.UTC)),
        create_time=timestamp(row.create_time), expire_time=timestamp(row.expire_time),
        last_used_time=timestamp(row.last_used_time), revoke_time=timestamp(row.revoke_time))


def account_not_found(account_id: object) -> NotFound:
    return NotFound(f"service account {account_id} not found", reason="SERVICE_ACCOUNT_NOT_FOUND")


async def announce_revoked(settings: Settings, key_ids: list[uuid.UUID]) -> None:
    await revocation.publish(kv.client(settings), [str(k) for k in key_ids], ttl_seconds=REVOCATION_TTL_SECONDS)


def usable_now() -> Any:
    """SQL condition: a key that still authenticates (counts against the plan)."""
    return (ApiKey.revoke_time.is_(None)) & or_(ApiKey.expire_time.is_(None), ApiKey.expire_time > func.now())


class ServiceAccountApi(service_account_service_pb2_grpc.ServiceAccountServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.settings = runtime.settings
        self.page_tokens = runtime.page_tokens

    async def CreateServiceAccount(self, request: pb.CreateServiceAccountRequest,
                                   context: Context) -> pb.CreateServiceAccountResponse:
        call = require_call()
        assert call.principal is not None and call.tenant_id is not None
        violations: list[FieldViolation] = []
        check_text("display_name", request.display_name, min_len=1, max_len=200, out=violations)
        role = ROLE.text(request.role, "role")
        if role not in apikeys.ACCOUNT_ROLES:
            violations.append(FieldViolation("role", "must be ROLE_VIEWER, ROLE_MEMBER or ROLE_ADMIN"))
        require(violations)
        check_grant(call.principal, role, "role")
        row = ServiceAccount(id=uuid7(), tenant_id=call.tenant_id, display_name=request.display_name, role=role,
                             version=1)
        async with db.unit_of_work() as session:
            session.add(row)
            await session.flush()
            await session.refresh(row)
            return pb.CreateServiceAccountResponse(service_account=account_to_proto(row))

    async def GetServiceAccount(self, request: pb.GetServiceAccountRequest,
                                context: Context) -> pb.GetServiceAccountResponse:
        account_id = parse_uuid(request.id, "id")
        async with db.unit_of_work() as session:
            row = await session.get(ServiceAccount, account_id)
        if row is None:
            raise account_not_found(account_id)
        return pb.GetServiceAccountResponse(service_account=account_to_proto(row))

    async def ListServiceAccounts(self, request: pb.ListServiceAccountsRequest,
                                  context: Context) -> pb.ListServiceAccountsResponse:
        call = require_call()
        size = page_size(request.page_size)
        cursor = self.page_tokens.cursor_for(request.page_token, tenant=call.tenant_id, scope="ListServiceAccounts")
        async with db.unit_of_work() as session:
            rows, token = await self.page_tokens.fetch_page(
                session, select(ServiceAccount), ServiceAccount, size=size, cursor=cursor,
                tenant=call.tenant_id, scope="ListServiceAccounts")
        return pb.ListServiceAccountsResponse(service_accounts=[account_to_proto(r) for r in rows],
                                              next_page_token=token)

    async def DeleteServiceAccount(self, request: pb.DeleteServiceAccountRequest,
                                   context: Context) -> pb.DeleteServiceAccountResponse:
        account_id = parse_uuid(request.id, "id")
        async with db.unit_of_work() as session:
            row = await session.get(ServiceAccount, account_id, with_for_update=True)
            if row is None:
                raise account_not_found(account_id)
            check_etag(request.etag, row.id, row.version, "service account")
            keys = list(await session.scalars(select(ApiKey.id).where(ApiKey.service_account_id == account_id)))
            await session.execute(delete(ServiceAccount).where(ServiceAccount.id == account_id))
        await announce_revoked(self.settings, keys)
        return pb.DeleteServiceAccountResponse()

    async def CreateApiKey(self, request: pb.CreateApiKeyRequest, context: Context) -> pb.CreateApiKeyResponse:
        call = require_call()
        assert call.tenant_id is not None
        account_id = parse_uuid(request.service_account_id, "service_account_id")
        violations: list[FieldViolation] = []
        check_text("display_name", request.display_name, max_len=200, out=violations)
        scopes = list(dict.fromkeys(request.scopes))
        if not scopes:
            violations.append(FieldViolation("scopes", "at least one permission is required, e.g. users.read"))
        elif len(scopes) > MAX_SCOPES:
            violations.append(FieldViolation("scopes", f"at most {MAX_SCOPES}"))
        expire_time = request.expire_time.ToDatetime(dt.UTC) if request.HasField("expire_time") else None
        if expire_time is not None and expire_time <= dt.datetime.now(dt.UTC):
            violations.append(FieldViolation("expire_time", "must be in the future"))
        require(violations)
        async with db.unit_of_work() as session:
            account = await session.get(ServiceAccount, account_id)
            if account is None:
                raise account_not_found(account_id)
            allowed = apikeys.grantable_scopes(account.role)
            if extra := sorted(set(scopes) - allowed):
                raise InvalidArgument(
                    f"a key of a '{account.role}' account cannot carry {', '.join(extra)}; "
                    f"allowed: {', '.join(sorted(allowed))}", [FieldViolation("scopes", "not held by the role")])
            await enforce_plan_limit(session, self.settings.plan_max_api_keys, resource="API keys",
                                     count=select(func.count()).select_from(ApiKey).where(usable_now()),
                                     reason="PLAN_API_KEY_LIMIT")
            key_id = uuid7()
            secret, secret_hash = apikeys.generate(call.tenant_id, key_id)
            row = ApiKey(id=key_id, tenant_id=call.tenant_id, service_account_id=account_id,
                         display_name=request.display_name, prefix=apikeys.display_prefix(secret),
                         secret_hash=secret_hash, scopes=scopes, expire_time=expire_time)
            session.add(row)
            await session.flush()
            await session.refresh(row)
            return pb.CreateApiKeyResponse(api_key=key_to_proto(row), secret=secret)

    async def ListApiKeys(self, request: pb.ListApiKeysRequest, context: Context) -> pb.ListApiKeysResponse:
        call = require_call()
        account_id = parse_uuid(request.service_account_id, "service_account_id")
        size = page_size(request.page_size)
        scope = f"ListApiKeys|{account_id}"
        cursor = self.page_tokens.cursor_for(request.page_token, tenant=call.tenant_id, scope=scope)
        async with db.unit_of_work() as session:
            if await session.get(ServiceAccount, account_id) is None:
                raise account_not_found(account_id)
            rows, token = await self.page_tokens.fetch_page(
                session, select(ApiKey).where(ApiKey.service_account_id == account_id), ApiKey, size=size,
                cursor=cursor, tenant=call.tenant_id, scope=scope)
        return pb.ListApiKeysResponse(api_keys=[key_to_proto(r) for r in rows], next_page_token=token)

    async def RevokeApiKey(self, request: pb.RevokeApiKeyRequest, context: Context) -> pb.RevokeApiKeyResponse:
        account_id = parse_uuid(request.service_account_id, "service_account_id")
        key_id = parse_uuid(request.id, "id")
        async with db.unit_of_work() as session:
            row = await session.scalar(select(ApiKey).where(ApiKey.id == key_id,
                                                            ApiKey.service_account_id == account_id)
                                       .with_for_update())
            if row is None:
                raise NotFound(f"API key {key_id} not found", reason="API_KEY_NOT_FOUND")
            if row.revoke_time is None:
                await session.execute(update(ApiKey).where(ApiKey.id == key_id).values(revoke_time=func.now()))
                await session.refresh(row)
        await announce_revoked(self.settings, [key_id])
        return pb.RevokeApiKeyResponse(api_key=key_to_proto(row))
