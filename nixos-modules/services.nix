# The Sentinel processes as hardened systemd units:
#
#   sentinel-migrate        oneshot: `sentinel migrate`, then `sentinel admin bootstrap`; after the
#                           database is set up (postgresql.target), before every service
#   sentinel-<svc>[-<n>]    `sentinel serve <svc>`, one unit per instance (tenant, user, audit, scheduler)
#   sentinel-worker         `sentinel worker` (huey; stops gracefully on SIGINT)
#
# The services count the tenant and principal rate-limit tiers themselves, in Redis
# (services.sentinel.gateway.rateLimits: SENTINEL_RATE_LIMITS, SENTINEL_RATE_LIMITS_ENABLED); Envoy
# enforces the address tier (gateway.nix).
#
# The services do not implement sd_notify, so the units are Type=exec with an ExecStartPost that
# waits for the process's own readiness (gRPC health SERVING, or the worker's /metrics answering):
# a unit is active only when it serves, and anything ordered after it starts against a ready peer.
#
# Secrets reach a unit only as credentials (LoadCredential=, read by systemd as root) and the
# environment names them: SENTINEL_<NAME>_FILE=<credential> resolves under $CREDENTIALS_DIRECTORY,
# key paths use systemd's %d specifier (the credentials directory).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) optional optionalAttrs optionals;

  cfg = config.services.sentinel;
  sl = import ./lib.nix { inherit lib; };
  d = sl.derive cfg;
  db = cfg.database;
  keys = cfg.signingKeys.directory;
  sentinel = lib.getExe' cfg.package "sentinel";

  # Applied to every Sentinel process (the migrate job included).
  hardening = {
    NoNewPrivileges = true;
    PrivateTmp = true;
    PrivateDevices = true;
    DevicePolicy = "closed";
    ProtectSystem = "strict";
    ProtectHome = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    ProtectProc = "invisible";
    CapabilityBoundingSet = "";
    RestrictAddressFamilies = [
      "AF_INET"
      "AF_INET6"
      "AF_UNIX"
    ];
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    RemoveIPC = true;
    SystemCallArchitectures = "native";
    SystemCallFilter = [
      "@system-service"
      "~@privileged"
      "~@resources"
    ];
    SystemCallErrorNumber = "EPERM";
    UMask = "0077";
    # Not MemoryDenyWriteExecute: cffi/ctypes callbacks (cryptography, argon2-cffi) may need W+X pages.
  };

  readyTimeout = 60;
  waitReady =
    name: check:
    pkgs.writeShellScript "sentinel-${name}-ready" ''
      deadline=$((SECONDS + ${toString readyTimeout}))
      while ((SECONDS < deadline)); do
        if ${check} > /dev/null 2>&1; then
          exit 0
        fi
        sleep 0.2
      done
      echo "${name}: not ready after ${toString readyTimeout} s" >&2
      exit 1
    '';
  grpcServing =
    address:
    "${lib.getExe' pkgs.grpc-health-probe "grpc-health-probe"} -addr=${address} -connect-timeout=1s -rpc-timeout=1s";
  httpOk = url: "${lib.getExe' pkgs.curl "curl"} -fsS -o /dev/null --max-time 1 ${url}";

  local = db.createLocally;
  redisUnits = optional cfg.redis.createLocally "redis-sentinel.service";
  remoteUnits = optional (!local || !cfg.redis.createLocally) "network-online.target";

  mkUnit =
    {
      name,
      description,
      account,
      command,
      ready,
      environment ? { },
      credentials ? [ ],
      serviceConfig ? { },
    }:
    {
      inherit description;
      wantedBy = [ "sentinel.target" ];
      partOf = [ "sentinel.target" ];
      requires = [
        "sentinel-setup.service"
        "sentinel-migrate.service"
      ];
      wants = redisUnits ++ remoteUnits;
      after = [
        "network.target"
        "sentinel-setup.service"
        "sentinel-migrate.service"
      ]
      ++ redisUnits
      ++ remoteUnits;
      environment = d.commonEnvironment // environment;
      startLimitBurst = 10;
      startLimitIntervalSec = 300;
      serviceConfig = hardening // {
        Type = "exec";
        User = sl.userOf account;
        Group = sl.group;
        ExecStart = command;
        ExecStartPost = waitReady name ready;
        LoadCredential = d.commonCredentials ++ credentials;
        Restart = "on-failure";
        RestartSec = 5;
        TimeoutStartSec = readyTimeout + 30;
        TimeoutStopSec = 30; # SIGTERM drains: health NOT_SERVING, in-flight calls get 10 s
      }
      // serviceConfig;
    };

  # The tenant and principal tiers, counted by every service process in Redis (the same overrides
  # as Envoy's address tier); the services' defaults apply when nothing is set.
  rateLimitsEnvironment =
    optionalAttrs (d.rateLimits != { }) {
      SENTINEL_RATE_LIMITS = builtins.toJSON d.rateLimits;
    }
    // optionalAttrs (!d.rateLimitsEnabled) {
      SENTINEL_RATE_LIMITS_ENABLED = "false";
    };

  serviceUnit =
    i:
    let
      key = "${i.service}.key.pem"; # the identity key's file name is the service's name
    in
    mkUnit {
      description = "Sentinel ${i.service} service${lib.optionalString (i.index > 1) " (instance ${toString i.index})"}";
      inherit (i) name account;
      command = "${sentinel} serve ${i.service}";
      ready = grpcServing i.address;
      environment = {
        SENTINEL_SERVICE = i.service;
        SENTINEL_GRPC_PORT = toString i.port;
        SENTINEL_METRICS_PORT = toString i.metricsPort;
        SENTINEL_SERVICE_KEY_FILE = "%d/${key}";
      }
      // optionalAttrs (i.service == "user") {
        # Read live by the user service, so a rotated key signs without a restart.
        SENTINEL_JWT_SIGNING_KEYS_DIR = "${keys}/jwt";
      }
      // optionalAttrs (i.service == "audit") {
        SENTINEL_AUDIT_SIGNING_KEY_FILE = "%d/${d.auditKeyName}";
      }
      // optionalAttrs (i.service == "scheduler") {
        # Seals a new job's confidential input (creating the tenant's key on first use) and
        # opens results for download.
        SENTINEL_DATA_KEY_DIR = cfg.dataKeys.directory;
      }
      // rateLimitsEnvironment;
      credentials = [
        "${key}:${keys}/services/${key}"
      ]
      ++ optional (i.service == "audit") "${d.auditKeyName}:${keys}/audit/${d.auditKeyName}";
      serviceConfig = optionalAttrs (i.service == "scheduler") {
        ReadWritePaths = [ cfg.dataKeys.directory ];
      };
    };

  migrateScript = pkgs.writeShellScript "sentinel-migrate" ''
    set -euo pipefail
    ${sentinel} migrate --app-role ${lib.escapeShellArg db.user}
    ${lib.optionalString cfg.bootstrapAdmin.enable ''
      out=$(${sentinel} admin bootstrap --email ${lib.escapeShellArg cfg.bootstrapAdmin.email})
      case "$out" in
        *"generated password"*)
          printf '%s\n' "$out" > "$STATE_DIRECTORY/bootstrap-admin"
          echo "platform admin ${cfg.bootstrapAdmin.email} created; its generated password is in $STATE_DIRECTORY/bootstrap-admin"
          ;;
        *) printf '%s\n' "$out" ;;
      esac
    ''}
  '';
in
{
  imports = [ ./sentinel.nix ];

  config = lib.mkIf cfg.enable {
    systemd.services = {
      sentinel-migrate = {
        description = "Sentinel database migrations";
        wantedBy = [ "sentinel.target" ];
        partOf = [ "sentinel.target" ];
        # postgresql.target, not postgresql.service: it is reached once postgresql-setup.service
        # has created the database and the roles.
        requires = [ "sentinel-setup.service" ] ++ optional local "postgresql.target";
        wants = optional (!local) "network-online.target";
        after = [
          "network.target"
          "sentinel-setup.service"
        ]
        ++ (if local then [ "postgresql.target" ] else [ "network-online.target" ]);
        environment =
          d.databaseUrlEnv "database_owner_url" db.ownerUser
          // d.databaseUrlEnv "database_url" db.user
          // d.settingsEnvironment
          // optionalAttrs (cfg.bootstrapAdmin.passwordFile != null) {
            SENTINEL_BOOTSTRAP_ADMIN_PASSWORD_FILE = "bootstrap-admin-password";
          };
        serviceConfig = hardening // {
          Type = "oneshot";
          RemainAfterExit = true;
          User = sl.userOf "migrate";
          Group = sl.group;
          ExecStart = migrateScript;
          StateDirectory = "sentinel-migrate";
          StateDirectoryMode = "0700";
          LoadCredential =
            d.databaseCredentials "database_owner_url"
            ++ d.databaseCredentials "database_url"
            ++ optional (
              cfg.bootstrapAdmin.passwordFile != null
            ) "bootstrap-admin-password:${toString cfg.bootstrapAdmin.passwordFile}";
          TimeoutStartSec = "15min";
        };
      };
    }
    // lib.listToAttrs (map (i: lib.nameValuePair i.unit (serviceUnit i)) d.instances)
    // optionalAttrs cfg.worker.enable {
      sentinel-worker = mkUnit {
        description = "Sentinel job worker";
        name = "worker";
        account = "worker";
        command = "${sentinel} worker";
        ready = httpOk "http://${d.workerMetricsAddress}/metrics";
        environment = {
          SENTINEL_WORKER_METRICS_PORT = toString cfg.worker.metricsPort;
          SENTINEL_AUDIT_PUBLIC_KEY_FILE = "${keys}/audit/public/${cfg.signingKeys.auditKeyId}.pub.pem";
          SENTINEL_DATA_KEY_DIR = cfg.dataKeys.directory;
        };
        serviceConfig = {
          # Creates tenants' data keys as it seals results, destroys them as it purges tenants.
          ReadWritePaths = [ cfg.dataKeys.directory ];
          # huey 2.x: SIGINT finishes the running jobs and stops; SIGTERM stops at once.
          KillSignal = "SIGINT";
          TimeoutStopSec = 120;
        };
      };
    };
  };
}
