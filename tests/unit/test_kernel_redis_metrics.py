"""Client-side Redis metrics (sentinel.platform.redis_metrics) against a tiny RESP server.

The server answers HELLO, PING, SET and GET and refuses everything else with an error reply, which is
enough to see every outcome: ok, error (Redis answered no), unavailable (nothing listens).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from sentinel.platform import redis_metrics

from tests.support import free_port

SERVICE = "redis-test"


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while line := await reader.readline():
            words = []
            for _ in range(int(line[1:])):
                size = int((await reader.readline())[1:])
                words.append((await reader.readexactly(size + 2))[:-2].decode())
            name = words[0].upper()
            reply = {"HELLO": b"%1\r\n+proto\r\n:3\r\n", "PING": b"+PONG\r\n", "SET": b"+OK\r\n",
                     "GET": b"$1\r\nv\r\n"}.get(
                name, b"-ERR unknown command\r\n")
            writer.write(reply)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


@pytest.fixture(scope="module")
async def url() -> AsyncIterator[str]:
    redis_metrics.instrument(SERVICE)
    server = await asyncio.start_server(_serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.close()
        await server.wait_closed()


def _count(command: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("sentinel_redis_commands_total",
                                     {"service": SERVICE, "command": command, "outcome": outcome}) or 0.0


def _up() -> float | None:
    return REGISTRY.get_sample_value("sentinel_redis_up", {"service": SERVICE})


def _observed(command: str) -> float:
    return REGISTRY.get_sample_value("sentinel_redis_command_duration_seconds_count",
                                     {"service": SERVICE, "command": command}) or 0.0


async def test_commands_and_pipelines_are_counted_by_outcome(url: str) -> None:
    client = Redis.from_url(url)
    before = {k: _count(*k) for k in (("GET", "ok"), ("SET", "ok"), ("HGETALL", "error"), ("PIPELINE", "ok"))}
    durations = _observed("GET")
    try:
        assert await client.set("k", "v") and await client.get("k") == b"v"
        with pytest.raises(redis.exceptions.ResponseError):
            await client.hgetall("k")
        async with client.pipeline(transaction=False) as pipe:
            pipe.get("k").get("k")
            assert await pipe.execute() == [b"v", b"v"]
    finally:
        await client.aclose()
    assert _count("GET", "ok") == before[("GET", "ok")] + 1  # the pipeline's GETs are its own round trip
    assert _count("SET", "ok") == before[("SET", "ok")] + 1
    assert _count("HGETALL", "error") == before[("HGETALL", "error")] + 1
    assert _count("PIPELINE", "ok") == before[("PIPELINE", "ok")] + 1
    assert _observed("GET") == durations + 1
    assert _up() == 1.0  # an error reply is an answer


async def test_an_unreachable_redis_is_down_and_comes_back(url: str) -> None:
    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2)
    before = _count("PING", "unavailable")
    try:
        with pytest.raises(redis.exceptions.ConnectionError):
            await dead.ping()
    finally:
        await dead.aclose()
    assert _count("PING", "unavailable") == before + 1 and _up() == 0.0
    watch = asyncio.create_task(redis_metrics.watch(Redis.from_url(url), interval=0.05))
    try:
        for _ in range(100):
            if _up() == 1.0:
                break
            await asyncio.sleep(0.01)
        assert _up() == 1.0
    finally:
        watch.cancel()


async def test_the_synchronous_client_is_measured_too(url: str) -> None:
    """huey's client in the worker."""
    before = _count("GET", "ok")

    def get() -> bytes:
        client = redis.Redis.from_url(url)
        try:
            return bytes(client.get("k"))
        finally:
            client.close()

    assert await asyncio.to_thread(get) == b"v"
    assert _count("GET", "ok") == before + 1


def test_command_labels_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_metrics, "_known", set())
    assert redis_metrics.command_label("GET") == "GET"
    assert redis_metrics.command_label("evalsha") == "EVALSHA"
    assert redis_metrics.command_label(b"CLIENT SETINFO") == "CLIENT SETINFO"
    assert redis_metrics.command_label("user:123 secret") == "OTHER"
    assert redis_metrics.command_label("x" * 100) == "OTHER"
    for n in range(redis_metrics.MAX_COMMANDS + 5):
        redis_metrics.command_label(f"CMD{n}")
    assert redis_metrics.command_label("ANOTHERNEWONE") == "OTHER"
    assert redis_metrics.command_label("GET") == "GET"  # known names keep their label
