"""The ``sentinel`` command: run services, migrate, administer, and start the dev stack."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Literal

SERVICES = ("tenant", "user", "audit", "scheduler")


def _serve(ns: argparse.Namespace) -> int:
    os.environ["SENTINEL_SERVICE"] = ns.service
    from sentinel.platform.server import run_service

    return run_service(ns.service)


def _worker(ns: argparse.Namespace) -> int:
    from redis import Redis

    from sentinel.platform import logging as json_logging
    from sentinel.platform import probes, redis_metrics, tracing
    from sentinel.platform.config import get_settings
    from sentinel.scheduler import periodic, queue

    settings = get_settings()
    json_logging.configure("worker", settings.log_level)
    tracing.setup("worker", settings)
    redis_metrics.instrument("worker")
    periodic.validate_schedules(settings)
    # Ready when its queue (Redis) answers, asked with short timeouts (huey's own pool has none).
    redis_probe = Redis.from_url(settings.redis_url.get_secret_value(), socket_timeout=1.0,
                                 socket_connect_timeout=1.0)
    probes.serve(settings.metrics_host, settings.worker_metrics_port,
                 probes.SyncProbes("worker", [probes.sync_check("redis", redis_probe.ping)]))
    queue.run_consumer(settings)
    tracing.shutdown()
    return 0


def _jobs_list(ns: argparse.Namespace) -> int:
    from sqlalchemy import select, text

    from sentinel.platform import db
    from sentinel.platform.auth import PLATFORM_TENANT_ID
    from sentinel.platform.config import get_settings
    from sentinel.scheduler import periodic
    from sentinel.scheduler.models import JobRow

    async def run() -> int:
        settings = get_settings()
        db.init(settings)
        try:
            if ns.periodic:
                last = await periodic.last_runs()
                for job in periodic.JOBS_BY_NAME.values():
                    run_row = last.get(job.name)
                    seen = f"{run_row.state} at {run_row.start_time:%Y-%m-%d %H:%M}" if run_row else "never run"
                    print(f"{job.name:<16} {periodic.schedule_of(settings, job) or 'off':<14} {seen:<34} "
                          f"{job.description}")
                return 0
            async with db.unit_of_work(tenant_id=PLATFORM_TENANT_ID, platform=True) as session:
                tenant = None
                if ns.tenant:
                    tenant = (await session.execute(text("SELECT id FROM tenants WHERE slug = :s"),
                                                    {"s": ns.tenant})).scalar()
                    if tenant is None:
                        print(f"sentinel jobs list: no tenant with slug '{ns.tenant}'", file=sys.stderr)
                        return 2
                query = select(JobRow).order_by(JobRow.create_time.desc()).limit(ns.limit)
                if tenant is not None:
                    query = query.where(JobRow.tenant_id == tenant)
                if ns.state:
                    query = query.where(JobRow.state == ns.state)
                rows = list(await session.scalars(query))
            for r in rows:
                print(f"{r.id}  {r.tenant_id}  {r.kind:<14} {r.state:<12} attempts {r.attempts}/{r.max_attempts}  "
                      f"{r.create_time:%Y-%m-%d %H:%M:%S}  {r.error[:80]}")
            return 0
        finally:
            await db.dispose()

    return asyncio.run(run())


def _jobs_run_now(ns: argparse.Namespace) -> int:
    from sentinel.platform import db
    from sentinel.platform.config import get_settings
    from sentinel.scheduler import periodic

    async def run() -> int:
        settings = get_settings()
        if ns.name not in periodic.JOBS_BY_NAME:
            print(f"sentinel jobs run-now: no periodic job '{ns.name}' (known: {', '.join(periodic.JOBS_BY_NAME)})",
                  file=sys.stderr)
            return 2
        db.init(settings)
        try:
            run_id = await periodic.start_manual(ns.name)
            state = await periodic.run_manual(settings, ns.name, run_id)
        finally:
            await db.dispose()
        print(f"{ns.name}: {state} (run {run_id})")
        return 0 if state == "succeeded" else 1

    return asyncio.run(run())


def _jobs_cancel(ns: argparse.Namespace) -> int:
    import uuid

    from sqlalchemy import text

    from sentinel.platform import db
    from sentinel.platform.auth import PLATFORM_TENANT_ID
    from sentinel.platform.config import get_settings

    async def run() -> int:
        db.init(get_settings())
        try:
            async with db.unit_of_work(tenant_id=PLATFORM_TENANT_ID, platform=True) as session:
                row = (await session.execute(text(
                    "UPDATE jobs SET state = 'cancelled', end_time = now(), lease_until = NULL, update_time = now(), "
                    "version = version + 1 WHERE id = :id AND state IN ('pending', 'running') RETURNING tenant_id"),
                    {"id": uuid.UUID(ns.id)})).first()
        finally:
            await db.dispose()
        if row is None:
            print(f"sentinel jobs cancel: no pending or running job {ns.id}", file=sys.stderr)
            return 1
        print(f"job {ns.id} cancelled")
        return 0

    return asyncio.run(run())


def _migrate(ns: argparse.Namespace) -> int:
    from sentinel.platform.config import get_settings
    from sentinel.platform.migrate import upgrade

    settings = get_settings()
    url = ns.database_url or settings.database_owner_url.get_secret_value()
    if not url:
        print("sentinel migrate: set SENTINEL_DATABASE_OWNER_URL (or _FILE) or pass --database-url",
              file=sys.stderr)
        return 2
    upgrade(url, app_role=ns.app_role)
    print("migrations applied")
    return 0


def _admin_bootstrap(ns: argparse.Namespace) -> int:
    from sentinel.platform.config import get_settings
    from sentinel.user.bootstrap import ensure_platform_admin

    email = ns.email or os.environ.get("SENTINEL_BOOTSTRAP_ADMIN_EMAIL")
    password = os.environ.get("SENTINEL_BOOTSTRAP_ADMIN_PASSWORD")
    password_file = os.environ.get("SENTINEL_BOOTSTRAP_ADMIN_PASSWORD_FILE")
    if not password and password_file:  # like every setting: relative to $CREDENTIALS_DIRECTORY
        from sentinel.platform.config import read_secret_file

        password = read_secret_file(password_file)
    result = asyncio.run(ensure_platform_admin(get_settings(), email, password))
    print(result.describe())
    return 0


def _admin_purge_tenants(ns: argparse.Namespace) -> int:
    from sentinel.platform import db, kv
    from sentinel.platform.config import get_settings
    from sentinel.tenant.purge import purge_due

    async def run() -> int:
        settings = get_settings()
        db.init(settings)
        try:
            report = await purge_due(settings, batch=ns.batch)
        finally:
            await kv.close()
            await db.dispose()
        print(f"purged {len(report.tenants)} tenant(s), {report.rows} row(s) deleted")
        for tenant_id in report.tenants:
            print(f"  {tenant_id}")
        return 0

    return asyncio.run(run())


def _admin_import_users(ns: argparse.Namespace) -> int:
    from sentinel.platform import db
    from sentinel.platform.config import get_settings
    from sentinel.platform.errors import SentinelError
    from sentinel.user.importer import ImportRefused, import_users

    async def run() -> int:
        settings = get_settings()
        db.init(settings)
        try:
            count = await import_users(settings, ns.tenant, ns.file.read_text(encoding="utf-8"))
        except (ImportRefused, SentinelError) as e:
            problems = e.problems if isinstance(e, ImportRefused) else [e.message]
            print("sentinel admin import-users: nothing imported:", *problems, sep="\n  ", file=sys.stderr)
            return 2
        finally:
            await db.dispose()
        print(f"imported {count} user(s) into {ns.tenant}; their passwords are upgraded to argon2id at login")
        return 0

    return asyncio.run(run())


def _admin_audit_retention(ns: argparse.Namespace) -> int:
    from sentinel.audit import retention
    from sentinel.platform import db
    from sentinel.platform.config import get_settings

    async def run() -> int:
        db.init(get_settings())
        try:
            report = await retention.apply(batch=ns.batch)
        finally:
            await db.dispose()
        print(f"deleted {report.deleted} audit event(s) past retention in {len(report.cut_through)} tenant(s)")
        for tenant_id, sequence in report.cut_through.items():
            print(f"  {tenant_id}: the chain now starts after the checkpoint at {sequence}")
        return 0

    return asyncio.run(run())


def _admin_tenant_usage(ns: argparse.Namespace) -> int:
    """The noisy-neighbour ranking (RankTenantUsage) for on-call, straight from the database."""
    import datetime as dt

    from google.protobuf import json_format

    from sentinel.platform import db
    from sentinel.platform.auth import PLATFORM_TENANT_ID
    from sentinel.platform.config import get_settings
    from sentinel.platform.errors import SentinelError
    from sentinel.tenant import servicelevel
    from sentinel.tenant.v1 import tenant_service_pb2

    try:  # the same limits as the RPC
        minutes, service, limit = servicelevel.check_ranking(tenant_service_pb2.RankTenantUsageRequest(
            window_minutes=ns.minutes, service=ns.service, limit=ns.limit))
    except SentinelError as e:
        print(f"sentinel admin tenant-usage: {e.message}", file=sys.stderr)
        return 2

    async def run() -> tenant_service_pb2.RankTenantUsageResponse:
        settings = get_settings()
        db.init(settings)
        try:
            async with db.unit_of_work(tenant_id=PLATFORM_TENANT_ID, platform=True) as session:
                return await servicelevel.rank_tenant_usage(
                    session, dt.datetime.now(dt.UTC), minutes=minutes, service=service, limit=limit,
                    noisy_share=settings.noisy_neighbour_share)
        finally:
            await db.dispose()

    ranking = asyncio.run(run())
    if ns.json:
        print(json_format.MessageToJson(ranking, preserving_proto_field_name=True))
        return 0

    def burn(usage: tenant_service_pb2.TenantUsage,
             field: Literal["availability_burn_rate", "latency_burn_rate"]) -> str:
        return f"{getattr(usage, field):.1f}x" if usage.HasField(field) else "-"  # unset: too few calls

    print(f"{ranking.requests} call(s), {ranking.busy_seconds:.1f} s of handling time, {ranking.db_seconds:.1f} s "
          f"of database time in the last {minutes} min{' (' + service + ' service)' if service else ''}; "
          f"tenants burning a budget beside a heavy one: {ranking.impacted_tenants}")
    print(f"{'tenant':<30} {'calls':>9} {'share':>6} {'busy s':>9} {'share':>6} {'db s':>8} {'share':>6} "
          f"{'5xx':>6} {'slow':>6} {'avail':>7} {'latency':>7}")
    for u in ranking.tenants:
        print(f"{u.slug or u.tenant_id:<30} {u.requests:>9} {u.request_share:>6.1%} {u.busy_seconds:>9.1f} "
              f"{u.busy_share:>6.1%} {u.db_seconds:>8.1f} {u.db_share:>6.1%} {u.server_errors:>6} "
              f"{u.slow_requests:>6} {burn(u, 'availability_burn_rate'):>7} {burn(u, 'latency_burn_rate'):>7}"
              + ("  NOISY" if u.noisy else ""))
    return 0


def _admin_keygen(ns: argparse.Namespace) -> int:
    from sentinel.platform.keys import generate_signing_key

    kid = generate_signing_key(ns.directory, kid=ns.kid or None)
    print(f"signing key {kid}: {ns.directory}/{kid}.key.pem (give only to the user service), "
          f"public key {ns.directory}/public/{kid}.pub.pem (give to every service)")
    return 0


def _audit_verify_receipt(ns: argparse.Namespace) -> int:
    from sentinel.audit import receipts
    from sentinel.audit.checkpoints import load_public_key

    try:
        key = load_public_key(ns.public_key) if ns.public_key else None
        document = json.loads(ns.file.read_text(encoding="utf-8"))
        if not isinstance(document, dict):
            raise ValueError("not a JSON object")
        verdict = receipts.verify(receipts.parse(document), key)
    except (OSError, ValueError) as e:
        print(f"sentinel audit verify-receipt: {e}", file=sys.stderr)
        return 2
    if not verdict.ok:
        print(f"INVALID: {verdict.problem}")
        return 1
    key_line = (f"data key {verdict.data_key_fingerprint} destroyed" if verdict.data_key_destroyed
                else "NO data key destroyed (none configured, or the tenant sealed nothing)")
    signed = "signature checked" if verdict.authenticated else "signature NOT checked (pass --public-key)"
    print(f"OK: tenant {verdict.tenant_id} purged at {verdict.purge_time}, {verdict.rows_deleted} row(s) deleted, "
          f"{key_line}; {signed}")
    return 0


def _audit_verify(ns: argparse.Namespace) -> int:
    from sentinel.audit.checkpoints import load_public_key
    from sentinel.audit.ndjson import verify_file

    try:
        key = load_public_key(ns.public_key) if ns.public_key else None
        result = verify_file(ns.file, key)
    except (OSError, ValueError) as e:
        print(f"sentinel audit verify: {e}", file=sys.stderr)
        return 2
    verdict = result.chain
    signed = (f"{result.checkpoints} signed checkpoint(s) matched" if result.authenticated
              else f"{result.checkpoints} checkpoint(s) matched, signatures NOT checked (pass --public-key)")
    if result.forged:
        print(f"BROKEN: {result.forged} checkpoint(s) not signed by this key")
        return 1
    if verdict.ok:
        print(f"OK: {verdict.checked} event(s), chain head {verdict.head_sequence} {verdict.head_hash}; {signed}")
        return 0
    print(f"BROKEN at sequence {verdict.broken_sequence}: {verdict.problem} "
          f"({verdict.checked} event(s) before it verified)")
    return 1


def _audit_export(ns: argparse.Namespace) -> int:
    from sqlalchemy import text

    from sentinel.audit import ndjson
    from sentinel.platform import db
    from sentinel.platform.config import get_settings

    async def run() -> int:
        db.init(get_settings())
        try:
            async with db.unit_of_work(tenant_id=None, platform=False) as session:
                tenant = (await session.execute(text("SELECT id FROM sentinel_resolve_tenant(:slug)"),
                                                {"slug": ns.tenant})).first()
            if tenant is None:
                print(f"sentinel audit export: no tenant with slug '{ns.tenant}'", file=sys.stderr)
                return 2
            with ns.output.open("w", encoding="utf-8") as out:
                # Signed checkpoints first, as in the API's export: after a retention cut the
                # chain verifies from the one at the cut.
                async for text_line in ndjson.export_lines(tenant.id):
                    out.write(text_line)
        finally:
            await db.dispose()
        return 0

    return asyncio.run(run())


def _gateway_render(ns: argparse.Namespace) -> int:
    import dataclasses
    import json

    from sentinel.gateway import envoy, openapi

    if ns.config:
        try:
            cfg = envoy.config_from_json(json.loads(ns.config.read_text()))
        except (OSError, ValueError) as e:  # JSONDecodeError is a ValueError
            print(f"sentinel gateway render: {ns.config}: {e}", file=sys.stderr)
            return 2
    else:
        cfg = envoy.dev_config()
    changes: dict[str, object] = {}
    if ns.descriptor_set:
        changes["descriptor_set_path"] = ns.descriptor_set
    if bool(ns.tls_cert) != bool(ns.tls_key):
        print("sentinel gateway render: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    if ns.tls_cert:
        changes.update(tls_cert_file=ns.tls_cert, tls_key_file=ns.tls_key, tls_port=ns.tls_port)
    if ns.cors_origin:
        changes.update(cors_allowed_origins=tuple(ns.cors_origin), cors_allow_credentials=ns.cors_allow_credentials)
    if ns.no_rate_limit:
        changes["rate_limits"] = None
    cfg = dataclasses.replace(cfg, **changes)  # type: ignore[arg-type]
    try:
        text = (json.dumps(envoy.render(cfg), indent=2) + "\n" if ns.format == "json"
                else envoy.render_yaml(cfg))
    except ValueError as e:  # upstreams, addresses, TLS halves, the JWKS URI
        print(f"sentinel gateway render: {e}", file=sys.stderr)
        return 2
    if ns.write_docs and cfg.docs_dir is None:
        print("sentinel gateway render: --write-docs needs a docs directory (docs_dir in --config)", file=sys.stderr)
        return 2
    if ns.write_descriptor_set:
        envoy.write_descriptor_set(cfg.descriptor_set_path)
    if ns.write_docs and cfg.docs_dir is not None:
        openapi.write_docs(cfg.docs_dir, template=ns.docs_template)
    if ns.output:
        ns.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _gateway_check(ns: argparse.Namespace) -> int:
    """Strict structural check (xds-protos) of Envoy bootstrap files; 1 if any fails."""
    import json

    import yaml

    from sentinel.gateway import schema

    try:
        import envoy.config.bootstrap.v3  # noqa: F401 - only to say what is missing
    except ImportError:
        print("sentinel gateway check needs Envoy's API classes: pip install xds-protos (a dev dependency)",
              file=sys.stderr)
        return 2
    failed = False
    for path in ns.files:
        try:
            text = path.read_text()
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
            schema.check(data)
        except (OSError, ValueError, yaml.YAMLError) as e:  # SchemaError and JSONDecodeError are ValueErrors
            failed = True
            print(f"{path}: {e}", file=sys.stderr)
        else:
            print(f"{path}: OK")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sentinel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run one gRPC service in the foreground")
    p.add_argument("service", choices=SERVICES)
    p.set_defaults(func=_serve)

    p = sub.add_parser("worker", help="run the job consumer (huey on Redis) with the periodic scheduler")
    p.set_defaults(func=_worker)

    jobs = sub.add_parser("jobs", help="background jobs (operators; database access)").add_subparsers(
        dest="jobs", required=True)
    p = jobs.add_parser("list", help="recent jobs of every tenant (or one), or the periodic jobs")
    p.add_argument("--tenant", default="", help="tenant slug")
    p.add_argument("--state", default="", choices=["", "pending", "running", "succeeded", "failed", "cancelled",
                                                   "dead_letter"])
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--periodic", action="store_true", help="list the periodic jobs, their schedule and last run")
    p.set_defaults(func=_jobs_list)
    p = jobs.add_parser("run-now", help="run a periodic job now, in this process")
    p.add_argument("name", help="e.g. health_check, slo_report, audit_retention, tenant_purge, cleanup")
    p.set_defaults(func=_jobs_run_now)
    p = jobs.add_parser("cancel", help="cancel a pending or running job of any tenant")
    p.add_argument("id", help="job id")
    p.set_defaults(func=_jobs_cancel)

    p = sub.add_parser("migrate", help="apply database migrations (as the owner role)")
    p.add_argument("--database-url", default="", help="owner URL; default SENTINEL_DATABASE_OWNER_URL")
    p.add_argument("--app-role", default=os.environ.get("SENTINEL_DATABASE_APP_ROLE", "sentinel_app"),
                   help="the service role that receives grants (default sentinel_app)")
    p.set_defaults(func=_migrate)

    admin = sub.add_parser("admin", help="operator commands").add_subparsers(dest="admin", required=True)
    p = admin.add_parser("bootstrap", help="ensure the platform administrator exists")
    p.add_argument("--email", default="", help="default SENTINEL_BOOTSTRAP_ADMIN_EMAIL")
    p.set_defaults(func=_admin_bootstrap)

    p = admin.add_parser("purge-tenants", help="purge tenants whose deletion grace period has passed")
    p.add_argument("--batch", type=int, default=1000, help="rows deleted per transaction")
    p.set_defaults(func=_admin_purge_tenants)

    p = admin.add_parser("import-users", help="import users with bcrypt/argon2id hashes from a CSV file")
    p.add_argument("--tenant", required=True, help="tenant slug")
    p.add_argument("file", type=Path, help="CSV with the header email,display_name,role,password_hash")
    p.set_defaults(func=_admin_import_users)

    p = admin.add_parser("audit-retention", help="cut audit events past each tenant's retention")
    p.add_argument("--batch", type=int, default=5000, help="events deleted per transaction")
    p.set_defaults(func=_admin_audit_retention)

    p = admin.add_parser("tenant-usage", help="the busiest tenants of a recent window, noisy neighbours marked")
    p.add_argument("--minutes", type=int, default=60, help="window, 1-2880 minutes (default 60)")
    p.add_argument("--service", default="", help="tenant, user, audit, scheduler, or worker (job runs); default all")
    p.add_argument("--limit", type=int, default=20, help="tenants shown, 1-100 (default 20)")
    p.add_argument("--json", action="store_true", help="RankTenantUsage's JSON instead of a table")
    p.set_defaults(func=_admin_tenant_usage)

    p = admin.add_parser("keygen", help="create an Ed25519 token-signing key pair (for rotation)")
    p.add_argument("directory", type=Path, help="key directory; public keys go to DIRECTORY/public")
    p.add_argument("--kid", default="", help="key id (default: key-<date>-<random>)")
    p.set_defaults(func=_admin_keygen)

    audit = sub.add_parser("audit", help="audit trail tools").add_subparsers(dest="audit", required=True)
    p = audit.add_parser("verify", help="verify an exported audit chain offline (no database)")
    p.add_argument("file", type=Path, help="NDJSON export (checkpoints, then one event per line in sequence order)")
    p.add_argument("--public-key", type=Path, help="the audit service's public key (PEM) to authenticate checkpoints")
    p.set_defaults(func=_audit_verify)
    p = audit.add_parser("verify-receipt", help="verify a purge receipt offline (GetPurgeReceipt's JSON)")
    p.add_argument("file", type=Path, help="the receipt as GET /api/v1/audit/purge-receipt returns it")
    p.add_argument("--public-key", type=Path, help="the audit service's public key (PEM); without it the "
                   "signature is NOT checked")
    p.set_defaults(func=_audit_verify_receipt)
    p = audit.add_parser("export", help="export a tenant's audit chain as NDJSON (operators; database access)")
    p.add_argument("--tenant", required=True, help="tenant slug")
    p.add_argument("-o", "--output", type=Path, required=True, help="file to write")
    p.set_defaults(func=_audit_export)

    gateway = sub.add_parser("gateway", help="Envoy gateway tools").add_subparsers(dest="gateway", required=True)
    p = gateway.add_parser("render", help="print the dev Envoy config generated from the contracts")
    p.add_argument("-o", "--output", type=Path, default=None, help="write here instead of stdout "
                   "(the committed copy is gateway/envoy.dev.yaml)")
    p.add_argument("--descriptor-set", type=Path, default=None,
                   help="descriptor set path referenced by the config (default .sentinel/gateway/sentinel.pb)")
    p.add_argument("--write-descriptor-set", action="store_true",
                   help="also (re)write the descriptor set file the transcoder loads")
    p.add_argument("--tls-cert", type=Path, help="PEM certificate chain: serve HTTPS on --tls-port, redirect HTTP")
    p.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    p.add_argument("--tls-port", type=int, default=8443)
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browsers on this origin (repeat for several)")
    p.add_argument("--cors-allow-credentials", action="store_true", help="send Access-Control-Allow-Credentials")
    p.add_argument("--no-rate-limit", action="store_true", help="no address-tier rate limits at the edge")
    p.add_argument("--config", type=Path, metavar="FILE.json",
                   help="render this GatewayConfig (a JSON object of its fields: upstreams, listen_host/port, "
                        "admin_host/port, tls_cert_file/tls_key_file/tls_port, cors_*, rate_limits, "
                        "jwks_uri, docs_dir, access_log_path, ...) instead of the dev config; the flags above "
                        "still apply on top")
    p.add_argument("--format", choices=("yaml", "json"), default="yaml", help="output format (default yaml)")
    p.add_argument("--write-docs", action="store_true",
                   help="also write openapi.json and the docs page into the config's docs directory")
    p.add_argument("--docs-template", type=Path, default=None,
                   help="the docs page to copy (default gateway/docs/index.html of the checkout)")
    p.set_defaults(func=_gateway_render)
    p = gateway.add_parser("check", help="strictly check Envoy bootstrap files (YAML/JSON) against the v3 API protos")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.set_defaults(func=_gateway_check)

    from sentinel.host import cli as host_cli
    from sentinel.watchdog import cli as watchdog_cli

    host_cli.add_arguments(sub)  # sentinel host ...: audit rules, install, status, process collector
    watchdog_cli.register(sub)  # sentinel watchdog

    from sentinel.devstack import up

    p = sub.add_parser("up", help="start the whole stack on embedded defaults (Ctrl-C stops it)")
    up.add_arguments(p)
    p.set_defaults(func=up.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    return int(ns.func(ns))


if __name__ == "__main__":
    sys.exit(main())
