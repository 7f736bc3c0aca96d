"""The whole Sentinel stack as child processes: Postgres, Redis, four services, Envoy.

Used by ``sentinel up`` (fixed dev ports, ``./.sentinel``), by the integration tests and by
the benchmark (free ports, a temporary directory). Everything a process needs that is secret
lives in files under ``<data>/secrets`` (0600) and is handed over as ``SENTINEL_*_FILE``, the
same way systemd credentials are in production.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sentinel.devstack.binaries import Binaries, resolve
from sentinel.platform.config import DEFAULT_PORTS
from sentinel.platform.keys import generate_signing_key, new_kid

SERVICES = ("tenant", "user", "audit", "scheduler")
DB_NAME = "sentinel"
OWNER_ROLE = "sentinel_owner"
APP_ROLE = "sentinel_app"
#: System user that owns and runs Postgres when we are root (Postgres refuses to run as root).
PG_SYSTEM_USER = os.environ.get("SENTINEL_POSTGRES_SYSTEM_USER", "sentinel")


class StackError(RuntimeError):
    pass


# Looked up once in the parent: the child between fork and exec may only make the call.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the supervisor dies, even by SIGKILL."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


#: Further instances of a service on fixed (dev) ports: instance n (2, 3, ...) takes the first
#: instance's gRPC and metrics ports + INSTANCE_PORT_STEP x (n - 1), e.g. user-2 on 50152, metrics 9202.
INSTANCE_PORT_STEP = 100


def instance_name(service: str, n: int) -> str:
    """The process name of instance ``n`` (1-based) of ``service``: ``user``, ``user-2``, ``user-3``..."""
    return service if n == 1 else f"{service}-{n}"


def service_of(name: str) -> str:
    """``user-2`` -> ``user``; any other name (``user``, ``worker``) is returned as is."""
    base, sep, n = name.rpartition("-")
    return base if sep and n.isdigit() and base in SERVICES else name


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Ports:
    postgres: int = 5432
    redis: int = 6379
    envoy: int = 8000
    envoy_admin: int = 9901
    grpc: Mapping[str, int] = field(default_factory=lambda: {n: p[0] for n, p in DEFAULT_PORTS.items()})
    metrics: Mapping[str, int] = field(default_factory=lambda: {n: p[1] for n, p in DEFAULT_PORTS.items()})
    worker_metrics: int = 9105
    prometheus: int = 9090  # only when `sentinel up` finds a Prometheus binary
    #: Ports of further instances (``user-2``...) not listed in grpc/metrics: free ones (True, as
    #: Ports.free() sets) or the first instance's + INSTANCE_PORT_STEP x (n - 1) (False).
    free_instances: bool = False

    @classmethod
    def free(cls) -> Ports:
        return cls(free_port(), free_port(), free_port(), free_port(),
                   {n: free_port() for n in DEFAULT_PORTS}, {n: free_port() for n in DEFAULT_PORTS}, free_port(),
                   prometheus=free_port(), free_instances=True)

    def with_instances(self, names: Iterable[str]) -> Ports:
        """These ports, plus a gRPC and a metrics port for every instance name (``user-2``) not listed yet."""
        grpc_ports, metrics_ports = dict(self.grpc), dict(self.metrics)
        for name in names:
            if name in grpc_ports:
                continue
            base, _, n = name.rpartition("-")
            if self.free_instances:
                grpc_ports[name], metrics_ports[name] = free_port(), free_port()
            else:
                step = INSTANCE_PORT_STEP * (int(n) - 1)
                grpc_ports[name], metrics_ports[name] = grpc_ports[base] + step, metrics_ports[base] + step
        return replace(self, grpc=grpc_ports, metrics=metrics_ports)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    stop_signal: int = signal.SIGTERM


class Stack:
    """Start with :meth:`start` (or use as a context manager); :meth:`stop` is idempotent."""

    def __init__(self, data_dir: Path, *, ports: Ports | None = None, host: str = "127.0.0.1",
                 env: Mapping[str, str] | None = None, echo: IO[str] | None = None,
                 instances: Mapping[str, int] | None = None) -> None:
        self.data_dir = data_dir.resolve()
        # How many processes of each service (default 1); Envoy balances over all of them.
        self.instances = {n: 1 for n in SERVICES}
        for name, count in (instances or {}).items():
            if name not in SERVICES or count < 1:
                raise ValueError(f"instances: {name}={count}: expected one of {', '.join(SERVICES)} = 1 or more")
            self.instances[name] = count
        self.ports = (ports or Ports()).with_instances(self.instance_names())
        self.host = host
        self.extra_env = dict(env or {})
        self.echo = echo  # progress lines go here (the CLI passes stdout)
        self.procs: list[Proc] = []
        self.bins: Binaries = resolve()
        self.admin_email = ""
        self.admin_password = ""
        self.bootstrap_message = ""

    # ----- paths and secrets
    @property
    def secrets_dir(self) -> Path:
        return self.data_dir / "secrets"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def pg_data(self) -> Path:
        return self.data_dir / "postgres"

    @property
    def audit_keys_dir(self) -> Path:
        """The audit service's checkpoint key; ``public/`` holds what verifiers need."""
        return self.secrets_dir / "audit"

    @property
    def service_keys_dir(self) -> Path:
        """Each service's own key (``<name>.key.pem``) for internal calls; ``public/`` for all."""
        return self.secrets_dir / "services"

    @property
    def keys_dir(self) -> Path:
        return self.secrets_dir / "jwt"

    @property
    def data_keys_dir(self) -> Path:
        """Per-tenant data keys (sentinel.platform.datakeys): the scheduler, the worker and the CLI."""
        return self.secrets_dir / "data-keys"

    def _secret(self, name: str, make: str | None = None) -> str:
        """Read ``secrets/<name>``, creating it (0600) with a random value on first use."""
        path = self.secrets_dir / name
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(make if make is not None else secrets.token_hex(24))
        return path.read_text().strip()

    def _write_secret(self, name: str, value: str) -> Path:
        path = self.secrets_dir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value)
        return path

    def _url(self, role: str, password: str, driver: str = "postgresql+asyncpg") -> str:
        return f"{driver}://{role}:{password}@{self.host}:{self.ports.postgres}/{DB_NAME}"

    @property
    def owner_url(self) -> str:
        return self._url(OWNER_ROLE, self._secret("db-owner.password"))

    @property
    def app_url(self) -> str:
        return self._url(APP_ROLE, self._secret("db-app.password"))

    @property
    def app_dsn(self) -> str:
        """The service role as a plain libpq/asyncpg DSN (benchmark baseline)."""
        return self._url(APP_ROLE, self._secret("db-app.password"), driver="postgresql")

    @property
    def redis_url(self) -> str:
        return f"redis://:{self._secret('redis.password')}@{self.host}:{self.ports.redis}/0"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.ports.envoy}"

    def instance_names(self, service: str | None = None) -> list[str]:
        """Process names of one service's instances (``user``, ``user-2``...), or of every service's."""
        services = [service] if service is not None else list(SERVICES)
        return [instance_name(s, n) for s in services for n in range(1, self.instances[s] + 1)]

    def service_target(self, name: str) -> str:
        """``host:port`` of a service's first instance (``user``) or of one instance (``user-2``)."""
        return f"{self.host}:{self.ports.grpc[name]}"

    def metrics_url(self, name: str) -> str:
        return f"http://{self.host}:{self.ports.metrics[name]}/metrics"

    def probe_url(self, name: str, probe: str = "readyz") -> str:
        """``/healthz`` or ``/readyz`` of a service instance (``user``, ``user-2``) or of ``worker``."""
        port = self.ports.worker_metrics if name == "worker" else self.ports.metrics[name]
        return f"http://{self.host}:{port}/{probe}"

    def pid(self, name: str) -> int:
        for p in self.procs:
            if p.name == name:
                return p.popen.pid
        raise KeyError(name)

    # ----- lifecycle
    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def say(self, line: str) -> None:
        if self.echo is not None:
            print(line, file=self.echo, flush=True)

    def start(self, timeout: float = 90.0) -> None:
        try:
            self._prepare_dirs()
            self._start_postgres(timeout)
            self._start_redis(timeout)
            self._migrate_and_bootstrap()
            self._start_services(timeout)
            self._start_envoy(timeout)
        except BaseException:
            self.stop()
            raise

    def _prepare_dirs(self) -> None:
        # 0711: a Postgres system user (when we are root) may traverse but not list.
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o711)
        self.secrets_dir.mkdir(mode=0o700, exist_ok=True)
        self.logs_dir.mkdir(exist_ok=True)
        (self.data_dir / "gateway").mkdir(exist_ok=True)
        self._secret("page-token.secret", secrets.token_urlsafe(48))
        if not (self.keys_dir / "public").is_dir() or not list(self.keys_dir.glob("*.key.pem")):
            self.keys_dir.mkdir(mode=0o700, exist_ok=True)
            generate_signing_key(self.keys_dir)
        if not list(self.audit_keys_dir.glob("*.key.pem")):  # signs audit checkpoints
            self.audit_keys_dir.mkdir(mode=0o700, exist_ok=True)
            generate_signing_key(self.audit_keys_dir, kid="audit-" + new_kid().removeprefix("key-"))
        self.service_keys_dir.mkdir(mode=0o700, exist_ok=True)
        for name in SERVICES:
            if not (self.service_keys_dir / f"{name}.key.pem").exists():
                generate_signing_key(self.service_keys_dir, kid=name)

    def _spawn(self, name: str, argv: list[str], *, env: Mapping[str, str] | None = None,
               user: str | None = None, stop_signal: int = signal.SIGTERM) -> Proc:
        log_path = self.logs_dir / f"{name}.log"
        log = log_path.open("ab")
        popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 env=dict(env) if env is not None else None, user=user,
                                 preexec_fn=_die_with_parent,
                                 start_new_session=True)  # Ctrl-C reaches us, we stop the children in order
        log.close()
        proc = Proc(name, popen, log_path, stop_signal)
        self.procs.append(proc)
        return proc

    def _check_alive(self, proc: Proc) -> None:
        if proc.popen.poll() is not None:
            tail = proc.log_path.read_text(errors="replace")[-3000:]
            raise StackError(f"{proc.name} exited with {proc.popen.returncode}; log {proc.log_path}:\n{tail}")

    # ----- Postgres
    def _pg_user(self) -> str | None:
        if os.geteuid() != 0:
            return None
        try:
            pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            self.say(f"running as root: creating system user {PG_SYSTEM_USER!r} to own Postgres")
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                            PG_SYSTEM_USER], check=True)
        return PG_SYSTEM_USER

    def _pg_run(self, argv: list[str], user: str | None) -> None:
        out = subprocess.run(argv, user=user, capture_output=True, text=True, cwd="/", check=False)
        if out.returncode != 0:
            raise StackError(f"{' '.join(argv[:2])} failed: {out.stdout}{out.stderr}")

    def _start_postgres(self, timeout: float) -> None:
        user = self._pg_user()
        superpw = self._secret("db-superuser.password")
        if not (self.pg_data / "PG_VERSION").exists():
            self.say(f"initialising PostgreSQL in {self.pg_data}")
            self.pg_data.mkdir(mode=0o700, exist_ok=True)
            pwfile = self.data_dir / "initdb.pw"  # 0600, handed to the Postgres user for initdb only
            fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(superpw)
            if user:
                info = pwd.getpwnam(user)
                for p in (self.pg_data, pwfile):
                    os.chown(p, info.pw_uid, info.pw_gid)
            try:
                self._pg_run([str(self.bins.postgres_bin_dir / "initdb"), "-D", str(self.pg_data), "-U", "postgres",
                              "--pwfile", str(pwfile), "--auth=scram-sha-256", "-E", "UTF8",
                              "--locale=C"], user)
            finally:
                pwfile.unlink(missing_ok=True)
        elif user:
            info = pwd.getpwnam(user)
            if self.pg_data.stat().st_uid != info.pw_uid:
                raise StackError(f"{self.pg_data} is not owned by {user}")
        argv = [str(self.bins.postgres_bin_dir / "postgres"), "-D", str(self.pg_data),
                "-c", f"listen_addresses={self.host}", "-c", f"port={self.ports.postgres}",
                "-c", "unix_socket_directories=", "-c", "max_connections=200",
                "-c", "password_encryption=scram-sha-256", "-c", "fsync=on"]
        proc = self._spawn("postgres", argv, user=user, stop_signal=signal.SIGINT)  # SIGINT: fast shutdown
        self._wait(lambda: self._pg_ready(superpw), proc, timeout, "PostgreSQL")
        self._ensure_roles(superpw)

    def _pg_ready(self, superpw: str) -> bool:
        import asyncio

        import asyncpg

        async def probe() -> None:
            conn = await asyncpg.connect(host=self.host, port=self.ports.postgres, user="postgres",
                                         password=superpw, database="postgres", timeout=2)
            await conn.close()

        try:
            asyncio.run(probe())
            return True
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False

    def _ensure_roles(self, superpw: str) -> None:
        """Owner role (owns the schema, runs migrations) and service role (no BYPASSRLS, owns nothing)."""
        import asyncio

        import asyncpg

        owner_pw, app_pw = self._secret("db-owner.password"), self._secret("db-app.password")

        async def run() -> None:
            conn = await asyncpg.connect(host=self.host, port=self.ports.postgres, user="postgres",
                                         password=superpw, database="postgres")
            try:
                for role, pw in ((OWNER_ROLE, owner_pw), (APP_ROLE, app_pw)):
                    exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
                    verb = "ALTER" if exists else "CREATE"
                    # Passwords are hex (no quotes possible); DDL takes no bind parameters.
                    await conn.execute(f"{verb} ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                                       f"NOBYPASSRLS PASSWORD '{pw}'")
                if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DB_NAME):
                    await conn.execute(f"CREATE DATABASE {DB_NAME} OWNER {OWNER_ROLE}")
                await conn.execute(f"REVOKE ALL ON DATABASE {DB_NAME} FROM PUBLIC")
                await conn.execute(f"GRANT CONNECT ON DATABASE {DB_NAME} TO {APP_ROLE}")
            finally:
                await conn.close()
            conn = await asyncpg.connect(host=self.host, port=self.ports.postgres, user="postgres",
                                         password=superpw, database=DB_NAME)
            try:
                await conn.execute(f"ALTER SCHEMA public OWNER TO {OWNER_ROLE}; "
                                   "REVOKE CREATE ON SCHEMA public FROM PUBLIC")
            finally:
                await conn.close()

        asyncio.run(run())

    # ----- Redis
    def _start_redis(self, timeout: float) -> None:
        rdir = self.data_dir / "redis"
        rdir.mkdir(mode=0o700, exist_ok=True)
        conf = self._write_secret("redis.conf", "\n".join([
            f"bind {self.host}", f"port {self.ports.redis}", "protected-mode yes",
            f"requirepass {self._secret('redis.password')}", f"dir {rdir}", "appendonly yes",
            "daemonize no", "loglevel warning", ""]))
        proc = self._spawn("redis", [str(self.bins.redis_server), str(conf)])
        self._wait(self._redis_ready, proc, timeout, "Redis")

    def start_redis(self, timeout: float = 30.0) -> None:
        """Start Redis again (after ``kill_service("redis")``; fault tests)."""
        self._start_redis(timeout)

    def _redis_ready(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.redis_url, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    # ----- Sentinel
    @property
    def rate_limits(self) -> dict[str, Any]:
        """``SENTINEL_RATE_LIMITS`` of this stack: the services and Envoy's address tier read the same."""
        raw = self.extra_env.get("SENTINEL_RATE_LIMITS") or os.environ.get("SENTINEL_RATE_LIMITS") or "{}"
        value = json.loads(raw)
        if not isinstance(value, dict):
            raise StackError("SENTINEL_RATE_LIMITS must be a JSON object")
        return value

    def service_env(self, name: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
        env.update({
            "SENTINEL_DATABASE_URL_FILE": str(self._write_secret("database-url", self.app_url)),
            "SENTINEL_DATABASE_OWNER_URL_FILE": str(self._write_secret("database-owner-url", self.owner_url)),
            "SENTINEL_REDIS_URL_FILE": str(self._write_secret("redis-url", self.redis_url)),
            "SENTINEL_PAGE_TOKEN_SECRET_FILE": str(self.secrets_dir / "page-token.secret"),
            "SENTINEL_JWT_PUBLIC_KEYS_DIR": str(self.keys_dir / "public"),
            "SENTINEL_SERVICE_PUBLIC_KEYS_DIR": str(self.service_keys_dir / "public"),
            "SENTINEL_GRPC_HOST": self.host,
            "SENTINEL_METRICS_HOST": self.host,
            # Peers call a service's first instance (``user``), never ``user-2``...: only Envoy
            # balances over the instances. (A gRPC target "ipv4:a:p1,b:p2" could list them all.)
            **{f"SENTINEL_{n.upper()}_ADDR": self.service_target(n) for n in SERVICES},
        })
        if name is None or service_of(name) == "scheduler":  # the worker and the CLI have no name
            env["SENTINEL_DATA_KEY_DIR"] = str(self.data_keys_dir)
        if name is not None:  # a process name: ``user`` or ``user-2`` both run the user service
            service = service_of(name)
            env["SENTINEL_SERVICE"] = service
            env["SENTINEL_GRPC_PORT"] = str(self.ports.grpc[name])
            env["SENTINEL_METRICS_PORT"] = str(self.ports.metrics[name])
            env["SENTINEL_SERVICE_KEY_FILE"] = str(self.service_keys_dir / f"{service}.key.pem")
            if service == "user":  # only the user service holds the signing keys
                env["SENTINEL_JWT_SIGNING_KEYS_DIR"] = str(self.keys_dir)
            if service == "audit":
                env["SENTINEL_AUDIT_SIGNING_KEY_FILE"] = str(sorted(self.audit_keys_dir.glob("*.key.pem"))[-1])
        env.update(self.extra_env)
        return env

    def _sentinel(self, *args: str) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([sys.executable, "-m", "sentinel", *args], env=self.service_env(),
                             capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise StackError(f"sentinel {' '.join(args)} failed:\n{out.stdout}{out.stderr[-4000:]}")
        return out

    def _migrate_and_bootstrap(self) -> None:
        self.say("applying migrations")
        self._sentinel("migrate", "--app-role", APP_ROLE)
        email = self.extra_env.get("SENTINEL_BOOTSTRAP_ADMIN_EMAIL") or os.environ.get(
            "SENTINEL_BOOTSTRAP_ADMIN_EMAIL", "")
        password = self.extra_env.get("SENTINEL_BOOTSTRAP_ADMIN_PASSWORD") or os.environ.get(
            "SENTINEL_BOOTSTRAP_ADMIN_PASSWORD", "")
        args = ["admin", "bootstrap"] + (["--email", email] if email else [])
        out = subprocess.run([sys.executable, "-m", "sentinel", *args],
                             env={**self.service_env(), "SENTINEL_BOOTSTRAP_ADMIN_PASSWORD": password},
                             capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise StackError(f"sentinel admin bootstrap failed:\n{out.stdout}{out.stderr[-4000:]}")
        self.bootstrap_message = out.stdout.strip()
        # "platform admin <email> created|exists[ with generated password: <pw>]"
        words = self.bootstrap_message.split()
        self.admin_email = email or words[2]
        self.admin_password = password or (words[words.index("password:") + 1] if "password:" in words else "")

    def _start_services(self, timeout: float) -> None:
        procs = {n: self._spawn_service(n) for n in self.instance_names()}
        for n, proc in procs.items():
            self._wait(functools.partial(self._grpc_serving, self.service_target(n)), proc, timeout, f"{n} service")
        self.start_worker(timeout)

    @property
    def prometheus_url(self) -> str:
        return f"http://{self.host}:{self.ports.prometheus}"

    def start_prometheus(self, timeout: float = 60.0) -> bool:
        """Prometheus scraping every process of this stack with the generated rules loaded, when a
        binary is found (``SENTINEL_PROMETHEUS_BIN``, then ``PATH``; e.g. Debian's ``prometheus``).

        False (and says why) when there is none: the stack runs fine without it. Same job names
        as production (sentinel.observability.config), so the dashboards and rules apply as-is.
        """
        import yaml

        from sentinel.observability import config

        binary = os.environ.get("SENTINEL_PROMETHEUS_BIN") or shutil.which("prometheus")
        if not binary:
            self.say("  Prometheus not found (install it, e.g. Debian's `prometheus`, or set "
                     "SENTINEL_PROMETHEUS_BIN): not started")
            return False
        rules_dir = Path(__file__).resolve().parents[3] / "alerts" / "generated"  # a checkout; not in a wheel
        rule_files = sorted(str(p) for p in rules_dir.glob(config.RULES_GLOB)) if rules_dir.is_dir() else []
        if not rule_files:
            self.say(f"  no generated rules in {rules_dir}: Prometheus starts without recording rules and alerts")
        home = self.data_dir / "prometheus"
        home.mkdir(exist_ok=True)
        conf = home / "prometheus.yml"
        conf.write_text(yaml.safe_dump(config.prometheus_config(
            config.stack_jobs(self), scrape_interval="15s", evaluation_interval="15s", rule_files=rule_files),
            sort_keys=False))
        proc = self._spawn("prometheus", [binary, f"--config.file={conf}", f"--storage.tsdb.path={home / 'data'}",
                                          f"--web.listen-address={self.host}:{self.ports.prometheus}",
                                          config.PROMETHEUS_RETENTION_FLAG, "--log.level=warn"])
        self._wait(lambda: self._http_ok(f"{self.prometheus_url}/-/ready"), proc, timeout, "Prometheus")
        return True

    def start_worker(self, timeout: float = 60.0) -> None:
        """The job consumer (huey): ready once its metrics endpoint answers."""
        env = {**self.service_env(), "SENTINEL_WORKER_METRICS_PORT": str(self.ports.worker_metrics),
               "SENTINEL_AUDIT_PUBLIC_KEY_FILE": str(sorted((self.audit_keys_dir / "public").glob("*.pub.pem"))[-1])}
        proc = self._spawn("worker", [sys.executable, "-m", "sentinel", "worker"], env=env)
        self._wait(lambda: self._http_ok(self.probe_url("worker")), proc, timeout, "job worker")

    @property
    def worker_metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports.worker_metrics}/metrics"

    def _spawn_service(self, name: str) -> Proc:
        """Start one instance (``user``, ``user-2``...); its log is ``logs/<name>.log``."""
        return self._spawn(name, [sys.executable, "-m", "sentinel", "serve", service_of(name)],
                           env=self.service_env(name))

    def kill_service(self, name: str) -> None:
        """SIGKILL one process, no draining (fault tests: a crash, not a shutdown). A service's
        name is its first instance (``user``); ``user-2`` etc. name the others."""
        for proc in [p for p in self.procs if p.name == name]:
            proc.popen.kill()
            proc.popen.wait()
            self.procs.remove(proc)

    def start_service(self, name: str, timeout: float = 60.0) -> None:
        """Start one service again (after :meth:`kill_service`) and wait until it serves."""
        proc = self._spawn_service(name)
        self._wait(functools.partial(self._grpc_serving, self.service_target(name)), proc, timeout, f"{name} service")

    @staticmethod
    def _grpc_serving(target: str) -> bool:
        with grpc.insecure_channel(target) as ch:
            try:
                reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            except grpc.RpcError:
                return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def _start_envoy(self, timeout: float) -> None:
        from sentinel.gateway import openapi
        from sentinel.gateway.envoy import GatewayConfig, envoy_args, render_yaml, write_descriptor_set

        gw = self.data_dir / "gateway"
        descriptor = write_descriptor_set(gw / "sentinel.pb")
        # GET /openapi.json and /docs: Envoy serves these files (written before it starts).
        docs_dir: Path | None = None
        if openapi.docs_template().is_file():
            openapi.write_docs(gw)
            docs_dir = gw
        else:  # an installed wheel carries no gateway/docs/
            self.say(f"  {openapi.DOCS_TEMPLATE} not found: no /openapi.json or /docs")
        upstreams = {n: [self.service_target(i) for i in self.instance_names(n)] for n in SERVICES}
        cfg = GatewayConfig(upstreams=upstreams,
                            descriptor_set_path=descriptor, listen_host=self.host,
                            listen_port=self.ports.envoy, admin_host=self.host,
                            admin_port=self.ports.envoy_admin,
                            access_log_path=str(self.logs_dir / "envoy-access.log"), docs_dir=docs_dir,
                            rate_limits=self.rate_limits)
        conf = gw / "envoy.yaml"
        conf.write_text(render_yaml(cfg))
        proc = self._spawn("envoy", [str(self.bins.envoy), *envoy_args(conf, log_level="warn")])
        self._wait(lambda: self._http_ok(f"http://{self.host}:{self.ports.envoy_admin}/ready"), proc, timeout,
                   "Envoy")
        self._wait(lambda: self._http_ok(f"{self.rest_url}/api/v1/health"), proc, timeout,
                   "Envoy → services (GET /api/v1/health)")

    @staticmethod
    def _http_ok(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - our own loopback URL
                return bool(r.status == 200)
        except OSError:
            return False

    def _wait(self, ready: Callable[[], bool], proc: Proc, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive(proc)
            if ready():
                self.say(f"  {what} ready")
                return
            time.sleep(0.2)
        raise StackError(f"{what} not ready after {timeout:.0f}s; log {proc.log_path}")

    # ----- supervision and shutdown
    def exited(self) -> Proc | None:
        """The first child that has exited, if any."""
        return next((p for p in self.procs if p.popen.poll() is not None), None)

    def stop(self, grace: float = 15.0) -> None:
        # Reverse start order: the edge first, the databases last.
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.popen.send_signal(proc.stop_signal)
                try:
                    proc.popen.wait(grace)
                except subprocess.TimeoutExpired:
                    proc.popen.kill()
                    proc.popen.wait()
        self.procs.clear()


@contextlib.contextmanager
def temporary_stack(env: Mapping[str, str] | None = None, echo: IO[str] | None = None,
                    instances: Mapping[str, int] | None = None) -> Iterator[Stack]:
    """A stack on free ports in a fresh directory, removed afterwards (tests, benchmark)."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="sentinel-stack-"))
    base.chmod(0o711)
    try:
        with Stack(base / "data", ports=Ports.free(), env=env, echo=echo, instances=instances) as stack:
            yield stack
    finally:
        shutil.rmtree(base, ignore_errors=True)


__all__ = ["Ports", "Stack", "StackError", "free_port", "instance_name", "service_of", "temporary_stack"]
