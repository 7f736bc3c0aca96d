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
from typing import Any, Protocol, TypeVar

from sqlalchemy import ColumnElement, Integer, Select, bindparam, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from sentinel.platform.errors import Aborted, FieldViolation, InvalidArgument

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


class Listed(Protocol):
    """A row that lists in keyset order: creation time, then id."""

    create_time: dt.datetime
    id: uuid.UUID


RowT = TypeVar("RowT", bound=Listed)


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

    def encode_position(self, position: int, *, tenant: uuid.UUID | None, scope: str) -> str:
        """A token for lists ordered by an integer position (e.g. an audit chain's sequence)."""
        body = json.dumps(["pos", position, str(tenant or ""), _scope_hash(scope)], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(self._mac(body) + body).decode().rstrip("=")

    def decode_position(self, token: str, *, tenant: uuid.UUID | None, scope: str) -> int | None:
        if not token:
            return None
        body = self._verified(token)
        try:
            kind, position, bound_tenant, bound_scope = json.loads(body)
        except (ValueError, TypeError):
            raise _invalid() from None
        if kind != "pos" or not isinstance(position, int) or bound_tenant != str(tenant or "") \
                or bound_scope != _scope_hash(scope):
            raise _invalid()
        return position

    def _verified(self, token: str) -> bytes:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except ValueError:
            raise _invalid() from None
        mac, body = raw[:16], raw[16:]
        if not hmac.compare_digest(mac, self._mac(body)):
            raise _invalid()
        return body

    def decode(self, token: str, *, tenant: uuid.UUID | None, scope: str) -> Cursor | None:
        if not token:
            return None
        body = self._verified(token)
        invalid = _invalid()
        try:
            when, ident, bound_tenant, bound_scope = json.loads(body)
            cursor = Cursor(dt.datetime.fromisoformat(when), uuid.UUID(ident))
        except (ValueError, TypeError):
            raise invalid from None
        if bound_tenant != str(tenant or "") or bound_scope != _scope_hash(scope):
            raise invalid
        return cursor


    def cursor_for(self, page_token: str, *, tenant: uuid.UUID | None, scope: str) -> Cursor | None:
        """Decode the request's token before any database work (a bad one is INVALID_ARGUMENT)."""
        return self.decode(page_token, tenant=tenant, scope=scope)

    async def fetch_page(self, session: AsyncSession, query: Select[RowT], model: Any, *, size: int,
                         cursor: Cursor | None, tenant: uuid.UUID | None, scope: str) -> tuple[list[RowT], str]:
        """One keyset page of ``query`` (ordered by ``model.create_time, model.id``) and the next token.

        Reads one row more than asked to know whether another page exists.
        """
        if cursor:
            query = query.where(keyset_after(model))
        rows = await session.scalars(keyset_order(query, model), page_params(size, cursor))
        return self.page_of(list(rows.all()), size=size, tenant=tenant, scope=scope)

    def page_of(self, rows: list[RowT], *, size: int, tenant: uuid.UUID | None, scope: str) -> tuple[list[RowT], str]:
        """The page and the next token, from up to ``size + 1`` rows in keyset order."""
        if len(rows) <= size:
            return rows, ""
        rows = rows[:size]
        return rows, self.encode(Cursor(rows[-1].create_time, rows[-1].id), tenant=tenant, scope=scope)


# Keyset pages with bind parameters, not values: one statement (for db.Query, one compiled
# form) serves every page; fetch_page runs the same through the ORM.
def keyset_after(model: Any) -> ColumnElement[bool]:
    """``(create_time, id) > (:after_time, :after_id)`` for ``model``; values from :func:`page_params`."""
    return tuple_(model.create_time, model.id) > tuple_(
        bindparam("after_time", type_=model.create_time.type), bindparam("after_id", type_=model.id.type))


def keyset_order(query: Select[Any], model: Any) -> Select[Any]:
    """Keyset order and ``LIMIT :limit`` (one row more than the page, see ``page_of``)."""
    return query.order_by(model.create_time, model.id).limit(bindparam("limit", type_=Integer))


def page_params(size: int, cursor: Cursor | None) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": size + 1}
    if cursor is not None:
        params |= {"after_time": cursor.create_time, "after_id": cursor.id}
    return params


def _invalid() -> InvalidArgument:
    return InvalidArgument("page_token is invalid or belongs to a different query; start again without it",
                           [FieldViolation("page_token", "invalid")])


def _scope_hash(scope: str) -> str:
    return hashlib.sha256(scope.encode()).hexdigest()[:16]


def etag(ident: uuid.UUID, version: int) -> str:
    """Opaque version tag: changes on every update of the row."""
    return hashlib.sha256(f"{ident}:{version}".encode()).hexdigest()[:20]


def check_etag(given: str, ident: uuid.UUID, version: int, what: str) -> None:
    """Optimistic concurrency: a non-empty etag must match the row's current one."""
    if given and given != etag(ident, version):
        raise Aborted(f"the {what} was changed since you read it; get it again and retry", reason="ETAG_MISMATCH")
