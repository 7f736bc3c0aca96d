"""Audit exports and their offline verification (``sentinel audit verify FILE``).

Two line formats, one JSON object per line in sequence order, are accepted:

* the API's, from ``GET /api/v1/audit/events:export`` (NDJSON through Envoy) or the gRPC
  stream: ``{"event": {...AuditEvent...}}``;
* the operator's, from ``sentinel audit export``: the stored fields of ``chain.FIELDS`` plus
  ``prev_hash`` and ``hash``, times in RFC 3339 UTC with microseconds.

Both carry the tenant's signed checkpoints first, as ``{"checkpoint": {...Checkpoint...}}``.

A file is verified with nothing but itself: the links are recomputed exactly as the database
computed them.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf import json_format

from sentinel.audit import chain
from sentinel.audit.checkpoints import trusted_heads
from sentinel.audit.convert import checkpoint_from_proto, from_proto
from sentinel.audit.v1 import audit_pb2


async def export_lines(tenant_id: uuid.UUID) -> AsyncIterator[str]:
    """A tenant's full export in the operator's format: its signed checkpoints, then every event
    in sequence order (page by page: constant memory). What ``sentinel audit export`` writes."""
    from sentinel.audit import checkpoints as stored_checkpoints
    from sentinel.audit import store
    from sentinel.audit.convert import checkpoint_proto

    for cp in await stored_checkpoints.list_for(tenant_id):
        yield json.dumps({"checkpoint": json_format.MessageToDict(checkpoint_proto(cp))}) + "\n"
    async for page in store.events(tenant_id):
        for event in page:
            yield line(event) + "\n"


def line(event: Mapping[str, Any]) -> str:
    out = {name: event.get(name) for name in (*chain.FIELDS, "prev_hash", "hash")}
    if isinstance(out["event_time"], dt.datetime):
        out["event_time"] = chain.rfc3339(out["event_time"])
    return json.dumps(out, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                item = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"line {number}: not JSON ({e.msg})") from None
            if not isinstance(item, dict):
                raise ValueError(f"line {number}: not a JSON object")
            if "error" in item:  # a stream that ended in an error (Envoy appends it)
                raise ValueError(f"line {number}: the export stopped with an error: {item['error']}")
            yield number, item


def read(path: Path) -> Iterator[dict[str, Any]]:
    """The events of an export file, one at a time (constant memory for any size)."""
    for number, item in _lines(path):
        if "checkpoint" in item:
            continue
        if "event" in item:  # the API's format
            try:
                item = from_proto(json_format.ParseDict(item["event"], audit_pb2.AuditEvent()))
            except json_format.ParseError as e:
                raise ValueError(f"line {number}: not an audit event ({e})") from None
        yield item


def checkpoints(path: Path) -> list[dict[str, Any]]:
    """The signed checkpoints an API export carries (before its events)."""
    out = []
    for number, item in _lines(path):
        if "checkpoint" in item:
            try:
                cp = json_format.ParseDict(item["checkpoint"], audit_pb2.Checkpoint())
            except json_format.ParseError as e:
                raise ValueError(f"line {number}: not a checkpoint ({e})") from None
            out.append(checkpoint_from_proto(cp))
    return out


@dataclass(frozen=True)
class FileVerdict:
    chain: chain.Verdict
    checkpoints: int  # checkpoints used
    forged: int  # checkpoints whose signature failed
    authenticated: bool  # signatures checked against a public key


def verify_file(path: Path, public_key: Ed25519PublicKey | None = None) -> FileVerdict:
    """Verify an export: every link, and the signed heads it carries (authenticated with a key)."""
    cps = checkpoints(path)
    heads = trusted_heads(cps, public_key)
    verdict = chain.reaches_checkpoints(chain.verify(read(path), checkpoints=heads), heads)
    return FileVerdict(verdict, len(heads), len(cps) - len(heads), public_key is not None)
