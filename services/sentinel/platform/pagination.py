"""AIP-158 pagination: page sizes and signed, tenant-bound keyset page tokens.

A token names the last row of the previous page ``(create_time, id)``; it is HMAC-signed and
bound to the tenant and a hash of the list's filters, so a token can be neither forged,
replayed in another tenant, nor reused with different filters.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass

from sentinel.platform.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must not be negative", [FieldViolation("page_size", "negative")])
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


@dataclass(frozen=True, slots=True)
class Cursor:
    create_time: dt.datetime
    id: uuid.UUID


class PageTokens:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the page token secret must be at least 16 bytes")
        self._secret = secret

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()[:16]

    def encode(self, cursor: Cursor, *, tenant: uuid.UUID | None, scope: str) -> str:
        body = json.dumps([cursor.create_time.isoformat(), str(cursor.id), str(tenant or ""),
                           _scope_hash(scope)], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(self._mac(body) + body).decode().rstrip("=")

    def decode(self, token: str, *, tenant: uuid.UUID | None, scope: str) -> Cursor | None:
        if not token:
            return None
        invalid = InvalidArgument("page_token is invalid or belongs to a different query; "
                                  "start again without it", [FieldViolation("page_token", "invalid")])
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except ValueError:
            raise invalid from None
        mac, body = raw[:16], raw[16:]
        if not hmac.compare_digest(mac, self._mac(body)):
            raise invalid
        try:
            when, ident, bound_tenant, bound_scope = json.loads(body)
            cursor = Cursor(dt.datetime.fromisoformat(when), uuid.UUID(ident))
        except (ValueError, TypeError):
            raise invalid from None
        if bound_tenant != str(tenant or "") or bound_scope != _scope_hash(scope):
            raise invalid
        return cursor


def _scope_hash(scope: str) -> str:
    return hashlib.sha256(scope.encode()).hexdigest()[:16]


def etag(ident: uuid.UUID, version: int) -> str:
    """Opaque version tag: changes on every update of the row."""
    return hashlib.sha256(f"{ident}:{version}".encode()).hexdigest()[:20]
