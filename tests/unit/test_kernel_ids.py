"""UUIDv7 generation (RFC 9562) and strict parsing of client-supplied ids."""

from __future__ import annotations

import time
import uuid

import grpc
import pytest
from sentinel.platform import ids
from sentinel.platform.errors import InvalidArgument
from sentinel.platform.ids import parse_uuid, uuid7

CANONICAL = "0190f6b4-8a5e-7c3d-9f1a-2b3c4d5e6f70"


def test_uuid7_version_and_variant() -> None:
    for _ in range(200):
        u = uuid7()
        assert u.version == 7
        assert u.variant == uuid.RFC_4122


def test_uuid7_embeds_the_current_unix_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    u = uuid7()
    after = time.time_ns() // 1_000_000
    assert before <= u.int >> 80 <= after


def test_uuid7_is_time_ordered_across_milliseconds() -> None:
    first = uuid7()
    time.sleep(0.003)
    second = uuid7()
    assert first < second
    assert str(first) < str(second)  # also as text (the database orders by the uuid)


def test_uuid7_is_random_within_a_millisecond() -> None:
    batch = [uuid7() for _ in range(2000)]
    assert len(set(batch)) == len(batch)
    # 74 random bits: the low 62 bits differ even for ids of the same millisecond.
    assert len({u.int & ((1 << 62) - 1) for u in batch}) == len(batch)


def test_uuid7_random_bits_are_not_constant(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ids.os, "urandom", lambda n: b"\xff" * n)
    monkeypatch.setattr(ids.time, "time_ns", lambda: 1_700_000_000_123 * 1_000_000)
    u = uuid7()
    assert u.int >> 80 == 1_700_000_000_123
    assert (u.int >> 64) & 0xFFF == 0xFFF  # rand_a
    assert u.int & ((1 << 62) - 1) == (1 << 62) - 1  # rand_b
    assert u.version == 7 and u.variant == uuid.RFC_4122


@pytest.mark.parametrize("value", [CANONICAL, CANONICAL.upper(), str(uuid.uuid4()), str(uuid7()),
                                   "00000000-0000-0000-0000-000000000000"])
def test_parse_canonical(value: str) -> None:
    assert parse_uuid(value, "id") == uuid.UUID(value)


@pytest.mark.parametrize("value", [
    "", "nope", CANONICAL[:-1], CANONICAL + "0", CANONICAL.replace("-", ""), "{" + CANONICAL + "}",
    "urn:uuid:" + CANONICAL,
    # 36 characters that uuid.UUID also accepts: a prefix, braces or dashes in the wrong places.
    "urn:" + CANONICAL.replace("-", ""), CANONICAL.replace("-", "") + "----",
    "{" + CANONICAL.replace("-", "") + "}--", "-" + CANONICAL.replace("-", "")[:32] + "---",
    " " + CANONICAL[1:], CANONICAL[:-1] + "\n", CANONICAL[:-1] + "g", "' OR '1'='1' --------------------",
    "\uff10" + CANONICAL[1:],  # a full-width digit: int(..., 16) accepts it
])
def test_parse_rejects_everything_else(value: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_uuid(value, "user.id")
    err = info.value
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.description) for v in err.violations] == [("user.id", "not a UUID")]
    assert err.message.startswith("user.id must be a UUID")


@pytest.mark.parametrize("value", [None, 123, b"0190f6b4-8a5e-7c3d-9f1a-2b3c4d5e6f70"])
def test_parse_rejects_non_strings(value: object) -> None:
    with pytest.raises(InvalidArgument):
        parse_uuid(value, "id")  # type: ignore[arg-type]
