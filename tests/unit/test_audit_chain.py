"""The audit hash chain: canonical encoding and verification against every kind of tampering."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from sentinel.audit import chain

TENANT = str(uuid.uuid4())
T0 = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)


def build(n: int) -> list[dict[str, Any]]:
    events, prev = [], chain.GENESIS
    for i in range(1, n + 1):
        event: dict[str, Any] = {
            "tenant_id": TENANT, "sequence": i, "id": str(uuid.uuid4()), "event_time": T0 + dt.timedelta(seconds=i),
            "actor_type": "user", "actor_id": str(uuid.uuid4()), "action": "user.create", "target_type": "user",
            "target_id": str(uuid.uuid4()), "outcome": "success", "request_id": f"r{i}",
            "diff": {"email": f"u{i}@example.com", "role": "member"}, "prev_hash": prev,
        }
        event["hash"] = prev = chain.link_hash(prev, event)
        events.append(event)
    return events


def rehash_from(events: list[dict[str, Any]], index: int) -> None:
    """What an attacker with write access does to make every link hold again."""
    prev = events[index - 1]["hash"] if index else chain.GENESIS
    for i, event in enumerate(events[index:], start=index):
        event["sequence"] = i + 1
        event["prev_hash"] = prev
        event["hash"] = prev = chain.link_hash(prev, event)


def test_an_intact_chain_verifies() -> None:
    events = build(5)
    verdict = chain.verify(events)
    assert verdict.ok and verdict.checked == 5 and verdict.head_sequence == 5
    assert verdict.head_hash == events[-1]["hash"]
    assert chain.verify([]).ok


def test_an_altered_field_is_the_broken_link() -> None:
    events = build(5)
    events[2]["diff"] = {"email": "someone-else@example.com", "role": "member"}
    verdict = chain.verify(events)
    assert not verdict.ok and verdict.broken_sequence == 3 and "contents" in verdict.problem and verdict.checked == 2


def test_a_deleted_row_is_found() -> None:
    events = build(5)
    del events[1]
    verdict = chain.verify(events)
    assert not verdict.ok and verdict.broken_sequence == 2 and "missing" in verdict.problem


def test_reordered_rows_are_found() -> None:
    events = build(5)
    events[1], events[2] = events[2], events[1]
    verdict = chain.verify(events)
    assert not verdict.ok and verdict.broken_sequence == 2


def test_an_inserted_row_is_found() -> None:
    events = build(5)
    forged = dict(events[1], id=str(uuid.uuid4()), action="tenant.delete")
    events.insert(2, forged)
    verdict = chain.verify(events)
    assert not verdict.ok and verdict.broken_sequence == 3


def test_a_rewritten_tail_is_caught_by_a_signed_checkpoint() -> None:
    events = build(6)
    signed = {4: events[3]["hash"]}
    del events[2]
    rehash_from(events, 2)  # every link holds again ...
    assert chain.verify(events).ok
    verdict = chain.verify(events, checkpoints=signed)  # ... but not the head that was signed
    assert not verdict.ok and verdict.broken_sequence == 4 and "checkpoint" in verdict.problem


def test_verification_continues_from_a_checkpoint_after_a_retention_cut() -> None:
    events = build(6)
    verdict = chain.verify(events[3:], start_sequence=4, start_hash=events[2]["hash"])
    assert verdict.ok and verdict.checked == 3
    assert not chain.verify(events[3:]).ok  # without the checkpoint the cut is a gap


def test_another_tenants_event_breaks_the_chain() -> None:
    events = build(3)
    events[2]["tenant_id"] = str(uuid.uuid4())
    assert not chain.verify(events).ok


def test_the_canonical_form_is_fixed() -> None:
    event = {"tenant_id": "t", "sequence": 7, "event_time": T0, "action": "user.create",
             "diff": {"b": 1, "a": "é", "n": None, "f": 1.5, "big": 2**60}}
    assert chain.canonical(event) == (
        '{"action":"user.create","actor_id":"","actor_tenant_id":"","actor_type":"",'
        '"diff":{"a":"é","b":1,"big":"1152921504606846976","f":"1.5","n":null},'
        '"event_time":"2026-12-03T12:00:00.000000Z","id":"","outcome":"","request_id":"",'
        '"sequence":7,"source_ip":"","status_code":"","target_id":"","target_type":"","tenant_id":"t",'
        '"trace_id":"","user_agent":""}').encode()


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                           max_leaves=20)


@given(st.dictionaries(st.text(), json_values, max_size=6))
def test_any_diff_encodes_and_verifies(diff: dict[str, Any]) -> None:
    event = {"tenant_id": TENANT, "sequence": 1, "diff": diff, "prev_hash": chain.GENESIS}
    event["hash"] = chain.link_hash(chain.GENESIS, event)
    assert chain.verify([event]).ok
    # Encoding twice gives the same bytes (stable under normalisation).
    assert chain.canonical(event) == chain.canonical(dict(event, diff=chain.normalise_diff(diff)))


def test_a_chain_cut_by_retention_verifies_from_the_retained_checkpoint() -> None:
    events = build(6)
    kept = {3: events[2]["hash"]}  # the signed checkpoint at the cut
    assert chain.verify(events[3:], checkpoints=kept).ok
    verdict = chain.verify(events[3:])  # without it, the cut looks like deletion
    assert not verdict.ok and verdict.broken_sequence == 1 and "missing" in verdict.problem
    assert not chain.verify(events[3:], checkpoints={3: "0" * 64}).ok  # a wrong checkpoint does not help
