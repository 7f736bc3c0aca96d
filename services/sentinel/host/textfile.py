"""Metrics for the node exporter's textfile collector: render, check and write atomically.

The node exporter reads every ``*.prom`` file in ``--collector.textfile.directory`` on each
scrape. Two rules make or break a file:

* it must be replaced atomically, or a scrape can read half a file: write a temporary file in the
  *same directory* (a rename across file systems is not atomic) whose name does not end in
  ``.prom`` (so it is never read), then ``rename`` it over the old one;
* samples must not carry timestamps: the node exporter rejects the whole file ("contains
  unsupported client-side timestamps") and sets ``node_textfile_scrape_error``. A *gauge whose
  value is a unix time* (``..._timestamp_seconds``) is an ordinary sample and is fine.

``promtool check metrics`` checks names, HELP and units but neither duplicates nor timestamps
(docs/host-security.md), so :func:`check` does those.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Family", "check", "families_by_name", "render", "write_atomic"]


@dataclass
class Family:
    """One metric: name (a counter's ends in ``_total``), type, help and its samples."""

    name: str
    type: Literal["counter", "gauge"]
    help: str
    samples: list[tuple[Mapping[str, str], float]] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> None:
        self.samples.append((labels, value))


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _number(value: float) -> str:
    v = float(value)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return str(int(v)) if v.is_integer() and abs(v) < 2**53 else repr(v)


def render(families: Iterable[Family]) -> str:
    """Text exposition format 0.0.4: HELP and TYPE for every family, no timestamps."""
    out: list[str] = []
    for fam in families:
        if fam.type == "counter" and not fam.name.endswith("_total"):
            raise ValueError(f"counter {fam.name} must end in _total")
        out.append(f"# HELP {fam.name} {fam.help.replace(chr(92), chr(92) * 2).replace(chr(10), ' ')}")
        out.append(f"# TYPE {fam.name} {fam.type}")
        for labels, value in fam.samples:
            body = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            number = _number(value)
            out.append(f"{fam.name}{{{body}}} {number}" if body else f"{fam.name} {number}")
    return "\n".join(out) + "\n"


def check(text: str) -> list[str]:
    """What the node exporter or Prometheus would reject or mangle: timestamps, duplicate series,
    families without HELP or TYPE. Empty when the text is fine."""
    problems: list[str] = []
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as e:
        return [f"unparseable: {e}"]
    typed = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    helped = {line.split()[2] for line in text.splitlines() if line.startswith("# HELP ")}
    for fam in families:
        for sample in fam.samples:
            if sample.timestamp is not None:
                problems.append(f"{sample.name}: sample carries a timestamp")
            ident = (sample.name, tuple(sorted(sample.labels.items())))
            if ident in seen:
                problems.append(f"duplicate series {sample.name}{dict(sample.labels)}")
            seen.add(ident)
            if sample.name not in typed and fam.name not in typed:
                problems.append(f"{sample.name}: no TYPE line")
            if sample.name not in helped and fam.name not in helped:
                problems.append(f"{sample.name}: no HELP line")
    return problems


def write_atomic(directory: Path, name: str, text: str, *, mode: int = 0o644) -> Path:
    """Replace ``directory/name`` with ``text`` atomically (temp file in the same dir + rename)."""
    if not name.endswith(".prom"):
        raise ValueError("the node exporter reads only *.prom files")
    target = directory / name
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp makes it 0600; the node exporter runs as another user
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target


def families_by_name(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples of a rendered text by sample name (for tests and ``sentinel host status``)."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out

