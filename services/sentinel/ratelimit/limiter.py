"""The tenant and principal tiers: counting in Redis and deciding, free of gRPC.

Every service counts the calls of its verified principals here (the rate-limit interceptor,
``sentinel.platform.interceptors.ratelimit``); the address tier is Envoy's, at the edge.

Fixed windows (as Envoy's reference ``envoyproxy/ratelimit`` does): one Redis counter per
(tier, subject, class, window), incremented for every admitted request of that window and
expiring with it. Both counters of a call go to Redis in one round trip (a Lua script), so the
decision is atomic per counter and holds across any number of service and Envoy instances:
they all count in the same Redis.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from prometheus_client import Counter, Histogram
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from sqlalchemy import text

from sentinel.platform import db
from sentinel.ratelimit.rules import FALLBACK_PLAN, Limit, Rules

log = logging.getLogger("sentinel.ratelimit")

CHECKS = Counter("sentinel_ratelimit_checks", "Calls counted against a tenant or principal limit, by tier, class "
                 "and outcome.",
                 ["tier", "class", "outcome"])
REJECTIONS = Counter("sentinel_ratelimit_rejections",
                     "Calls refused (HTTP 429, RESOURCE_EXHAUSTED), by the tier and class that refused.",
                     ["tier", "class"])
ERRORS = Counter("sentinel_ratelimit_errors", "Decisions that failed open (Redis unreachable or slow).", ["reason"])
DECISION_SECONDS = Histogram("sentinel_ratelimit_decision_seconds", "Time to decide one request.",
                             buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1))

# All or nothing: a request is counted only where every counter it touches has room, so a
# refused request consumes no budget (one principal over its own limit does not eat its
# tenant's). Returns, per counter, the count with this request: above the limit = refused.
# KEYS: counters; ARGV: hits, then the limits, then the window lengths (expiry).
_COUNT = """
local hits = tonumber(ARGV[1])
local n = #KEYS
local counts = {}
local room = true
for i, key in ipairs(KEYS) do
  counts[i] = tonumber(redis.call('GET', key) or '0') + hits
  if counts[i] > tonumber(ARGV[1 + i]) then room = false end
end
if room then
  for i, key in ipairs(KEYS) do
    counts[i] = redis.call('INCRBY', key, hits)
    if counts[i] == hits then redis.call('EXPIRE', key, ARGV[1 + n + i]) end
  end
end
return counts
"""

#: After a Redis failure, decide without Redis (fail open at once) for this long, so a dead
#: Redis costs each request nothing instead of a connection attempt.
REDIS_BACKOFF_SECONDS = 1.0


def redis_client(url: str) -> Redis:
    """Short timeouts and no retries: a slow Redis must not hold calls; the limiter fails open."""
    return Redis.from_url(url, socket_timeout=0.25, socket_connect_timeout=0.25, retry=Retry(NoBackoff(), 0),
                          health_check_interval=30)


PlanOf = Callable[[uuid.UUID], Awaitable[str | None]]

_PLAN = text("SELECT plan FROM tenants WHERE id = :id")


async def plan_of(tenant_id: uuid.UUID) -> str | None:
    # Bound to the tenant itself (its own row is all RLS shows): no platform scope needed.
    async with db.unit_of_work(tenant_id=tenant_id, platform=False) as session:
        plan = (await session.execute(_PLAN, {"id": tenant_id})).scalar_one_or_none()
    return None if plan is None else str(plan)


@dataclass(frozen=True)
class Counted:
    """One counter a call touches, and what it showed after this call."""

    tier: str
    klass: str
    limit: Limit
    count: int
    reset_seconds: float

    @property
    def over(self) -> bool:
        return self.count > self.limit.requests

    @property
    def remaining(self) -> int:
        return max(self.limit.requests - self.count, 0)


@dataclass
class Decision:
    counted: list[Counted] = field(default_factory=list)
    failed_open: bool = False

    @property
    def over_limit(self) -> bool:
        return any(c.over for c in self.counted)

    def headers(self) -> dict[str, str]:
        """``RateLimit-*`` (draft-ietf-httpapi-ratelimit-headers, the widely deployed form) for the
        most constraining counter, plus ``Retry-After`` when refused."""
        if not self.counted:
            return {}
        tightest = min(self.counted, key=lambda c: (not c.over, c.remaining, -c.reset_seconds))
        out = {
            "ratelimit-limit": str(tightest.limit.requests),
            "ratelimit-remaining": str(tightest.remaining),
            "ratelimit-reset": str(max(1, math.ceil(tightest.reset_seconds))),
            "ratelimit-policy": f"{tightest.limit.requests};w={tightest.limit.seconds}",
        }
        if self.over_limit:
            wait = max(c.reset_seconds for c in self.counted if c.over)
            out["retry-after"] = str(max(1, math.ceil(wait)))
        return out


class TtlCache:
    """A small LRU with expiry (plans change rarely; the database is not asked per call)."""

    def __init__(self, seconds: float, size: int = 10_000) -> None:
        self.seconds, self.size = seconds, size
        self._data: OrderedDict[object, tuple[float, object]] = OrderedDict()

    def get(self, key: object) -> tuple[bool, object]:
        hit = self._data.get(key)
        if hit is None or hit[0] < time.monotonic():
            return False, None
        self._data.move_to_end(key)
        return True, hit[1]

    def put(self, key: object, value: object) -> None:
        self._data[key] = (time.monotonic() + self.seconds, value)
        self._data.move_to_end(key)
        if len(self._data) > self.size:
            self._data.popitem(last=False)


class Limiter:
    """Counts a call against its tenant's and its principal's limits in Redis, and decides."""

    def __init__(self, rules: Rules, redis: Redis, *, plan_of: PlanOf = plan_of,
                 cache_seconds: float = 30.0, key_prefix: str = "sentinel:rl") -> None:
        self.rules, self.redis = rules, redis
        self._plan_of = plan_of
        self._plans = TtlCache(cache_seconds)
        self.prefix = key_prefix
        self._count = redis.register_script(_COUNT)
        self._redis_down_until = 0.0

    async def plan(self, tenant_id: uuid.UUID) -> str:
        found, plan = self._plans.get(tenant_id)
        if not found:
            try:
                plan = await self._plan_of(tenant_id)
            except Exception:  # the database is down: limit by the fallback plan, retry soon
                log.warning("plan lookup failed; using the fallback plan", exc_info=True)
                return FALLBACK_PLAN
            self._plans.put(tenant_id, plan)
        return str(plan or FALLBACK_PLAN)

    async def decide(self, tenant_id: uuid.UUID, principal: str, klass: str) -> Decision:
        """Count one call of ``principal`` (a stable id within the tenant) of class ``klass``."""
        started = time.perf_counter()
        now = time.time()
        decision = Decision()
        if time.monotonic() < self._redis_down_until:
            ERRORS.labels("redis_backoff").inc()
            decision.failed_open = True
            return decision
        try:
            plan = await self.plan(tenant_id)
            checks: list[tuple[str, Limit, str]] = []
            for tier, subject in (("tenant", str(tenant_id)), ("principal", f"{tenant_id}:{principal}")):
                limit = self.rules.limit(tier, klass, plan)
                if limit is not None:
                    window = int(now // limit.seconds)
                    checks.append((tier, limit, f"{self.prefix}:{tier}:{subject}:{klass}:{limit.seconds}:{window}"))
            if not checks:
                return decision
            counts = await self._count(keys=[key for _, _, key in checks],
                                       args=[1, *(limit.requests for _, limit, _ in checks),
                                             *(limit.seconds + 1 for _, limit, _ in checks)])
        except RedisError as err:
            # Fail open: an unreachable Redis must not take the API down. The edge's address
            # tier and the login throttle still hold; SentinelRateLimiterFailingOpen opens a ticket.
            ERRORS.labels("redis").inc()
            self._redis_down_until = time.monotonic() + REDIS_BACKOFF_SECONDS
            log.warning("rate-limit decisions fail open for %.0f s", REDIS_BACKOFF_SECONDS,
                        extra={"error": str(err)})
            decision.failed_open = True
            return decision
        finally:
            DECISION_SECONDS.observe(time.perf_counter() - started)
        for (tier, limit, _), count in zip(checks, counts, strict=True):
            reset = (now // limit.seconds + 1) * limit.seconds - now
            counted = Counted(tier, klass, limit, int(count), reset)
            CHECKS.labels(tier, klass, "over_limit" if counted.over else "ok").inc()
            if counted.over:
                REJECTIONS.labels(tier, klass).inc()
            decision.counted.append(counted)
        return decision
