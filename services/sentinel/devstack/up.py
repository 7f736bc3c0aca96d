"""``sentinel up``: start the whole stack on embedded defaults and supervise it until Ctrl-C."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from sentinel.devstack.stack import SERVICES, Ports, Stack, StackError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, default=Path(os.environ.get("SENTINEL_DATA_DIR", ".sentinel")),
                   help="data, secrets and logs; kept across restarts (default ./.sentinel or $SENTINEL_DATA_DIR)")
    p.add_argument("--port", type=int, default=8000, help="Envoy REST + gRPC port (default 8000)")
    p.add_argument("--admin-port", type=int, default=9901, help="Envoy admin port (default 9901)")
    p.add_argument("--postgres-port", type=int, default=5432, help="embedded PostgreSQL port (default 5432)")
    p.add_argument("--redis-port", type=int, default=6379, help="embedded Redis port (default 6379)")
    p.add_argument("--prometheus-port", type=int, default=9090,
                   help="Prometheus port, when a prometheus binary is found (default 9090)")
    p.add_argument("--free-ports", action="store_true",
                   help="pick free ports for everything (a second stack beside the default one)")
    p.add_argument("--instances", action="append", default=[], metavar="SERVICE=N", type=_instances,
                   help="run N processes of a service behind Envoy, e.g. --instances user=2 (repeatable; "
                        "instance n listens on the first one's ports + 100 x (n - 1): user-2 on 50152)")


def _instances(value: str) -> tuple[str, int]:
    name, sep, count = value.partition("=")
    if not sep or name not in SERVICES or not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: expected SERVICE=N, SERVICE one of {', '.join(SERVICES)}")
    return name, int(count)


def endpoints(stack: Stack) -> str:
    lines = [
        "Sentinel is up.",
        f"  REST + gRPC (Envoy)  {stack.rest_url}   e.g. curl {stack.rest_url}/api/v1/health",
        f"  Envoy admin          http://{stack.host}:{stack.ports.envoy_admin}/",
    ]
    lines += [f"  {n + ' service':<20} {stack.service_target(n)}   metrics {stack.metrics_url(n)}"
              for n in stack.instance_names()]
    lines += [f"  {'job worker':<20} huey on Redis          metrics {stack.worker_metrics_url}"]
    if any(p.name == "prometheus" for p in stack.procs):
        lines += [f"  {'Prometheus':<20} {stack.prometheus_url}   (every process scraped, alerts/ rules loaded)"]
    lines += [
        f"  PostgreSQL           {stack.host}:{stack.ports.postgres} (database sentinel; "
        f"passwords in {stack.secrets_dir})",
        f"  Redis                {stack.host}:{stack.ports.redis}",
        f"  Logs                 {stack.logs_dir}/",
        "",
        stack.bootstrap_message,
        "",
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)


def run(ns: argparse.Namespace) -> int:
    ports = Ports.free() if ns.free_ports else Ports(postgres=ns.postgres_port, redis=ns.redis_port,
                                                     envoy=ns.port, envoy_admin=ns.admin_port,
                                                     prometheus=ns.prometheus_port)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Children run in their own sessions, so Ctrl-C reaches only us; we stop them in order.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack = Stack(ns.data_dir, ports=ports, echo=sys.stdout, instances=dict(ns.instances))
        print(f"starting Sentinel in {stack.data_dir}", flush=True)
        stack.start()
        stack.start_prometheus()
    except StackError as e:
        print(f"sentinel up: {e}", file=sys.stderr)
        return 1
    print(endpoints(stack), flush=True)
    code = 0
    while not stop.wait(0.5):
        gone = stack.exited()
        if gone is not None:
            print(f"sentinel up: {gone.name} exited with {gone.popen.returncode}; see {gone.log_path}. "
                  "Stopping the stack.", file=sys.stderr)
            code = 1
            break
    print("stopping...", flush=True)
    stack.stop()
    print("stopped", flush=True)
    return code
