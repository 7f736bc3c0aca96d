# Per-system flake outputs. Called by flake.nix once per system with that system's nixpkgs.
{ lib, pkgs }:
let
  sentinel = pkgs.callPackage ./package.nix { };
  src = import ./source.nix { inherit lib; };

  python = pkgs.python3Packages.python;
  postgresql = pkgs.postgresql_17;
  inherit (pkgs) redis prometheus;
  envoy = pkgs.envoy-bin; # upstream static build; pkgs.envoy builds from source with Bazel

  # The dev launcher (`sentinel up`) takes these binaries before its embedded fallbacks.
  stackEnv = {
    SENTINEL_POSTGRES_BIN_DIR = "${lib.getBin postgresql}/bin"; # initdb, postgres, pg_ctl
    SENTINEL_REDIS_SERVER = lib.getExe' redis "redis-server";
    SENTINEL_ENVOY_BIN = lib.getExe' envoy "envoy";
    # With it the stack also runs Prometheus on the generated rules (`sentinel up --prometheus-port`).
    SENTINEL_PROMETHEUS_BIN = lib.getExe' prometheus "prometheus";
  };
  # Exports that keep a value the caller already set (so one binary can still be swapped).
  exportStackEnv = lib.concatStringsSep "\n" (
    lib.mapAttrsToList (name: value: ''export ${name}="''${${name}:-${value}}"'') stackEnv
  );

  upScript = pkgs.writeShellApplication {
    name = "sentinel-up";
    runtimeInputs = [
      sentinel
      postgresql
      redis
      envoy
      prometheus
    ];
    text = ''
      ${exportStackEnv}
      exec sentinel up "$@"
    '';
  };

  migrateScript = pkgs.writeShellApplication {
    name = "sentinel-migrate";
    runtimeInputs = [ sentinel ];
    text = ''
      exec sentinel migrate "$@"
    '';
  };

  mkApp = drv: description: {
    type = "app";
    program = lib.getExe drv;
    meta.description = description;
  };

  upApp = mkApp upScript "Start the Sentinel dev stack (Postgres, Redis, Envoy, all services); Ctrl-C stops it";

  testPython = python.withPackages (ps: [
    (ps.toPythonModule sentinel)
    ps.pytest
    ps.pytest-asyncio
    ps.pytest-timeout
    ps.hypothesis
    ps.httpx
  ]);
in
{
  packages = {
    inherit sentinel;
    default = sentinel;
  };

  apps = {
    default = upApp;
    up = upApp;
    migrate = mkApp migrateScript "Apply the Sentinel database migrations";
  };

  devShells.default = pkgs.mkShell {
    packages = [
      python
      pkgs.uv
      postgresql
      redis
      envoy
      prometheus
      pkgs.grpcurl
      pkgs.protobuf
      pkgs.ruff
      pkgs.nixfmt
    ];
    env = stackEnv // {
      # uv uses the shell's Python instead of downloading one.
      UV_PYTHON = python.interpreter;
      UV_PYTHON_DOWNLOADS = "never";
      # manylinux wheels installed by `uv sync` (grpcio, asyncpg, ...) need libstdc++ on NixOS.
      LD_LIBRARY_PATH = lib.makeLibraryPath [
        pkgs.stdenv.cc.cc.lib
        pkgs.zlib
      ];
    };
    shellHook = ''
      echo "Sentinel dev shell (Postgres, Redis and Envoy from nixpkgs)"
      echo "  uv sync && uv run sentinel up    start the dev stack      (same as: nix run)"
      echo "  uv run sentinel migrate          apply the migrations     (same as: nix run .#migrate)"
    '';
  };

  checks = {
    # The package build, including regenerating the protobuf modules and `import sentinel.cli`.
    inherit sentinel;

    ruff = pkgs.runCommand "sentinel-ruff" { nativeBuildInputs = [ pkgs.ruff ]; } ''
      cd ${src}
      ruff check --no-cache .
      touch $out
    '';

    # Unit tests against the built package (not the source tree). test_proto_sync compares the
    # committed protobuf modules with a fresh generation from proto/; that needs the source tree
    # and the PyPI grpcio-tools version, so it runs under uv only.
    unit-tests = pkgs.runCommand "sentinel-unit-tests" { nativeBuildInputs = [ testPython ]; } ''
      cp -r ${src} source
      chmod -R u+w source
      cd source
      export HOME=$TMPDIR
      python -m pytest tests/unit -m "not integration" -p no:cacheprovider \
        --ignore=tests/unit/test_proto_sync.py -q
      touch $out
    '';

    # The example host (nix/example.nix) in a NixOS VM: every unit, REST through Envoy, tenant
    # isolation, Prometheus targets (nix/vm-test.nix). Needs the nixos-test and kvm system features.
    vm = pkgs.testers.runNixOSTest (
      import ./vm-test.nix {
        sentinelModules = ../nixos-modules;
        inherit sentinel;
      }
    );
  };

  formatter = pkgs.nixfmt;

  # Not a flake output (flake.nix forwards only the attributes above); lets tests/unit/test_nix.py
  # inspect the app wrappers.
  scripts = {
    up = upScript;
    migrate = migrateScript;
  };
}
