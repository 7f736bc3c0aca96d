"""The in-memory table of non-active tenants: messages, re-reads, and the refusals it produces."""

from __future__ import annotations

import asyncio
import json
import uuid

import grpc
from sentinel.platform.revocation import Blocked, TenantStates

T = uuid.UUID("0190f000-0000-7000-8000-00000000000a")


def test_only_non_active_tenants_are_blocked() -> None:
    states = TenantStates()
    assert states.blocked(T) is None
    states.on_message(json.dumps({"id": str(T), "state": "suspended", "reason": "unpaid"}))
    assert states.blocked(T) == Blocked("suspended", "unpaid")
    states.on_message(json.dumps({"id": str(T), "state": "active"}))
    assert states.blocked(T) is None


async def test_reload_replaces_the_table() -> None:
    states = TenantStates()
    states.set(T, "suspended", "old")
    other = uuid.uuid4()

    async def read() -> dict[uuid.UUID, Blocked]:
        return {other: Blocked("pending_deletion")}

    await states.reload(read)
    assert states.blocked(T) is None and states.blocked(other) == Blocked("pending_deletion")


async def test_a_message_during_a_reload_is_not_undone() -> None:
    """The read started before the suspension committed; the message that followed must win."""
    states = TenantStates()
    reads = 0

    async def slow_read() -> dict[uuid.UUID, Blocked]:
        nonlocal reads
        reads += 1
        snapshot: dict[uuid.UUID, Blocked] = {} if reads == 1 else {T: Blocked("suspended", "r")}
        if reads == 1:
            states.on_message(json.dumps({"id": str(T), "state": "suspended", "reason": "r"}))
        await asyncio.sleep(0)
        return snapshot

    await states.reload(slow_read)
    assert reads == 2  # the first snapshot was discarded and the table read again
    assert states.blocked(T) == Blocked("suspended", "r")


def test_refusals_say_what_to_do() -> None:
    own = Blocked("suspended", "invoice overdue").refusal(T, own=True)
    assert own.code == grpc.StatusCode.FAILED_PRECONDITION and own.reason == "TENANT_NOT_ACTIVE"
    assert own.message == "your tenant is suspended (invoice overdue); contact your platform administrator"
    assert Blocked("pending_deletion").refusal(T, own=True).message == \
        "your tenant is pending deletion; contact your platform administrator"
    assert Blocked("suspended", "x").refusal(T, own=False).message == f"tenant {T} is suspended; resume it first"
    assert Blocked("pending_deletion").refusal(T, own=False).message == \
        f"tenant {T} is pending deletion; restore it first"
    assert Blocked("deleted").refusal(T, own=False).message == f"tenant {T} is deleted"
