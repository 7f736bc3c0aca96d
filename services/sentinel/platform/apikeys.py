"""API keys: authenticating them in every service (their format is ``sentinel.platform.opaque``).

Authenticated keys are cached in memory for ``CACHE_SECONDS`` (bounded LRU), so a busy key
costs one query a minute per process; revocation does not wait for the cache: revoked key
ids travel on the same feed as revoked sessions and are refused within a second.
"""

from __future__ import annotations

import hmac
import time
import uuid
from collections import OrderedDict

from sqlalchemy import text

from sentinel.platform import auditlog, db, opaque
from sentinel.platform.auth import PERMISSIONS, SESSION_SELF, Principal
from sentinel.platform.errors import Unauthenticated

PREFIX = "snt_"
KEY_LENGTH = len(PREFIX) + opaque.ENCODED_LENGTH
#: Roles a service account may have, and so the most its keys can do.
ACCOUNT_ROLES = ("viewer", "member", "admin")
#: How long an authenticated key is trusted without asking Postgres again.
CACHE_SECONDS = 60.0
CACHE_SIZE = 4096


def generate(tenant_id: uuid.UUID, key_id: uuid.UUID) -> tuple[str, bytes]:
    """A new key's text (shown once) and the hash to store."""
    return opaque.generate(PREFIX, tenant_id, key_id)


def parse(key: str) -> opaque.Parsed:
    return opaque.parse(key, prefix=PREFIX, what="API key", reason="API_KEY_MALFORMED")


def display_prefix(key: str) -> str:
    """What lists show of a key: enough to recognise it, far too little to use it."""
    return key[: len(PREFIX) + 8]


def grantable_scopes(role: str) -> frozenset[str]:
    """Permissions a key of an account with this role may carry (no human-session ones)."""
    return PERMISSIONS.get(role, frozenset()) - {SESSION_SELF}


_LOOKUP = text("""
    SELECT k.service_account_id, k.secret_hash, k.scopes, k.expire_time, k.revoke_time, k.last_used_time, s.role
    FROM api_keys k JOIN service_accounts s ON s.tenant_id = k.tenant_id AND s.id = k.service_account_id
    WHERE k.id = :id""")
_TOUCH = text("UPDATE api_keys SET last_used_time = now() WHERE id = :id "
              "AND (last_used_time IS NULL OR last_used_time < now() - interval '1 minute')")


class ApiKeyAuthenticator:
    """Turns a key into a Principal: cached, else one tenant-bound lookup (and a touch)."""

    def __init__(self) -> None:
        self._cache: OrderedDict[str, tuple[Principal, float]] = OrderedDict()

    def clear(self) -> None:
        self._cache.clear()

    async def authenticate(self, key: str) -> Principal:
        parsed = parse(key)
        cached = self._cache.get(key)
        now = time.time()
        if cached is not None and cached[1] > now:
            self._cache.move_to_end(key)
            return cached[0]
        if not db.initialised():
            raise Unauthenticated("this service does not accept API keys", reason="API_KEY_INVALID")
        async with db.unit_of_work(tenant_id=parsed.tenant_id, platform=False) as session:
            row = (await session.execute(_LOOKUP, {"id": parsed.record_id})).first()
            valid = row is not None and hmac.compare_digest(bytes(row.secret_hash), parsed.secret_hash)
            if row is not None and valid and row.revoke_time is None and not _expired(row.expire_time, now):
                await session.execute(_TOUCH, {"id": parsed.record_id})
        if row is None:  # no such key: nothing real to record it against
            raise Unauthenticated("the API key is not valid", reason="API_KEY_INVALID")
        failure = ("API_KEY_INVALID" if not valid else "API_KEY_REVOKED" if row.revoke_time is not None
                   else "API_KEY_EXPIRED" if _expired(row.expire_time, now) else "")
        if failure:
            refused(parsed.tenant_id, str(parsed.record_id), failure)
        if not valid:
            raise Unauthenticated("the API key is not valid", reason="API_KEY_INVALID")
        if row.revoke_time is not None:
            raise Unauthenticated("this API key has been revoked", reason="API_KEY_REVOKED")
        if _expired(row.expire_time, now):
            raise Unauthenticated("this API key has expired; create a new one", reason="API_KEY_EXPIRED")
        principal = Principal(subject=str(row.service_account_id), tenant_id=parsed.tenant_id, role=row.role,
                              session_id=str(parsed.record_id), token_id=str(parsed.record_id),
                              kind="service_account", scopes=frozenset(row.scopes))
        until = now + CACHE_SECONDS
        if row.expire_time is not None:
            until = min(until, row.expire_time.timestamp())
        self._cache[key] = (principal, until)
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return principal


def refused(tenant_id: uuid.UUID, key_id: str, reason: str) -> None:
    """A real key of the tenant was presented and refused: its tenant's trail records the attempt."""
    auditlog.note(tenant_id=tenant_id, action="auth.api_key", actor=("ANONYMOUS", ""), target=("api_key", key_id),
                  diff={"reason": reason})


def _expired(expire_time: object, now: float) -> bool:
    return expire_time is not None and expire_time.timestamp() <= now  # type: ignore[attr-defined]


#: The process-wide authenticator the authentication interceptor uses.
authenticator = ApiKeyAuthenticator()
