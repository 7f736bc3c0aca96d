"""Purge receipts: proof, verifiable offline, that a tenant was purged and its data key destroyed.

The purge (sentinel.tenant.purge) records ``tenant.purge`` in the tenant's own hash chain, with
the rows it deleted per table and the fingerprint of the data key it destroyed. The audit service
signs chain heads (checkpoints). A receipt is that event, the events after it up to the first
signed checkpoint at or after it (usually none: a purged tenant records nothing more), and that
checkpoint. Whoever holds the audit service's public key checks it without any database:

* every link from the purge event to the checkpoint holds (each ``hash`` is
  ``sha256(prev_hash || canonical(event))``, sentinel.audit.chain), so the signed head commits
  to the purge event's exact contents;
* the checkpoint's signature holds for this tenant, sequence and hash;
* the first event is ``tenant.purge`` of this tenant; what it says (rows deleted per table, the
  destroyed data key's fingerprint) is then the platform's signed statement.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf import json_format
from sqlalchemy import text

from sentinel.audit import chain, checkpoints, store
from sentinel.audit.convert import checkpoint_from_proto, checkpoint_proto, from_proto, to_proto
from sentinel.audit.v1 import audit_service_pb2
from sentinel.platform import db
from sentinel.platform.errors import FailedPrecondition, NotFound

PURGE_ACTION = "tenant.purge"
_TENANT = text("SELECT state, purge_complete_time FROM tenants WHERE id = sentinel_tenant_id()")
_PURGE_EVENT = text(f"SELECT sequence FROM audit_events WHERE tenant_id = sentinel_tenant_id() "  # noqa: S608
                    f"AND action = '{PURGE_ACTION}' ORDER BY sequence DESC LIMIT 1")
_COVERING = text("SELECT tenant_id, sequence, hash, create_time, key_id, signature FROM audit_checkpoints "
                 "WHERE tenant_id = sentinel_tenant_id() AND sequence >= :sequence ORDER BY sequence LIMIT 1")
_EVENTS = text(f"SELECT {', '.join(store.COLUMNS)} FROM audit_events "  # noqa: S608 (fixed names)
               "WHERE tenant_id = sentinel_tenant_id() AND sequence BETWEEN :first AND :last ORDER BY sequence")


async def build(tenant_id: uuid.UUID, checkpoint_seconds: float) -> audit_service_pb2.PurgeReceipt:
    """The bound tenant's receipt: NOT_FOUND before the purge, FAILED_PRECONDITION (with what to
    wait for) while its event is on the way or not yet signed."""
    async with db.unit_of_work(tenant_id=tenant_id, platform=False) as session:
        tenant = (await session.execute(_TENANT)).first()
        if tenant is None or tenant.state != "deleted" or tenant.purge_complete_time is None:
            # NOT_FOUND, like any resource that does not exist (yet): a caller bound to its own live
            # tenant learns nothing about the tenant it named.
            state = "" if tenant is None else f" (it is {tenant.state.replace('_', ' ')})"
            raise NotFound(f"this tenant has no purge receipt{state}: a receipt exists once its purge has "
                           "completed", reason="TENANT_NOT_PURGED")
        sequence = await session.scalar(_PURGE_EVENT)
        if sequence is None:
            raise FailedPrecondition("the purge is done but its tenant.purge event has not reached the audit "
                                     "trail yet (the purging service's outbox delivers it); try again shortly",
                                     reason="PURGE_NOT_RECORDED")
        cp = (await session.execute(_COVERING, {"sequence": sequence})).first()
        if cp is None:
            raise FailedPrecondition(f"the purge is recorded at sequence {sequence} but no signed checkpoint covers "
                                     f"it yet; the audit service signs every {checkpoint_seconds:g} s",
                                     reason="PURGE_NOT_SIGNED")
        events = [store.as_event(r) for r in await session.execute(_EVENTS, {"first": sequence,
                                                                            "last": cp.sequence})]
    return audit_service_pb2.PurgeReceipt(
        tenant_id=str(tenant_id), events=[to_proto(e) for e in events],
        checkpoint=checkpoint_proto(dict(cp._mapping, tenant_id=str(cp.tenant_id))))


@dataclass(frozen=True)
class ReceiptVerdict:
    ok: bool
    problem: str = ""
    tenant_id: str = ""
    purge_time: str = ""
    rows_deleted: int = 0
    # False: the deployment had no data key directory, or the tenant never sealed anything.
    data_key_destroyed: bool = False
    data_key_fingerprint: str = ""
    authenticated: bool = False


def parse(document: Mapping[str, Any]) -> audit_service_pb2.PurgeReceipt:
    """A receipt as GetPurgeReceipt returns it over REST (``{"receipt": {...}}``) or the bare message."""
    body = document.get("receipt", document)
    try:
        return json_format.ParseDict(body, audit_service_pb2.PurgeReceipt())
    except json_format.ParseError as e:
        raise ValueError(f"not a purge receipt ({e})") from None


def verify(receipt: audit_service_pb2.PurgeReceipt, public_key: Ed25519PublicKey | None) -> ReceiptVerdict:
    """Check a receipt with nothing but itself and the audit service's public key."""
    if not receipt.events or not receipt.HasField("checkpoint"):
        return ReceiptVerdict(False, "the receipt has no events or no checkpoint")
    events: Sequence[dict[str, Any]] = [from_proto(e) for e in receipt.events]
    first, cp = events[0], receipt.checkpoint
    if public_key is not None and not checkpoints.authentic(checkpoint_from_proto(cp), public_key):
        return ReceiptVerdict(False, f"the checkpoint is not signed by this key (key_id {cp.key_id!r})")
    if {receipt.tenant_id, cp.tenant_id} != {first["tenant_id"]}:
        return ReceiptVerdict(False, "the receipt, its checkpoint and its events name different tenants")
    if first["action"] != PURGE_ACTION or first["target_id"] != receipt.tenant_id:
        return ReceiptVerdict(False, f"the first event is {first['action']!r} of {first['target_id']!r}, "
                                     f"not {PURGE_ACTION} of this tenant")
    verdict = chain.verify(events, start_sequence=int(first["sequence"]), start_hash=str(first["prev_hash"]),
                           checkpoints={int(cp.sequence): cp.hash})
    if not verdict.ok:
        return ReceiptVerdict(False, f"broken at sequence {verdict.broken_sequence}: {verdict.problem}")
    if verdict.head_sequence != cp.sequence:
        return ReceiptVerdict(False, f"the events end at {verdict.head_sequence}, the checkpoint signs "
                                     f"{cp.sequence}")
    diff = first["diff"]
    key = diff.get("data_key") or {}
    return ReceiptVerdict(True, tenant_id=receipt.tenant_id, purge_time=chain.rfc3339(first["event_time"]),
                          rows_deleted=int(diff.get("rows_deleted") or 0),
                          data_key_destroyed=key.get("destroyed") is True,
                          data_key_fingerprint=str(key.get("fingerprint", "")),
                          authenticated=public_key is not None)

