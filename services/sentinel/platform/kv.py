"""The process's Redis client (``SENTINEL_REDIS_URL``), created on first use."""

from __future__ import annotations

from redis.asyncio import Redis

from sentinel.platform.config import Settings

_client: Redis | None = None


def client(settings: Settings) -> Redis | None:
    """None when no Redis is configured; callers decide whether they can do without it."""
    global _client
    url = settings.redis_url.get_secret_value()
    if _client is None and url:
        _client = Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0, health_check_interval=30)
    return _client


async def close() -> None:
    global _client
    if _client is not None:
        await _client.aclose()
    _client = None
