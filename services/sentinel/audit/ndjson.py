"""The audit export format and its offline verification (``sentinel audit verify FILE``).

One JSON object per line, in sequence order: every field of ``chain.FIELDS`` plus
``prev_hash`` and ``hash``, times in RFC 3339 UTC with microseconds. A file is verified with
nothing but itself: the links are recomputed exactly as the database computed them.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from sentinel.audit import chain


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
            yield event


def verify_file(path: Path) -> chain.Verdict:
    return chain.verify(read(path))
