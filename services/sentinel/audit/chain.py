"""The audit hash chain: canonical encoding of an event, link hashes, and verification.

One chain per tenant. Event ``n`` (``sequence`` 1, 2, ...) stores

    prev_hash = hash of event n-1 (64 zeros for event 1)
    hash      = hex(sha256(bytes.fromhex(prev_hash) || canonical(event)))

``canonical(event)`` is the UTF-8 of a JSON object with exactly the keys of ``FIELDS``
(absent values as ``""``, ``diff`` as an object, ``sequence`` as an integer), keys sorted,
no insignificant whitespace (``separators=(",", ":")``), non-ASCII characters kept as they
are, and times as RFC 3339 UTC with microseconds (``2026-12-03T12:00:00.000000Z``). Numbers in
``diff`` must be integers of at most 2^53 in magnitude; anything else is recorded as a string
(:func:`normalise_diff`), so every implementation encodes the same bytes.

The same code verifies the database (``VerifyAuditChain``) and an export file offline
(``sentinel audit verify FILE``): a change to any field, a deleted, inserted or reordered
row all break a link, and the first broken one is reported.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64
FIELDS = ("tenant_id", "sequence", "id", "event_time", "actor_type", "actor_id", "actor_tenant_id", "action",
          "target_type", "target_id", "outcome", "status_code", "request_id", "trace_id", "source_ip",
          "user_agent", "diff")
MAX_SAFE_INTEGER = 2**53


def rfc3339(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def normalise_diff(value: Any) -> Any:
    """Make a diff canonical-encodable: integers stay, every other scalar becomes a string."""
    if isinstance(value, Mapping):
        return {str(k): normalise_diff(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [normalise_diff(v) for v in value]
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int) and abs(value) <= MAX_SAFE_INTEGER:
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_SAFE_INTEGER:
        return int(value)
    return str(value)


def canonical(event: Mapping[str, Any]) -> bytes:
    body: dict[str, Any] = {}
    for name in FIELDS:
        value = event.get(name)
        if name == "sequence":
            body[name] = int(value or 0)
        elif name == "diff":
            body[name] = normalise_diff(value or {})
        elif isinstance(value, dt.datetime):
            body[name] = rfc3339(value)
        else:
            body[name] = "" if value is None else str(value)
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def link_hash(prev_hash: str, event: Mapping[str, Any]) -> str:
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical(event)).hexdigest()


@dataclass(frozen=True)
class Verdict:
    ok: bool
    checked: int  # events whose links held
    head_sequence: int
    head_hash: str
    broken_sequence: int = 0  # the first event whose link does not hold
    problem: str = ""


def verify(events: Iterable[Mapping[str, Any]], *, start_sequence: int = 1, start_hash: str = GENESIS,
           checkpoints: Mapping[int, str] | None = None) -> Verdict:
    """Walk one tenant's events in sequence order and report the first broken link.

    ``start_sequence``/``start_hash`` continue from a trusted point. ``checkpoints`` (sequence →
    hash, from signed checkpoints) catch a chain rewritten from some point on: every link of it
    holds, but not the signed heads. A chain whose first event comes later than 1 (retention
    cut the events before it) starts from the checkpoint at the cut.
    """
    checkpoints = checkpoints or {}
    expected, prev, checked, tenant = start_sequence, start_hash, 0, None
    for event in events:
        if tenant is None and expected == 1:
            # After a retention cut the chain starts later, at a retained signed checkpoint.
            first = int(event.get("sequence") or 0)
            if first > 1 and first - 1 in checkpoints:
                expected, prev = first, checkpoints[first - 1]
        tenant = event.get("tenant_id") if tenant is None else tenant
        found = _problem(event, expected, prev, tenant, checkpoints)
        if found is not None:
            at, problem = found
            return Verdict(False, checked, expected - 1, prev, at, problem)
        prev, checked, expected = str(event["hash"]), checked + 1, expected + 1
    return Verdict(True, checked, expected - 1, prev)


def _problem(event: Mapping[str, Any], expected: int, prev: str, tenant: Any,
             checkpoints: Mapping[int, str]) -> tuple[int, str] | None:
    """Why this event does not continue the chain (at which sequence), or None."""
    sequence = int(event.get("sequence") or 0)
    if event.get("tenant_id") != tenant:
        return sequence, "event of another tenant in the chain"
    if sequence != expected:
        what = "missing" if sequence > expected else "out of order or repeated"
        return expected, f"expected sequence {expected}, found {sequence} (events {what})"
    if event.get("prev_hash") != prev:
        return sequence, "prev_hash does not match the previous event's hash"
    if event.get("hash") != link_hash(prev, event):
        return sequence, "hash does not match the event's contents"
    if sequence in checkpoints and checkpoints[sequence] != event["hash"]:
        return sequence, "hash differs from the signed checkpoint at this sequence (chain rewritten)"
    return None


def reaches_checkpoints(verdict: Verdict, checkpoints: Mapping[int, str] | None) -> Verdict:
    """A whole chain must reach its last signed checkpoint: one that ends earlier lost its tail."""
    last = max(checkpoints or {}, default=0)
    if verdict.ok and last > verdict.head_sequence:
        return Verdict(False, verdict.checked, verdict.head_sequence, verdict.head_hash, verdict.head_sequence + 1,
                       f"the chain ends at {verdict.head_sequence} but a signed checkpoint covers {last}: "
                       "events were removed from the end")
    return verdict
