"""The tenant and principal limiter on the stack's real Redis: leases are exact across instances.

Two ``Limiter`` objects on one Redis stand for two service instances. The plan comes from a
function (the plan table is exercised end to end in test_ratelimit.py).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from redis.asyncio import Redis
from sentinel.devstack.stack import Stack
from sentinel.ratelimit import rules
from sentinel.ratelimit.limiter import Limiter, redis_client

pytestmark = pytest.mark.integration


def limits(read: str) -> rules.Rules:
    far = dict.fromkeys(rules.CLASSES, "1000000/day")
    return rules.load({"tenant": dict.fromkeys(rules.PLANS, far),
                       "principal": {p: {**far, "read": read} for p in rules.PLANS}})


class Counting:
    """A limiter whose Redis script calls are counted (the script object is Redis's own)."""

    def __init__(self, limiter: Limiter) -> None:
        self.limiter, self.calls = limiter, 0
        script = limiter._lease

        async def counted(*args: object, **kw: object) -> object:
            self.calls += 1
            return await script(*args, **kw)  # type: ignore[arg-type]

        limiter._lease = counted  # type: ignore[assignment]


@pytest_asyncio.fixture
async def redis(stack: Stack) -> AsyncIterator[Redis]:
    client = redis_client(stack.redis_url)
    yield client
    await client.aclose()


def instance(redis: Redis, read: str, plan: dict[str, str] | None = None) -> Counting:
    async def plan_of(tenant: uuid.UUID) -> str:
        return (plan or {}).get("plan", "free")

    # A prefix of its own: no other test's counters.
    return Counting(Limiter(limits(read), redis, plan_of=plan_of, cache_seconds=0,
                            key_prefix=f"test:rl:{uuid.uuid4().hex[:8]}"))


async def test_two_instances_never_admit_more_than_the_limit(redis: Redis) -> None:
    one = instance(redis, "100/day")
    two = Counting(Limiter(one.limiter.rules, redis, plan_of=one.limiter._plan_of, key_prefix=one.limiter.prefix))
    tenant = uuid.uuid4()

    async def call(i: int) -> bool:
        limiter = (one, two)[i % 2].limiter
        return not (await limiter.decide(tenant, "u:alice", "read")).over_limit

    admitted = await asyncio.gather(*(call(i) for i in range(300)))  # all at once
    assert sum(admitted) == 100
    # Sequential calls after that: still refused by both, and refusing costs no Redis call.
    calls = one.calls + two.calls
    assert not any([await call(i) for i in range(20)])
    assert one.calls + two.calls == calls


async def test_leases_amortise_redis_and_stay_exact_near_the_limit(redis: Redis) -> None:
    alone = instance(redis, "10000/day")
    tenant = uuid.uuid4()
    decisions = [await alone.limiter.decide(tenant, "u:bob", "read") for _ in range(1000)]
    assert not any(d.over_limit for d in decisions)
    assert alone.calls <= 25, alone.calls  # about 1/16 of what is left per lease
    # The remaining count a client sees goes down by one per call.
    remaining = [int(d.headers()["ratelimit-remaining"]) for d in decisions]
    assert remaining == list(range(9999, 8999, -1))

    small = instance(redis, "5/day")
    seen = [(await small.limiter.decide(tenant, "u:carol", "read")) for _ in range(7)]
    assert [d.over_limit for d in seen] == [False] * 5 + [True] * 2
    assert [d.headers()["ratelimit-remaining"] for d in seen[:5]] == ["4", "3", "2", "1", "0"]
    assert seen[5].headers()["retry-after"] == seen[5].headers()["ratelimit-reset"]


async def test_one_principal_over_its_limit_leaves_the_tenant_budget(redis: Redis) -> None:
    one = instance(redis, "3/day")
    tenant = uuid.uuid4()
    for _ in range(10):
        await one.limiter.decide(tenant, "u:dave", "read")
    # dave's 7 refused calls took nothing from the tenant: its count is dave's 3 admitted ones.
    tenant_keys = [k async for k in redis.scan_iter(f"{one.limiter.prefix}:tenant:{tenant}:*")]
    assert len(tenant_keys) == 1
    leased = int(await redis.get(tenant_keys[0]) or 0)
    lease = next(v for (key, _), v in one.limiter._leases.items() if key == tenant_keys[0].decode())
    assert leased - lease.tokens == 3


async def test_a_plan_change_applies_at_once(redis: Redis) -> None:
    plan = {"plan": "free"}
    rules_by_plan = rules.load({"principal": {"free": {"read": "2/day"}, "standard": {"read": "50/day"}}})
    calls = 0

    async def plan_of(tenant: uuid.UUID) -> str:
        nonlocal calls
        calls += 1
        return plan["plan"]

    limiter = Limiter(rules_by_plan, redis, plan_of=plan_of, cache_seconds=0,
                      key_prefix=f"test:rl:{uuid.uuid4().hex[:8]}")
    tenant = uuid.uuid4()
    assert [(await limiter.decide(tenant, "u:erin", "read")).over_limit for _ in range(3)] == [False, False, True]
    plan["plan"] = "standard"
    d = await limiter.decide(tenant, "u:erin", "read")
    assert not d.over_limit and d.headers()["ratelimit-limit"] == "50"
    assert calls == 4
