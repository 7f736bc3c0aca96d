"""Audit events between their stored form (what the chain hashes) and the API's AuditEvent."""

from __future__ import annotations

import datetime as dt
from typing import Any

from google.protobuf import json_format, struct_pb2

from sentinel.audit.v1 import audit_pb2
from sentinel.platform.convert import EnumText, timestamp

ACTOR = EnumText(audit_pb2.ActorType, "ACTOR_TYPE_")
OUTCOME = EnumText(audit_pb2.Outcome, "OUTCOME_")


def _value(mapping: EnumText, text: str) -> Any:
    try:
        return mapping.value(text)
    except KeyError:
        return 0


def _text(mapping: EnumText, value: int) -> str:
    return mapping.text(value, "enum", default="") if value else ""


def to_proto(row: Any) -> audit_pb2.AuditEvent:
    """A stored row (ORM object or mapping) as the API's AuditEvent."""
    def get(name: str) -> Any:
        return row[name] if isinstance(row, dict) else getattr(row, name)

    diff = struct_pb2.Struct()
    diff.update(get("diff") or {})
    return audit_pb2.AuditEvent(
        id=str(get("id")), tenant_id=str(get("tenant_id")), sequence=int(get("sequence")),
        event_time=timestamp(get("event_time")),
        actor=audit_pb2.Actor(type=_value(ACTOR, get("actor_type")), id=get("actor_id"),
                              tenant_id=get("actor_tenant_id")),
        action=get("action"), target=audit_pb2.Target(type=get("target_type"), id=get("target_id")),
        outcome=_value(OUTCOME, get("outcome")), status_code=get("status_code"), request_id=get("request_id"),
        trace_id=get("trace_id"), source_ip=get("source_ip"), user_agent=get("user_agent"), diff=diff,
        prev_hash=get("prev_hash"), hash=get("hash"))


def from_proto(event: audit_pb2.AuditEvent) -> dict[str, Any]:
    """The stored form of an API AuditEvent: exactly what the chain hashed."""
    return {
        "tenant_id": event.tenant_id, "sequence": event.sequence, "id": event.id,
        "event_time": event.event_time.ToDatetime(tzinfo=dt.UTC),
        "actor_type": _text(ACTOR, event.actor.type), "actor_id": event.actor.id,
        "actor_tenant_id": event.actor.tenant_id, "action": event.action, "target_type": event.target.type,
        "target_id": event.target.id, "outcome": _text(OUTCOME, event.outcome), "status_code": event.status_code,
        "request_id": event.request_id, "trace_id": event.trace_id, "source_ip": event.source_ip,
        "user_agent": event.user_agent, "diff": json_format.MessageToDict(event.diff),
        "prev_hash": event.prev_hash, "hash": event.hash,
    }


def checkpoint_from_proto(cp: audit_pb2.Checkpoint) -> dict[str, Any]:
    """The stored form of a Checkpoint: what its signature covers (sentinel.audit.checkpoints)."""
    return {"tenant_id": cp.tenant_id, "sequence": cp.sequence, "hash": cp.hash,
            "create_time": cp.create_time.ToDatetime(tzinfo=dt.UTC), "key_id": cp.key_id, "signature": cp.signature}


def checkpoint_proto(cp: dict[str, Any]) -> audit_pb2.Checkpoint:
    return audit_pb2.Checkpoint(tenant_id=str(cp["tenant_id"]), sequence=int(cp["sequence"]), hash=cp["hash"],
                                create_time=timestamp(cp["create_time"]), key_id=cp["key_id"],
                                signature=cp["signature"])
