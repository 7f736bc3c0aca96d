# The local Redis (services.sentinel.redis.createLocally): a named server of the NixOS redis module,
# redis-sentinel.service, password required. The password file is either the operator's or the one
# sentinel-setup.service generates; Redis reads it at start (requirePassFile), so it never enters
# the Nix store.
{ config, lib, ... }:
let
  cfg = config.services.sentinel;
  sl = import ./lib.nix { inherit lib; };
  d = sl.derive cfg;
in
{
  imports = [ ./sentinel.nix ];

  config = lib.mkIf (cfg.enable && cfg.redis.createLocally) {
    services.redis.servers.sentinel = {
      enable = true;
      bind = cfg.redis.host;
      # A named server listens on no TCP port unless given one.
      inherit (cfg.redis) port;
      requirePassFile = d.redisPasswordFile;
      # Jobs, idempotency records and lockouts survive a restart (as in `sentinel up`).
      appendOnly = true;
    };

    # The unit reads the password file in ExecStartPre: a generated one must exist first.
    systemd.services.redis-sentinel = {
      requires = [ "sentinel-setup.service" ];
      after = [ "sentinel-setup.service" ];
    };
  };
}
