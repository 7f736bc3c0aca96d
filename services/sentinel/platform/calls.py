"""The state of one RPC as the interceptors build it up, reachable from any code it calls.

Interceptors set it; handlers, the unit of work and clients read it through
:func:`current_call`. Nobody parses metadata twice.
"""

from __future__ import annotations

import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import grpc

from sentinel.platform.auth import PLATFORM_TENANT_ID, Principal
from sentinel.platform.contracts import Rpc


@dataclass(slots=True)
class AuditNote:
    """A handler's additions to the audit event of its call; unset fields are derived."""

    tenant_id: uuid.UUID | None = None
    #: Overrides the policy's audit action (e.g. ``auth.api_key`` for a refused key on any RPC).
    action: str = ""
    actor: tuple[str, str] | None = None  # (ACTOR_TYPE name without prefix, id)
    target: tuple[str, str] | None = None  # (type, id)
    diff: dict[str, Any] | None = None
    #: True once the event is in the outbox (written by the handler in its own transaction).
    recorded: bool = False


@dataclass(slots=True)
class Call:
    method: str
    rpc: Rpc | None
    metadata: dict[str, str]
    context: grpc.aio.ServicerContext[Any, Any]
    request: Any = None
    request_id: str = ""
    peer_ip: str = ""
    user_agent: str = ""
    start: float = field(default_factory=time.perf_counter)
    principal: Principal | None = None
    #: The tenant this call runs in, decided once by the policy interceptor.
    tenant_id: uuid.UUID | None = None
    #: True only for platform-scoped RPCs of platform administrators.
    platform_scope: bool = False
    code: grpc.StatusCode = grpc.StatusCode.OK
    #: What handlers tell the audit recorder that it cannot derive (see sentinel.platform.auditlog).
    audit: AuditNote = field(default_factory=lambda: AuditNote())
    #: Set by the idempotency interceptor when the response is a replay (nothing happened again).
    replayed: bool = False

    @property
    def bearer_token(self) -> str:
        auth = self.metadata.get("authorization", "")
        return auth.partition(" ")[2].strip()

    @property
    def db_tenant_id(self) -> uuid.UUID | None:
        """The tenant for database access: platform-scoped work is recorded in the platform tenant."""
        if self.platform_scope:
            return PLATFORM_TENANT_ID
        return self.tenant_id


_current: ContextVar[Call | None] = ContextVar("sentinel_call", default=None)


def current_call() -> Call | None:
    return _current.get()


def require_call() -> Call:
    call = _current.get()
    if call is None:
        raise RuntimeError("not inside an RPC")
    return call


def bind(call: Call) -> object:
    return _current.set(call)


def unbind(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]
