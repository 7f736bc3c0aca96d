"""Identifiers: UUIDv7 (time-ordered, RFC 9562) and strict parsing of client-supplied ids."""

from __future__ import annotations

import os
import re
import time
import uuid

from sentinel.platform.errors import FieldViolation, InvalidArgument


def uuid7() -> uuid.UUID:
    """A UUIDv7: 48-bit Unix milliseconds, version and variant bits, 74 random bits."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return uuid.UUID(int=value)


#: The canonical 8-4-4-4-12 form (either case). ``uuid.UUID`` alone also accepts braces, a
#: ``urn:uuid:`` prefix and dashes anywhere, e.g. ``urn:0190f6b48a5e7c3d9f1a2b3c4d5e6f70``.
CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def parse_uuid(value: str, field: str) -> uuid.UUID:
    """Parse a canonical UUID string or raise InvalidArgument naming the field."""
    parsed = None
    if isinstance(value, str) and CANONICAL_UUID.fullmatch(value):
        parsed = uuid.UUID(value)
    if parsed is None:
        raise InvalidArgument(
            f"{field} must be a UUID like 0190f6b4-8a5e-7c3d-9f1a-2b3c4d5e6f70",
            [FieldViolation(field, "not a UUID")],
        )
    return parsed

