"""The NixOS modules (nixos-modules/), evaluated without NixOS.

Every ``.nix`` file must parse. The modules are then evaluated with ``lib.evalModules`` (nixpkgs
``lib`` from the same place tests/unit/test_nix.py takes it) against ``nixos-stubs.nix``: declarations
of exactly the upstream options they set, with the types of the nixpkgs sources, and the pieces of
upstream config ours must merge with. ``nixos-eval.nix`` turns the result into JSON. The tests assert
on units, ordering, hardening, credentials, the PostgreSQL roles, Redis, the Envoy settings (the
render step runs for real with this checkout's generator) and on the assertions' messages.
Nothing is built; a NixOS VM test (checks.<system>.vm) covers runtime, on a machine with KVM.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sentinel.gateway import envoy as gw

from tests.support import envoy_binary
from tests.unit.test_nix import REPO, _nix_env, _nix_instantiate, _nixpkgs_lib

MODULES = REPO / "nixos-modules"
STUBS = REPO / "tests" / "unit" / "nixos-stubs.nix"
EVAL = REPO / "tests" / "unit" / "nixos-eval.nix"
NIX_FILES = [*sorted(MODULES.glob("*.nix")), STUBS, EVAL]

STORE = "/nix/store/00000000000000000000000000000000-"
SENTINEL = STORE + "sentinel/bin/sentinel"
SERVICES = ("tenant", "user", "audit", "scheduler")
SERVICE_UNITS = [f"sentinel-{s}" for s in SERVICES]
LONG_RUNNING = [*SERVICE_UNITS, "sentinel-worker"]
ACCOUNTS = {f"sentinel-{a}" for a in (*SERVICES, "worker", "migrate")}
LOCAL_DB_URL = "postgresql+asyncpg://{role}@/sentinel?host=/run/postgresql&port=5432"


@pytest.mark.parametrize("path", NIX_FILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_nix_file_parses(path: Path, tmp_path: Path) -> None:
    proc = subprocess.run([_nix_instantiate(), "--parse", str(path)], capture_output=True, text=True,
                          env=_nix_env(tmp_path), timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------------------------
# Evaluation

Evaluate = Callable[..., dict[str, Any]]


@pytest.fixture(scope="module")
def evaluate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Evaluate]:
    exe = _nix_instantiate()
    tmp = tmp_path_factory.mktemp("nixos-eval")
    lib = _nixpkgs_lib(tmp)
    env = _nix_env(tmp)
    counter = iter(range(1_000_000))

    def run(sentinel: dict[str, Any], *, render_dirs: dict[str, Path] | None = None,
            nix: str = "{ }") -> dict[str, Any]:
        """Evaluate with services.sentinel = {enable = true} // sentinel, plus ``nix`` (a module)."""
        scenario = tmp / f"scenario-{next(counter)}.json"
        scenario.write_text(json.dumps({"services": {"sentinel": {"enable": True, **sentinel}}}))
        dirs = " ".join(f"{json.dumps(k)} = {json.dumps(str(v))};" for k, v in (render_dirs or {}).items())
        expr = (f"import {EVAL} {{ libPath = {lib}; repo = {REPO}; renderDirs = {{ {dirs} }};"
                f" scenario.imports = [ (builtins.fromJSON (builtins.readFile {scenario})) ({nix}) ]; }}")
        proc = subprocess.run([exe, "--readonly-mode", "--eval", "--strict", "--json", "--expr", expr],
                              capture_output=True, text=True, env=env, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    yield run


@pytest.fixture(scope="module")
def default(evaluate: Evaluate) -> dict[str, Any]:
    """Everything on one host (local PostgreSQL and Redis), two user instances."""
    out = evaluate({"services": {"user": {"instances": 2}}})
    assert out["assertions"] == [], out["assertions"]
    return out


def _sentinel_units(out: dict[str, Any]) -> dict[str, Any]:
    return {n: u for n, u in out["services"].items() if n.startswith("sentinel-")}


def test_units_per_instance(default: dict[str, Any]) -> None:
    units = _sentinel_units(default)
    assert set(units) == {"sentinel-setup", "sentinel-migrate", "sentinel-tenant", "sentinel-user", "sentinel-user-2",
                          "sentinel-audit", "sentinel-scheduler", "sentinel-worker"}
    assert default["sentinel"]["units"] == [
        "sentinel-setup.service", "sentinel-migrate.service", "sentinel-tenant.service", "sentinel-user.service",
        "sentinel-user-2.service", "sentinel-audit.service", "sentinel-scheduler.service",
        "sentinel-worker.service"]
    for name in ("user", "user-2"):
        unit = units[f"sentinel-{name}"]
        assert unit["serviceConfig"]["ExecStart"] == f"{SENTINEL} serve user"
        assert unit["environment"]["SENTINEL_SERVICE"] == "user"
    # Instance 2 takes the first instance's ports + 100 (as `sentinel up --instances`).
    assert units["sentinel-user"]["environment"]["SENTINEL_GRPC_PORT"] == "50052"
    assert units["sentinel-user-2"]["environment"]["SENTINEL_GRPC_PORT"] == "50152"
    assert units["sentinel-user-2"]["environment"]["SENTINEL_METRICS_PORT"] == "9202"
    # Peers call the first instance only; Envoy balances over all.
    assert units["sentinel-tenant"]["environment"]["SENTINEL_USER_ADDR"] == "127.0.0.1:50052"
    assert units["sentinel-worker"]["serviceConfig"]["ExecStart"] == f"{SENTINEL} worker"
    # The default package is nix/package.nix built with the host's pkgs.
    assert default["sentinel"]["package"]["calledWith"] == str(REPO / "nix" / "package.nix")
    target = default["targets"]["sentinel"]
    assert target["wantedBy"] == ["multi-user.target"]
    assert target["wants"] == default["sentinel"]["units"]
    for name, unit in units.items():
        assert unit["wantedBy"] == ["sentinel.target"], name
        assert unit["partOf"] == ["sentinel.target"], name


def test_ordering(default: dict[str, Any]) -> None:
    units = default["services"]
    migrate = units["sentinel-migrate"]
    # postgresql.target (not .service): reached once postgresql-setup.service created the roles.
    assert {"postgresql.target", "sentinel-setup.service"} <= set(migrate["after"])
    assert {"postgresql.target", "sentinel-setup.service"} <= set(migrate["requires"])
    assert default["targets"]["postgresql"]["requires"] == ["postgresql.service", "postgresql-setup.service"]
    assert migrate["serviceConfig"]["Type"] == "oneshot" and migrate["serviceConfig"]["RemainAfterExit"] is True
    for name in [*LONG_RUNNING, "sentinel-user-2"]:
        unit = units[name]
        assert {"sentinel-migrate.service", "sentinel-setup.service", "redis-sentinel.service"} <= set(unit["after"])
        assert {"sentinel-migrate.service", "sentinel-setup.service"} <= set(unit["requires"]), name
    # Redis reads the generated password file before it starts.
    assert "sentinel-setup.service" in units["redis-sentinel"]["after"]
    assert "sentinel-setup.service" in units["redis-sentinel"]["requires"]
    assert units["sentinel-setup"]["serviceConfig"]["Type"] == "oneshot"


HARDENING = {
    "NoNewPrivileges": True, "PrivateTmp": True, "PrivateDevices": True, "ProtectSystem": "strict",
    "ProtectHome": True, "ProtectKernelTunables": True, "ProtectKernelModules": True, "ProtectControlGroups": True,
    "CapabilityBoundingSet": "", "RestrictNamespaces": True, "RestrictSUIDSGID": True, "LockPersonality": True,
    "SystemCallArchitectures": "native", "UMask": "0077",
    "RestrictAddressFamilies": ["AF_INET", "AF_INET6", "AF_UNIX"],
}


def test_hardening_and_readiness(default: dict[str, Any]) -> None:
    units = default["services"]
    for name in [*LONG_RUNNING, "sentinel-user-2", "sentinel-migrate"]:
        sc = units[name]["serviceConfig"]
        for key, value in HARDENING.items():
            assert sc[key] == value, (name, key)
        assert sc["SystemCallFilter"][0] == "@system-service", name
        assert "DynamicUser" not in sc, name
        account = "migrate" if name == "sentinel-migrate" else name.removeprefix("sentinel-").removesuffix("-2")
        assert (sc["User"], sc["Group"]) == (f"sentinel-{account}", "sentinel"), name
    for name in [*LONG_RUNNING, "sentinel-user-2"]:
        unit = units[name]
        sc = unit["serviceConfig"]
        # The services do not implement sd_notify: exec, then wait for their own health.
        assert sc["Type"] == "exec" and sc["Restart"] == "on-failure", name
        assert unit["startLimitBurst"] and unit["startLimitIntervalSec"], name
        check = sc["ExecStartPost"]["text"]
        if name == "sentinel-worker":
            assert "curl -fsS -o /dev/null --max-time 1 http://127.0.0.1:9105/metrics" in check
        else:
            port = unit["environment"]["SENTINEL_GRPC_PORT"]
            assert f"grpc-health-probe -addr=127.0.0.1:{port} " in check, name
        assert "deadline=$((SECONDS + 60))" in check
    # huey 2.x stops gracefully on SIGINT (running jobs finish); SIGTERM would cut them.
    assert units["sentinel-worker"]["serviceConfig"]["KillSignal"] == "SIGINT"
    assert all("KillSignal" not in units[n]["serviceConfig"] for n in LONG_RUNNING if n != "sentinel-worker")
    users = default["users"]
    assert set(users) >= ACCOUNTS
    for name in ACCOUNTS:
        assert users[name]["isSystemUser"] is True and users[name]["group"] == "sentinel"
    assert "sentinel" in default["groups"]
    assert [p["drv"] for p in default["systemPackages"]] == ["sentinel"]  # for operators


def _credentials(unit: dict[str, Any]) -> dict[str, str]:
    return dict(entry.split(":", 1) for entry in unit["serviceConfig"]["LoadCredential"])


def test_secrets_reach_units_as_credentials(default: dict[str, Any]) -> None:
    units = default["services"]
    keys = "/var/lib/sentinel/keys"
    for name in [*LONG_RUNNING, "sentinel-user-2"]:
        unit = units[name]
        creds, env = _credentials(unit), unit["environment"]
        assert creds["redis-url"] == "/run/sentinel/redis-url"
        assert creds["page-token-secret"] == "/var/lib/sentinel/secrets/page-token-secret"
        # Every *_FILE setting names a credential (relative: resolved under $CREDENTIALS_DIRECTORY),
        # every %d/ path one too.
        for var, value in env.items():
            if var.endswith("_FILE") and not value.startswith(("/", "%d/")):
                assert value in creds, (name, var)
            if value.startswith("%d/"):
                assert value.removeprefix("%d/") in creds, (name, var)
        assert env["SENTINEL_DATABASE_URL"] == LOCAL_DB_URL.format(role="sentinel_app")
        assert env["SENTINEL_JWT_PUBLIC_KEYS_DIR"] == f"{keys}/jwt/public"
    for service in SERVICES:
        unit = units[f"sentinel-{service}"]
        # The identity key's file name is the service's name (ServiceTokens takes it from there).
        assert _credentials(unit)[f"{service}.key.pem"] == f"{keys}/services/{service}.key.pem"
        assert unit["environment"]["SENTINEL_SERVICE_KEY_FILE"] == f"%d/{service}.key.pem"
    # The checkpoint key is another file (and credential) than the audit service's identity key.
    assert _credentials(units["sentinel-audit"])["audit-1.key.pem"] == f"{keys}/audit/audit-1.key.pem"
    assert units["sentinel-audit"]["environment"]["SENTINEL_AUDIT_SIGNING_KEY_FILE"] == "%d/audit-1.key.pem"
    for unit in _sentinel_units(default).values():
        ids = [entry.split(":", 1)[0] for entry in unit["serviceConfig"].get("LoadCredential", [])]
        assert len(ids) == len(set(ids)), ids
    # Only the user service signs tokens, from a directory it reads itself (rotation without restart).
    assert [n for n, u in units.items() if "SENTINEL_JWT_SIGNING_KEYS_DIR" in u["environment"]] == \
        ["sentinel-user", "sentinel-user-2"]
    assert units["sentinel-worker"]["environment"]["SENTINEL_AUDIT_PUBLIC_KEY_FILE"] == \
        f"{keys}/audit/public/audit-1.pub.pem"
    # Data keys: the worker seals results and destroys keys, the scheduler seals job inputs and opens
    # results (both may write there); no one else.
    data_keys = "/var/lib/sentinel/data-keys"
    assert [n for n, u in units.items() if "SENTINEL_DATA_KEY_DIR" in u["environment"]] == \
        ["sentinel-scheduler", "sentinel-worker"]
    assert units["sentinel-worker"]["environment"]["SENTINEL_DATA_KEY_DIR"] == data_keys
    assert units["sentinel-worker"]["serviceConfig"]["ReadWritePaths"] == [data_keys]
    assert units["sentinel-scheduler"]["serviceConfig"]["ReadWritePaths"] == [data_keys]
    assert [n for n, u in units.items() if "ReadWritePaths" in u["serviceConfig"]
            and data_keys in u["serviceConfig"]["ReadWritePaths"]] == ["sentinel-scheduler", "sentinel-worker"]
    assert {n for n, u in default["users"].items() if "sentinel-data-keys" in u["extraGroups"]} == \
        {"sentinel-scheduler", "sentinel-worker"}
    migrate = units["sentinel-migrate"]
    assert migrate["environment"]["SENTINEL_DATABASE_OWNER_URL"] == LOCAL_DB_URL.format(role="sentinel_owner")
    setup = units["sentinel-setup"]["serviceConfig"]["ExecStart"]["text"]
    assert "generate /var/lib/sentinel/secrets/redis-password" in setup
    assert "generate /var/lib/sentinel/secrets/page-token-secret" in setup
    assert f"{SENTINEL} admin keygen {keys}/jwt\n" in setup
    assert f"chown -R sentinel-user:sentinel {keys}/jwt" in setup
    assert "> /run/sentinel/redis-url.tmp" in setup
    assert f"install -d -m 2770 -o root -g sentinel-data-keys {data_keys}" in setup


def test_settings_and_extra_secret_files(evaluate: Evaluate) -> None:
    out = evaluate({
        "settings": {"LOG_LEVEL": "DEBUG", "AUDIT_RECORDING": False, "JOB_WORKER_THREADS": 4,
                     "PERIODIC_SCHEDULES": {"slo_report": "0 8 * * *"}},
        "secretFiles": {"NOTIFY_SMTP_PASSWORD": "/run/secrets/smtp"},
    })
    assert out["assertions"] == []
    for name in LONG_RUNNING:
        unit = out["services"][name]
        env = unit["environment"]
        assert env["SENTINEL_LOG_LEVEL"] == "DEBUG"
        assert env["SENTINEL_AUDIT_RECORDING"] == "false"
        assert env["SENTINEL_JOB_WORKER_THREADS"] == "4"
        assert json.loads(env["SENTINEL_PERIODIC_SCHEDULES"]) == {"slo_report": "0 8 * * *"}
        assert env["SENTINEL_NOTIFY_SMTP_PASSWORD_FILE"] == "notify_smtp_password"
        assert _credentials(unit)["notify_smtp_password"] == "/run/secrets/smtp"


def test_the_config_loader_reads_what_a_unit_gets(default: dict[str, Any], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The user unit's environment, with systemd's credentials directory, through the real Settings."""
    from sentinel.platform.config import Settings

    unit = default["services"]["sentinel-user"]
    creds = tmp_path / "credentials"
    creds.mkdir()
    for name in _credentials(unit):
        (creds / name).write_text(f"value of {name}\n")
    for var in [v for v in os.environ if v.startswith("SENTINEL_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    for var, value in unit["environment"].items():
        monkeypatch.setenv(var, value.replace("%d", str(creds)))  # what systemd does with the specifier
    settings = Settings()
    assert settings.redis_url.get_secret_value() == "value of redis-url"
    assert settings.page_token_secret.get_secret_value() == "value of page-token-secret"
    assert settings.database_url.get_secret_value() == LOCAL_DB_URL.format(role="sentinel_app")
    assert settings.service_key_file == creds / "user.key.pem"
    assert settings.jwt_signing_keys_dir == Path("/var/lib/sentinel/keys/jwt")
    assert (settings.service, settings.resolved_grpc_port, settings.resolved_metrics_port) == ("user", 50052, 9102)


def test_no_secret_values_in_the_evaluated_config(evaluate: Evaluate, tmp_path: Path) -> None:
    """Secret files are named, never read: their contents appear nowhere, and no URL carries a password."""
    values = {}
    paths = {}
    for name in ("db", "owner", "redis", "page", "admin", "smtp", "cert", "key"):
        value = secrets.token_hex(16)
        (tmp_path / name).write_text(value)
        values[name], paths[name] = value, str(tmp_path / name)
    out = evaluate({
        "database": {"createLocally": False, "host": "db.example", "passwordFile": paths["db"],
                     "ownerPasswordFile": paths["owner"]},
        "redis": {"createLocally": False, "host": "redis.example", "passwordFile": paths["redis"]},
        "secrets": {"pageTokenSecretFile": paths["page"]},
        "bootstrapAdmin": {"passwordFile": paths["admin"]},
        "secretFiles": {"NOTIFY_SMTP_PASSWORD": paths["smtp"]},
        "gateway": {"tls": {"certFile": paths["cert"], "keyFile": paths["key"]}},
    })
    assert out["assertions"] == []
    dump = json.dumps(out)
    for name, value in values.items():
        assert value not in dump, name
    assert not re.search(r"://[^/\s\"@]*:[^@\s\"]+@", json.dumps(out["services"]["sentinel-user"])), \
        "a URL with a password in a unit"
    for unit in _sentinel_units(out).values():
        for var in unit["environment"]:
            assert var.removeprefix("SENTINEL_") not in ("DATABASE_URL", "DATABASE_OWNER_URL", "REDIS_URL",
                                                         "PAGE_TOKEN_SECRET", "NOTIFY_SMTP_PASSWORD"), var


def test_remote_database_and_redis(evaluate: Evaluate) -> None:
    out = evaluate({
        "database": {"createLocally": False, "host": "db.internal", "port": 6432, "passwordFile": "/run/secrets/db",
                     "ownerPasswordFile": "/run/secrets/db-owner", "parameters": {"ssl": "verify-full"}},
        "redis": {"createLocally": False, "host": "cache.internal", "port": 6380, "tls": True,
                  "passwordFile": "/run/secrets/redis"},
    })
    assert out["assertions"] == []
    assert out["postgresql"]["enable"] is False
    assert out["redis"] == {}
    units = out["services"]
    assert "postgresql-setup" not in units and "redis-sentinel" not in units
    migrate = units["sentinel-migrate"]
    assert "postgresql.target" not in migrate["after"] + migrate["requires"]
    assert "network-online.target" in migrate["after"] and "network-online.target" in migrate["wants"]
    assert migrate["environment"]["SENTINEL_DATABASE_OWNER_URL_FILE"] == "database_owner_url"
    assert _credentials(migrate) == {"database_owner_url": "/run/sentinel/database_owner_url",
                                     "database_url": "/run/sentinel/database_url"}
    user = units["sentinel-user"]
    assert user["environment"]["SENTINEL_DATABASE_URL_FILE"] == "database_url"
    assert "SENTINEL_DATABASE_URL" not in user["environment"]
    assert "network-online.target" in user["after"]
    setup = units["sentinel-setup"]["serviceConfig"]["ExecStart"]["text"]
    assert ('"postgresql+asyncpg://sentinel_app:$(secret /run/secrets/db)@db.internal:6432/sentinel?ssl=verify-full"'
            in setup)
    assert '"postgresql+asyncpg://sentinel_owner:$(secret /run/secrets/db-owner)@db.internal:6432/sentinel' in setup
    assert '"rediss://:$(secret /run/secrets/redis)@cache.internal:6380/0"' in setup
    assert "generate /var/lib/sentinel/secrets/redis-password" not in setup


def test_postgresql_roles_mirror_the_dev_stack(default: dict[str, Any]) -> None:
    pg = default["postgresql"]
    assert pg["enable"] is True
    assert pg["package"] == {"drv": "postgresql_17"}, "pinned, over the stateVersion default"
    # The clauses `sentinel up` gives both roles (Stack._ensure_roles), as ensureClauses.
    stack = (REPO / "services" / "sentinel" / "devstack" / "stack.py").read_text()
    m = re.search(r'ROLE \{role\} ((?:NO)?LOGIN(?: [A-Z]+)*) "\s*f"((?:NO[A-Z]+ ?)*)PASSWORD', stack)
    assert m, "Stack._ensure_roles changed: update this test and nixos-modules/postgresql.nix"
    clauses = f"{m.group(1)} {m.group(2)}".split()
    expected = {c.lower().removeprefix("no"): not c.startswith("NO") for c in clauses}
    assert expected == {"login": True, "superuser": False, "createdb": False, "createrole": False,
                        "bypassrls": False}
    assert [u["name"] for u in pg["ensureUsers"]] == ["sentinel_owner", "sentinel_app"]
    for user in pg["ensureUsers"]:
        assert user["ensureDBOwnership"] is False
        assert {k: v for k, v in user["ensureClauses"].items() if v is not None} == {**expected, "replication": False}
    # Our hba line comes before the module's defaults; each system user maps to its role.
    hba = pg["authentication"].splitlines()
    ours = hba.index("local sentinel sentinel_owner,sentinel_app peer map=sentinel")
    assert ours < hba.index("local all all              peer")
    ident = pg["identMap"].splitlines()
    assert "sentinel sentinel-migrate sentinel_owner" in ident
    assert {f"sentinel {a} sentinel_app" for a in ACCOUNTS} <= set(ident)
    assert ident[-1] == "postgres postgres postgres"
    assert not any(line.endswith("sentinel_owner") and "migrate" not in line for line in ident)
    # 15 connections per process (pool 10 + overflow 5): 5 service processes, the worker and migrate.
    assert pg["settings"]["max_connections"] == 15 * (5 + 2) + 20
    # After the module's own setup (ensureUsers), the database owned by the owner role, as in the dev stack.
    script = default["services"]["postgresql-setup"]["script"]
    assert script.startswith("# upstream:")
    for statement in ('CREATE DATABASE "sentinel" OWNER "sentinel_owner"',
                      'ALTER DATABASE "sentinel" OWNER TO "sentinel_owner";',
                      'REVOKE ALL ON DATABASE "sentinel" FROM PUBLIC;',
                      'GRANT CONNECT ON DATABASE "sentinel" TO "sentinel_app";',
                      'ALTER SCHEMA public OWNER TO "sentinel_owner";',
                      "REVOKE CREATE ON SCHEMA public FROM PUBLIC;"):
        assert statement in script, statement
        dev = statement.replace('"', "").replace("sentinel_owner", "{OWNER_ROLE}").replace(
            "sentinel_app", "{APP_ROLE}").removesuffix(";")
        dev = re.sub(r"DATABASE sentinel\b", "DATABASE {DB_NAME}", dev)
        if not dev.startswith("ALTER DATABASE"):
            assert dev in stack, f"the dev stack does not run {dev!r}"
    assert "ON_ERROR_STOP=1" in script


def test_redis_server(default: dict[str, Any]) -> None:
    server = default["redis"]["sentinel"]
    assert server["enable"] is True
    # A named server listens on no TCP port unless told (port 0).
    assert (server["bind"], server["port"]) == ("127.0.0.1", 6379)
    assert server["requirePass"] is None
    assert server["requirePassFile"] == "/var/lib/sentinel/secrets/redis-password"
    assert server["appendOnly"] is True


def test_scrape_configs_match_the_observability_jobs(default: dict[str, Any]) -> None:
    jobs = {j["job_name"]: j for j in default["sentinel"]["scrapeConfigs"]}
    prom = yaml.safe_load((REPO / "observability" / "prometheus.yml").read_text())
    assert set(jobs) == {j["job_name"] for j in prom["scrape_configs"]} - {"node"}
    assert jobs["sentinel-user"]["static_configs"] == [{"targets": ["127.0.0.1:9102", "127.0.0.1:9202"]}]
    assert jobs["envoy"]["metrics_path"] == "/stats/prometheus"
    assert jobs["envoy"]["static_configs"] == [{"targets": ["127.0.0.1:9901"]}]


# ---------------------------------------------------------------------------------------------
# The gateway: the module's GatewayConfig, rendered by the real generator, is services.envoy.settings


def _render(out: dict[str, Any], directory: Path) -> Path:
    """Run the render derivation's builder script for real (this checkout's `sentinel`) into directory."""
    rendered = out["sentinel"]["rendered"]
    assert rendered["drv"] == "sentinel-gateway"
    assert rendered["env"]["passAsFile"] == ["gatewayConfig"]
    config = directory.parent / f"{directory.name}.json"
    config.write_text(rendered["env"]["gatewayConfig"].replace(out["outPlaceholder"], str(directory)))
    script = rendered["script"].replace(SENTINEL, str(REPO / ".venv" / "bin" / "sentinel"))
    script = re.sub(r"/nix/store/[a-z0-9]{32}-index\.html", str(REPO / "gateway" / "docs" / "index.html"), script)
    proc = subprocess.run(["bash", "-euc", script], env={**os.environ, "out": str(directory),
                                                          "gatewayConfigPath": str(config)},
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return config


LIMITS = {"tenant": {"free": {"write": "300/minute"}}, "ip": {"auth": "30/minute"}}
GATEWAY = {
    "services": {"user": {"instances": 2}},
    "gateway": {"port": 8080, "cors": {"allowedOrigins": ["https://app.example.com"]},
                "rateLimits": {"limits": LIMITS}},
}


def _edge_limit_filters(settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The address tier's local rate-limit filters in every HTTP connection manager of the settings."""
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if str(node.get("name", "")).startswith("sentinel.edge_rate_limit."):
                found.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(settings)
    return found


def test_gateway_settings_are_the_generator_output(evaluate: Evaluate, tmp_path: Path) -> None:
    first = evaluate(GATEWAY)
    assert first["assertions"] == []
    out_dir = tmp_path / "sentinel-gateway"
    config = _render(first, out_dir)
    # What the module asks the generator for, from its options alone.
    expected = gw.GatewayConfig(
        upstreams={"tenant": ["127.0.0.1:50051"], "user": ["127.0.0.1:50052", "127.0.0.1:50152"],
                   "audit": ["127.0.0.1:50053"], "scheduler": ["127.0.0.1:50054"]},
        descriptor_set_path=out_dir / "sentinel.pb", docs_dir=out_dir / "docs",
        listen_host="0.0.0.0", listen_port=8080, admin_host="127.0.0.1", admin_port=9901,
        cors_allowed_origins=("https://app.example.com",), rate_limits=LIMITS)
    assert json.loads(config.read_text())["rate_limits"] == LIMITS
    assert gw.config_from_json(json.loads(config.read_text())) == expected
    assert (out_dir / "sentinel.pb").stat().st_size > 0
    assert (out_dir / "docs" / "openapi.json").is_file() and (out_dir / "docs" / "index.html").is_file()

    second = evaluate(GATEWAY, render_dirs={"sentinel-gateway": out_dir})
    settings = second["envoy"]["settings"]
    assert settings == json.loads((out_dir / "envoy.json").read_text())
    assert settings == json.loads(json.dumps(gw.render(expected)))
    # The address tier is Envoy's: its auth bucket holds the overridden 30 requests a minute.
    buckets = {f["name"]: f["typed_config"]["descriptors"][0]["token_bucket"] for f in _edge_limit_filters(settings)}
    assert buckets["sentinel.edge_rate_limit.auth"] == {"max_tokens": 30, "tokens_per_fill": 30, "fill_interval": "60s"}
    assert second["envoy"]["enable"] is True
    assert second["envoy"]["package"] == {"drv": "envoy-bin"}
    assert second["envoy"]["requireValidConfig"] is True
    unit = second["services"]["envoy"]
    assert unit["restartTriggers"] == [{"drv": "sentinel-gateway", "env": first["sentinel"]["rendered"]["env"],
                                        "script": first["sentinel"]["rendered"]["script"]}]
    # Ours beats the upstream unit's Restart=no; the rest of the upstream unit stays.
    assert unit["serviceConfig"]["Restart"] == "on-failure"
    assert unit["serviceConfig"]["DynamicUser"] is True
    assert unit["serviceConfig"]["LoadCredential"] == []
    assert second["firewall"] == []
    # The same overrides reach every service process (the tenant and principal tiers), counting on.
    for name in [*SERVICE_UNITS, "sentinel-user-2"]:
        env = second["services"][name]["environment"]
        assert json.loads(env["SENTINEL_RATE_LIMITS"]) == LIMITS, name
        assert "SENTINEL_RATE_LIMITS_ENABLED" not in env, name
    # The worker counts no requests.
    assert "SENTINEL_RATE_LIMITS" not in second["services"]["sentinel-worker"]["environment"]


def test_rendered_gateway_passes_envoy_validate(evaluate: Evaluate, tmp_path: Path) -> None:
    """What services.envoy's build-time `envoy --mode validate` will run on, with a real Envoy."""
    envoy = envoy_binary()
    out_dir = tmp_path / "sentinel-gateway"
    _render(evaluate(GATEWAY), out_dir)
    proc = subprocess.run([envoy, "--mode", "validate", "-c", str(out_dir / "envoy.json"), "--disable-hot-restart",
                           "--log-level", "error"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_gateway_with_tls_and_without_rate_limits(evaluate: Evaluate, tmp_path: Path) -> None:
    tls = {"certFile": "/var/lib/acme/api/fullchain.pem", "keyFile": "/var/lib/acme/api/key.pem", "port": 443}
    options = {"gateway": {"port": 80, "openFirewall": True, "docs": False, "rateLimits": {"enable": False},
                           "tls": tls}}
    first = evaluate(options)
    assert first["assertions"] == []
    out_dir = tmp_path / "sentinel-gateway"
    config = json.loads(_render(first, out_dir).read_text())
    # Envoy (DynamicUser) reads the TLS files as credentials of envoy.service.
    assert config["tls_cert_file"] == "/run/credentials/envoy.service/tls-cert"
    assert config["tls_key_file"] == "/run/credentials/envoy.service/tls-key"
    assert (config["tls_port"], config["listen_port"]) == (443, 80)
    # No address limits at the edge, and the services count nothing either.
    assert config["rate_limits"] is None and config["docs_dir"] is None
    assert "--write-docs" not in first["sentinel"]["rendered"]["script"]
    for name in SERVICE_UNITS:
        env = first["services"][name]["environment"]
        assert env["SENTINEL_RATE_LIMITS_ENABLED"] == "false", name
        assert "SENTINEL_RATE_LIMITS" not in env, name
    second = evaluate(options, render_dirs={"sentinel-gateway": out_dir})
    settings = second["envoy"]["settings"]
    assert [lst["address"]["socket_address"]["port_value"] for lst in settings["static_resources"]["listeners"]] == \
        [443, 80]
    assert _edge_limit_filters(settings) == []
    assert "local_ratelimit" not in json.dumps(settings)
    # The build cannot load runtime credentials, so the build-time validation may not fail on them.
    assert second["envoy"]["requireValidConfig"] is False
    assert _credentials(second["services"]["envoy"]) == {"tls-cert": "/var/lib/acme/api/fullchain.pem",
                                                         "tls-key": "/var/lib/acme/api/key.pem"}
    assert second["firewall"] == [80, 443]


def _gateway_config(out: dict[str, Any]) -> dict[str, Any]:
    """The GatewayConfig JSON the module hands the generator (no render needed)."""
    return json.loads(out["sentinel"]["rendered"]["env"]["gatewayConfig"])


def test_rate_limits_by_default(default: dict[str, Any]) -> None:
    """On: the edge gets the default limits ({}), the services count with their defaults."""
    assert _gateway_config(default)["rate_limits"] == {}
    for name in [*LONG_RUNNING, "sentinel-user-2"]:
        env = default["services"][name]["environment"]
        assert "SENTINEL_RATE_LIMITS" not in env and "SENTINEL_RATE_LIMITS_ENABLED" not in env, name
    # The rate-limit process, its account and its ports are gone.
    assert not any("ratelimit" in name for name in [*default["services"], *default["users"],
                                                     *default["sentinel"]["units"]])
    assert not any("ratelimit" in job["job_name"] for job in default["sentinel"]["scrapeConfigs"])


def test_services_count_without_an_edge_here(evaluate: Evaluate) -> None:
    """The tenant and principal tiers are the services': they count on a host without Envoy too."""
    out = evaluate({"gateway": {"enable": False, "rateLimits": {"limits": LIMITS}}})
    assert out["assertions"] == []
    assert out["envoy"]["enable"] is False and out["sentinel"]["rendered"] is None
    for name in SERVICE_UNITS:
        env = out["services"][name]["environment"]
        assert json.loads(env["SENTINEL_RATE_LIMITS"]) == LIMITS, name
        assert "SENTINEL_RATE_LIMITS_ENABLED" not in env, name
    # No service here, no worker: nothing counts in Redis, so none is needed.
    remote = {s: {"enable": False, "address": f"{s}.internal:50051"} for s in SERVICES}
    lean = evaluate({"services": remote, "worker": {"enable": False}, "redis": {"createLocally": False, "host": None}})
    assert lean["assertions"] == []


# ---------------------------------------------------------------------------------------------
# Assertions on bad combinations

BAD = {
    "tls cert without key": (
        {"gateway": {"tls": {"certFile": "/run/secrets/cert.pem"}}},
        "services.sentinel.gateway.tls.certFile and services.sentinel.gateway.tls.keyFile go together"),
    "tls key without cert": (
        {"gateway": {"tls": {"keyFile": "/run/secrets/key.pem"}}},
        "services.sentinel.gateway.tls.certFile and services.sentinel.gateway.tls.keyFile go together"),
    "tls port = port": (
        {"gateway": {"port": 8443, "tls": {"certFile": "/run/c", "keyFile": "/run/k"}}},
        "services.sentinel.gateway.tls.port must differ from services.sentinel.gateway.port (8443)"),
    "remote database without password files": (
        {"database": {"createLocally": False, "host": "db.example"}},
        "services.sentinel.database.createLocally = false needs services.sentinel.database.passwordFile"),
    "remote database without host": (
        {"database": {"createLocally": False, "passwordFile": "/run/a", "ownerPasswordFile": "/run/b"}},
        "services.sentinel.database.createLocally = false needs services.sentinel.database.host"),
    "no instances": (
        {"services": {"audit": {"instances": 0}}},
        "services.sentinel.services.audit.instances must be at least 1 (it is 0)."),
    "service off without an address": (
        {"services": {"scheduler": {"enable": False}}},
        "services.sentinel.services.scheduler.enable is off: set services.sentinel.services.scheduler.address"),
    "service on with an address": (
        {"services": {"scheduler": {"address": "10.0.0.7:50054"}}},
        "services.sentinel.services.scheduler.address is for a scheduler service on another host"),
    "rate limits without redis": (
        {"redis": {"createLocally": False, "host": None}, "worker": {"enable": False}},
        "services.sentinel.gateway.rateLimits.enable needs Redis (the services count the tenant and principal tiers"),
    "rate limits without redis, no edge here": (
        {"redis": {"createLocally": False, "host": None}, "worker": {"enable": False}, "gateway": {"enable": False}},
        "services.sentinel.gateway.rateLimits.enable needs Redis (the services count the tenant and principal tiers"),
    "the removed rate-limit service's ports": (
        {"ratelimit": {"port": 50055}},
        "There is no rate-limit service any more: Envoy enforces the address tier"),
    "worker without redis": (
        {"redis": {"createLocally": False, "host": None}, "gateway": {"rateLimits": {"enable": False}}},
        "services.sentinel.worker.enable needs Redis (the job queue)"),
    "secret in the store": (
        {"redis": {"passwordFile": "/nix/store/00000000000000000000000000000000-redis-password"}},
        "services.sentinel.redis.passwordFile must be a path outside the Nix store"),
    "tls key in the store": (
        {"gateway": {"tls": {"certFile": "/run/c", "keyFile": "/nix/store/00000000000000000000000000000000-k"}}},
        "services.sentinel.gateway.tls.keyFile must be a path outside the Nix store"),
    "port clash": (
        {"services": {"audit": {"port": 50052}}},
        "services.sentinel: port clash: 50052 is used by user gRPC and audit gRPC."),
    "secret inline in settings": (
        {"settings": {"REDIS_URL": "redis://:hunter2@localhost"}},
        "services.sentinel.settings must not hold REDIS_URL"),
    "audit key id of a service": (
        {"signingKeys": {"auditKeyId": "audit"}},
        "services.sentinel.signingKeys.auditKeyId must not be a service name"),
    "cors credentials for every origin": (
        {"gateway": {"cors": {"allowedOrigins": ["*"], "allowCredentials": True}}},
        "services.sentinel.gateway.cors.allowCredentials cannot be combined with the origin \"*\""),
}


def test_a_service_another_host_runs(evaluate: Evaluate, tmp_path: Path) -> None:
    """services.<name>.enable = false: no unit here; peers, Envoy and nothing else point at its address."""
    remote = "scheduler.internal:50054"
    out = evaluate({"services": {"scheduler": {"enable": False, "address": remote}}})
    assert out["assertions"] == []
    units = _sentinel_units(out)
    assert "sentinel-scheduler" not in units and "sentinel-scheduler.service" not in out["sentinel"]["units"]
    for name in ("sentinel-tenant", "sentinel-user", "sentinel-audit", "sentinel-worker"):
        assert units[name]["environment"]["SENTINEL_SCHEDULER_ADDR"] == remote, name
    assert units["sentinel-tenant"]["environment"]["SENTINEL_USER_ADDR"] == "127.0.0.1:50052"
    assert "sentinel-scheduler" not in {j["job_name"] for j in out["sentinel"]["scrapeConfigs"]}
    config = json.loads(_render(out, tmp_path / "sentinel-gateway").read_text())
    assert config["upstreams"]["scheduler"] == [remote]
    assert config["upstreams"]["user"] == ["127.0.0.1:50052"]


def test_a_nix_path_literal_is_refused_before_it_reaches_the_store(evaluate: Evaluate) -> None:
    failed = evaluate({}, nix="{ services.sentinel.secrets.pageTokenSecretFile = ./page-token; }")["assertions"]
    assert len(failed) == 1 and "services.sentinel.secrets.pageTokenSecretFile must be a path outside the Nix store" \
        in failed[0], failed


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_combination_fails_with_a_clear_message(evaluate: Evaluate, case: str) -> None:
    options, message = BAD[case]
    failed = evaluate(options)["assertions"]
    assert len(failed) == 1 and message in failed[0], failed


def test_password_files_with_a_local_database_warn(evaluate: Evaluate) -> None:
    out = evaluate({"database": {"passwordFile": "/run/secrets/db"}})
    assert out["assertions"] == []
    assert any("ignored with a local database" in w for w in out["warnings"])


def test_the_module_disabled_sets_nothing(evaluate: Evaluate) -> None:
    out = evaluate({"enable": False})
    assert out["assertions"] == []
    assert not _sentinel_units(out)
    assert out["postgresql"]["enable"] is False and out["redis"] == {} and out["envoy"]["enable"] is False
    assert not ACCOUNTS & set(out["users"])


# ---------------------------------------------------------------------------------------------
# The CLI pieces the units rely on


def test_bootstrap_reads_the_password_from_a_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sentinel import cli
    from sentinel.user import bootstrap

    seen: dict[str, Any] = {}

    async def ensure(settings: Any, email: str | None, password: str | None) -> bootstrap.BootstrapResult:
        seen.update(email=email, password=password)
        return bootstrap.BootstrapResult(email or "", created=False)

    (tmp_path / "bootstrap-admin-password").write_text("from the credential\n")
    monkeypatch.setattr(bootstrap, "ensure_platform_admin", ensure)
    monkeypatch.setattr("sentinel.platform.config.get_settings", lambda: None)
    monkeypatch.delenv("SENTINEL_BOOTSTRAP_ADMIN_PASSWORD", raising=False)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.setenv("SENTINEL_BOOTSTRAP_ADMIN_PASSWORD_FILE", "bootstrap-admin-password")
    assert cli.main(["admin", "bootstrap", "--email", "root@example.com"]) == 0
    assert seen == {"email": "root@example.com", "password": "from the credential"}


def test_without_redis_no_unit_loads_a_redis_credential(evaluate: Evaluate) -> None:
    out = evaluate({"redis": {"createLocally": False, "host": None}, "worker": {"enable": False},
                    "gateway": {"rateLimits": {"enable": False}}})
    assert out["assertions"] == []
    assert out["redis"] == {}
    for name, unit in _sentinel_units(out).items():
        assert "redis-url" not in _credentials(unit) if "LoadCredential" in unit["serviceConfig"] else True, name
        assert "SENTINEL_REDIS_URL_FILE" not in unit["environment"], name
    assert "redis-url" not in out["services"]["sentinel-setup"]["serviceConfig"]["ExecStart"]["text"]


# ---------------------------------------------------------------------------------------------
# Observability (nixos-modules/observability.nix)

OBS_SECRETS = {"adminPasswordFile": "/run/secrets/grafana-admin", "secretKeyFile": "/run/secrets/grafana-key"}


@pytest.fixture(scope="module")
def observed(evaluate: Evaluate) -> dict[str, Any]:
    out = evaluate({"observability": {"enable": True, "grafana": OBS_SECRETS}})
    assert out["assertions"] == [], out["assertions"]
    return out


def test_observability_off_by_default(default: dict[str, Any]) -> None:
    assert default["prometheus"]["enable"] is False
    assert default["grafana"]["enable"] is False
    assert default["loki"]["enable"] is False


def test_prometheus_scrapes_every_job_and_loads_the_committed_rules(observed: dict[str, Any]) -> None:
    prom = observed["prometheus"]
    assert prom["enable"] is True
    assert prom["retentionTime"] == "90d"
    committed = yaml.safe_load((REPO / "observability" / "prometheus.yml").read_text())["scrape_configs"]
    jobs = {j["job_name"]: j for j in prom["scrapeConfigs"]}
    assert set(jobs) == {j["job_name"] for j in committed}
    assert jobs["node"]["static_configs"] == [{"targets": ["127.0.0.1:9100"]}]
    assert jobs["envoy"]["metrics_path"] == "/stats/prometheus"
    assert [j for j in prom["scrapeConfigs"] if j["job_name"] != "node"] == observed["sentinel"]["scrapeConfigs"]
    names = sorted(Path(p).name for p in prom["ruleFiles"])
    assert names == sorted(p.name for p in (REPO / "alerts" / "generated").glob("*.rules.yaml"))
    for path in prom["ruleFiles"]:  # the flake's own copies (paths into its source)
        assert Path(path).read_text() == (REPO / "alerts" / "generated" / Path(path).name).read_text()


def test_retention_is_an_option(evaluate: Evaluate) -> None:
    out = evaluate({"observability": {"enable": True, "retention": "30d", "grafana": {"enable": False}}})
    assert out["assertions"] == []
    assert out["prometheus"]["retentionTime"] == "30d"


def test_node_exporter_textfile_directory(observed: dict[str, Any]) -> None:
    node = observed["prometheus"]["node"]
    assert node["enable"] is True
    assert "textfile" in node["enabledCollectors"]
    assert node["listenAddress"] == "127.0.0.1"
    assert node["extraFlags"] == ["--collector.textfile.directory=/var/lib/prometheus-node-exporter-text-files"]


def test_loki_config_is_the_committed_one_with_30_days(observed: dict[str, Any]) -> None:
    loki = observed["loki"]
    assert loki["enable"] is True
    assert loki["configFile"] is None
    assert loki["configuration"] == json.loads((REPO / "observability" / "loki.json").read_text())
    assert loki["configuration"]["limits_config"]["retention_period"] == "720h"
    assert loki["configuration"]["compactor"]["retention_enabled"] is True


def test_alloy_reads_the_committed_config(observed: dict[str, Any]) -> None:
    alloy = observed["alloy"]
    assert alloy["enable"] is True
    assert alloy["configPath"] == "/etc/alloy"
    (source,) = alloy["etc"].values()
    assert list(alloy["etc"]) == ["alloy/config.alloy"]
    assert Path(source).read_text() == (REPO / "observability" / "config.alloy").read_text()


def test_grafana_secrets_via_file_provider_and_provisioning(observed: dict[str, Any]) -> None:
    graf = observed["grafana"]
    assert graf["enable"] is True
    assert graf["security"]["admin_password"] == "$__file{/run/secrets/grafana-admin}"
    assert graf["security"]["secret_key"] == "$__file{/run/secrets/grafana-key}"
    prov = graf["provision"]
    assert prov["enable"] is True
    assert Path(prov["datasources"]).read_text() == (
        REPO / "dashboards" / "provisioning" / "datasources.yaml").read_text()
    (provider,) = prov["dashboards"]
    assert provider["name"] == "sentinel"
    assert provider["type"] == "file"
    # builtins.path of dashboards/ with only its *.json (not copied in --readonly-mode).
    assert provider["options"]["path"].endswith("-sentinel-dashboards")


@pytest.mark.parametrize("missing", ["adminPasswordFile", "secretKeyFile"])
def test_grafana_without_secret_file_fails_its_assertion(evaluate: Evaluate, missing: str) -> None:
    grafana = {k: v for k, v in OBS_SECRETS.items() if k != missing}
    out = evaluate({"observability": {"enable": True, "grafana": grafana}})
    assert any(f"services.sentinel.observability.grafana.{missing}" in m for m in out["assertions"]), out
    assert "prometheus" not in out


def test_grafana_secret_in_store_fails(evaluate: Evaluate) -> None:
    out = evaluate({"observability": {"enable": True, "grafana": {"secretKeyFile": "/run/secrets/k"}}},
                   nix="{ services.sentinel.observability.grafana.adminPasswordFile = ./.; }")
    assert any("grafana.adminPasswordFile must be a path outside the Nix store" in m for m in out["assertions"])


# ---------------------------------------------------------------------------------------------
# Host security (nixos-modules/host-security.nix)

HOST = {"hostSecurity": {"enable": True, "extras": ["etc-change", "kmod-change"], "quietUids": [990]}}
TEXTFILE_DIR = "/var/lib/prometheus-node-exporter-text-files"


def _render_rules(out: dict[str, Any], target: Path) -> None:
    """Run the rules derivation's builder script for real (this checkout's `sentinel`) into target."""
    rendered = out["sentinel"]["auditRules"]
    assert rendered["drv"] == "sentinel-audit-rules"
    script = rendered["script"].replace(SENTINEL, str(REPO / ".venv" / "bin" / "sentinel"))
    proc = subprocess.run(["bash", "-euc", script], env={**os.environ, "out": str(target)},
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def hosted(evaluate: Evaluate, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any]]:
    first = evaluate(HOST)
    assert first["assertions"] == [], first["assertions"]
    target = tmp_path_factory.mktemp("audit-rules") / "rules.json"
    _render_rules(first, target)
    second = evaluate(HOST, render_dirs={"sentinel-audit-rules": target})
    assert second["assertions"] == []
    return first, second


def test_audit_rules_are_the_python_renderers(hosted: tuple[dict[str, Any], dict[str, Any]]) -> None:
    from sentinel.host import rules

    _, out = hosted
    expected = rules.nixos_rules(rules.Options(
        extras=("etc-change", "kmod-change"), quiet_uids=(990,),
        paths=rules.nixos_paths(STORE + "audit/bin/auditd", STORE + "kmod/bin")))
    assert out["audit"]["rules"] == expected
    assert not any(r.startswith(("-D", "-b ", "-e ", "-f ")) for r in expected)  # NixOS writes those
    assert out["audit"]["auditd"] is True
    assert out["audit"]["enable"] is True
    assert out["audit"]["backlogLimit"] == rules.BACKLOG_LIMIT == 8192
    assert out["audit"]["failureMode"] == "printk"


def test_host_security_off_by_default(default: dict[str, Any]) -> None:
    assert default["audit"]["auditd"] is False
    assert "sentinel-watchdog" not in default["services"]
    assert "sentinel-procmem" not in default["services"]


def test_host_units_hardened_as_the_python_units(hosted: tuple[dict[str, Any], dict[str, Any]]) -> None:
    from sentinel.host import units

    out, _ = hosted
    for name, hardening in (("sentinel-watchdog", units.WATCHDOG_HARDENING),
                            ("sentinel-procmem", units.COLLECTOR_HARDENING)):
        cfg = out["services"][name]["serviceConfig"]
        assert {k: cfg[k] for k in hardening} == dict(hardening), name
        assert cfg["Type"] == "simple"
        assert cfg["Restart"] == "on-failure"
        assert cfg["ReadWritePaths"] == [TEXTFILE_DIR]
        assert out["services"][name]["wantedBy"] == ["multi-user.target"]
    assert out["tmpfiles"] == [f"d {TEXTFILE_DIR} 0755 root root -"]


def test_host_units_write_where_the_node_exporter_reads(hosted: tuple[dict[str, Any], dict[str, Any]],
                                                        evaluate: Evaluate) -> None:
    out, _ = hosted
    watchdog = out["services"]["sentinel-watchdog"]["serviceConfig"]["ExecStart"]
    collector = out["services"]["sentinel-procmem"]["serviceConfig"]["ExecStart"]
    assert collector == f"{SENTINEL} host collect-processes --textfile-dir {TEXTFILE_DIR} --top 10 --interval 30"
    assert watchdog.startswith(f"{SENTINEL} watchdog --textfile-dir {TEXTFILE_DIR} ")
    systemctl = STORE + "systemd/bin/systemctl"
    for arg in (f"--restart-command '{systemctl} restart auditd.service'",
                f"--reload-command '{systemctl} restart audit-rules-nixos.service'",
                f"--list-rules-command '{STORE}audit/bin/auditctl -l'",
                "--extra etc-change --extra kmod-change"):
        assert arg in watchdog, arg
    both = evaluate({**HOST, "observability": {"enable": True, "grafana": {"enable": False},
                                               "textfileDirectory": "/var/lib/textfiles"}})
    assert both["assertions"] == []
    flag = "--collector.textfile.directory=/var/lib/textfiles"
    assert both["prometheus"]["node"]["extraFlags"] == [flag]
    assert "--textfile-dir /var/lib/textfiles " in both["services"]["sentinel-watchdog"]["serviceConfig"]["ExecStart"]
    assert "--textfile-dir /var/lib/textfiles " in both["services"]["sentinel-procmem"]["serviceConfig"]["ExecStart"]


def test_extras_are_the_python_rule_sets(evaluate: Evaluate) -> None:
    from sentinel.host import rules

    out = evaluate({"hostSecurity": {"enable": True, "extras": list(rules.EXTRA_SETS)}})
    assert out["assertions"] == []
    # The enum type refuses any other name at evaluation.
    with pytest.raises(AssertionError, match="is not of type"):
        evaluate({"hostSecurity": {"enable": True, "extras": ["tmp-exec-typo"]}})


# ---------------------------------------------------------------------------------------------
# The units a deployment check waits for, and the example host (nix/example.nix)

PLATFORM_UNITS = ["sentinel-setup.service", "sentinel-migrate.service", "sentinel-tenant.service",
                  "sentinel-user.service", "sentinel-audit.service", "sentinel-scheduler.service",
                  "sentinel-worker.service"]
OBSERVABILITY_UNITS = ["prometheus.service", "prometheus-node-exporter.service", "loki.service",
                       "alloy.service", "grafana.service"]
HOST_UNITS = ["auditd.service", "sentinel-watchdog.service", "sentinel-procmem.service"]


def _declared(out: dict[str, Any], unit: str) -> bool:
    """A unit some module defines: ours (in the evaluated services) or an upstream one we enable."""
    name, upstream = unit.removesuffix(".service"), {
        "prometheus": out["prometheus"]["enable"], "prometheus-node-exporter": out["prometheus"]["node"]["enable"],
        "loki": out["loki"]["enable"], "alloy": out["alloy"]["enable"], "grafana": out["grafana"]["enable"],
        "auditd": out["audit"]["auditd"]}
    return upstream.get(name, False) or name in out["services"]


def test_every_module_adds_the_units_it_runs(evaluate: Evaluate) -> None:
    out = evaluate({"observability": {"enable": True, "grafana": OBS_SECRETS}, **HOST})
    assert out["assertions"] == []
    assert sorted(out["sentinel"]["units"]) == sorted(PLATFORM_UNITS + OBSERVABILITY_UNITS + HOST_UNITS)
    assert all(_declared(out, unit) for unit in out["sentinel"]["units"])
    # sentinel.target pulls in the platform's own units only.
    assert sorted(out["targets"]["sentinel"]["wants"]) == sorted(PLATFORM_UNITS)
    lean = evaluate({"observability": {"enable": True, "grafana": {"enable": False}, "alloy": {"enable": False}}})
    assert sorted(lean["sentinel"]["units"]) == sorted([*PLATFORM_UNITS, *OBSERVABILITY_UNITS[:3]])


def test_the_example_host_runs_everything(evaluate: Evaluate) -> None:
    """nixosConfigurations.example and the VM test's host: every module on, no failed assertion,
    Grafana's secrets made on the host before Grafana starts, none of them in the store."""
    out = evaluate({}, nix=f"import {REPO}/nix/example.nix")
    assert out["assertions"] == [], out["assertions"]
    assert sorted(out["sentinel"]["units"]) == sorted(PLATFORM_UNITS + OBSERVABILITY_UNITS + HOST_UNITS)
    assert all(_declared(out, unit) for unit in out["sentinel"]["units"])
    security = out["grafana"]["security"]
    assert security == {"admin_user": "admin",
                        "admin_password": "$__file{/var/lib/sentinel-example/grafana-admin-password}",
                        "secret_key": "$__file{/var/lib/sentinel-example/grafana-secret-key}"}
    secrets = out["services"]["sentinel-example-secrets"]
    assert "grafana.service" in secrets["before"] and "grafana.service" in secrets["wantedBy"]
    assert secrets["serviceConfig"]["Type"] == "oneshot"
    assert "/nix/store" not in json.dumps(security)
