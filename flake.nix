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

      # checks.<system>.{sentinel,ruff,unit-tests,vm}: run by `nix flake check` (see docs/nix.md);
      # vm boots the example host in a NixOS VM (needs KVM).
      checks = forEachSystem "checks";

      formatter = forEachSystem "formatter";

      # `sentinel` for any nixpkgs: `nixpkgs.overlays = [ sentinel.overlays.default ];`.
      overlays.default = final: _prev: {
        sentinel = final.callPackage ./nix/package.nix { };
      };

      # nixosModules.default: everything (nixos-modules/default.nix); nixosModules.<area>: one area
      # with the shared options (sentinel, postgresql, redis, services, gateway, observability, host-security). They default
      # services.sentinel.package to this flake's build for the host's system (see README, "Deploy
      # on NixOS"). New areas are added here and in default.nix.
      nixosModules =
        let
          withPackage =
            module:
            { lib, pkgs, ... }:
            {
              imports = [ module ];
              services.sentinel.package = lib.mkIf (self.packages ? ${pkgs.stdenv.hostPlatform.system}) (
                lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.sentinel
              );
            };
        in
        {
          default = withPackage ./nixos-modules;
        }
        // lib.genAttrs [ "sentinel" "postgresql" "redis" "services" "gateway" "observability" "host-security" ] (
          area: withPackage (./nixos-modules + "/${area}.nix")
        );

      # A single host with everything on it (nix/example.nix): PostgreSQL, Redis, the services and
      # Envoy. Only boot loader and file systems are stand-ins, so that it evaluates and builds.
      nixosConfigurations.example = nixpkgs.lib.nixosSystem {
        modules = [
          self.nixosModules.default
          ./nix/example.nix
          {
            nixpkgs.hostPlatform = "x86_64-linux";
            networking.hostName = "sentinel-example";
            boot.loader.grub.device = "nodev";
            fileSystems."/" = {
              device = "/dev/disk/by-label/nixos";
              fsType = "ext4";
            };
          }
        ];
      };
    };
}
