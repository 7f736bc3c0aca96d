"""Purge receipts verify offline, and any change to what they say is caught."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import json_format
from sentinel.audit import chain, receipts
from sentinel.audit.checkpoints import CheckpointSigner
from sentinel.audit.convert import checkpoint_proto, to_proto
from sentinel.audit.v1 import audit_service_pb2

TENANT = str(uuid.uuid4())
SIGNER = CheckpointSigner("audit-test", Ed25519PrivateKey.generate())
DIFF = {"rows_deleted": 7, "rows": {"users": 3, "sessions": 4},
        "data_key": {"destroyed": True, "fingerprint": "ab" * 16}}


def event(sequence: int, prev: str, action: str, diff: dict[str, Any]) -> dict[str, Any]:
    e: dict[str, Any] = {name: "" for name in chain.FIELDS}
    e.update(tenant_id=TENANT, sequence=sequence, id=str(uuid.uuid4()), action=action, actor_type="system",
             actor_id="sentinel admin purge-tenants", target_type="tenant", target_id=TENANT, outcome="success",
             event_time=dt.datetime(2026, 12, 4, 12, 0, sequence, 123456, tzinfo=dt.UTC), diff=diff, prev_hash=prev)
    e["hash"] = chain.link_hash(prev, e)
    return e


def receipt(*, later: int = 0, signer: CheckpointSigner = SIGNER, diff: dict[str, Any] = DIFF,
            action: str = "tenant.purge") -> audit_service_pb2.PurgeReceipt:
    events = [event(41, "f" * 64, action, diff)]
    for i in range(later):
        events.append(event(42 + i, events[-1]["hash"], "job.run", {"i": i}))
    cp = signer.sign(uuid.UUID(TENANT), events[-1]["sequence"], events[-1]["hash"])
    return audit_service_pb2.PurgeReceipt(tenant_id=TENANT, events=[to_proto(e) for e in events],
                                          checkpoint=checkpoint_proto(cp))


def roundtrip(r: audit_service_pb2.PurgeReceipt) -> audit_service_pb2.PurgeReceipt:
    """As a client gets it over REST (JSON) and hands it to `sentinel audit verify-receipt`."""
    return receipts.parse({"receipt": json_format.MessageToDict(r)})


@pytest.mark.parametrize("later", [0, 2])
def test_a_receipt_verifies_with_the_audit_key_after_a_json_roundtrip(later: int) -> None:
    verdict = receipts.verify(roundtrip(receipt(later=later)), SIGNER.public_key())
    assert verdict.ok, verdict.problem
    assert (verdict.tenant_id, verdict.rows_deleted, verdict.data_key_destroyed, verdict.data_key_fingerprint,
            verdict.authenticated) == (TENANT, 7, True, "ab" * 16, True)
    assert verdict.purge_time == "2026-12-04T12:00:41.123456Z"


def test_changing_what_the_receipt_says_breaks_it() -> None:
    r = roundtrip(receipt())
    r.events[0].diff["rows_deleted"] = 700
    assert "hash does not match" in receipts.verify(r, SIGNER.public_key()).problem
    r = roundtrip(receipt())
    r.events[0].diff["data_key"]["destroyed"] = False
    assert not receipts.verify(r, SIGNER.public_key()).ok


def test_a_receipt_signed_by_another_key_or_for_another_head_is_refused() -> None:
    other = CheckpointSigner("audit-evil", Ed25519PrivateKey.generate())
    assert "not signed by this key" in receipts.verify(receipt(signer=other), SIGNER.public_key()).problem
    r = receipt(later=2)
    del r.events[-1]  # the events stop short of the signed head
    assert not receipts.verify(r, SIGNER.public_key()).ok
    r = receipt()
    r.checkpoint.sequence += 1
    assert "not signed" in receipts.verify(r, SIGNER.public_key()).problem


def test_a_receipt_of_something_else_is_refused() -> None:
    assert "not tenant.purge" in receipts.verify(receipt(action="tenant.update"), SIGNER.public_key()).problem
    r = receipt()
    r.tenant_id = str(uuid.uuid4())
    assert "different tenants" in receipts.verify(r, SIGNER.public_key()).problem
    assert "no events" in receipts.verify(audit_service_pb2.PurgeReceipt(tenant_id=TENANT), None).problem
    with pytest.raises(ValueError, match="not a purge receipt"):
        receipts.parse({"receipt": {"events": "nope"}})


def test_without_a_key_the_receipt_is_checked_but_not_authenticated() -> None:
    verdict = receipts.verify(receipt(signer=CheckpointSigner("x", Ed25519PrivateKey.generate())), None)
    assert verdict.ok and not verdict.authenticated


def test_a_purge_without_a_data_key_says_so() -> None:
    diff = {"rows_deleted": 1, "rows": {"users": 1},
            "data_key": {"destroyed": False, "fingerprint": "", "configured": False}}
    verdict = receipts.verify(receipt(diff=diff), SIGNER.public_key())
    assert verdict.ok and not verdict.data_key_destroyed
