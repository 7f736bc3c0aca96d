"""The process's HTTP endpoint: ``/metrics`` for Prometheus, ``/healthz`` and ``/readyz`` for probes.

For supervisors and load balancers that speak HTTP rather than gRPC (Kubernetes probes,
HAProxy, a systemd timer with curl). Both probes answer JSON and are never cached.

- ``/healthz`` (liveness): the process works. In a service, its event loop ran a callback
  within a second, so a wedged loop fails it and a supervisor may restart the process.
  Dependencies are not asked: a database outage must not restart every service.
- ``/readyz`` (readiness): the process can do its job now. Every dependency it cannot serve
  without answers and it is not draining; otherwise 503, naming what failed, so a balancer takes
  this instance out of rotation. A dependency the process works around (Redis for a service: the
  rate limits and the session denylist fail open) is reported but only marks the answer
  ``degraded``, because every instance shares it and failing them all would turn a degraded
  platform into an outage. Peers are not asked, for the same reason.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from http import HTTPStatus
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from sentinel.platform import health

LIVENESS_TIMEOUT = 1.0
#: Longer than one dependency check's own bound (2 s, ``health``), so a slow dependency is
#: reported by name.
READINESS_TIMEOUT = 3.0

Answer = tuple[int, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Component:
    name: str
    ok: bool
    detail: str = ""
    latency_seconds: float = 0.0
    #: False: its failure marks the answer degraded, not unready.
    required: bool = True


def readiness(service: str, components: Iterable[Component], *, draining: bool = False,
              starting: bool = False) -> Answer:
    parts = list(components)
    ready = not draining and not starting and all(c.ok for c in parts if c.required)
    if draining:
        status = "draining"
    elif starting:
        status = "starting"
    elif not ready:
        status = "unavailable"
    else:
        status = "ready" if all(c.ok for c in parts) else "degraded"
    body = {"status": status, "service": service, "components": [asdict(c) for c in parts]}
    return (200 if ready else 503), body


class LoopProbes:
    """Probes of an asyncio service, answered from the HTTP thread by asking its event loop."""

    def __init__(self, service: str, loop: asyncio.AbstractEventLoop, required: Sequence[health.Check],
                 optional: Sequence[health.Check] = (), *, starting: bool = False) -> None:
        self.service = service
        self.loop = loop
        self.checks = [(check, True) for check in required] + [(check, False) for check in optional]
        #: True until the service serves gRPC (cleared by the bootstrap): unready, whatever the
        #: dependencies say, so nothing routes to it, or cuts its database, mid start-up.
        self.starting = starting
        #: Set when the service starts draining (SIGTERM): readiness fails at once.
        self.draining = False

    def live(self) -> Answer:
        ran: concurrent.futures.Future[None] = concurrent.futures.Future()
        try:
            self.loop.call_soon_threadsafe(ran.set_result, None)
            ran.result(timeout=LIVENESS_TIMEOUT)
        except (TimeoutError, RuntimeError):  # RuntimeError: the loop is closed
            return 503, {"status": "unavailable", "service": self.service,
                         "detail": f"the event loop did not run a callback within {LIVENESS_TIMEOUT:g} s"}
        return 200, {"status": "ok", "service": self.service}

    def ready(self) -> Answer:
        if self.draining:
            return readiness(self.service, (), draining=True)
        if self.starting:
            return readiness(self.service, (), starting=True)
        try:
            done = asyncio.run_coroutine_threadsafe(self._check_all(), self.loop)
        except RuntimeError:  # the loop is closed: the process is stopping
            return readiness(self.service, (), draining=True)
        try:
            components = done.result(timeout=READINESS_TIMEOUT)
        except TimeoutError:
            done.cancel()
            components = [Component("event_loop", False, f"the checks did not finish within {READINESS_TIMEOUT:g} s")]
        return readiness(self.service, components, draining=self.draining)

    async def _check_all(self) -> list[Component]:
        results = await asyncio.gather(*(check() for check, _ in self.checks))
        return [Component(r.name, r.status == health.SERVING, r.detail, r.latency_seconds, required)
                for r, (_, required) in zip(results, self.checks, strict=True)]


class SyncProbes:
    """Probes of a process without an event loop (the job worker): checks run on the HTTP thread."""

    def __init__(self, service: str, checks: Sequence[Callable[[], Component]]) -> None:
        self.service = service
        self.checks = list(checks)

    def live(self) -> Answer:
        return 200, {"status": "ok", "service": self.service}

    def ready(self) -> Answer:
        return readiness(self.service, [check() for check in self.checks])


Probes = LoopProbes | SyncProbes


def sync_check(name: str, probe: Callable[[], object]) -> Callable[[], Component]:
    def check() -> Component:
        start = time.perf_counter()
        try:
            probe()
            ok, detail = True, ""
        except Exception as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"[:200]
        return Component(name, ok, detail, round(time.perf_counter() - start, 6))

    return check


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes and probes every few seconds are not worth a log line each."""


def _json(start_response: Callable[..., Any], answer: Answer) -> list[bytes]:
    status, body = answer
    payload = json.dumps(body).encode()
    start_response(f"{status} {HTTPStatus(status).phrase}", [
        ("Content-Type", "application/json"), ("Cache-Control", "no-store"),
        ("Content-Length", str(len(payload))),
    ])
    return [payload]


def wsgi_app(probes: Probes | None) -> Callable[..., Iterable[bytes]]:
    metrics = make_wsgi_app()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if probes is not None and path == "/healthz":
            return _json(start_response, probes.live())
        if probes is not None and path == "/readyz":
            return _json(start_response, probes.ready())
        served: Iterable[bytes] = metrics(environ, start_response)
        return served

    return app


def serve(host: str, port: int, probes: Probes | None = None) -> None:
    """Serve ``/metrics`` (and the probes) on a background thread; port 0: nothing is served."""
    if not port:
        return
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    server_class = type("Server", (_Server,), {"address_family": family})
    httpd: WSGIServer = make_server(host, port, wsgi_app(probes), server_class, handler_class=_QuietHandler)
    threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True).start()
