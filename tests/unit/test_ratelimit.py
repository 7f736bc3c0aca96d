"""Rate-limit rules, classes, headers and the fail-open path (the tiers end to end: tests/integration)."""

from __future__ import annotations

import dataclasses
import re
import uuid
from typing import Any

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
    ok = Decision([_counted("tenant", 100, 10, 30.2), _counted("principal", 10, 9, 12.5)])
    assert not ok.over_limit
    assert ok.headers() == {"ratelimit-limit": "10", "ratelimit-remaining": "1", "ratelimit-reset": "13",
                            "ratelimit-policy": "10;w=60"}
    refused = Decision([_counted("tenant", 50, 51, 40.1), _counted("principal", 100, 10, 30.2)])
    h = refused.headers()
    assert refused.over_limit and h["ratelimit-limit"] == "50" and h["ratelimit-remaining"] == "0"
    assert h["retry-after"] == "41" == h["ratelimit-reset"]
    assert Decision().headers() == {}
    # Response headers cost an extra send: only once a counter is half used.
    assert ok.half_used and not Decision([_counted("tenant", 100, 49, 1.0)]).half_used
    assert Decision([_counted("tenant", 100, 50, 1.0)]).half_used


async def test_an_unreachable_redis_fails_open() -> None:
    redis = redis_client(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there

    async def plan_of(tenant: uuid.UUID) -> str:
        return "free"

    limiter = Limiter(rules.load({"principal": {"free": {"read": "1/minute"}}}), redis, plan_of=plan_of)
    before = {r: ERRORS.labels(r)._value.get() for r in ("redis", "redis_backoff")}
    try:
        for _ in range(3):
            decision = await limiter.decide(uuid.uuid4(), "u:someone", "read")
            assert decision.failed_open and not decision.over_limit and decision.headers() == {}
    finally:
        await redis.aclose()
    # One attempt at Redis; the next decisions skip it for a second instead of trying again.
    assert ERRORS.labels("redis")._value.get() == before["redis"] + 1
    assert ERRORS.labels("redis_backoff")._value.get() == before["redis_backoff"] + 2


def _hcm_filters(cfg: gw.GatewayConfig, chain: int = 0) -> list[dict[str, Any]]:
    hcm = gw.render(cfg)["static_resources"]["listeners"][0]["filter_chains"][chain]["filters"][0]["typed_config"]
    return hcm["http_filters"]  # type: ignore[no-any-return]


def test_the_edge_counts_addresses_after_transcoding_and_before_jwt_authn() -> None:
    cfg = dataclasses.replace(gw.dev_config(), rate_limits={"ip": {"write": "unlimited"}})
    names = [f["name"] for f in _hcm_filters(cfg)]
    edge = [n for n in names if n.startswith("sentinel.edge_rate_limit.")]
    # One filter per limited class (write is unlimited here: no filter).
    assert edge == ["sentinel.edge_rate_limit.auth", "sentinel.edge_rate_limit.read"]
    assert names.index("envoy.filters.http.grpc_json_transcoder") < names.index(edge[0])
    assert names.index(edge[-1]) < names.index("envoy.filters.http.jwt_authn")
    auth = next(f["typed_config"] for f in _hcm_filters(cfg) if f["name"] == edge[0])
    limit = rules.load().ip["auth"]
    assert limit is not None
    assert auth["descriptors"] == [{"entries": [{"key": "class", "value": "auth"}, {"key": "remote_address"}],
                                    "token_bucket": {"max_tokens": limit.requests, "tokens_per_fill": limit.requests,
                                                     "fill_interval": f"{limit.seconds}s"}}]
    assert auth["rate_limits"][0]["actions"][1] == {"remote_address": {}}  # the TCP peer, never a header
    assert auth["max_dynamic_descriptors"] >= 10_000 and auth["rate_limited_as_resource_exhausted"] is True
    # No edge limits at all: no filter, and nothing else changes.
    plain = [f["name"] for f in _hcm_filters(dataclasses.replace(cfg, rate_limits=None))]
    assert plain == [n for n in names if n not in edge]


def _class_regex(cfg: gw.GatewayConfig, klass: str) -> tuple[re.Pattern[str], bool]:
    f = next(f["typed_config"] for f in _hcm_filters(cfg) if f["name"] == f"sentinel.edge_rate_limit.{klass}")
    match = f["rate_limits"][0]["actions"][0]["header_value_match"]
    return re.compile(match["headers"][0]["string_match"]["safe_regex"]["regex"]), match["expect_match"]


def test_each_edge_filter_counts_exactly_its_class() -> None:
    cfg = gw.dev_config()
    matchers = {k: _class_regex(cfg, k) for k in rules.CLASSES}
    paths = [rpc.full_method for rpc in contracts.rpcs()] + ["/sentinel.user.v1.UserService/NoSuchMethod", "/"]
    for path in paths:
        counted_by = [k for k, (regex, expect) in matchers.items() if bool(regex.match(path)) == expect]
        assert counted_by == [rules.class_of(path)], path


def test_exempt_networks_get_a_chain_without_address_limits() -> None:
    cfg = dataclasses.replace(gw.dev_config(), rate_limits={"ip_exempt": ["10.0.0.0/8", "fd00::/8"]})
    chains = gw.render(cfg)["static_resources"]["listeners"][0]["filter_chains"]
    assert "filter_chain_match" not in chains[0]
    assert chains[1]["filter_chain_match"] == {"source_prefix_ranges": [
        {"address_prefix": "10.0.0.0", "prefix_len": 8}, {"address_prefix": "fd00::", "prefix_len": 8}]}
    assert not any(f["name"].startswith("sentinel.edge_rate_limit.") for f in _hcm_filters(cfg, chain=1))
    assert [f["name"] for f in _hcm_filters(cfg, chain=1)] == [
        f["name"] for f in _hcm_filters(cfg) if not f["name"].startswith("sentinel.edge_rate_limit.")]
    assert len(gw.render(gw.dev_config())["static_resources"]["listeners"][0]["filter_chains"]) == 1

