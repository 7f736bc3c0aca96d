"""Client-side Redis metrics for every process: commands by outcome, their latency, reachability.

:func:`instrument` (once per process) wraps redis-py's command entry points, synchronous and
asyncio, so every client of the process is measured: the kernel's (:mod:`sentinel.platform.kv`:
login throttle, revocation lists), huey's in the worker, the rate limiter's. A pipeline is one
round trip and counts once, as ``PIPELINE`` (or ``MULTI`` for a transaction). Pub/sub messages
are not commands and are not counted.

Labels stay bounded: ``service`` (the process), ``command`` (the name our code sends, never
anything a caller chose; a name of another shape is ``OTHER``, and past :data:`MAX_COMMANDS`
distinct names every new one is too) and ``outcome``:

* ``ok``;
* ``error``: Redis answered with an error (e.g. ``NOSCRIPT`` before a script is loaded);
* ``unavailable``: no answer (connection refused or lost, timeout);
* ``cancelled``: the caller gave up first.

``sentinel_redis_up{service}`` is 1 when the process's last command (or :func:`watch`'s PING)
got an answer, 0 when Redis could not be reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from redis import exceptions as redis_errors

#: Redis round trips take well under a millisecond on a LAN; the top buckets catch stalls.
REDIS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
MAX_COMMANDS = 64

COMMANDS = Counter("sentinel_redis_commands", "Redis commands sent by this process (a pipeline counts once), "
                   "by outcome.", ["service", "command", "outcome"])
DURATION = Histogram("sentinel_redis_command_duration_seconds", "Round trip of a Redis command or pipeline.",
                     ["service", "command"], buckets=REDIS_BUCKETS)
UP = Gauge("sentinel_redis_up", "1 when this process's last Redis command or PING got an answer, 0 when "
           "Redis could not be reached.", ["service"])

_NAME = re.compile(r"[A-Z][A-Z0-9_.-]{0,23}( [A-Z][A-Z0-9_-]{0,23})?")
_UNREACHABLE = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError, TimeoutError)

_service = ""
_known: set[str] = set()


def command_label(name: Any) -> str:
    if isinstance(name, bytes | bytearray):
        name = bytes(name).decode("ascii", "replace")
    label = str(name).upper()
    if not _NAME.fullmatch(label):
        return "OTHER"
    if label not in _known:
        if len(_known) >= MAX_COMMANDS:
            return "OTHER"
        _known.add(label)
    return label


def _outcome(exc: BaseException | None) -> str:
    if exc is None:
        return "ok"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    if isinstance(exc, _UNREACHABLE):
        return "unavailable"
    return "error"


def record(command: str, seconds: float, exc: BaseException | None) -> None:
    outcome = _outcome(exc)
    COMMANDS.labels(_service, command, outcome).inc()
    DURATION.labels(_service, command).observe(seconds)
    if outcome in ("ok", "error"):
        UP.labels(_service).set(1)
    elif outcome == "unavailable":
        UP.labels(_service).set(0)


def _pipeline_label(pipe: Any) -> str:
    transaction = getattr(pipe, "is_transaction", getattr(pipe, "transaction", False))
    return "MULTI" if transaction or getattr(pipe, "explicit_transaction", False) else "PIPELINE"


def _wrap_sync(original: Callable[..., Any], label: Callable[[Any, tuple[Any, ...]], str]) -> Callable[..., Any]:
    @functools.wraps(original)
    def measured(self: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        exc: BaseException | None = None
        try:
            return original(self, *args, **kwargs)
        except BaseException as e:
            exc = e
            raise
        finally:
            record(label(self, args), time.perf_counter() - start, exc)

    measured.__sentinel_measured__ = True  # type: ignore[attr-defined]
    return measured


def _wrap_async(original: Callable[..., Any], label: Callable[[Any, tuple[Any, ...]], str]) -> Callable[..., Any]:
    @functools.wraps(original)
    async def measured(self: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        exc: BaseException | None = None
        try:
            return await original(self, *args, **kwargs)
        except BaseException as e:
            exc = e
            raise
        finally:
            record(label(self, args), time.perf_counter() - start, exc)

    measured.__sentinel_measured__ = True  # type: ignore[attr-defined]
    return measured


def _command(_client: Any, args: tuple[Any, ...]) -> str:
    return command_label(args[0]) if args else "OTHER"


def _pipeline(pipe: Any, _args: tuple[Any, ...]) -> str:
    return _pipeline_label(pipe)


def _patch(cls: Any, attr: str, wrap: Callable[..., Callable[..., Any]],
           label: Callable[[Any, tuple[Any, ...]], str]) -> None:
    original = cls.__dict__[attr]
    if not getattr(original, "__sentinel_measured__", False):
        setattr(cls, attr, wrap(original, label))


def instrument(service: str) -> None:
    """Measure every Redis client of this process, labelled ``service``. The methods are wrapped
    once; a later call only changes the label."""
    global _service
    _service = service
    from redis import client as sync_client
    from redis.asyncio import client as async_client

    _patch(sync_client.Redis, "execute_command", _wrap_sync, _command)
    _patch(sync_client.Pipeline, "execute", _wrap_sync, _pipeline)
    _patch(async_client.Redis, "execute_command", _wrap_async, _command)
    _patch(async_client.Pipeline, "execute", _wrap_async, _pipeline)


async def watch(redis: Any, *, interval: float = 15.0) -> None:
    """PING every ``interval`` seconds, so ``sentinel_redis_up`` is current in a process that may go
    a while without a command (a service between logins). Runs until cancelled."""
    while True:
        with contextlib.suppress(Exception):  # recorded by the wrapper as unavailable
            await redis.ping()
        await asyncio.sleep(interval)
