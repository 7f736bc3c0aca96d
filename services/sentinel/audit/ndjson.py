"""Audit exports and their offline verification (``sentinel audit verify FILE``).

Two line formats, one JSON object per line in sequence order, are accepted:

* the API's, from ``GET /api/v1/audit/events:export`` (NDJSON through Envoy) or the gRPC
  stream: ``{"event": {...AuditEvent...}}``;
* the operator's, from ``sentinel audit export``: the stored fields of ``chain.FIELDS`` plus
  ``prev_hash`` and ``hash``, times in RFC 3339 UTC with microseconds.

A file is verified with nothing but itself: the links are recomputed exactly as the database
computed them.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from sentinel.audit import chain
from sentinel.audit.convert import from_proto
from sentinel.audit.v1 import audit_pb2


def line(event: Mapping[str, Any]) -> str:
    out = {name: event.get(name) for name in (*chain.FIELDS, "prev_hash", "hash")}
    if isinstance(out["event_time"], dt.datetime):
        out["event_time"] = chain.rfc3339(out["event_time"])
    return json.dumps(out, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def read(path: Path) -> Iterator[dict[str, Any]]:
    """The events of an export file, one at a time (constant memory for any size)."""
    with path.open(encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                event = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"line {number}: not JSON ({e.msg})") from None
            if not isinstance(event, dict):
                raise ValueError(f"line {number}: not a JSON object")
            if "error" in event:  # a stream that ended in an error (Envoy appends it)
                raise ValueError(f"line {number}: the export stopped with an error: {event['error']}")
            if "event" in event:  # the API's format
                try:
                    event = from_proto(json_format.ParseDict(event["event"], audit_pb2.AuditEvent()))
                except json_format.ParseError as e:
                    raise ValueError(f"line {number}: not an audit event ({e})") from None
            yield event


def verify_file(path: Path) -> chain.Verdict:
    return chain.verify(read(path))
