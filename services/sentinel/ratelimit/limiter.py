"""The tenant and principal tiers: counting in Redis and deciding, free of gRPC.

Every service counts the calls of its verified principals here (the rate-limit interceptor,
``sentinel.platform.interceptors.ratelimit``); the address tier is Envoy's, at the edge.

Fixed windows (as Envoy's reference ``envoyproxy/ratelimit`` does): one Redis counter per
(tier, subject, class, window), expiring with its window. Every service instance counts in the
same Redis, so a limit holds across any number of service and Envoy instances.

**Leases.** Asking Redis for every call would cost each call a round trip (about a fifth of a
GetUser's CPU, measured). Instead an instance takes a *lease*: one script call adds up to
1/:data:`LEASE_DIVISOR` of what is left in the window to the counter at once, and the instance
admits that many calls locally. The counter in Redis therefore never exceeds the limit: no
instance can admit more than it leased. The cost of a lease is that tokens one instance holds
are unavailable to the others until used, so a caller may be refused up to about one lease per
instance early; leases shrink with what is left, down to one call near the limit, where counting
is exact. A counter found used up is remembered until its window ends: refusing a flood costs
no Redis call.
"""

from __future__ import annotations

import asyncio
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
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from sqlalchemy import text

from sentinel.platform import db
from sentinel.ratelimit.rules import CLASSES, FALLBACK_PLAN, Limit, Rules

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

#: A lease takes at most this share of what is left in the window (at least one call).
LEASE_DIVISOR = 16
#: Leases kept per process before old windows' are dropped.
MAX_LEASES = 100_000

# Takes a lease on each counter: the calls waiting for it, or floor(room / divisor) if more, never
# more than the room (0 when there is none). KEYS: counters; ARGV: divisor, then per counter its
# limit, its expiry and the calls waiting. Returns per counter {granted, count after the lease}.
_LEASE = """
local divisor = tonumber(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[3 * i - 1])
  local count = tonumber(redis.call('GET', key) or '0')
  local room = limit - count
  local granted = 0
  if room > 0 then
    granted = math.min(room, math.max(tonumber(ARGV[3 * i + 1]), math.floor(room / divisor)))
  end
  if granted > 0 then
    count = redis.call('INCRBY', key, granted)
    if count == granted then redis.call('EXPIRE', key, ARGV[3 * i]) end
  end
  out[i] = {granted, count}
end
return out
"""

#: After a Redis failure, decide without Redis (fail open at once) for this long, so a dead
#: Redis costs each request nothing instead of a connection attempt.
REDIS_BACKOFF_SECONDS = 1.0


def redis_client(url: str, timeout: float = 0.25) -> Redis:
    """Short timeouts, never retried: a slow Redis must not hold calls; the limiter fails open.
    A broken connection is retried once, at once, on a new one: after a Redis restart every pooled
    connection is dead, and without the retry each would fail a call open (and back off 1 s)."""
    return Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                          retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
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

    @property
    def half_used(self) -> bool:
        """Some counter has at most half of its limit left."""
        return any(2 * c.remaining <= c.limit.requests for c in self.counted)

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


@dataclass
class _Lease:
    """Calls this instance may still admit against one counter in one window."""

    tokens: int = 0
    #: The counter in Redis after the last lease (this instance's and everyone else's).
    redis_count: int = 0
    #: Redis had no room left: refuse until the window ends.
    exhausted: bool = False
    #: Calls of this instance waiting for a lease on this counter (the next lease is that big at least).
    waiting: int = 0
    #: Set while one call renews the lease: the others wait for it instead of asking too.
    renewing: asyncio.Future[None] | None = None


@dataclass
class _Check:
    tier: str
    limit: Limit
    key: str
    lease: _Lease


class Limiter:
    """Counts a call against its tenant's and its principal's limits, leasing from Redis, and decides."""

    def __init__(self, rules: Rules, redis: Redis, *, plan_of: PlanOf = plan_of,
                 cache_seconds: float = 30.0, key_prefix: str = "sentinel:rl") -> None:
        self.rules, self.redis = rules, redis
        self._plan_of = plan_of
        self._plans = TtlCache(cache_seconds)
        self.prefix = key_prefix
        self._lease = redis.register_script(_LEASE)
        self._leases: dict[tuple[str, int], _Lease] = {}
        self._redis_down_until = 0.0
        # Every series exists from the start (at 0), so rates and alerts see "none" rather than nothing.
        for tier in ("tenant", "principal"):
            for klass in CLASSES:
                REJECTIONS.labels(tier, klass)
                for outcome in ("ok", "over_limit"):
                    CHECKS.labels(tier, klass, outcome)
        for reason in ("redis", "redis_backoff"):
            ERRORS.labels(reason)

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

    def _checks(self, tenant_id: uuid.UUID, principal: str, klass: str, plan: str, now: float) -> list[_Check]:
        checks = []
        for tier, subject in (("tenant", str(tenant_id)), ("principal", f"{tenant_id}:{principal}")):
            limit = self.rules.limit(tier, klass, plan)
            if limit is None:
                continue
            key = f"{self.prefix}:{tier}:{subject}:{klass}:{limit.seconds}:{int(now // limit.seconds)}"
            # Keyed by the limit too: after a plan change the new limit is asked for afresh.
            lease = self._leases.get((key, limit.requests))
            if lease is None:
                if len(self._leases) >= MAX_LEASES:
                    self._leases.clear()  # old windows' leases: at worst a few calls ask Redis again
                lease = self._leases[(key, limit.requests)] = _Lease()
            checks.append(_Check(tier, limit, key, lease))
        return checks

    async def _renew(self, checks: list[_Check]) -> None:
        """One script call: a lease on every counter this call needs and this instance has none
        of, unless another call is already asking for it (then wait for that one)."""
        empty = [c for c in checks if c.lease.tokens == 0 and not c.lease.exhausted]
        pending = [c.lease.renewing for c in empty if c.lease.renewing is not None]
        ask = [c for c in empty if c.lease.renewing is None]
        if ask:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            args: list[int] = [LEASE_DIVISOR]
            for c in ask:
                c.lease.renewing = done
                args += [c.limit.requests, c.limit.seconds + 1, c.lease.waiting]
            try:
                replies = await self._lease(keys=[c.key for c in ask], args=args)
                for c, (granted, count) in zip(ask, replies, strict=True):
                    c.lease.tokens += int(granted)
                    c.lease.redis_count = int(count)
                    c.lease.exhausted = int(granted) == 0
            finally:
                for c in ask:
                    c.lease.renewing = None
                done.set_result(None)
        for future in pending:  # shielded: a cancelled waiter must not cancel the others' wait
            await asyncio.shield(future)

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
            checks = self._checks(tenant_id, principal, klass, await self.plan(tenant_id), now)
            # Concurrent calls may use up a lease while this one waits for Redis: renew until each
            # counter has a token for it or is known to be used up (every round makes progress).
            for c in checks:
                c.lease.waiting += 1
            try:
                while not all(c.lease.tokens > 0 or c.lease.exhausted for c in checks):
                    await self._renew(checks)
            finally:
                for c in checks:
                    c.lease.waiting -= 1
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
        # All or nothing: a call refused by one counter takes nothing from the others, so one
        # principal over its own limit does not eat its tenant's budget.
        admitted = all(c.lease.tokens > 0 for c in checks)
        for c in checks:
            if admitted:
                c.lease.tokens -= 1
            over = not admitted and c.lease.tokens == 0
            # What is left in the window as this instance knows it: Redis's room plus its own lease.
            remaining = max(c.limit.requests - c.lease.redis_count, 0) + c.lease.tokens
            count = c.limit.requests + 1 if over else c.limit.requests - remaining
            reset = (now // c.limit.seconds + 1) * c.limit.seconds - now
            counted = Counted(c.tier, klass, c.limit, count, reset)
            CHECKS.labels(c.tier, klass, "over_limit" if counted.over else "ok").inc()
            if counted.over:
                REJECTIONS.labels(c.tier, klass).inc()
            decision.counted.append(counted)
        return decision
