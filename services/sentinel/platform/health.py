"""Health: ``grpc.health.v1`` for machines and ``HealthService.GetHealth`` for people.

GetHealth checks this process's dependencies (database) and its peers' grpc.health.v1
status, so ``GET /api/v1/health`` through Envoy shows the whole platform at a glance.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc
from redis.asyncio import Redis
from sqlalchemy import text

from sentinel.common.v1 import common_pb2, common_pb2_grpc
from sentinel.platform import clients, db

SERVING = common_pb2.SERVING_STATUS_SERVING
NOT_SERVING = common_pb2.SERVING_STATUS_NOT_SERVING
DEGRADED = common_pb2.SERVING_STATUS_DEGRADED

Check = Callable[[], Awaitable[common_pb2.ComponentHealth]]


@dataclass(frozen=True, slots=True)
class SelfStatus:
    name: str
    status: common_pb2.ServingStatus.ValueType = SERVING
    detail: str = ""


Probe = Callable[[], Awaitable[tuple[common_pb2.ServingStatus.ValueType, str]]]


async def _timed(name: str, probe: Probe) -> common_pb2.ComponentHealth:
    start = time.perf_counter()
    try:
        status, detail = await asyncio.wait_for(probe(), timeout=2.0)
    except grpc.aio.AioRpcError as err:
        status, detail = NOT_SERVING, f"{err.code().name}: {err.details()}"[:200]
    except TimeoutError:
        status, detail = NOT_SERVING, "no answer within 2 s"
    except Exception as exc:  # a failing dependency is a result to report, not an error
        status, detail = NOT_SERVING, f"{type(exc).__name__}: {exc}"[:200]
    return common_pb2.ComponentHealth(name=name, status=status, detail=detail,
                                      latency_seconds=round(time.perf_counter() - start, 6))


def database_check() -> Check:
    async def probe() -> tuple[common_pb2.ServingStatus.ValueType, str]:
        async with db.engine().connect() as conn:
            await conn.execute(text("SELECT 1"))
        return SERVING, ""

    return lambda: _timed("database", probe)


def redis_check(redis: Redis) -> Check:
    async def probe() -> tuple[common_pb2.ServingStatus.ValueType, str]:
        await redis.ping()
        return SERVING, ""

    return lambda: _timed("redis", probe)


SHALLOW = ("x-sentinel-health", "shallow")


def peer_check(name: str, target: str) -> Check:
    """Ask a peer for its own health (shallow: it does not fan out to its peers)."""

    async def probe() -> tuple[common_pb2.ServingStatus.ValueType, str]:
        stub = common_pb2_grpc.HealthServiceStub(clients.channel(target))
        reply = await stub.GetHealth(common_pb2.GetHealthRequest(), metadata=(SHALLOW,), timeout=1.5)
        details = [c.detail for c in reply.components if c.detail]
        return reply.status, "; ".join(details)

    return lambda: _timed(f"service:{name}", probe)


class HealthApi(common_pb2_grpc.HealthServiceServicer):
    def __init__(self, me: SelfStatus, version: str, checks: Sequence[Check],
                 peer_checks: Sequence[Check] = ()) -> None:
        self.me = me
        self.version = version
        self.checks = list(checks)
        self.peer_checks = list(peer_checks)

    async def GetHealth(self, request: common_pb2.GetHealthRequest,
                        context: grpc.aio.ServicerContext[object, object]) -> common_pb2.GetHealthResponse:
        components = [common_pb2.ComponentHealth(name=f"service:{self.me.name}", status=self.me.status,
                                                 detail=self.me.detail)]
        shallow = SHALLOW in tuple(context.invocation_metadata() or ())
        checks = self.checks if shallow else self.checks + self.peer_checks
        components += await asyncio.gather(*(check() for check in checks))
        worst = SERVING
        for comp in components:
            if comp.status == NOT_SERVING or (comp.status == DEGRADED and worst == SERVING):
                worst = comp.status
        return common_pb2.GetHealthResponse(status=worst, version=self.version, components=components)
