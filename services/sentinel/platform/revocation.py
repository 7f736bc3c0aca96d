"""Revoked sessions and blocked tenants, known to every service within a second.

Session and tenant state live in Postgres. Access tokens (and API keys) are checked by every
service on every call without a database round trip, so each process keeps two in-memory
tables fed by Redis:

* revoked sessions: each revocation is a key ``sentinel:revoked:<sid>`` (expiring when the
  last access token of that session would have) and a message on ``sentinel:revocations``;
* tenants that are not ACTIVE (suspended, pending deletion, deleted): a message on
  ``sentinel:tenant-states`` per change, and a full re-read from Postgres at start, after a
  lost Redis connection and every ``tenant_states_resync_seconds`` (a missed message cannot
  leave a suspended tenant working for longer than that).

A service loads both at start and follows the channels; a lost connection is retried and
everything reloaded, so a message missed meanwhile is not lost. Checking a call costs two
dict lookups, no network.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import text

from sentinel.platform import db, kv
from sentinel.platform.auth import PLATFORM_TENANT_ID, TOKEN_LEEWAY_SECONDS
from sentinel.platform.config import Settings
from sentinel.platform.errors import FailedPrecondition

log = logging.getLogger("sentinel.revocation")
CHANNEL = "sentinel:revocations"
TENANT_CHANNEL = "sentinel:tenant-states"
KEY_PREFIX = "sentinel:revoked:"


class RevocationList:
    """Session ids whose access tokens must be refused, each until its tokens expire."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}  # session id -> wall-clock expiry of the entry

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

    async def load(self, redis: Redis) -> None:
        async for key in redis.scan_iter(match=KEY_PREFIX + "*", count=500):
            ttl = await redis.pttl(key)
            if ttl > 0:
                name = key.decode() if isinstance(key, bytes) else str(key)
                self.add(name.removeprefix(KEY_PREFIX), time.time() + ttl / 1000)

    def on_message(self, data: str) -> None:
        session_id, _, until = data.partition(" ")
        self.add(session_id, float(until or 0))


STATE_WORDS = {"suspended": "suspended", "pending_deletion": "pending deletion", "deleted": "deleted"}


@dataclass(frozen=True, slots=True)
class Blocked:
    state: str  # suspended | pending_deletion | deleted
    reason: str = ""

    def refusal(self, tenant_id: uuid.UUID, *, own: bool) -> FailedPrecondition:
        """The error for a call into this tenant: by one of its principals, or by a platform admin."""
        words = STATE_WORDS.get(self.state, self.state)
        if own:
            why = f" ({self.reason})" if self.reason and self.state == "suspended" else ""
            return FailedPrecondition(f"your tenant is {words}{why}; contact your platform administrator",
                                      reason="TENANT_NOT_ACTIVE", metadata={"state": self.state})
        fix = {"suspended": "resume it first", "pending_deletion": "restore it first"}.get(self.state, "")
        return FailedPrecondition(f"tenant {tenant_id} is {words}" + (f"; {fix}" if fix else ""),
                                  reason="TENANT_NOT_ACTIVE", metadata={"state": self.state})


class TenantStates:
    """The tenants that are not ACTIVE; every other tenant is."""

    def __init__(self) -> None:
        self._blocked: dict[uuid.UUID, Blocked] = {}
        self._changes = 0  # bumped by every message, so a re-read never undoes a newer one

    def blocked(self, tenant_id: uuid.UUID) -> Blocked | None:
        return self._blocked.get(tenant_id)

    def set(self, tenant_id: uuid.UUID, state: str, reason: str = "") -> None:
        self._changes += 1
        if state == "active":
            self._blocked.pop(tenant_id, None)
        else:
            self._blocked[tenant_id] = Blocked(state, reason)

    def on_message(self, data: str) -> None:
        change = json.loads(data)
        self.set(uuid.UUID(change["id"]), str(change["state"]), str(change.get("reason", "")))

    async def reload(self, read: Callable[[], Awaitable[dict[uuid.UUID, Blocked]]]) -> None:
        """Replace the table with Postgres' view, unless a change arrived during the read."""
        for _ in range(3):
            before = self._changes
            blocked = await read()
            if self._changes == before:
                self._blocked = blocked
                return
        log.warning("tenant states changed during every re-read; keeping the announced ones")


TenantReader = Callable[[], Awaitable[dict[uuid.UUID, Blocked]]]
_BLOCKED = text("SELECT id, state, suspension_reason FROM tenants WHERE state <> 'active'")


async def read_blocked_tenants() -> dict[uuid.UUID, Blocked]:
    """Postgres' list of non-active tenants (a platform-scope read: it spans tenants)."""
    async with db.unit_of_work(tenant_id=PLATFORM_TENANT_ID, platform=True) as session:
        rows = (await session.execute(_BLOCKED)).all()
    return {row.id: Blocked(row.state, row.suspension_reason) for row in rows}


class AccessFeed:
    """Follows both channels (one Redis connection) and re-reads tenant states periodically."""

    def __init__(self, sessions: RevocationList | None = None, tenants: TenantStates | None = None) -> None:
        self.sessions = sessions or RevocationList()
        self.tenants = tenants or TenantStates()
        self.ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._read_tenants: TenantReader | None = None

    async def _load(self, redis: Redis) -> None:
        await self.sessions.load(redis)
        if self._read_tenants is not None:
            await self.tenants.reload(self._read_tenants)

    async def _follow(self, redis: Redis) -> None:
        handlers = {CHANNEL: self.sessions.on_message, TENANT_CHANNEL: self.tenants.on_message}
        backoff = 0.2
        while True:
            try:
                async with redis.pubsub() as pubsub:
                    await pubsub.subscribe(*handlers)
                    await self._load(redis)  # after subscribing: nothing falls between the two
                    self.ready.set()
                    backoff = 0.2
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        channel, data = (v.decode() if isinstance(v, bytes) else str(v)
                                         for v in (message["channel"], message["data"]))
                        try:
                            handlers[channel](data)
                        except (ValueError, KeyError) as e:
                            log.error("bad message on the access feed", extra={"channel": channel, "error": str(e)})
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as e:
                log.error("access feed lost, retrying", extra={"error": str(e), "retry_in": backoff})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _resync(self, read: TenantReader, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await self.tenants.reload(read)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a database hiccup: keep the current table, try again later
                log.error("tenant states not re-read", extra={"error": repr(e)})

    def start(self, redis: Redis | None, *, read_tenants: TenantReader | None = None,
              resync_seconds: float = 30.0) -> None:
        if self._tasks:
            return
        self._read_tenants = read_tenants
        if redis is not None:
            self._tasks.append(asyncio.create_task(self._follow(redis), name="access-feed"))
        if read_tenants is not None:
            self._tasks.append(asyncio.create_task(self._resync(read_tenants, resync_seconds),
                                                   name="tenant-states-resync"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []


#: The process-wide feed the authentication and policy interceptors consult.
feed = AccessFeed()
revoked = feed.sessions
tenants = feed.tenants


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


async def announce_tenant_state(settings: Settings, tenant_id: uuid.UUID, state: str, reason: str = "") -> None:
    """Tell every service (this one at once) that a tenant changed state; call after the commit."""
    tenants.set(tenant_id, state, reason)
    redis = kv.client(settings)
    if redis is None:
        return
    try:
        await redis.publish(TENANT_CHANNEL, json.dumps({"id": str(tenant_id), "state": state, "reason": reason}))
    except RedisError as e:
        # Postgres has the new state; other services pick it up at their next re-read.
        log.error("could not publish a tenant state change", extra={"error": str(e), "tenant": str(tenant_id)})
