"""Conversions at the proto edge: enums ↔ database text, timestamps, update masks."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from google.protobuf import field_mask_pb2, timestamp_pb2
from google.protobuf.message import Message

from sentinel.platform.errors import FieldViolation, InvalidArgument


class EnumText:
    """Maps a prefixed proto enum (``TENANT_STATE_ACTIVE``) to lower-case text (``active``)."""

    def __init__(self, enum: Any, prefix: str) -> None:
        self.enum = enum
        self.prefix = prefix
        self._to_text: dict[int, str] = {v: n.removeprefix(prefix).lower() for n, v in enum.items() if v != 0}
        self._to_enum = {t: v for v, t in self._to_text.items()}

    def text(self, value: int, field: str, *, default: str | None = None) -> str:
        if value == 0 and default is not None:
            return default
        try:
            return self._to_text[value]
        except KeyError:
            allowed = ", ".join(self.prefix + t.upper() for t in self._to_text.values())
            raise InvalidArgument(f"{field} must be one of {allowed}",
                                  [FieldViolation(field, "unknown value")]) from None

    def value(self, text: str) -> Any:
        return self._to_enum[text]


def timestamp(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def update_paths(resource: Message, mask: field_mask_pb2.FieldMask, allowed: Iterable[str]) -> list[str]:
    """The fields an update touches.

    With a mask, exactly its paths (each must be updatable); ``*`` means every updatable
    field. Without one, every updatable field set to a non-default value in the body.
    """
    allowed = list(allowed)
    if not mask.paths:
        present = {f.name for f, _ in resource.ListFields()}
        return [p for p in allowed if p in present]
    if list(mask.paths) == ["*"]:
        return allowed
    bad = [p for p in mask.paths if p not in allowed]
    if bad:
        raise InvalidArgument(
            f"update_mask may only name {', '.join(allowed)}",
            [FieldViolation("update_mask", f"'{p}' cannot be updated") for p in bad],
        )
    return list(dict.fromkeys(mask.paths))
