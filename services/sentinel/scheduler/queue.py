"""The huey queue on Redis: the signal that a job should run now, and the consumer that runs it.

Tasks carry only ids (and the W3C trace context of whoever enqueued them: each run is a span,
the child of that one). The SchedulerService enqueues ``run_job`` after the job's row has
committed; the consumer (``sentinel worker``) runs it. Every minute each consumer's
scheduler runs ``tick``: the dispatcher (due and orphaned jobs, see ``runner.dispatch``) and
the periodic jobs whose schedule matches the minute (``periodic.run_due``: a slot runs once
however many consumers tick).

Worker threads each keep their own event loop and database pool (asyncpg connections belong
to one loop). SIGTERM stops the consumer gracefully: running jobs finish (up to the shutdown
timeout); a job cut off anyway is taken back by the dispatcher once its lease runs out.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import inspect
import logging
import threading
import time
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

import redis
from huey import RedisHuey, crontab
from opentelemetry.trace import SpanKind
from prometheus_client import Gauge

from sentinel.platform import db, tracing, usage
from sentinel.platform.config import Settings

log = logging.getLogger("sentinel.queue")
T = TypeVar("T")

QUEUE_DEPTH = Gauge("sentinel_job_queue_depth", "Tasks waiting in the huey queue (last measured)")
QUEUE_NAME = "sentinel"

_huey: RedisHuey | None = None
_settings: Settings | None = None
_local = threading.local()


def _in_thread_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on this worker thread's own event loop (made, with its pool, on first use), in
    the thread's current context (the job's span; a Runner would otherwise reuse its first one)."""
    runner: asyncio.Runner | None = getattr(_local, "runner", None)
    if runner is None:
        runner = _local.runner = asyncio.Runner()
        assert _settings is not None
        db.init(_settings)
    return runner.run(coro, context=contextvars.copy_context())


def _job_span(task: str, trace: dict[str, str] | None, **attributes: str) -> Any:
    """The span of one task run: the child of the enqueuing span when the message carries one."""
    return tracing.span(f"job {task}", kind=SpanKind.CONSUMER, parent=trace or {}, attributes={
        "messaging.system": "huey", "messaging.destination.name": QUEUE_NAME,
        "messaging.operation.type": "process", **attributes})


def huey_for(settings: Settings) -> RedisHuey:
    """The process's huey instance with Sentinel's tasks registered (made once)."""
    global _huey, _settings
    if _huey is not None:
        return _huey
    url = settings.redis_url.get_secret_value()
    if not url:
        raise RuntimeError("SENTINEL_REDIS_URL (or _FILE) is not set: jobs need Redis")
    _settings = settings
    # A health-checked pool: after a Redis restart the next command reconnects instead of failing.
    pool = redis.ConnectionPool.from_url(url, health_check_interval=30, socket_keepalive=True)
    huey = RedisHuey(QUEUE_NAME, connection_pool=pool, results=False, utc=True)

    def run_job(tenant_id: str, job_id: str, trace: dict[str, str] | None = None) -> None:
        from sentinel.scheduler import runner

        with _job_span("run_job", trace, **{"sentinel.tenant_id": tenant_id, "sentinel.job_id": job_id}) as span:
            outcome = _in_thread_loop(runner.run(settings, uuid.UUID(tenant_id), uuid.UUID(job_id),
                                                 enqueue_retry=enqueue))
            span.set_attribute("sentinel.job.state", outcome.state)
        flush_usage(settings.usage_flush_seconds)

    def run_periodic(name: str, run_id: str, trace: dict[str, str] | None = None) -> None:
        from sentinel.scheduler import periodic

        with _job_span("run_periodic", trace, **{"sentinel.periodic_job": name, "sentinel.run_id": run_id}):
            _in_thread_loop(periodic.run_manual(settings, name, uuid.UUID(run_id)))

    def tick() -> None:
        from sentinel.scheduler import periodic, runner

        with _job_span("tick", None):
            QUEUE_DEPTH.set(huey.pending_count())
            _in_thread_loop(runner.dispatch(enqueue))
            _in_thread_loop(periodic.run_due(settings, dt.datetime.now(dt.UTC)))
        flush_usage(0)  # what the last jobs counted, when none has run since

    _tasks.update(run_job=huey.task(name="run_job")(run_job),
                  run_periodic=huey.task(name="run_periodic")(run_periodic),
                  tick=huey.periodic_task(crontab(), name="tick")(tick))  # every minute
    _huey = huey
    return huey


_tasks: dict[str, Any] = {}


_last_flush = 0.0


def flush_usage(every_seconds: float) -> None:
    """Write the jobs' per-tenant usage (sentinel.platform.usage, service "worker") when the last
    flush is ``every_seconds`` old; on this thread's loop. A failure keeps the counts for the next."""
    global _last_flush
    if usage.recorder is None or time.monotonic() - _last_flush < every_seconds:
        return
    _last_flush = time.monotonic()
    try:
        _in_thread_loop(usage.recorder.flush())
    except Exception:
        usage.FLUSH_FAILURES.labels(usage.recorder.service).inc()
        log.warning("job usage flush failed; the counts are kept for the next one", exc_info=True)


def _trace() -> dict[str, Any]:
    """The current trace context for the message (none without an active span)."""
    carrier = tracing.carrier()
    return {"trace": carrier} if carrier else {}


def enqueue(tenant_id: uuid.UUID, job_id: uuid.UUID, delay: float = 0.0) -> None:
    """Signal a job (a blocking Redis call; from async code use :func:`enqueue_soon`)."""
    task = _tasks["run_job"]
    if delay > 0:
        task.schedule(args=(str(tenant_id), str(job_id)), kwargs=_trace(), delay=delay)
    else:
        task(str(tenant_id), str(job_id), **_trace())


def enqueue_periodic(name: str, run_id: uuid.UUID) -> None:
    _tasks["run_periodic"](name, str(run_id), **_trace())


async def enqueue_soon(settings: Settings, tenant_id: uuid.UUID, job_id: uuid.UUID) -> None:
    """Signal a job from async code; a Redis outage only delays it (the dispatcher finds it)."""
    huey_for(settings)
    try:
        await asyncio.to_thread(enqueue, tenant_id, job_id)
    except Exception as e:  # Redis down: the row is committed, the next tick signals it again
        log.warning("job not signalled; the dispatcher will", extra={"job_id": str(job_id), "error": repr(e)})


def run_consumer(settings: Settings) -> None:
    """``sentinel worker``: the huey consumer with the periodic scheduler."""
    from huey.consumer import Consumer

    huey = huey_for(settings)
    options: dict[str, Any] = {"workers": settings.job_worker_threads, "worker_type": "thread", "periodic": True,
                               "initial_delay": 0.05, "backoff": 1.5, "max_delay": 0.5, "check_worker_health": True}
    if "graceful_signal" in inspect.signature(Consumer.__init__).parameters:  # huey >= 3 (2.x: SIGINT)
        options["graceful_signal"] = "TERM"
    usage.start("worker")  # each job run counts for its tenant (time, not requests)
    try:
        huey.create_consumer(**options).run()
    finally:
        flush_usage(0)
