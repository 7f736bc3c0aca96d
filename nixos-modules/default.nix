# Sentinel's NixOS modules, one per area; `services.sentinel.enable = true;` turns the platform on.
# The flake exports this file as nixosModules.default and every area on its own
# (nixosModules.<area>; each imports sentinel.nix, the shared options).
#
# Extension point: further areas are added to this list, as files next to these, and to
# `nixosModules` in flake.nix.
{
  imports = [
    ./sentinel.nix # options shared by every area, system users, sentinel-setup.service
    ./postgresql.nix # services.postgresql: database, owner and service roles (peer auth)
    ./redis.nix # services.redis.servers.sentinel
    ./services.nix # sentinel-migrate, the four services per instance, worker
    ./gateway.nix # services.envoy from the generator
    ./observability.nix # Prometheus, node exporter, Loki, Alloy, Grafana (services.sentinel.observability)
    ./host-security.nix # security.audit rules, auditd, sentinel-watchdog, sentinel-procmem
  ];
}
