"""Rate-limit rules: three tiers by three classes of call, limits by tenant plan.

Tiers (each request is counted in every tier that applies; the strictest decides):

* ``ip``: the client address Envoy saw (never a client-supplied header); every routed call.
  Envoy's own local buckets, per Envoy instance (``sentinel.gateway.envoy.address_limit_filters``).
* ``tenant``: the tenant of a verified credential (JWT ``tid`` or a valid API key), by plan.
* ``principal``: the user (JWT ``sub``) or the API key, by the tenant's plan.

  Both counted by every service in the Redis they share (``sentinel.ratelimit.limiter``), so
  they hold across any number of service and Envoy instances.

Classes, derived from the contracts (so a new RPC is classified without configuration):

* ``auth``: credential checks: public mutating RPCs (login, refresh, accept invitation) and
  the mutating AuthService calls (logout, change password). Strict.
* ``write``: every other mutating RPC. Medium.
* ``read``: everything else. Lenient.

A limit is ``"<requests>/<unit>"`` (unit: second, minute, hour, day) or ``"unlimited"``.
``SENTINEL_RATE_LIMITS`` (JSON) is merged key by key over :data:`DEFAULT_RATE_LIMITS`, e.g.
``{"tenant": {"free": {"write": "300/minute"}}, "ip_exempt": ["10.0.0.0/8"]}``.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sentinel.platform import contracts

TIERS = ("ip", "tenant", "principal")
CLASSES = ("auth", "write", "read")
PLANS = ("free", "standard", "enterprise")
#: A tenant whose plan cannot be read (deleted meanwhile, database down) gets these limits.
FALLBACK_PLAN = "free"
UNITS: Mapping[str, int] = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
UNLIMITED = "unlimited"

DEFAULT_RATE_LIMITS: Mapping[str, Any] = {
    # Per client address: generous enough for an office behind one NAT, strict on credentials.
    "ip": {"auth": "60/minute", "write": "1200/minute", "read": "6000/minute"},
    "tenant": {
        "free": {"auth": "300/minute", "write": "600/minute", "read": "3000/minute"},
        "standard": {"auth": "1200/minute", "write": "3000/minute", "read": "15000/minute"},
        "enterprise": {"auth": "6000/minute", "write": "15000/minute", "read": "60000/minute"},
    },
    "principal": {
        "free": {"auth": "30/minute", "write": "120/minute", "read": "600/minute"},
        "standard": {"auth": "60/minute", "write": "600/minute", "read": "3000/minute"},
        "enterprise": {"auth": "120/minute", "write": "1200/minute", "read": "6000/minute"},
    },
    # Networks not limited per address (their tenants and principals still are), e.g. an
    # internal monitoring probe or the office of the operators. CIDR strings.
    "ip_exempt": [],
}


#: What a refused call is told, whichever tier refused it (Envoy's local reply or a service).
REFUSED_MESSAGE = ("too many requests: the rate limit for this kind of call is used up; retry after the number "
                   "of seconds in the Retry-After header")


class RulesError(ValueError):
    """Bad ``SENTINEL_RATE_LIMITS``: the message names the key."""


@dataclass(frozen=True)
class Limit:
    requests: int
    seconds: int

    @property
    def unit(self) -> str:
        return next(name for name, secs in UNITS.items() if secs == self.seconds)

    @classmethod
    def parse(cls, value: object, where: str) -> Limit | None:
        """``"600/minute"`` → Limit(600, 60); ``"unlimited"`` → None."""
        if value == UNLIMITED:
            return None
        if not isinstance(value, str) or value.count("/") != 1:
            raise RulesError(f"{where}: expected '<requests>/<second|minute|hour|day>' or 'unlimited', got {value!r}")
        count, unit = value.split("/")
        if not count.strip().isdigit() or int(count) < 1:
            raise RulesError(f"{where}: the request count must be a positive integer, got {count!r}")
        if unit.strip() not in UNITS:
            raise RulesError(f"{where}: unknown unit {unit!r} (use {', '.join(UNITS)})")
        return cls(int(count), UNITS[unit.strip()])

    def __str__(self) -> str:
        return f"{self.requests}/{self.unit}"


ClassLimits = Mapping[str, Limit | None]


@dataclass(frozen=True)
class Rules:
    ip: ClassLimits
    tenant: Mapping[str, ClassLimits]  # plan -> class -> limit
    principal: Mapping[str, ClassLimits]
    ip_exempt: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    def limit(self, tier: str, klass: str, plan: str = FALLBACK_PLAN) -> Limit | None:
        if tier == "ip":
            return self.ip[klass]
        by_plan = self.tenant if tier == "tenant" else self.principal
        return by_plan.get(plan, by_plan[FALLBACK_PLAN])[klass]

    def exempt(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.ip_exempt)


def _merge(base: Mapping[str, Any], override: Mapping[str, Any], where: str) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if key not in base:
            raise RulesError(f"{where}{key}: unknown key (expected one of {', '.join(base)})")
        if isinstance(base[key], Mapping):
            if not isinstance(value, Mapping):
                raise RulesError(f"{where}{key}: expected an object")
            out[key] = _merge(base[key], value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def _classes(raw: Mapping[str, Any], where: str) -> dict[str, Limit | None]:
    return {k: Limit.parse(raw[k], f"{where}.{k}") for k in CLASSES}


def load(overrides: Mapping[str, Any] | None = None) -> Rules:
    """Defaults merged with ``overrides``; raises :class:`RulesError` naming a bad key."""
    raw = _merge(DEFAULT_RATE_LIMITS, overrides or {}, "")
    exempt = raw["ip_exempt"]
    if not isinstance(exempt, list):
        raise RulesError("ip_exempt: expected a list of CIDR strings")
    try:
        networks = tuple(ipaddress.ip_network(str(n), strict=False) for n in exempt)
    except ValueError as err:
        raise RulesError(f"ip_exempt: {err}") from None
    return Rules(
        ip=_classes(raw["ip"], "ip"),
        tenant={p: _classes(raw["tenant"][p], f"tenant.{p}") for p in PLANS},
        principal={p: _classes(raw["principal"][p], f"principal.{p}") for p in PLANS},
        ip_exempt=networks,
    )


@functools.cache
def classification() -> Mapping[str, str]:
    """Every RPC of the contracts (its gRPC path) → its class."""
    out: dict[str, str] = {}
    for rpc in contracts.rpcs():
        credential = rpc.mutating and (rpc.public or rpc.service.name == "AuthService")
        out[rpc.full_method] = "auth" if credential else "write" if rpc.mutating else "read"
    return out


def class_of(grpc_path: str) -> str:
    """The class of a call from its gRPC path (after transcoding REST paths are gRPC paths too).

    A path outside the contracts (the service answers UNIMPLEMENTED) counts as a read.
    """
    return classification().get(grpc_path, "read")
