{
  description = "Sentinel: multi-tenant gRPC services on PostgreSQL RLS behind Envoy";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;

      # envoy-bin (the upstream static binary) exists for exactly these two systems.
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];

      # Everything per-system is built by nix/per-system.nix. Each system's attribute set is only
      # constructed when an output of that system is forced, so evaluating attribute names
      # (e.g. `nix flake show`, tests/unit/test_nix.py) does not build or fetch anything.
      perSystem = lib.genAttrs systems (
        system:
        import ./nix/per-system.nix {
          inherit lib;
          pkgs = nixpkgs.legacyPackages.${system};
        }
      );
      forEachSystem = name: lib.mapAttrs (_system: outputs: outputs.${name}) perSystem;
    in
    {
      # packages.<system>.{sentinel,default}: the Python application (nix/package.nix).
      packages = forEachSystem "packages";

      # apps.<system>.{default,up}: `sentinel up` with nixpkgs Postgres/Redis/Envoy on PATH;
      # apps.<system>.migrate: `sentinel migrate`.
      apps = forEachSystem "apps";

      # devShells.<system>.default: Python + uv + the dev-stack binaries + protoc/grpcurl/ruff/nixfmt.
      devShells = forEachSystem "devShells";

      # checks.<system>.{sentinel,ruff,unit-tests}: run by `nix flake check` (see docs/nix.md).
      checks = forEachSystem "checks";

      formatter = forEachSystem "formatter";

      # `sentinel` for any nixpkgs: `nixpkgs.overlays = [ sentinel.overlays.default ];`.
      overlays.default = final: _prev: {
        sentinel = final.callPackage ./nix/package.nix { };
      };

      # nixosModules: the NixOS modules (services, Postgres+RLS, Redis, Envoy, observability) come
      # in a later issue and will be exported here, from nixos-modules/.
    };
}
