"""AIP-158 pagination: page sizes, signed keyset page tokens bound to tenant and query, etags."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import uuid

import grpc
import pytest
from sentinel.platform import pagination
from sentinel.platform.errors import InvalidArgument
from sentinel.platform.pagination import Cursor, PageTokens, etag, page_size

SECRET = b"0123456789abcdef0123456789abcdef"
TENANT_A = uuid.UUID("0190f6b4-8a5e-7c3d-9f1a-00000000000a")
TENANT_B = uuid.UUID("0190f6b4-8a5e-7c3d-9f1a-00000000000b")
CURSOR = Cursor(dt.datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=dt.UTC),
                uuid.UUID("0190f6b4-8a5e-7c3d-9f1a-2b3c4d5e6f70"))
SCOPE = "state=active"


@pytest.fixture
def tokens() -> PageTokens:
    return PageTokens(SECRET)


def _invalid(tokens: PageTokens, token: str, *, tenant: uuid.UUID | None = TENANT_A,
             scope: str = SCOPE) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        tokens.decode(token, tenant=tenant, scope=scope)
    return info.value


# --------------------------------------------------------------------------- page_size


@pytest.mark.parametrize(("requested", "expected"), [
    (0, 50), (1, 1), (49, 49), (50, 50), (999, 999), (1000, 1000), (1001, 1000), (2**31 - 1, 1000),
])
def test_page_size_default_and_cap(requested: int, expected: int) -> None:
    assert page_size(requested) == expected


def test_page_size_constants_match_the_design() -> None:
    assert (pagination.DEFAULT_PAGE_SIZE, pagination.MAX_PAGE_SIZE) == (50, 1000)


@pytest.mark.parametrize("requested", [-1, -50, -(2**31)])
def test_negative_page_size_is_invalid_argument(requested: int) -> None:
    with pytest.raises(InvalidArgument) as info:
        page_size(requested)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in info.value.violations] == ["page_size"]


# --------------------------------------------------------------------------- tokens


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        PageTokens(b"x" * 15)
    PageTokens(b"x" * 16)  # the minimum is accepted


def test_round_trip(tokens: PageTokens) -> None:
    token = tokens.encode(CURSOR, tenant=TENANT_A, scope=SCOPE)
    assert tokens.decode(token, tenant=TENANT_A, scope=SCOPE) == CURSOR


def test_round_trip_keeps_timezone_and_microseconds(tokens: PageTokens) -> None:
    cursor = tokens.decode(tokens.encode(CURSOR, tenant=TENANT_A, scope=SCOPE), tenant=TENANT_A, scope=SCOPE)
    assert cursor is not None
    assert cursor.create_time.utcoffset() == dt.timedelta(0)
    assert cursor.create_time.microsecond == 123456


def test_round_trip_without_tenant(tokens: PageTokens) -> None:
    # Platform-wide listings (platform admins) bind to "no tenant".
    token = tokens.encode(CURSOR, tenant=None, scope=SCOPE)
    assert tokens.decode(token, tenant=None, scope=SCOPE) == CURSOR
    _invalid(tokens, token, tenant=TENANT_A)


def test_empty_token_means_first_page(tokens: PageTokens) -> None:
    assert tokens.decode("", tenant=TENANT_A, scope=SCOPE) is None


def test_token_is_url_safe_and_opaque(tokens: PageTokens) -> None:
    token = tokens.encode(CURSOR, tenant=TENANT_A, scope=SCOPE)
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    # The filter is bound by hash only; the plain query text is not exposed.
    decoded = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert SCOPE.encode() not in decoded


def test_token_from_another_tenant_is_rejected(tokens: PageTokens) -> None:
    token = tokens.encode(CURSOR, tenant=TENANT_A, scope=SCOPE)
    err = _invalid(tokens, token, tenant=TENANT_B)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in err.violations] == ["page_token"]


def test_token_with_other_filters_is_rejected(tokens: PageTokens) -> None:
    token = tokens.encode(CURSOR, tenant=TENANT_A, scope=SCOPE)
    _invalid(tokens, token, scope="state=suspended")
    _invalid(tokens, token, scope="")


def test_token_signed_with_another_secret_is_rejected(tokens: PageTokens) -> None:
    other = PageTokens(b"another-secret-of-32-bytes-long!")
    _invalid(tokens, other.encode(CURSOR, tenant=TENANT_A, scope=SCOPE))


def test_every_flipped_byte_is_rejected(tokens: PageTokens) -> None:
    token = tokens.encode(CURSOR, tenant=TENANT_A, scope=SCOPE)
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    for i in range(len(raw)):
        doctored = bytearray(raw)
        doctored[i] ^= 0x01
        forged = base64.urlsafe_b64encode(bytes(doctored)).decode().rstrip("=")
        _invalid(tokens, forged)


def test_forged_body_with_rebound_tenant_is_rejected(tokens: PageTokens) -> None:
    # Rewriting the tenant inside the body without the secret breaks the MAC.
    token = tokens.encode(CURSOR, tenant=TENANT_A, scope=SCOPE)
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    body = raw[16:].replace(str(TENANT_A).encode(), str(TENANT_B).encode())
    assert body != raw[16:]
    forged = base64.urlsafe_b64encode(raw[:16] + body).decode().rstrip("=")
    _invalid(tokens, forged, tenant=TENANT_B)


@pytest.mark.parametrize("garbage", [
    "a", "not a token", "!!!!", "ä-non-ascii", "=" * 8, "AAAA", base64.urlsafe_b64encode(b"x" * 40).decode(),
    "' OR 1=1 --", "%00", "a" * 10_000,
])
def test_garbage_tokens_are_invalid_argument(tokens: PageTokens, garbage: str) -> None:
    err = _invalid(tokens, garbage)
    assert "page_token" in err.message
    assert SECRET.decode() not in err.message


@pytest.mark.parametrize("body", [
    b"not json", b"[]", b'["x","y","z","w"]', b'{"a":1}', b"[1,2,3,4]", b"\xff\xfe",
    b'["2024-05-01T12:30:15+00:00","0190f6b4-8a5e-7c3d-9f1a-2b3c4d5e6f70"]',
])
def test_correctly_signed_but_malformed_body_is_invalid_argument(tokens: PageTokens, body: bytes) -> None:
    # Even a holder of the secret cannot make decode crash with something other than INVALID_ARGUMENT.
    mac = hmac.new(SECRET, body, hashlib.sha256).digest()[:16]
    _invalid(tokens, base64.urlsafe_b64encode(mac + body).decode())


def test_correctly_signed_handmade_body_decodes(tokens: PageTokens) -> None:
    # Pins the wire format: [create_time, id, tenant, sha256(scope)[:16]], MAC = HMAC-SHA256[:16].
    body = json.dumps([CURSOR.create_time.isoformat(), str(CURSOR.id), str(TENANT_A),
                       hashlib.sha256(SCOPE.encode()).hexdigest()[:16]], separators=(",", ":")).encode()
    mac = hmac.new(SECRET, body, hashlib.sha256).digest()[:16]
    assert tokens.decode(base64.urlsafe_b64encode(mac + body).decode(), tenant=TENANT_A, scope=SCOPE) == CURSOR


def test_padding_is_optional(tokens: PageTokens) -> None:
    token = tokens.encode(CURSOR, tenant=TENANT_A, scope=SCOPE)
    assert not token.endswith("=")
    padded = token + "=" * (-len(token) % 4)
    assert tokens.decode(padded, tenant=TENANT_A, scope=SCOPE) == CURSOR


def test_different_cursors_give_different_tokens(tokens: PageTokens) -> None:
    later = Cursor(CURSOR.create_time + dt.timedelta(microseconds=1), CURSOR.id)
    a = tokens.encode(CURSOR, tenant=TENANT_A, scope=SCOPE)
    b = tokens.encode(later, tenant=TENANT_A, scope=SCOPE)
    assert a != b
    assert tokens.decode(b, tenant=TENANT_A, scope=SCOPE) == later


# --------------------------------------------------------------------------- etag


def test_etag_changes_with_version_and_id() -> None:
    ident = CURSOR.id
    assert etag(ident, 1) == etag(ident, 1)
    assert etag(ident, 1) != etag(ident, 2)
    assert etag(ident, 1) != etag(uuid.UUID(int=ident.int + 1), 1)
    assert len(etag(ident, 1)) == 20
    assert str(ident) not in etag(ident, 1)
