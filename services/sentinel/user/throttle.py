"""Brute-force protection for logins: failure counters and locks in Redis.

Failures are counted per account (tenant slug + e-mail, whether or not the account exists, so
a lock reveals nothing) and per client IP, within a window. At the limit the key is locked; each
further failure doubles the lock, up to a maximum. A locked login is refused before any password
work with RESOURCE_EXHAUSTED (HTTP 429) and ``Retry-After``. Without Redis the throttle is off
and says so in the log: logins keep working, like Envoy's rate limiter failing open.
"""

from __future__ import annotations

import hashlib
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from sentinel.platform.config import Settings
from sentinel.platform.errors import ResourceExhausted

log = logging.getLogger("sentinel.throttle")
PREFIX = "sentinel:login"
MESSAGE = "too many failed logins; wait before trying again"

# KEYS: counter, lock. ARGV: window s, limit, first lock s, max lock s. Returns the lock in ms (0: none).
_FAIL = """
local n = redis.call('INCR', KEYS[1])
local window = tonumber(ARGV[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], window) end
local limit = tonumber(ARGV[2])
if n < limit then return 0 end
local lock = math.min(tonumber(ARGV[3]) * 2 ^ (n - limit), tonumber(ARGV[4]))
local ms = math.floor(lock * 1000)
redis.call('SET', KEYS[2], '1', 'PX', ms)
redis.call('EXPIRE', KEYS[1], window + math.ceil(lock))
return ms
"""


def account_key(tenant_slug: str, email: str) -> str:
    digest = hashlib.sha256(f"{tenant_slug.lower()}\0{email.lower()}".encode()).hexdigest()[:32]
    return f"{PREFIX}:acct:{digest}"


def ip_key(ip: str) -> str:
    return f"{PREFIX}:ip:{ip or 'unknown'}"


class LoginThrottle:
    def __init__(self, redis: Redis | None, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        if redis is None:
            log.warning("no SENTINEL_REDIS_URL: login brute-force protection is off")
        self._fail = redis.register_script(_FAIL) if redis is not None else None

    async def check(self, tenant_slug: str, email: str, ip: str) -> None:
        """Refuse a login attempt while its account or its IP is locked."""
        if self.redis is None:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.pttl(account_key(tenant_slug, email) + ":lock")
                pipe.pttl(ip_key(ip) + ":lock")
                remaining = [int(ms) for ms in await pipe.execute()]
        except RedisError as e:
            log.error("login throttle unavailable, allowing the attempt", extra={"error": str(e)})
            return
        wait_ms = max(remaining)
        if wait_ms > 0:
            raise ResourceExhausted(f"{MESSAGE} (about {max(1, round(wait_ms / 1000))} s)",
                                    retry_after_seconds=wait_ms / 1000, reason="LOGIN_THROTTLED")

    async def failed(self, tenant_slug: str, email: str, ip: str) -> float:
        """Count a failure; the account's new lock in seconds (0 when not locked by it)."""
        if self._fail is None:
            return 0.0
        s = self.settings
        try:
            acct = account_key(tenant_slug, email)
            account = await self._fail(keys=[acct, acct + ":lock"],
                                       args=[s.login_failure_window_seconds, s.login_max_failures,
                                             s.login_lock_seconds, s.login_max_lock_seconds])
            await self._fail(keys=[ip_key(ip), ip_key(ip) + ":lock"],
                             args=[s.login_failure_window_seconds, s.login_max_failures_per_ip,
                                   s.login_lock_seconds, s.login_max_lock_seconds])
        except RedisError as e:
            log.error("login throttle unavailable, failure not counted", extra={"error": str(e)})
            return 0.0
        return int(account) / 1000

    async def succeeded(self, tenant_slug: str, email: str) -> None:
        """A correct password clears the account's counter (not the IP's)."""
        if self.redis is None:
            return
        try:
            await self.redis.delete(account_key(tenant_slug, email))
        except RedisError as e:
            log.error("login throttle unavailable", extra={"error": str(e)})
