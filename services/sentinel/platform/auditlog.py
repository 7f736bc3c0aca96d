"""Recording audit events: what every service writes to the audit outbox, and when.

The kernel records, with no code in handlers:

* every mutating RPC, in the same transaction as its changes (success) or in its own
  transaction once the call has failed or been refused (nothing else was written then);
* a platform administrator's access to another tenant's data (``platform.access``);
* refused API keys that belong to a real key record (``auth.api_key``).

Handlers add what only they know through :func:`note` (the tenant of a public call such as
Login, the user a failed login was for) or write the event themselves inside their own
transaction with :func:`record` (public RPCs that open their own transactions).

An event is an ``AuditEvent`` message stored as proto JSON in ``audit_outbox``; the drainer
(:mod:`sentinel.platform.outbox`) sends it to AuditService.AppendEvents. The diff is the
request's change with every secret redacted: fields marked INPUT_ONLY (passwords, tokens) and
any field whose name says it holds a secret. Responses (which carry tokens and key secrets)
are never recorded.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import grpc
from google.api import field_behavior_pb2
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from sentinel.audit.v1 import audit_pb2
from sentinel.platform import db, tracing
from sentinel.platform.auth import PLATFORM_TENANT_ID, Principal
from sentinel.platform.calls import Call, current_call
from sentinel.platform.errors import SentinelError
from sentinel.platform.ids import uuid7
from sentinel.policy.v1 import policy_pb2

log = logging.getLogger("sentinel.auditlog")

REDACTED = "[redacted]"
_SECRET_NAME = re.compile(r"password|secret|token|private|credential|signature|^key$", re.IGNORECASE)
#: Request fields that address the call rather than describe the change.
_STRUCTURAL = frozenset({"request_id", "etag", "update_mask", "tenant_id", "page_token", "page_size"})
MAX_TEXT = 500
_INSERT = text("INSERT INTO audit_outbox (id, tenant_id, event) VALUES (:id, :tenant_id, CAST(:event AS jsonb))")
_DENIED = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)

#: Switched on by the server bootstrap for services with a database (off only with
#: ``SENTINEL_AUDIT_RECORDING=false``, for benchmarks). Off in library use (tools, unit tests).
enabled = False
#: Called after events are committed, so the drainer sends them at once (set by the outbox).
on_recorded: list[Any] = []


def note(*, tenant_id: uuid.UUID | None = None, action: str = "", actor: tuple[str, str] | None = None,
         target: tuple[str, str] | None = None, diff: dict[str, Any] | None = None) -> None:
    """Tell the recorder of the current call what it cannot derive itself."""
    call = current_call()
    if call is None:
        return
    n = call.audit
    n.tenant_id = tenant_id or n.tenant_id
    n.action = action or n.action
    n.actor = actor or n.actor
    n.target = target or n.target
    n.diff = diff if diff is not None else n.diff


# --------------------------------------------------------------------------- building events


def _behaviors(field: FieldDescriptor | None) -> Any:
    return field.GetOptions().Extensions[field_behavior_pb2.field_behavior] if field is not None else ()


def redact(value: Any, descriptor: Any = None) -> Any:
    """``value`` (proto JSON) with every secret replaced by ``[redacted]``, fields the server sets
    itself (OUTPUT_ONLY: ids, tenant, times; the target names the resource) left out, long text cut."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            field = descriptor.fields_by_name.get(key) if descriptor is not None else None
            if field_behavior_pb2.OUTPUT_ONLY in _behaviors(field):
                continue
            if _SECRET_NAME.search(key) or field_behavior_pb2.INPUT_ONLY in _behaviors(field):
                out[key] = REDACTED
                continue
            sub = field.message_type if field is not None and field.message_type is not None else None
            out[key] = redact(item, sub)
        return out
    if isinstance(value, list):
        return [redact(v, descriptor) for v in value[:100]]
    if isinstance(value, str) and len(value) > MAX_TEXT:
        return value[:MAX_TEXT] + "…"
    return value


#: Request types whose fields hold a secret their names do not tell (e.g. a user import's CSV of
#: password hashes inside a job's parameters): full message name -> the proto JSON as recorded.
#: Registered by the module that knows the request (sentinel.scheduler.kinds).
DESCRIBE_REQUEST: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def request_diff(request: Message | None) -> dict[str, Any]:
    """The change a request asks for: its fields, or for an update only the masked ones."""
    if request is None:
        return {}
    fields = request.DESCRIPTOR.fields_by_name
    mask_paths: list[str] = []
    if "update_mask" in fields:  # read directly: json_format refuses paths it cannot camel-case
        mask: Any = request.update_mask  # type: ignore[attr-defined]
        mask_paths = list(mask.paths)
        copy = type(request)()
        copy.CopyFrom(request)
        copy.ClearField("update_mask")
        request = copy
    as_dict = json_format.MessageToDict(request, preserving_proto_field_name=True)
    if "update_mask" in fields:
        resource = next((f for f in fields.values() if f.message_type is not None and f.name != "update_mask"), None)
        if resource is not None:
            full = json_format.MessageToDict(getattr(request, resource.name), preserving_proto_field_name=True,
                                             always_print_fields_with_no_presence=True)
            paths = mask_paths or list(as_dict.get(resource.name, {}))
            changed = {p: full[p] for p in paths if p in full}
            return dict(redact({resource.name: changed}, request.DESCRIPTOR))
    kept = {k: v for k, v in as_dict.items() if k not in _STRUCTURAL}
    describe = DESCRIBE_REQUEST.get(request.DESCRIPTOR.full_name)
    if describe is not None:
        kept = describe(kept)
    return dict(redact(kept, request.DESCRIPTOR))


def _resource_id(message: Message | None, kind: str) -> str:
    if message is None:
        return ""
    fields = message.DESCRIPTOR.fields_by_name
    if kind in fields and fields[kind].message_type is not None and message.HasField(kind):
        return str(getattr(getattr(message, kind), "id", ""))
    for name in ("id", f"{kind}_id"):
        if name in fields and fields[name].type == FieldDescriptor.TYPE_STRING:
            return str(getattr(message, name))
    return ""


def derive_target(action: str, request: Message | None, response: Message | None,
                  principal: Principal | None) -> tuple[str, str]:
    """``user.create`` → ("user", the created user's id), from the response, else the request."""
    kind = action.split(".", 1)[0]
    if kind == "auth":
        return ("user", principal.subject) if principal is not None and principal.kind == "user" else ("", "")
    return kind, _resource_id(response, kind) or _resource_id(request, kind)


def actor_of(principal: Principal | None) -> tuple[str, str]:
    if principal is None:
        return "ANONYMOUS", ""
    kind = {"user": "USER", "service_account": "SERVICE_ACCOUNT", "service": "SYSTEM"}[principal.kind]
    return kind, principal.subject


def build(call: Call, *, tenant_id: uuid.UUID, outcome: str = "SUCCESS", status_code: str = "",
          response: Message | None = None, action: str = "") -> audit_pb2.AuditEvent:
    n = call.audit
    action = action or n.action or (call.rpc.policy.audit_action if call.rpc is not None else "")
    principal = call.principal
    actor_type, actor_id = n.actor or actor_of(principal)
    target_type, target_id = n.target or derive_target(action, call.request, response, principal)
    event = audit_pb2.AuditEvent(
        id=str(uuid7()), tenant_id=str(tenant_id), action=action,
        actor=audit_pb2.Actor(type=audit_pb2.ActorType.Value(f"ACTOR_TYPE_{actor_type}"), id=actor_id,
                              tenant_id=str(principal.tenant_id)
                              if principal is not None and principal.tenant_id != tenant_id else ""),
        target=audit_pb2.Target(type=target_type, id=target_id),
        outcome=audit_pb2.Outcome.Value(f"OUTCOME_{outcome}"), status_code=status_code,
        request_id=call.request_id, trace_id=trace_id(call.metadata), source_ip=call.peer_ip[:100],
        user_agent=call.user_agent[:300])
    event.event_time.FromDatetime(dt.datetime.now(dt.UTC))
    event.diff.update(n.diff if n.diff is not None else request_diff(call.request))
    return event


def system_event(tenant_id: uuid.UUID, action: str, *, actor: str, target: tuple[str, str] = ("", ""),
                 diff: dict[str, Any] | None = None, outcome: str = "SUCCESS") -> audit_pb2.AuditEvent:
    """An event of work no caller asked for (jobs, admin commands): the actor is the system part
    that did it, e.g. ``sentinel admin audit-retention`` or a periodic job's name."""
    event = audit_pb2.AuditEvent(
        id=str(uuid7()), tenant_id=str(tenant_id), action=action,
        actor=audit_pb2.Actor(type=audit_pb2.ACTOR_TYPE_SYSTEM, id=actor),
        target=audit_pb2.Target(type=target[0], id=target[1]),
        outcome=audit_pb2.Outcome.Value(f"OUTCOME_{outcome}"), trace_id=tracing.current_ids()[0])
    event.event_time.FromDatetime(dt.datetime.now(dt.UTC))
    event.diff.update(redact(diff or {}))
    return event


def trace_id(metadata: dict[str, str]) -> str:
    """The W3C trace id of the call: the active span's (the server span continues the caller's
    ``traceparent``), so the event, the call's log lines and its trace share one id; with tracing
    off, the one in the ``traceparent`` header (``00-<trace id>-<span id>-<flags>``)."""
    return tracing.current_ids()[0] or tracing.header_trace_id(metadata)


def outcome_of(exc: BaseException) -> tuple[str, str]:
    code = exc.code if isinstance(exc, SentinelError) else grpc.StatusCode.INTERNAL
    return ("DENIED" if code in _DENIED else "FAILURE"), code.name


# --------------------------------------------------------------------------- writing to the outbox


def _row(event: audit_pb2.AuditEvent) -> dict[str, Any]:
    return {"id": uuid.UUID(event.id), "tenant_id": uuid.UUID(event.tenant_id),
            "event": json.dumps(json_format.MessageToDict(event, preserving_proto_field_name=True))}


async def write(session: AsyncSession, events: Iterable[audit_pb2.AuditEvent]) -> None:
    """Add events to the outbox inside ``session``'s transaction (they commit with it)."""
    rows = [_row(e) for e in events]
    if rows:
        await session.execute(_INSERT, rows)


def recorded() -> None:
    for callback in on_recorded:
        callback()


async def record(session: AsyncSession, *, tenant_id: uuid.UUID, **fields: Any) -> None:
    """Record the current call's success inside the handler's own transaction."""
    call = current_call()
    if call is None or not enabled:
        return
    if fields:
        note(**fields)
    await write(session, [build(call, tenant_id=tenant_id)])
    call.audit.recorded = True


async def write_now(events: list[audit_pb2.AuditEvent]) -> None:
    """Add events in transactions of their own, one per tenant (after a call failed)."""
    by_tenant: dict[str, list[audit_pb2.AuditEvent]] = {}
    for e in events:
        by_tenant.setdefault(e.tenant_id, []).append(e)
    for tenant, batch in by_tenant.items():
        tenant_id = uuid.UUID(tenant)
        try:
            async with db.unit_of_work(tenant_id=tenant_id, platform=tenant_id == PLATFORM_TENANT_ID) as session:
                await write(session, batch)
        except Exception:  # never mask the call's own outcome; the log carries the loss
            log.exception("audit event not recorded", extra={"actions": [e.action for e in batch]})
    recorded()


# --------------------------------------------------------------------------- which calls, which tenant


def audited(call: Call) -> bool:
    rpc = call.rpc
    if not enabled or rpc is None or not db.initialised():
        return False
    return int(rpc.policy.tenant_scope) != policy_pb2.TENANT_SCOPE_INTERNAL


def also_in_target(call: Call, event: audit_pb2.AuditEvent) -> list[audit_pb2.AuditEvent]:
    """A platform-scoped action on a tenant is recorded in that tenant's trail as well."""
    if not call.platform_scope or event.target.type != "tenant" or not event.target.id:
        return [event]
    try:
        target = uuid.UUID(event.target.id)
    except ValueError:
        return [event]
    if str(target) == event.tenant_id:
        return [event]
    copy = audit_pb2.AuditEvent()
    copy.CopyFrom(event)
    copy.id, copy.tenant_id = str(uuid7()), str(target)
    copy.actor.tenant_id = str(call.principal.tenant_id) if call.principal is not None else ""
    return [event, copy]


def failure_tenant(call: Call) -> uuid.UUID | None:
    """The trail a failed or refused call belongs in: the tenant it ran in or was for."""
    if call.audit.tenant_id is not None:
        return call.audit.tenant_id
    if call.tenant_id is not None:
        return call.db_tenant_id
    if call.principal is not None and not call.principal.is_service:
        return call.principal.tenant_id
    return None


def cross_tenant_read(call: Call) -> bool:
    principal = call.principal
    return (principal is not None and principal.is_platform_admin and call.tenant_id is not None
            and call.tenant_id != principal.tenant_id)
