"""Revoked sessions, known to every service within a second of the revocation.

Session state lives in Postgres (refresh tokens stop working at once). Access tokens are
self-contained JWTs, so every service also keeps an in-memory denylist of revoked session ids,
fed by Redis: each revocation is a key ``sentinel:revoked:<sid>`` (expiring when the last access
token of that session would have) and a message on ``sentinel:revocations``. A service loads the
keys at start and follows the channel; a lost connection is retried and the keys reloaded, so a
message missed meanwhile is not lost. Checking a call costs one dict lookup, no network.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from sentinel.platform import kv
from sentinel.platform.auth import TOKEN_LEEWAY_SECONDS
from sentinel.platform.config import Settings

log = logging.getLogger("sentinel.revocation")
CHANNEL = "sentinel:revocations"
KEY_PREFIX = "sentinel:revoked:"


class RevocationList:
    def __init__(self) -> None:
        self._until: dict[str, float] = {}  # session id -> wall-clock expiry of the entry
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    def is_revoked(self, session_id: str) -> bool:
        until = self._until.get(session_id)
        if until is None:
            return False
        if until < time.time():
            del self._until[session_id]
            return False
        return True

    def add(self, session_id: str, until: float) -> None:
        self._until[session_id] = max(until, self._until.get(session_id, 0.0))

    async def _load(self, redis: Redis) -> None:
        async for key in redis.scan_iter(match=KEY_PREFIX + "*", count=500):
            ttl = await redis.pttl(key)
            if ttl > 0:
                name = key.decode() if isinstance(key, bytes) else str(key)
                self.add(name.removeprefix(KEY_PREFIX), time.time() + ttl / 1000)

    async def _follow(self, redis: Redis) -> None:
        backoff = 0.2
        while True:
            try:
                async with redis.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    await self._load(redis)  # after subscribing: nothing falls between the two
                    self.ready.set()
                    backoff = 0.2
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        data = message["data"].decode() if isinstance(message["data"], bytes) else message["data"]
                        session_id, _, until = str(data).partition(" ")
                        self.add(session_id, float(until or 0))
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, ValueError) as e:
                log.error("revocation feed lost, retrying", extra={"error": str(e), "retry_in": backoff})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def start(self, redis: Redis) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._follow(redis), name="revocation-feed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None


#: The process-wide list the authentication interceptor consults.
revoked = RevocationList()


async def announce(settings: Settings, session_ids: Iterable[uuid.UUID | str]) -> None:
    """Tell every service these sessions ended, for as long as their access tokens could live."""
    await publish(kv.client(settings), [str(s) for s in session_ids],
                  ttl_seconds=settings.access_token_ttl_seconds + TOKEN_LEEWAY_SECONDS)


async def publish(redis: Redis | None, session_ids: Iterable[str], ttl_seconds: float) -> None:
    """Announce revoked sessions to every service (and to this one at once)."""
    ids = [str(s) for s in session_ids]
    until = time.time() + ttl_seconds
    for sid in ids:
        revoked.add(sid, until)
    if redis is None or not ids:
        return
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for sid in ids:
                pipe.set(KEY_PREFIX + sid, "1", px=int(ttl_seconds * 1000))
                pipe.publish(CHANNEL, f"{sid} {until}")
            await pipe.execute()
    except RedisError as e:
        # The sessions are revoked in Postgres; other services learn of it when access tokens expire.
        log.error("could not publish session revocations", extra={"error": str(e), "sessions": len(ids)})
