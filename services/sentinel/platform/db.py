"""Database access: one async engine per process and the tenant-scoped unit of work.

Every transaction starts with a single statement that binds it to a tenant
(``set_config(..., true)``: transaction-local, so pooled connections never carry a tenant
into the next checkout). RLS policies read that setting and fail closed when it is unset.

The engine belongs to the thread that initialised it: a service is one asyncio thread, and
each worker thread of the job consumer runs its own event loop with its own pool (asyncpg
connections cannot cross event loops).
"""

from __future__ import annotations

import contextlib
import inspect
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from sentinel.platform import tracing
from sentinel.platform.calls import current_call
from sentinel.platform.config import Settings

_BIND = text(
    "SELECT set_config('sentinel.tenant_id', :tenant, true), set_config('sentinel.platform', :platform, true)"
)

_TENANT_LOCK = text("SELECT pg_advisory_xact_lock(hashtext(CAST(:name AS text) || sentinel_tenant_id()::text))")

class _ThreadState(threading.local):
    engine: AsyncEngine | None = None
    sessions: async_sessionmaker[AsyncSession] | None = None


_state = _ThreadState()
_active: ContextVar[AsyncSession | None] = ContextVar("sentinel_session", default=None)
_after: ContextVar[list[Callable[[], Any]] | None] = ContextVar("sentinel_after_commit", default=None)


def make_engine(url: str, *, pool_size: int = 10, max_overflow: int = 5, recycle: int = 1800) -> AsyncEngine:
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_recycle=recycle,
        pool_pre_ping=False,  # a dead connection fails one call with UNAVAILABLE and is dropped
        connect_args={"server_settings": {"application_name": "sentinel"}},
    )
    tracing.instrument_engine(engine)  # a span per statement, when tracing is on
    return engine


def init(settings: Settings) -> AsyncEngine:
    url = settings.database_url.get_secret_value()
    if not url:
        raise RuntimeError("SENTINEL_DATABASE_URL (or SENTINEL_DATABASE_URL_FILE) is not set")
    engine = make_engine(url, pool_size=settings.database_pool_size,
                         max_overflow=settings.database_max_overflow,
                         recycle=settings.database_pool_recycle_seconds)
    _state.engine, _state.sessions = engine, async_sessionmaker(engine, expire_on_commit=False)
    return engine


def initialised() -> bool:
    return _state.sessions is not None


def engine() -> AsyncEngine:
    if _state.engine is None:
        raise RuntimeError("database not initialised")
    return _state.engine


async def dispose() -> None:
    if _state.engine is not None:
        await _state.engine.dispose()
    _state.engine, _state.sessions = None, None


def after_commit(callback: Callable[[], Any]) -> None:
    """Run ``callback`` (sync or async) once the current unit of work has committed; never if it
    rolls back. Outside a unit of work it runs at once. For effects outside the database that
    must only follow a durable change, e.g. enqueueing a job whose row was just inserted."""
    pending = _after.get()
    if pending is None:
        result = callback()
        if inspect.isawaitable(result):
            raise RuntimeError("an async after_commit callback needs an active unit of work")
        return
    pending.append(callback)


@contextlib.asynccontextmanager
async def unit_of_work(*, tenant_id: uuid.UUID | None = None, platform: bool | None = None,
                       sessions: async_sessionmaker[AsyncSession] | None = None) -> AsyncIterator[AsyncSession]:
    """A transaction bound to one tenant; commits on success, rolls back on any exception.

    Without arguments it binds to the current call's tenant as decided by the policy
    interceptor. Nested use inside an active unit of work joins it (one transaction per RPC).
    """
    active = _active.get()
    if active is not None and tenant_id is None and platform is None:
        yield active
        return
    call = current_call()
    if tenant_id is None and call is not None:
        tenant_id = call.db_tenant_id
    if platform is None:
        platform = bool(call and call.platform_scope)
    factory = sessions or _state.sessions
    if factory is None:
        raise RuntimeError("database not initialised")
    callbacks: list[Callable[[], Any]] = []
    after = _after.set(callbacks)
    try:
        async with factory() as session, session.begin():
            await session.execute(_BIND, {"tenant": str(tenant_id) if tenant_id else "",
                                          "platform": "on" if platform else ""})
            token = _active.set(session)
            try:
                yield session
            finally:
                _active.reset(token)
    finally:
        _after.reset(after)
    for callback in callbacks:  # committed
        result = callback()
        if inspect.isawaitable(result):
            await result


async def lock_in_tenant(session: AsyncSession, name: str) -> None:
    """Serialise this transaction with every other one of the bound tenant that takes ``name``
    (held until commit or rollback): check-then-insert sequences cannot interleave."""
    await session.execute(_TENANT_LOCK, {"name": name})
