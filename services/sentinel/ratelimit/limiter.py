"""Counting in Redis and deciding: the core of the rate-limit service, free of gRPC.

Fixed windows (as Envoy's reference ``envoyproxy/ratelimit`` does): one Redis counter per
(tier, subject, class, window), incremented for every admitted request of that window and
expiring with it. All counters of a request go to Redis in one round trip (a Lua script), so the
decision is atomic per counter and holds across any number of Envoy and service instances:
they all count in the same Redis.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import Counter, Histogram
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from sentinel.platform.auth import PLATFORM_TENANT_ID
from sentinel.ratelimit.rules import FALLBACK_PLAN, Limit, Rules, class_of

log = logging.getLogger("sentinel.ratelimit")

CHECKS = Counter("sentinel_ratelimit_checks", "Requests counted against a limit, by tier, class and outcome.",
                 ["tier", "class", "outcome"])
REJECTIONS = Counter("sentinel_ratelimit_rejections",
                     "Requests refused (HTTP 429), by the tier and class that refused.", ["tier", "class"])
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
    """Short timeouts and no retries: Envoy gives a decision 100 ms, then lets the request pass."""
    return Redis.from_url(url, socket_timeout=0.25, socket_connect_timeout=0.25, retry=Retry(NoBackoff(), 0),
                          health_check_interval=30)


#: A credential the edge forwarded, resolved to (tenant id, principal id); None: not valid.
Resolve = Callable[[str], Awaitable[tuple[uuid.UUID, str] | None]]
PlanOf = Callable[[uuid.UUID], Awaitable[str | None]]


@dataclass(frozen=True)
class Counted:
    """One counter a request touches, and what it showed after this request."""

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
    #: One entry per descriptor Envoy sent: the most constraining counter of it (None: none applied).
    per_descriptor: list[Counted | None] = field(default_factory=list)
    failed_open: bool = False

    @property
    def counted(self) -> list[Counted]:
        return [c for c in self.per_descriptor if c is not None]

    @property
    def over_limit(self) -> bool:
        return any(c.over for c in self.counted)

    def headers(self) -> dict[str, str]:
        """``RateLimit-*`` (draft-ietf-httpapi-ratelimit-headers, the widely deployed form) for the
        most constraining counter, plus ``Retry-After`` when refused."""
        counted = self.counted
        if not counted:
            return {}
        tightest = min(counted, key=lambda c: (not c.over, c.remaining, -c.reset_seconds))
        out = {
            "ratelimit-limit": str(tightest.limit.requests),
            "ratelimit-remaining": str(tightest.remaining),
            "ratelimit-reset": str(max(1, math.ceil(tightest.reset_seconds))),
            "ratelimit-policy": f"{tightest.limit.requests};w={tightest.limit.seconds}",
        }
        if self.over_limit:
            wait = max(c.reset_seconds for c in counted if c.over)
            out["retry-after"] = str(max(1, math.ceil(wait)))
        return out


class TtlCache:
    """A small LRU with expiry (plans and API keys change rarely; the database is not asked per call)."""

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
class _Check:
    tier: str
    klass: str
    limit: Limit
    key: str
    descriptor: int


def _bare_key(value: str) -> str:
    """``Bearer snt_…`` (any case, as RFC 7235 allows) or a bare ``x-api-key`` value → the key."""
    scheme, _, rest = value.strip().partition(" ")
    return rest.strip() if rest and scheme.lower() == "bearer" else value.strip()


class Limiter:
    """Turns Envoy's descriptors into counters, counts them in Redis, decides."""

    def __init__(self, rules: Rules, redis: Redis, *, plan_of: PlanOf, resolve: Resolve,
                 cache_seconds: float = 30.0, key_prefix: str = "sentinel:rl") -> None:
        self.rules, self.redis = rules, redis
        self._plan_of, self._resolve = plan_of, resolve
        self._plans = TtlCache(cache_seconds)
        self._credentials = TtlCache(cache_seconds)
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

    async def credential(self, value: str) -> tuple[uuid.UUID, str] | None:
        found, who = self._credentials.get(value)
        if not found:
            try:
                who = await self._resolve(value)
            except Exception:
                log.warning("credential lookup failed; counted per address only", exc_info=True)
                return None
            self._credentials.put(value, who)
        return who  # type: ignore[return-value]

    async def _checks(self, descriptors: Sequence[Mapping[str, str]], now: float) -> list[_Check]:
        checks: list[_Check] = []

        def add(index: int, tier: str, klass: str, subject: str, plan: str = FALLBACK_PLAN) -> None:
            limit = self.rules.limit(tier, klass, plan)
            if limit is None:
                return
            window = int(now // limit.seconds)
            key = f"{self.prefix}:{tier}:{subject}:{klass}:{limit.seconds}:{window}"
            checks.append(_Check(tier, klass, limit, key, index))

        for index, entries in enumerate(descriptors):
            klass = class_of(entries.get("path", ""))
            tier = entries.get("tier", "")
            tenant: uuid.UUID | None = None
            principal = ""
            if tier == "ip":
                address = entries.get("remote_address", "")
                if address and not self.rules.exempt(address):
                    add(index, "ip", klass, address)
                continue
            if tier == "jwt":
                try:
                    tenant = uuid.UUID(entries.get("tenant", ""))
                except ValueError:
                    continue  # Envoy verified the token; a token without a tenant is not ours to count
                principal = "u:" + entries.get("subject", "")
            elif tier == "api_key":
                who = await self.credential(_bare_key(entries.get("credential", "")))
                if who is None:  # not a valid key: the service refuses it; the address tier counted it
                    continue
                tenant, principal = who[0], "k:" + who[1]
            else:
                continue
            if tenant == PLATFORM_TENANT_ID:
                # Operators must be able to act during an incident, whatever the tenants' limits
                # are set to; they are few, every call is audited, and the address tier applies.
                continue
            plan = await self.plan(tenant)
            add(index, "tenant", klass, str(tenant), plan)
            add(index, "principal", klass, f"{tenant}:{principal}", plan)
        return checks

    async def decide(self, descriptors: Sequence[Mapping[str, str]], hits: int = 1) -> Decision:
        started = time.perf_counter()
        now = time.time()
        decision = Decision(per_descriptor=[None] * len(descriptors))
        if time.monotonic() < self._redis_down_until:
            ERRORS.labels("redis_backoff").inc()
            decision.failed_open = True
            return decision
        try:
            checks = await self._checks(descriptors, now)
            if not checks:
                return decision
            limits = [c.limit.requests for c in checks]
            ttls = [c.limit.seconds + 1 for c in checks]
            counts = await self._count(keys=[c.key for c in checks], args=[max(hits, 1), *limits, *ttls])
        except RedisError as err:
            # Fail open: an unreachable Redis must not take the API down. The services' own
            # login throttle still guards credentials; SentinelRateLimiterFailingOpen (alerts/) opens a ticket.
            ERRORS.labels("redis").inc()
            self._redis_down_until = time.monotonic() + REDIS_BACKOFF_SECONDS
            log.warning("rate-limit decisions fail open for %.0f s", REDIS_BACKOFF_SECONDS,
                        extra={"error": str(err)})
            decision.failed_open = True
            return decision
        finally:
            DECISION_SECONDS.observe(time.perf_counter() - started)
        for check, count in zip(checks, counts, strict=True):
            reset = (now // check.limit.seconds + 1) * check.limit.seconds - now
            counted = Counted(check.tier, check.klass, check.limit, int(count), reset)
            CHECKS.labels(check.tier, check.klass, "over_limit" if counted.over else "ok").inc()
            current = decision.per_descriptor[check.descriptor]
            if current is None or (counted.over, -counted.remaining) > (current.over, -current.remaining):
                decision.per_descriptor[check.descriptor] = counted
        for counted in decision.counted:
            if counted.over:
                REJECTIONS.labels(counted.tier, counted.klass).inc()
        return decision
