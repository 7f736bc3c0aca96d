"""The service-level objectives every tenant gets, and the error-budget policy.

The same objectives as alerts/slo.yaml (the Prometheus rules, platform-wide); a unit test keeps
the two equal. Here they are applied per tenant to the counts of sentinel.platform.usage.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

import grpc

#: The SLO window: each error budget is 1 - objective over this period.
PERIOD: Final = timedelta(days=30)
#: The latency SLO: "P95 < 1 s", i.e. 95 % of requests within this many seconds.
LATENCY_THRESHOLD_SECONDS: Final = 1.0
#: Codes that are the service's fault; client errors (NOT_FOUND, INVALID_ARGUMENT, ...) are not.
SERVER_ERROR_CODES: Final = frozenset({
    grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED,
})


@dataclass(frozen=True, slots=True)
class Objective:
    name: str
    #: Fraction of requests that must be good over :data:`PERIOD`.
    target: float
    #: The usage count of bad requests: ``server_errors``, ``errors`` (every non-OK) or ``slow``.
    bad: str
    what: str


OBJECTIVES: Final = (
    Objective("availability", 0.999, "server_errors", "requests without a server-side error"),
    Objective("error-rate", 0.99, "errors", "requests answered OK"),
    Objective("latency", 0.95, "slow", f"requests handled within {LATENCY_THRESHOLD_SECONDS:g} s"),
)
BY_NAME: Final[Mapping[str, Objective]] = {o.name: o for o in OBJECTIVES}


@dataclass(frozen=True, slots=True)
class BurnPair:
    """A multiwindow, multi-burn-rate alert: both windows burn faster than ``factor``."""

    name: str
    long: timedelta
    short: timedelta
    factor: float


BURN_PAIRS: Final = (
    BurnPair("page-fast", timedelta(hours=1), timedelta(minutes=5), 14.4),
    BurnPair("page-slow", timedelta(hours=6), timedelta(minutes=30), 6.0),
    BurnPair("ticket-fast", timedelta(days=1), timedelta(hours=2), 3.0),
    BurnPair("ticket-slow", timedelta(days=3), timedelta(hours=6), 1.0),
)
#: A pair fires only with more than this many requests per second over its long window, so one
#: unlucky call of a quiet tenant never reads as a budget on fire.
MIN_REQUEST_RATE: Final = 0.1

#: What each budget status asks of the teams.
POLICY_MEANING: Final[Mapping[str, str]] = {
    "green": "budget healthy: release as usual",
    "caution": "half the budget is spent: review risky changes and release in small steps",
    "warning": "budget low: only low-risk releases, prioritise reliability work",
    "critical": "budget (nearly) exhausted: freeze releases except fixes, focus on reliability",
    "unknown": "no budget figure: check Prometheus and the SLO recording rules",
}


def budget_policy(remaining: float | None) -> str:
    """The release policy for a fraction of the error budget left: green above 50 %, caution
    down to 50 % included, warning from 25 % to 10 % (both included), critical below 10 % (and
    an overspent, negative budget), unknown without data. Each boundary is the stricter status."""
    if remaining is None or math.isnan(remaining):
        return "unknown"
    if remaining > 0.50:
        return "green"
    if remaining > 0.25:
        return "caution"
    if remaining >= 0.10:
        return "warning"
    return "critical"


def burn_rate(bad: int, total: int, target: float) -> float | None:
    """How fast a window spends the budget: 1 spends exactly all of it over :data:`PERIOD`."""
    if total <= 0:
        return None
    return (bad / total) / (1 - target)


def budget_remaining(bad: int, total: int, target: float) -> float | None:
    """The fraction of the period's error budget left (negative when overspent)."""
    rate = burn_rate(bad, total, target)
    return None if rate is None else 1 - rate
