"""Typed configuration from the environment and files.

Every setting is ``SENTINEL_<NAME>`` in the environment. Secrets are never required inline:
any setting can instead be given as ``SENTINEL_<NAME>_FILE`` naming a file whose contents
are the value; a relative path is resolved under ``$CREDENTIALS_DIRECTORY`` (systemd
``LoadCredential``) when that is set.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "SENTINEL_"

#: Dev-stack default ports (DESIGN.md §2).
DEFAULT_PORTS: dict[str, tuple[int, int]] = {
    "tenant": (50051, 9101),
    "user": (50052, 9102),
    "audit": (50053, 9103),
    "scheduler": (50054, 9104),
}


def read_secret_file(path: str) -> str:
    p = Path(path)
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if not p.is_absolute() and creds:
        p = Path(creds) / p
    return p.read_text().strip()


class Settings(BaseSettings):
    """Settings shared by every Sentinel process."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # --- identity of this process
    service: str = "tenant"
    version: str = "0.1.0"
    log_level: str = "INFO"

    # --- tracing (OpenTelemetry, docs/observability.md): spans are exported over OTLP/gRPC to this
    # endpoint (e.g. http://collector:4317), or to the standard OTEL_EXPORTER_OTLP_TRACES_ENDPOINT /
    # OTEL_EXPORTER_OTLP_ENDPOINT. "auto": trace only when an endpoint is set; "on": trace without one
    # too (trace ids in logs and audit events, nothing sent); "off": never.
    tracing: Literal["auto", "on", "off"] = "auto"
    otlp_endpoint: str = ""

    # --- network
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 0  # 0: the service's default from DEFAULT_PORTS
    metrics_host: str = "127.0.0.1"
    metrics_port: int = -1  # -1: the default; 0: no metrics endpoint
    # Peer services (host:port), used for service-to-service calls and aggregated health.
    tenant_addr: str = "127.0.0.1:50051"
    user_addr: str = "127.0.0.1:50052"
    audit_addr: str = "127.0.0.1:50053"
    scheduler_addr: str = "127.0.0.1:50054"

    # --- data stores
    # Service role (no BYPASSRLS, owns nothing), SQLAlchemy URL with the asyncpg driver.
    database_url: SecretStr = SecretStr("")
    # Owner role, used only by migrations.
    database_owner_url: SecretStr = SecretStr("")
    database_pool_size: int = 10
    database_max_overflow: int = 5
    database_pool_recycle_seconds: int = 1800
    redis_url: SecretStr = SecretStr("")

    # --- tokens
    jwt_issuer: str = "sentinel"
    jwt_audience: str = "sentinel-api"
    # Directory of Ed25519 public keys named <kid>.pub.pem; every service verifies with them.
    jwt_public_keys_dir: Path | None = None
    # Ed25519 private key <kid>.key.pem used to sign; only the user service needs it.
    jwt_signing_key_file: Path | None = None
    # Or a directory of <kid>.key.pem: the user service signs with the newest key whose public key
    # has been in jwt_public_keys_dir for jwt_key_activation_seconds (rotation without restarts).
    jwt_signing_keys_dir: Path | None = None
    # Must exceed every service's key reload (jwt_keys_reload_seconds) and Envoy's JWKS cache (300 s).
    jwt_key_activation_seconds: float = Field(default=330.0, ge=0)
    # How often (at most) the public key directory is read again for rotated keys.
    jwt_keys_reload_seconds: float = Field(default=10.0, gt=0)
    access_token_ttl_seconds: int = 600
    refresh_token_ttl_seconds: int = 30 * 24 * 3600
    # A refresh token presented again this soon after its rotation is a client's concurrent
    # refresh (refused, the session kept); later it is reuse of a stolen copy (session ended).
    refresh_reuse_grace_seconds: float = Field(default=2.0, ge=0)
    # Secret for signing page tokens (32+ bytes); give it as SENTINEL_PAGE_TOKEN_SECRET_FILE.
    page_token_secret: SecretStr = SecretStr("")

    # --- passwords (argon2id); RFC 9106 second recommended option by default
    argon2_time_cost: int = Field(default=3, ge=1)
    argon2_memory_cost_kib: int = Field(default=65536, ge=8)
    argon2_parallelism: int = Field(default=4, ge=1)
    password_min_length: int = 12

    # --- plan limits: users per tenant by plan (JSON, e.g. {"free": 10}); a plan not listed is unlimited
    plan_max_users: dict[str, int] = Field(default_factory=lambda: {"free": 10, "standard": 250,
                                                                    "enterprise": 100_000})
    # Usable (not revoked, not expired) API keys per tenant by plan (JSON).
    plan_max_api_keys: dict[str, int] = Field(default_factory=lambda: {"free": 5, "standard": 100,
                                                                       "enterprise": 10_000})
    # On-demand jobs pending or running at once per tenant by plan (JSON): the worker is shared, and
    # one tenant's queue must not starve the others'.
    plan_max_active_jobs: dict[str, int] = Field(default_factory=lambda: {"free": 5, "standard": 25,
                                                                          "enterprise": 100})

    # --- rate limits: overrides merged over sentinel.ratelimit.rules.DEFAULT_RATE_LIMITS (JSON, e.g.
    # {"tenant": {"free": {"write": "300/minute"}}}). The services count the tenant and principal
    # tiers (in Redis); the gateway generator turns the address tier into Envoy's local buckets.
    rate_limits: dict[str, Any] = Field(default_factory=dict)
    # False: the services count nothing (the gateway's own switch governs the address tier).
    rate_limits_enabled: bool = True
    # How long a tenant's plan is reused before it is read again.
    rate_limit_cache_seconds: float = Field(default=30.0, ge=0)
    # A limiter call to Redis slower than this fails open (admitted, counted as an error) for 1 s.
    rate_limit_redis_timeout_seconds: float = Field(default=0.25, gt=0, le=10)

    # --- invitations: how long an invitation token stays valid (and again after each resend)
    invitation_ttl_hours: float = Field(default=72.0, gt=0)

    # --- audit: the audit service's Ed25519 key that signs chain-head checkpoints, and how often
    audit_signing_key_file: Path | None = None
    # Its public half, for whoever checks checkpoints without signing them (the daily audit_verify job).
    audit_public_key_file: Path | None = None
    audit_checkpoint_seconds: float = Field(default=300.0, gt=0)
    # Every service records audit events in an outbox table in the same transaction as the change,
    # and drains it to the audit service in batches: at once after a commit, and at least this often.
    audit_outbox_poll_seconds: float = Field(default=1.0, gt=0)
    audit_outbox_batch: int = Field(default=500, ge=1, le=5000)
    # --- per-tenant usage (tenant SLOs, noisy neighbours): every process adds its counts to the
    # database this often; minute rows are kept for the burn-rate windows, hour rows for the budget.
    usage_flush_seconds: float = Field(default=10.0, gt=0, le=300)
    usage_minute_retention_hours: int = Field(default=48, ge=7, le=24 * 14)
    usage_hour_retention_days: int = Field(default=35, ge=31, le=400)
    # A tenant taking at least this share of the handling time or of the database time while other
    # tenants burn their error budget is reported as a noisy neighbour.
    noisy_neighbour_share: float = Field(default=0.3, gt=0, le=1)
    # Off only for measuring what recording costs (bench/audit.py); a warning is logged at start.
    audit_recording: bool = True

    # --- service identity: this service's Ed25519 key (<name>.key.pem) for internal calls, and the
    # directory of every service's public key (<name>.pub.pem)
    service_key_file: Path | None = None
    service_public_keys_dir: Path | None = None

    # --- notifications (scheduler): a Slack incoming webhook and/or SMTP. Secrets by *_FILE; never logged.
    notify_slack_webhook_url: SecretStr = SecretStr("")
    notify_smtp_host: str = ""
    notify_smtp_port: int = Field(default=587, ge=1, le=65535)
    notify_smtp_username: str = ""
    notify_smtp_password: SecretStr = SecretStr("")
    notify_smtp_from: str = ""
    # Recipients as a JSON list, e.g. ["oncall@example.com"].
    notify_smtp_to: list[str] = Field(default_factory=list)
    # "starttls" (port 587), "tls" (implicit TLS, port 465) or "none" (local relays and tests only).
    notify_smtp_security: str = "starttls"
    notify_retries: int = Field(default=3, ge=0, le=10)
    # Record messages (and log that they would be sent) instead of sending them.
    notify_test_mode: bool = False

    # --- background jobs (huey on Redis): worker threads per consumer, each job's time limit (a job
    # over it is retried), retry backoff base (doubling per attempt), the largest result stored
    job_worker_threads: int = Field(default=2, ge=1, le=64)
    job_timeout_seconds: int = Field(default=600, ge=1, le=86400)
    job_retry_base_seconds: float = Field(default=2.0, gt=0)
    job_max_result_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    # Periodic jobs' schedules, overriding the defaults by name (JSON, cron strings or "off"),
    # e.g. {"slo_report": "0 8 * * *", "health_check": "off"}.
    periodic_schedules: dict[str, str] = Field(default_factory=dict)
    worker_metrics_port: int = 9105

    # --- Prometheus HTTP API the SLO report and burn-rate watch query
    prometheus_url: str = "http://127.0.0.1:9090"

    # --- per-tenant data keys (sentinel.platform.datakeys): job results are sealed with the tenant's
    # key and the purge destroys it. A directory on the host, never in (or backed up with) Postgres.
    # None: results are stored unsealed and a purge receipt says no key was destroyed.
    data_key_dir: Path | None = None

    # --- tenant lifecycle: days between DeleteTenant and the purge (RestoreTenant undoes it until then)
    tenant_deletion_grace_days: float = Field(default=30.0, ge=0)
    # Every service re-reads the non-active tenants from Postgres this often, in case a state
    # change announced over Redis was missed (it is applied at once when it is not).
    tenant_states_resync_seconds: float = Field(default=30.0, gt=0)

    # --- brute-force protection (Redis): failures counted per account and per client IP in a
    # window; at the limit the account (or IP) is locked, the lock doubling with each failure.
    login_max_failures: int = Field(default=5, ge=1)
    login_max_failures_per_ip: int = Field(default=50, ge=1)
    login_failure_window_seconds: int = Field(default=900, ge=1)
    login_lock_seconds: float = Field(default=30.0, gt=0)
    login_max_lock_seconds: float = Field(default=3600.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _resolve_files(cls, data: Any) -> Any:
        """Fill ``X`` from ``SENTINEL_X_FILE`` when ``X`` itself is not set (or set empty)."""
        if not isinstance(data, dict):
            return data
        for key, value in os.environ.items():
            if key.startswith(ENV_PREFIX) and key.endswith("_FILE") and value:
                name = key[len(ENV_PREFIX) : -len("_FILE")].lower()
                # An empty SENTINEL_X arrives here as "": it must not shadow the file.
                if (name in cls.model_fields and not os.environ.get(ENV_PREFIX + name.upper())
                        and data.get(name) in (None, "")):
                    data[name] = read_secret_file(value)
        return data

    @property
    def resolved_grpc_port(self) -> int:
        return self.grpc_port or DEFAULT_PORTS.get(self.service, (50050, 0))[0]

    @property
    def resolved_metrics_port(self) -> int:
        if self.metrics_port >= 0:
            return self.metrics_port
        return DEFAULT_PORTS.get(self.service, (0, 0))[1]

    def peer(self, service: str) -> str:
        return str(getattr(self, f"{service}_addr"))


@cache
def get_settings() -> Settings:
    return Settings()
