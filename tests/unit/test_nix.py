"""The flake: lock file pin, Nix syntax, and a shallow evaluation of its outputs.

The evaluation needs no network and no Nix store: ``flake.nix``'s ``outputs`` function is called with
a fake ``nixpkgs`` whose ``lib`` is a real nixpkgs ``lib`` (the small ``nix-community/nixpkgs.lib``
mirror) and whose ``legacyPackages.<system>`` is a stub package set (below) in which derivations are
plain attribute sets. That checks output names, app wiring, the pyproject → python3Packages
dependency mapping and the source filter, not that anything builds (``nix flake check`` does that).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.support import missing_tool

REPO = Path(__file__).resolve().parents[2]
FLAKE = REPO / "flake.nix"
LOCK = REPO / "flake.lock"
NIX_FILES = [FLAKE, *sorted((REPO / "nix").glob("*.nix"))]  # nixos-modules/: test_nixos_modules.py

NIXPKGS_REV = "8f0500b9660505dc3cb647775fe9a978a74b5283"
NIXPKGS_NAR_HASH = "sha256-O3/YajjWo001VUIgD8BwaRdSNLUFe7nZ1qV5TwhRBcw="
NIXPKGS_LAST_MODIFIED = 1783703440
SYSTEMS = ["aarch64-linux", "x86_64-linux"]

LIB_MIRROR = Path("/work/.mirror/nix-community+nixpkgs.lib/repo")

# python3Packages attributes the stub offers. Each was checked to exist in nixpkgs
# (pkgs/development/python-modules/<name>); nix/package.nix referencing anything else fails here.
PYTHON_PACKAGES = [
    "alembic", "argon2-cffi", "asyncpg", "bcrypt", "cryptography", "googleapis-common-protos", "greenlet",
    "grpcio", "grpcio-health-checking", "grpcio-reflection", "grpcio-status", "grpcio-tools",
    "hatchling", "httpx", "huey", "hypothesis", "opentelemetry-api", "opentelemetry-exporter-otlp-proto-grpc",
    "opentelemetry-instrumentation-grpc", "opentelemetry-instrumentation-redis",
    "opentelemetry-instrumentation-sqlalchemy", "opentelemetry-sdk", "prometheus-client", "protobuf", "pydantic",
    "pydantic-settings", "pyjwt", "pytest", "pytest-asyncio", "pytest-timeout", "pyyaml", "redis", "setuptools",
    "sqlalchemy", "uvloop",
]
# pyproject dependencies nixpkgs lacks: nix/package.nix builds them (`vendored`) from these sdists.
VENDORED: dict[str, str] = {}
TOP_LEVEL_PACKAGES = [
    "envoy-bin", "grpcurl", "nixfmt", "postgresql_17", "prometheus", "protobuf", "redis", "ruff", "uv", "zlib",
]
# Extras used in pyproject.toml and the python3Packages they must pull in.
EXTRAS = {("sqlalchemy", "asyncio"): ["greenlet"], ("pyjwt", "crypto"): ["cryptography"]}


def _nix_instantiate() -> str:
    exe = shutil.which("nix-instantiate")
    if exe is None:
        missing_tool("nix-instantiate not found (Debian package nix-bin)")
    return exe


def _nix_env(tmp: Path) -> dict[str, str]:
    """Keep Nix away from the real home, /nix/var and the daemon (pure evaluation needs none of them)."""
    env = dict(os.environ)
    for var, sub in (("HOME", "home"), ("NIX_STATE_DIR", "state"), ("NIX_LOG_DIR", "log"),
                     ("XDG_CACHE_HOME", "cache"), ("NIX_CONF_DIR", "conf")):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(tmp / sub)
    env.pop("NIX_PATH", None)
    # No store and no daemon: evaluation must not copy anything (with --readonly-mode, store paths of
    # local sources are computed, not written).
    env["NIX_REMOTE"] = "dummy://"
    return env


# ---------------------------------------------------------------------------------------------
# 1. flake.lock (pure Python)


def _lock() -> dict[str, Any]:
    return json.loads(LOCK.read_text())


def _flake_input_urls() -> dict[str, str]:
    text = FLAKE.read_text()
    return dict(re.findall(r'inputs\.([A-Za-z0-9_-]+)\.url\s*=\s*"([^"]+)"', text))


def test_lock_pins_nixpkgs_26_05() -> None:
    lock = _lock()
    assert lock["version"] == 7
    assert lock["root"] == "root"
    node = lock["nodes"]["nixpkgs"]
    assert node["locked"] == {
        "lastModified": NIXPKGS_LAST_MODIFIED,
        "narHash": NIXPKGS_NAR_HASH,
        "owner": "NixOS",
        "repo": "nixpkgs",
        "rev": NIXPKGS_REV,
        "type": "github",
    }
    assert node["original"] == {"owner": "NixOS", "ref": "nixos-26.05", "repo": "nixpkgs", "type": "github"}


def test_lock_nodes_match_flake_inputs() -> None:
    lock = _lock()
    urls = _flake_input_urls()
    assert urls == {"nixpkgs": "github:NixOS/nixpkgs/nixos-26.05"}
    root_inputs = lock["nodes"][lock["root"]]["inputs"]
    assert set(root_inputs) == set(urls), "flake.lock root inputs differ from flake.nix inputs"
    assert set(lock["nodes"]) == {lock["root"], *root_inputs.values()}, "stray or missing lock nodes"
    for name, url in urls.items():
        original = lock["nodes"][root_inputs[name]]["original"]
        kind, owner, repo, ref = re.fullmatch(r"(github):([^/]+)/([^/]+)/(.+)", url).groups()  # type: ignore[union-attr]
        assert original == {"type": kind, "owner": owner, "repo": repo, "ref": ref}


# ---------------------------------------------------------------------------------------------
# 2. Syntax


@pytest.mark.parametrize("path", NIX_FILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_nix_file_parses(path: Path, tmp_path: Path) -> None:
    exe = _nix_instantiate()
    proc = subprocess.run([exe, "--parse", str(path)], capture_output=True, text=True, env=_nix_env(tmp_path),
                          timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------------------------
# 3. Shallow evaluation of the outputs against a stub nixpkgs

STUB = r"""
{ libPath, repo, pythonPackages, topLevelPackages, systems }:
let
  lib = import libPath;
  flake = import (repo + "/flake.nix");

  drv = name: extra: {
    type = "derivation";
    inherit name;
    pname = name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
    meta = { };
  } // extra;
  names = map (d: d.pname);

  python3Packages = lib.genAttrs pythonPackages (n: drv n { }) // {
    python = drv "python3" {
      interpreter = "/nix/store/00000000000000000000000000000000-python3/bin/python3";
      withPackages = f: drv "python3-env" { packages = names (f python3Packages); };
    };
    toPythonModule = d: d // { isPythonModule = true; };
    buildPythonApplication = args: drv args.pname (args // { buildPythonApplicationArgs = args; });
    buildPythonPackage = args: drv args.pname (args // { buildPythonPackageArgs = args; });
    fetchPypi = args: drv "${args.pname}-${args.version}.tar.gz" args;
  };

  pkgs = lib.genAttrs topLevelPackages (n: drv n { }) // {
    inherit lib python3Packages;
    python3 = python3Packages.python;
    stdenv.cc.cc.lib = drv "gcc-lib" { };
    callPackage = fn: args:
      let f = if builtins.isFunction fn then fn else import fn;
      in f (builtins.intersectAttrs (builtins.functionArgs f) pkgs // args);
    writeShellApplication = a: drv a.name {
      inherit (a) text;
      runtimeInputs = names a.runtimeInputs;
      meta.mainProgram = a.name;
    };
    mkShell = a: drv "nix-shell" {
      packages = names a.packages;
      env = a.env or { };
      shellHook = a.shellHook or "";
    };
    runCommand = name: env: script: drv name {
      inherit script;
      nativeBuildInputs = env.nativeBuildInputs or [ ];
    };
    testers.runNixOSTest = test: drv "vm-test-run-${test.name}" { inherit test; };
  };

  out = flake.outputs {
    self = { outPath = repo; };
    nixpkgs = { inherit lib; legacyPackages = lib.genAttrs systems (_: pkgs); };
  };

  x = "x86_64-linux";
  sentinel = out.packages.${x}.sentinel.buildPythonApplicationArgs;
  source = sentinel.src;
  overlaid = out.overlays.default pkgs pkgs;
in
{
  description = flake.description;
  inputs = lib.mapAttrs (_: i: i.url) flake.inputs;
  outputs = builtins.attrNames out;
  systems = lib.mapAttrs (_: builtins.attrNames) (removeAttrs out [ "overlays" "nixosModules" "nixosConfigurations" ]);
  nixosModules = lib.mapAttrs (_: m: builtins.isFunction m) out.nixosModules;
  nixosConfigurations = builtins.attrNames out.nixosConfigurations;
  vmTest = let t = out.checks.${x}.vm.test; in {
    inherit (t) name;
    nodes = builtins.attrNames t.nodes;
    imports = map toString ((t.nodes.machine { config = { }; pkgs = { }; }).imports);
  };
  packages = lib.mapAttrs (_: builtins.attrNames) out.packages;
  apps = lib.mapAttrs (_: lib.mapAttrs (_: a: {
    inherit (a) type program;
    description = a.meta.description;
  })) out.apps;
  scripts = lib.mapAttrs (_: d: { inherit (d) name text runtimeInputs; })
    (import (repo + "/nix/per-system.nix") { inherit lib pkgs; }).scripts;
  checks = lib.mapAttrs (_: builtins.attrNames) out.checks;
  checkScripts = lib.mapAttrs (_: c: c.script or null) (removeAttrs out.checks.${x} [ "vm" ]);
  unitTestPython = (builtins.head out.checks.${x}.unit-tests.nativeBuildInputs).packages;
  ruffInputs = names out.checks.${x}.ruff.nativeBuildInputs;
  devShell = let shell = out.devShells.${x}.default; in {
    inherit (shell) packages shellHook;
    env = builtins.attrNames shell.env;
  };
  formatter = lib.mapAttrs (_: f: f.name) out.formatter;
  sentinel = {
    inherit (sentinel) pname version pyproject pythonRelaxDeps pythonImportsCheck preBuild;
    build-system = names sentinel.build-system;
    dependencies = names sentinel.dependencies;
    mainProgram = sentinel.meta.mainProgram;
    protogenPython = sentinel.passthru.protogenPython.packages;
  };
  sourceFilter = lib.mapAttrs (rel: type: source.filter (toString repo + "/" + rel) type) {
    ".venv" = "directory";
    ".sentinel" = "directory";
    ".git" = "directory";
    "services/sentinel/__pycache__" = "directory";
    ".pytest_cache" = "directory";
    "result" = "symlink";
    "services" = "directory";
    "services/sentinel/cli.py" = "regular";
    "proto" = "directory";
    "pyproject.toml" = "regular";
    "README.md" = "regular";
    "tests" = "directory";
  };
  overlay = { names = builtins.attrNames overlaid; pname = overlaid.sentinel.pname; };
}
"""


def _nixpkgs_lib(tmp_path: Path) -> Path:
    """A nixpkgs ``lib`` directory: $SENTINEL_NIXPKGS_LIB, else extracted from the fetched mirror."""
    configured = os.environ.get("SENTINEL_NIXPKGS_LIB")
    if configured:
        path = Path(configured)
        path = path / "lib" if (path / "lib" / "default.nix").exists() else path
        if not (path / "default.nix").exists():
            pytest.fail(f"SENTINEL_NIXPKGS_LIB={configured} holds no lib/default.nix")
        return path
    if not LIB_MIRROR.exists() or shutil.which("git") is None:
        # Fetched material is the one allowed exception to "skips fail in CI".
        pytest.skip(f"no nixpkgs lib: set SENTINEL_NIXPKGS_LIB or fetch nix-community/nixpkgs.lib to {LIB_MIRROR}")
    dest = tmp_path / "nixpkgs-lib"
    dest.mkdir()
    archive = subprocess.run(["git", f"--git-dir={LIB_MIRROR}", "archive", "HEAD", "lib"], capture_output=True,
                             timeout=30, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, capture_output=True, timeout=30, check=True)
    return dest / "lib"


def _nix_string(value: str) -> str:
    return json.dumps(value).replace("${", "\\${")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    exe = _nix_instantiate()
    tmp = tmp_path_factory.mktemp("nix-eval")
    lib = _nixpkgs_lib(tmp)
    stub = tmp / "stub.nix"
    stub.write_text(STUB)
    args = (
        f"{{ libPath = {lib}; repo = {REPO}; systems = {_nix_list(SYSTEMS)};"
        f" pythonPackages = {_nix_list(PYTHON_PACKAGES)}; topLevelPackages = {_nix_list(TOP_LEVEL_PACKAGES)}; }}"
    )
    proc = subprocess.run(
        [exe, "--readonly-mode", "--eval", "--strict", "--json", "--expr", f"import {stub} {args}"],
        capture_output=True, text=True, env=_nix_env(tmp), timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _nix_list(items: list[str]) -> str:
    return "[ " + " ".join(_nix_string(i) for i in items) + " ]"


def test_outputs_structure(evaluated: dict[str, Any]) -> None:
    assert evaluated["inputs"] == {"nixpkgs": "github:NixOS/nixpkgs/nixos-26.05"}
    assert evaluated["outputs"] == ["apps", "checks", "devShells", "formatter", "nixosConfigurations",
                                    "nixosModules", "overlays", "packages"]
    assert evaluated["nixosModules"] == dict.fromkeys(
        ["default", "gateway", "host-security", "observability", "postgresql", "redis", "sentinel", "services"], True)
    assert evaluated["nixosConfigurations"] == ["example"]
    for output, systems in evaluated["systems"].items():
        assert systems == SYSTEMS, output
    for system in SYSTEMS:
        assert evaluated["packages"][system] == ["default", "sentinel"]
        assert sorted(evaluated["apps"][system]) == ["default", "migrate", "up"]
        assert evaluated["checks"][system] == ["ruff", "sentinel", "unit-tests", "vm"]
        assert evaluated["formatter"][system] == "nixfmt"
    assert evaluated["overlay"] == {"names": ["sentinel"], "pname": "sentinel"}


def test_vm_check_boots_the_example_host(evaluated: dict[str, Any]) -> None:
    vm = evaluated["vmTest"]
    assert (vm["name"], vm["nodes"]) == ("sentinel", ["machine"])
    assert vm["imports"] == [str(REPO / "nixos-modules"), str(REPO / "nix" / "example.nix")]


def test_apps_run_the_cli(evaluated: dict[str, Any]) -> None:
    for system in SYSTEMS:
        apps = evaluated["apps"][system]
        for name, app in apps.items():
            assert app["type"] == "app", name
            assert app["program"].startswith("/nix/store/"), name
            assert app["description"], name
        assert apps["default"] == apps["up"]
        assert apps["up"]["program"].endswith("-sentinel-up/bin/sentinel-up")
        assert apps["migrate"]["program"].endswith("-sentinel-migrate/bin/sentinel-migrate")
    scripts = evaluated["scripts"]
    up = scripts["up"]
    assert re.search(r'^exec sentinel up "\$@"$', up["text"], re.M)
    assert set(up["runtimeInputs"]) == {"sentinel", "postgresql_17", "redis", "envoy-bin", "prometheus"}
    # The launcher takes these before its embedded fallbacks; a caller's own value still wins.
    exports = dict(re.findall(r'^export (SENTINEL_[A-Z_]+)="\$\{\1:-([^}]*)\}"$', up["text"], re.M))
    assert exports == {
        "SENTINEL_POSTGRES_BIN_DIR": "/nix/store/00000000000000000000000000000000-postgresql_17/bin",
        "SENTINEL_REDIS_SERVER": "/nix/store/00000000000000000000000000000000-redis/bin/redis-server",
        "SENTINEL_ENVOY_BIN": "/nix/store/00000000000000000000000000000000-envoy-bin/bin/envoy",
        "SENTINEL_PROMETHEUS_BIN": "/nix/store/00000000000000000000000000000000-prometheus/bin/prometheus",
    }
    migrate = scripts["migrate"]
    assert re.search(r'^exec sentinel migrate "\$@"$', migrate["text"], re.M)
    assert migrate["runtimeInputs"] == ["sentinel"]


def _expected_dependencies() -> list[str]:
    """pyproject ``[project].dependencies`` as python3Packages names, extras expanded."""
    out: list[str] = []
    for req in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]:
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?", req)
        assert m, req
        name = re.sub(r"[-_.]+", "-", m.group(1)).lower()
        extras = [e.strip() for e in (m.group(2) or "").split(",") if e.strip()]
        for attr in [VENDORED.get(name, name), *(a for e in extras for a in EXTRAS[(name, e)])]:
            if attr not in out:
                out.append(attr)
    return out


def test_package_maps_pyproject_dependencies(evaluated: dict[str, Any]) -> None:
    pkg = evaluated["sentinel"]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert (pkg["pname"], pkg["version"]) == (project["name"], project["version"])
    assert pkg["pyproject"] is True
    assert pkg["build-system"] == ["hatchling"]
    assert pkg["pythonRelaxDeps"] is True
    assert pkg["pythonImportsCheck"] == ["sentinel.cli"]
    assert pkg["mainProgram"] == "sentinel" == next(iter(tomllib.loads(
        (REPO / "pyproject.toml").read_text())["project"]["scripts"]))
    assert pkg["dependencies"] == _expected_dependencies()
    assert {"greenlet", "cryptography", "protobuf", "grpcio"} <= set(pkg["dependencies"])


def test_package_regenerates_protobuf_modules(evaluated: dict[str, Any]) -> None:
    pkg = evaluated["sentinel"]
    assert sorted(pkg["protogenPython"]) == ["googleapis-common-protos", "grpcio-tools"]
    assert "-m sentinel.protogen" in pkg["preBuild"]
    assert "PYTHONPATH=services" in pkg["preBuild"]
    # protogen is importable from the source tree and needs nothing beyond the regeneration env.
    assert (REPO / "services" / "sentinel" / "protogen.py").exists()


def test_checks_and_dev_shell(evaluated: dict[str, Any]) -> None:
    scripts = evaluated["checkScripts"]
    assert "ruff check" in scripts["ruff"]
    assert evaluated["ruffInputs"] == ["ruff"]
    assert sorted(evaluated["unitTestPython"]) == ["httpx", "hypothesis", "pytest", "pytest-asyncio",
                                                   "pytest-timeout", "sentinel"]
    unit = scripts["unit-tests"]
    assert 'pytest tests/unit -m "not integration"' in unit
    assert "export HOME=$TMPDIR" in unit
    shell = evaluated["devShell"]
    assert {"python3", "uv", "postgresql_17", "redis", "envoy-bin", "prometheus", "grpcurl", "protobuf", "ruff",
            "nixfmt"} <= set(shell["packages"])
    assert {"SENTINEL_POSTGRES_BIN_DIR", "SENTINEL_REDIS_SERVER", "SENTINEL_ENVOY_BIN",
            "SENTINEL_PROMETHEUS_BIN"} <= set(shell["env"])
    assert "sentinel up" in shell["shellHook"] and "sentinel migrate" in shell["shellHook"]


def test_source_filter(evaluated: dict[str, Any]) -> None:
    kept = {path for path, keep in evaluated["sourceFilter"].items() if keep}
    assert kept == {"services", "services/sentinel/cli.py", "proto", "pyproject.toml", "README.md", "tests"}

