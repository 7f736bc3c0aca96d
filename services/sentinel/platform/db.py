"""Database access: one async engine per process and the tenant-scoped unit of work.

Every transaction starts with a single statement that binds it to a tenant
(``set_config(..., true)``: transaction-local, so pooled connections never carry a tenant
into the next checkout). RLS policies read that setting and fail closed when it is unset.

Reads that need no ORM (the hot single-row and page lookups) use :func:`read_only` instead: the
same pool, role and tenant binding, but SQL compiled once from a Core statement and run on the
pooled asyncpg connection, with ``BEGIN READ ONLY`` and the binding sent as one message. The
ORM session costs ~1.2 ms of CPU per transaction on top of the driver's ~0.4 ms (bench/README.md).

The engine belongs to the thread that initialised it: a service is one asyncio thread, and
each worker thread of the job consumer runs its own event loop with its own pool (asyncpg
connections cannot cross event loops).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextvars import ContextVar
from typing import Any

import asyncpg
from opentelemetry.trace import SpanKind
from sqlalchemy import text
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

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


log = logging.getLogger("sentinel.db")
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


def _binding(tenant_id: uuid.UUID | None, platform: bool | None) -> tuple[uuid.UUID | None, bool]:
    """The tenant and platform scope a transaction binds: as given, else the current call's
    (as the policy interceptor decided them)."""
    call = current_call()
    if tenant_id is None and call is not None:
        tenant_id = call.db_tenant_id
    if platform is None:
        platform = bool(call and call.platform_scope)
    return tenant_id, platform


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
    tenant_id, platform = _binding(tenant_id, platform)
    factory = sessions or _state.sessions
    if factory is None:
        raise RuntimeError("database not initialised")
    callbacks: list[Callable[[], Any]] = []
    after = _after.set(callbacks)
    started = time.perf_counter()
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
        _held_for(started)
    for callback in callbacks:  # committed
        result = callback()
        if inspect.isawaitable(result):
            await result


async def lock_in_tenant(session: AsyncSession, name: str) -> None:
    """Serialise this transaction with every other one of the bound tenant that takes ``name``
    (held until commit or rollback): check-then-insert sequences cannot interleave."""
    await session.execute(_TENANT_LOCK, {"name": name})


# --------------------------------------------------------------------------- read-only path

_ASYNCPG = PGDialect_asyncpg()  # type: ignore[no-untyped-call]


class Query:
    """A Core statement compiled once to asyncpg's SQL (``$n`` placeholders). Parameters are the
    statement's ``bindparam`` names, given at each run; literal values compiled in stay."""

    __slots__ = ("defaults", "names", "required", "span_name", "sql")

    def __init__(self, statement: ClauseElement) -> None:
        compiled = statement.compile(dialect=_ASYNCPG)
        assert isinstance(compiled, SQLCompiler)
        self.sql = str(compiled)
        self.names = tuple(compiled.positiontup or ())
        self.defaults = dict(compiled.params)
        self.required = frozenset(name for name, bind in compiled.binds.items() if bind.required)
        self.span_name = self.sql.split(None, 1)[0]

    def args(self, params: dict[str, Any]) -> list[Any]:
        if missing := self.required - params.keys():
            raise TypeError(f"missing query parameters: {', '.join(sorted(missing))}")
        values = {**self.defaults, **params}
        return [values[n] for n in self.names]


class Fetched:
    """A fetched row with attribute access to its columns, as an ORM object has."""

    __slots__ = ("_record",)

    def __init__(self, record: asyncpg.Record) -> None:
        self._record = record

    def __getattr__(self, name: str) -> Any:
        try:
            return self._record[name]
        except KeyError:
            raise AttributeError(name) from None


class Reader:
    """Runs compiled :class:`Query` objects in one read-only, tenant-bound transaction."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._connection = connection

    async def one(self, query: Query, **params: Any) -> Fetched | None:
        with _statement_span(query):
            record = await self._connection.fetchrow(query.sql, *query.args(params))
        return None if record is None else Fetched(record)

    async def all(self, query: Query, **params: Any) -> list[Fetched]:
        with _statement_span(query):
            records = await self._connection.fetch(query.sql, *query.args(params))
        return [Fetched(r) for r in records]


def _statement_span(query: Query) -> contextlib.AbstractContextManager[Any]:
    return tracing.span(query.span_name, kind=SpanKind.CLIENT, attributes={
        "db.system": "postgresql", "db.statement": query.sql})


def _begin_sql(tenant_id: uuid.UUID | None, platform: bool) -> str:
    # One simple-protocol message: BEGIN and the binding. The values are rendered, not bound
    # (the simple protocol has no parameters), so only a real UUID and fixed literals get in.
    tenant = str(uuid.UUID(str(tenant_id))) if tenant_id is not None else ""
    return ("BEGIN READ ONLY; SELECT set_config('sentinel.tenant_id', '" + tenant + "', true), "
            "set_config('sentinel.platform', '" + ("on" if platform else "") + "', true)")


@contextlib.asynccontextmanager
async def read_only(*, tenant_id: uuid.UUID | None = None,
                    platform: bool | None = None) -> AsyncIterator[Reader]:
    """A read-only transaction bound to one tenant (the current call's by default), for reads
    that need no ORM. Inside an active unit of work it joins that transaction instead.

    A connection goes back to the pool only outside a transaction; one whose rollback failed
    (broken, or interrupted mid-statement) is discarded, never reused with a tenant bound.
    """
    active = _active.get()
    if active is not None and tenant_id is None and platform is None:
        await active.flush()  # as the ORM's autoflush would: the reads see this transaction's writes
        joined = await (await active.connection()).get_raw_connection()
        yield Reader(joined.driver_connection)
        return
    tenant_id, platform = _binding(tenant_id, platform)
    started = time.perf_counter()
    try:
        async with engine().connect() as pooled:
            raw: asyncpg.Connection = (await pooled.get_raw_connection()).driver_connection
            try:
                await raw.execute(_begin_sql(tenant_id, platform))
                yield Reader(raw)
                await raw.execute("COMMIT")
            except BaseException:
                await _discard_transaction(pooled, raw)
                raise
    finally:
        _held_for(started)


class TransactionTime:
    """Seconds the transactions of a scope held a database connection (from asking the pool to
    returning the connection): a call's or a job's load on Postgres, for the tenant's usage."""

    seconds: float = 0.0


_transaction_time: ContextVar[TransactionTime | None] = ContextVar("sentinel_transaction_time", default=None)


@contextlib.contextmanager
def transaction_time() -> Iterator[TransactionTime]:
    """Add up the time of every transaction opened inside (tasks started inside included)."""
    spent = TransactionTime()
    token = _transaction_time.set(spent)
    try:
        yield spent
    finally:
        _transaction_time.reset(token)


def _held_for(started: float) -> None:
    spent = _transaction_time.get()
    if spent is not None:
        spent.seconds += time.perf_counter() - started


async def _discard_transaction(pooled: AsyncConnection, raw: asyncpg.Connection) -> None:
    try:
        if not raw.is_closed() and raw.is_in_transaction():
            await asyncio.shield(raw.execute("ROLLBACK"))
    except BaseException:  # whatever failed, the check below keeps this connection out of the pool
        log.warning("rollback of a read-only transaction failed", exc_info=True)
    if raw.is_closed() or raw.is_in_transaction():
        await pooled.invalidate()
