"""Authorisation and tenant binding, enforced from the RPC's policy option.

Decides once per call which tenant it runs in; the unit of work reads that decision, so
handlers contain no auth or tenant code. A missing permission is PERMISSION_DENIED before
any lookup; other tenants' data is simply invisible (NOT_FOUND) through RLS.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

from sentinel.platform import revocation
from sentinel.platform.calls import Call
from sentinel.platform.errors import FieldViolation, InvalidArgument, PermissionDenied, Unauthenticated
from sentinel.policy.v1 import policy_pb2


def field_value(message: Any, dotted: str) -> str:
    """Read ``a.b`` from a proto message; empty string when unset."""
    value: Any = message
    for part in dotted.split("."):
        value = getattr(value, part, "")
    return value if isinstance(value, str) else ""


def target_tenant(call: Call, field: str) -> uuid.UUID:
    """The tenant a TENANT-scoped call runs in.

    Every caller is bound to their own tenant. Only platform administrators may name another
    one through the policy's ``tenant_field`` (an explicit, audited choice).
    """
    principal = call.principal
    assert principal is not None
    if field and principal.is_platform_admin and call.request is not None:
        raw = field_value(call.request, field)
        if raw:
            try:
                return uuid.UUID(raw)
            except ValueError:
                raise InvalidArgument(f"{field} must be a UUID",
                                      [FieldViolation(field, "not a UUID")]) from None
    return principal.tenant_id


class PolicyInterceptor:
    @contextlib.asynccontextmanager
    async def scope(self, call: Call) -> AsyncIterator[None]:
        rpc = call.rpc
        if rpc is None:  # registered without a contract: refused (the server checks at start-up too)
            raise PermissionDenied("this method has no policy", reason="NO_POLICY")
        policy = rpc.policy
        scope = int(policy.tenant_scope)
        if scope == policy_pb2.TENANT_SCOPE_PUBLIC:
            yield
            return
        principal = call.principal
        if principal is None:
            raise Unauthenticated("this call needs a bearer token", reason="TOKEN_MISSING")
        if not policy.permission:
            # policy.proto: empty only for PUBLIC. Fail closed rather than admit every principal.
            raise PermissionDenied("this method declares no permission", reason="NO_POLICY")
        if not principal.can(policy.permission):
            raise PermissionDenied(f"your role '{principal.role}' lacks the permission "
                                   f"'{policy.permission}'", reason="MISSING_PERMISSION",
                                   metadata={"permission": policy.permission})
        if scope == policy_pb2.TENANT_SCOPE_PLATFORM:
            if not principal.is_platform_admin:
                raise PermissionDenied("only platform administrators may call this",
                                       reason="PLATFORM_ADMIN_REQUIRED")
            call.tenant_id = principal.tenant_id
            call.platform_scope = True
        elif scope == policy_pb2.TENANT_SCOPE_INTERNAL:
            if not principal.is_service:
                raise PermissionDenied("internal method", reason="SERVICE_ONLY")
            call.tenant_id = principal.tenant_id
        elif scope == policy_pb2.TENANT_SCOPE_TENANT:
            call.tenant_id = target_tenant(call, policy.tenant_field)
            # A platform admin may still read a suspended or deleted tenant (its users, its audit
            # trail) but changes nothing in it until it is resumed or restored.
            blocked = revocation.tenants.blocked(call.tenant_id) if rpc.mutating else None
            if blocked is not None:
                raise blocked.refusal(call.tenant_id, own=call.tenant_id == principal.tenant_id)
            # Platform admins listing tenants see all of them; anyone else only their own.
            call.platform_scope = principal.is_platform_admin and not policy.tenant_field
        else:  # AUTHENTICATED: the principal's own records only
            call.tenant_id = principal.tenant_id
        yield
