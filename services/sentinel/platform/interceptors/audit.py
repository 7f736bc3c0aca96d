"""Audit recording around every call (see :mod:`sentinel.platform.auditlog` for what and why).

Two parts. :class:`AuditTransaction` (unary, outermost of the unary chain) opens the call's
transaction for a mutating RPC, lets the handler join it, and adds the success event before
it commits: the change and its audit event are durable together or not at all.
:class:`AuditInterceptor` (scope, between errors and authentication, so it sees refusals by
either) records everything else once the outcome is known: failures and refusals, successes
of streaming and public RPCs their handler did not record, platform administrators' reads of
another tenant, and refused API keys.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from sentinel.platform import auditlog, db
from sentinel.platform.calls import Call


class AuditTransaction:
    async def invoke(self, call: Call, proceed: Callable[[], Awaitable[Any]]) -> Any:
        rpc = call.rpc
        if (not auditlog.audited(call) or rpc is None or not rpc.mutating or rpc.public
                or call.tenant_id is None):
            return await proceed()
        async with db.unit_of_work() as session:
            response = await proceed()
            if not call.replayed:
                event = auditlog.build(call, tenant_id=call.db_tenant_id or call.tenant_id, response=response)
                await auditlog.write(session, auditlog.also_in_target(call, event))
            call.audit.recorded = True
        auditlog.recorded()
        return response


class AuditInterceptor:
    @contextlib.asynccontextmanager
    async def scope(self, call: Call) -> AsyncIterator[None]:
        try:
            yield
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if auditlog.audited(call):
                await self._failed(call, exc)
            raise
        else:
            if auditlog.audited(call):
                await self._succeeded(call)

    async def _failed(self, call: Call, exc: Exception) -> None:
        rpc = call.rpc
        assert rpc is not None
        if call.audit.recorded or not (rpc.mutating or call.audit.action):
            return
        tenant = auditlog.failure_tenant(call)
        if tenant is None:
            return
        outcome, code = auditlog.outcome_of(exc)
        await auditlog.write_now([auditlog.build(call, tenant_id=tenant, outcome=outcome, status_code=code)])

    async def _succeeded(self, call: Call) -> None:
        rpc = call.rpc
        assert rpc is not None
        if call.audit.recorded or call.replayed:
            return
        if rpc.mutating:
            tenant = call.audit.tenant_id or call.db_tenant_id
            if tenant is not None:
                event = auditlog.build(call, tenant_id=tenant)
                await auditlog.write_now(auditlog.also_in_target(call, event))
        elif auditlog.cross_tenant_read(call):
            assert call.tenant_id is not None
            call.audit.target = call.audit.target or ("tenant", str(call.tenant_id))
            if call.audit.diff is None:
                call.audit.diff = {"method": call.method, **auditlog.request_diff(call.request)}
            await auditlog.write_now([auditlog.build(call, tenant_id=call.tenant_id, action="platform.access")])
