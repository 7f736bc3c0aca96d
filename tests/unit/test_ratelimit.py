"""Rate-limit rules, classes, headers and the fail-open path (the tiers end to end: tests/integration)."""

from __future__ import annotations

import uuid

import pytest
from sentinel.gateway import envoy as gw
from sentinel.platform import contracts
from sentinel.ratelimit import rules
from sentinel.ratelimit.limiter import ERRORS, Counted, Decision, Limiter, redis_client
from sentinel.ratelimit.rules import Limit, RulesError

from tests.support import free_port


def test_defaults_are_strict_for_credentials_and_lenient_for_reads() -> None:
    r = rules.load()
    tables = [r.ip, *r.tenant.values(), *r.principal.values()]
    for table in tables:
        auth, write, read = (table[k] for k in ("auth", "write", "read"))
        assert auth is not None and write is not None and read is not None
        assert auth.requests < write.requests < read.requests and auth.seconds == write.seconds == read.seconds
    # Bigger plans get more, and a principal never gets more than its tenant.
    for klass in rules.CLASSES:
        per_plan = [r.limit("tenant", klass, p) for p in rules.PLANS]
        assert [x.requests for x in per_plan if x] == sorted(x.requests for x in per_plan if x)
        for plan in rules.PLANS:
            tenant, principal = r.limit("tenant", klass, plan), r.limit("principal", klass, plan)
            assert tenant and principal and principal.requests <= tenant.requests


def test_overrides_merge_key_by_key() -> None:
    r = rules.load({"tenant": {"free": {"write": "5/second"}}, "ip": {"read": "unlimited"},
                    "ip_exempt": ["10.0.0.0/8", "::1"]})
    assert r.limit("tenant", "write", "free") == Limit(5, 1)
    assert r.limit("tenant", "read", "free") == rules.load().limit("tenant", "read", "free")
    assert r.limit("ip", "read") is None
    assert r.exempt("10.1.2.3") and r.exempt("::1") and not r.exempt("11.0.0.1") and not r.exempt("nonsense")
    # An unknown plan (cannot happen with the enum, but a stale row could) gets the fallback's limits.
    assert r.limit("principal", "auth", "gold") == r.limit("principal", "auth", rules.FALLBACK_PLAN)


@pytest.mark.parametrize(("overrides", "names"), [
    ({"tenants": {}}, "tenants"),
    ({"tenant": {"gold": {}}}, "tenant.gold"),
    ({"ip": {"read": "5/fortnight"}}, "ip.read"),
    ({"ip": {"read": "many/minute"}}, "ip.read"),
    ({"ip": {"read": "0/minute"}}, "ip.read"),
    ({"ip": {"read": 5}}, "ip.read"),
    ({"principal": "lots"}, "principal"),
    ({"ip_exempt": ["10.0.0.0/33"]}, "ip_exempt"),
])
def test_bad_configuration_names_the_key(overrides: dict[str, object], names: str) -> None:
    with pytest.raises(RulesError) as err:
        rules.load(overrides)
    assert names in str(err.value)


def test_every_rpc_has_a_class_from_its_contract() -> None:
    classes = {rpc.full_method: rules.class_of(rpc.full_method) for rpc in contracts.rpcs()}
    assert set(classes.values()) == set(rules.CLASSES)
    for method in ("AuthService/Login", "AuthService/RefreshToken", "AuthService/ChangePassword",
                   "InvitationService/AcceptInvitation"):
        assert classes[f"/sentinel.user.v1.{method}"] == "auth", method
    assert classes["/sentinel.user.v1.UserService/CreateUser"] == "write"
    assert classes["/sentinel.tenant.v1.TenantService/DeleteTenant"] == "write"
    assert classes["/sentinel.user.v1.UserService/GetUser"] == "read"
    assert classes["/sentinel.audit.v1.AuditService/ListAuditEvents"] == "read"
    assert rules.class_of("/sentinel.user.v1.UserService/NoSuchMethod") == "read"
    # Every mutating RPC is auth or write; no read mutates.
    for rpc in contracts.rpcs():
        assert (classes[rpc.full_method] != "read") == rpc.mutating, rpc.full_method


def _counted(tier: str, requests: int, count: int, reset: float) -> Counted:
    return Counted(tier, "read", Limit(requests, 60), count, reset)


def test_headers_describe_the_tightest_counter() -> None:
    ok = Decision([_counted("ip", 100, 10, 30.2), _counted("principal", 10, 9, 12.5)])
    assert not ok.over_limit
    assert ok.headers() == {"ratelimit-limit": "10", "ratelimit-remaining": "1", "ratelimit-reset": "13",
                            "ratelimit-policy": "10;w=60"}
    refused = Decision([_counted("ip", 100, 10, 30.2), _counted("tenant", 50, 51, 40.1), None])
    h = refused.headers()
    assert refused.over_limit and h["ratelimit-limit"] == "50" and h["ratelimit-remaining"] == "0"
    assert h["retry-after"] == "41" == h["ratelimit-reset"]
    assert Decision([None, None]).headers() == {}


async def test_an_unreachable_redis_fails_open() -> None:
    redis = redis_client(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there

    async def plan_of(tenant: uuid.UUID) -> str:
        return "free"

    async def resolve(key: str) -> None:
        return None

    limiter = Limiter(rules.load({"ip": {"read": "1/minute"}}), redis, plan_of=plan_of, resolve=resolve)
    before = {r: ERRORS.labels(r)._value.get() for r in ("redis", "redis_backoff")}
    try:
        for _ in range(3):
            decision = await limiter.decide([{"tier": "ip", "remote_address": "192.0.2.7",
                                              "path": "/sentinel.user.v1.UserService/GetUser"}])
            assert decision.failed_open and not decision.over_limit and decision.headers() == {}
    finally:
        await redis.aclose()
    # One attempt at Redis; the next decisions skip it for a second instead of trying again.
    assert ERRORS.labels("redis")._value.get() == before["redis"] + 1
    assert ERRORS.labels("redis_backoff")._value.get() == before["redis_backoff"] + 2


def test_gateway_asks_the_limiter_after_jwt_authn() -> None:
    cfg = gw.dev_config()
    hcm = gw.render(cfg)["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    names = [f["name"] for f in hcm["http_filters"]]
    assert names.index("envoy.filters.http.jwt_authn") < names.index("envoy.filters.http.ratelimit") \
        < names.index("envoy.filters.http.router")
    ratelimit = hcm["http_filters"][names.index("envoy.filters.http.ratelimit")]["typed_config"]
    assert ratelimit["failure_mode_deny"] is False and ratelimit["disable_x_envoy_ratelimited_header"] is True
    tiers = [d["actions"][0] for d in ratelimit["rate_limits"]]
    assert {t.get("generic_key", t.get("header_value_match", {})).get("descriptor_value") for t in tiers} == {
        "ip", "jwt", "api_key"}
    # Every descriptor carries the (gRPC) path: the limiter derives the class from it.
    assert all(d["actions"][-1] == {"request_headers": {"header_name": ":path", "descriptor_key": "path"}}
               for d in ratelimit["rate_limits"])
    clusters = {c["name"] for c in gw.render(cfg)["static_resources"]["clusters"]}
    assert gw.RATELIMIT_CLUSTER in clusters
    plain = gw.render(gw.GatewayConfig(upstreams=gw.DEV_UPSTREAMS, descriptor_set_path=cfg.descriptor_set_path))
    assert gw.RATELIMIT_CLUSTER not in {c["name"] for c in plain["static_resources"]["clusters"]}


def test_wire_messages_match_envoys_rate_limit_api() -> None:
    """Our messages and Envoy's own classes (xds-protos, dev only) read each other's bytes."""
    from envoy.service.ratelimit.v3 import rls_pb2
    from sentinel.ratelimit import wire

    request = rls_pb2.RateLimitRequest(domain="sentinel", hits_addend=2)
    d = request.descriptors.add()
    d.entries.add(key="tier", value="jwt")
    d.entries.add(key="tenant", value=str(uuid.uuid4()))
    ours = wire.RateLimitRequest.FromString(request.SerializeToString())
    assert (ours.domain, ours.hits_addend) == ("sentinel", 2)
    assert [(e.key, e.value) for e in ours.descriptors[0].entries] == [(e.key, e.value) for e in d.entries]

    reply = wire.RateLimitResponse(overall_code=wire.RateLimitResponse.OVER_LIMIT)
    status = reply.statuses.add(code=wire.RateLimitResponse.OVER_LIMIT, limit_remaining=0)
    status.current_limit.requests_per_unit, status.current_limit.unit = 5, wire.RateLimitResponse.RateLimit.DAY
    status.duration_until_reset.FromSeconds(30)
    reply.response_headers_to_add.add(key="retry-after", value="30")
    envoys = rls_pb2.RateLimitResponse.FromString(reply.SerializeToString())
    assert envoys.overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT
    assert envoys.statuses[0].current_limit.unit == rls_pb2.RateLimitResponse.RateLimit.DAY
    assert envoys.statuses[0].current_limit.requests_per_unit == 5
    assert envoys.statuses[0].duration_until_reset.seconds == 30
    assert [(h.key, h.value) for h in envoys.response_headers_to_add] == [("retry-after", "30")]
