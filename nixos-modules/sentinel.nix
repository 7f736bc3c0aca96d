# Sentinel: the options every area shares (package, database, Redis, secrets, signing keys, the
# services' instances and ports), the system users, and sentinel-setup.service, which creates at boot
# what must never be in the Nix store: generated secrets, the signing keys, and the connection URLs
# that carry passwords.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    literalExpression
    mkEnableOption
    mkIf
    mkOption
    types
    ;

  cfg = config.services.sentinel;
  sl = import ./lib.nix { inherit lib; };
  d = sl.derive cfg;
  jsonType = (pkgs.formats.json { }).type;

  secretFileOption =
    description:
    mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/run/secrets/sentinel/example";
      description = ''
        ${description}

        A path on the host, outside the Nix store (e.g. provided by agenix or sops-nix). It is read
        on the host by root when units start (systemd `LoadCredential=`, sentinel-setup.service or
        the Redis unit's ExecStartPre); Nix never reads or copies it.
      '';
    };

  portOptions =
    name:
    let
      defaults = sl.defaultPorts.${name};
    in
    {
      port = mkOption {
        type = types.port;
        default = defaults.port;
        description = "gRPC port (of the first instance; instance n listens on port + instancePortStep × (n - 1)).";
      };
      metricsPort = mkOption {
        type = types.port;
        default = defaults.metricsPort;
        description = "Prometheus `/metrics` port (of the first instance; further instances step like `port`).";
      };
    };

  serviceOption =
    name:
    mkOption {
      default = { };
      description = "The ${name} service (`sentinel serve ${name}`).";
      type = types.submodule {
        options = portOptions name // {
          enable = mkOption {
            type = types.bool;
            default = true;
            description = ''
              Run the ${name} service on this host. Off: another host runs it, at `address`, which
              this host's services and Envoy call instead (give both hosts the same signing keys:
              `signingKeys.generate = false` and the files in `signingKeys.directory`).
            '';
          };
          address = mkOption {
            type = types.nullOr types.str;
            default = null;
            example = "10.0.0.7:${toString sl.defaultPorts.${name}.port}";
            description = "`host:port` of the ${name} service elsewhere, when `enable` is off here.";
          };
          instances = mkOption {
            type = types.int;
            default = 1;
            example = 2;
            description = ''
              How many processes of this service run (units `sentinel-${name}`, `sentinel-${name}-2`, ...).
              Envoy balances over all of them; peers call the first.
            '';
          };
        };
      };
    };

  # Secret-bearing options, for the "not in the Nix store" assertion.
  secretPaths = {
    "database.passwordFile" = cfg.database.passwordFile;
    "database.ownerPasswordFile" = cfg.database.ownerPasswordFile;
    "redis.passwordFile" = cfg.redis.passwordFile;
    "secrets.pageTokenSecretFile" = cfg.secrets.pageTokenSecretFile;
    "bootstrapAdmin.passwordFile" = cfg.bootstrapAdmin.passwordFile;
  }
  // lib.mapAttrs' (n: v: lib.nameValuePair "secretFiles.${n}" v) cfg.secretFiles;

  # Settings that are secrets (or that the module derives): never inline in `settings`.
  reservedSettings = [
    "DATABASE_URL"
    "DATABASE_OWNER_URL"
    "REDIS_URL"
    "PAGE_TOKEN_SECRET"
    "NOTIFY_SLACK_WEBHOOK_URL"
    "NOTIFY_SMTP_PASSWORD"
    "JWT_SIGNING_KEY_FILE"
    "JWT_SIGNING_KEYS_DIR"
    "AUDIT_SIGNING_KEY_FILE"
    "SERVICE_KEY_FILE"
  ];

  # Every listening (host, port) of the Sentinel processes, for the collision assertion.
  listeners =
    lib.concatMap (i: [
      {
        what = "${i.name} gRPC";
        inherit (i) port;
      }
      {
        what = "${i.name} metrics";
        port = i.metricsPort;
      }
    ]) d.instances
    ++ lib.optional cfg.worker.enable {
      what = "worker metrics";
      port = cfg.worker.metricsPort;
    };
  portUsers = lib.groupBy (l: toString l.port) listeners;
  collisions = lib.filterAttrs (_: ls: builtins.length ls > 1) portUsers;

  keys = cfg.signingKeys.directory;
  sentinelExe = lib.getExe' cfg.package "sentinel";
  jq = lib.getExe' pkgs.jq "jq";

  # A random secret (URL-safe, 64 characters) unless the file exists and is not empty.
  setupScript = pkgs.writeShellScript "sentinel-setup" ''
    set -euo pipefail
    umask 077
    generate() {
      if [ ! -s "$1" ]; then
        head -c 48 /dev/urandom | base64 -w0 | tr '+/' '-_' > "$1.tmp"
        mv "$1.tmp" "$1"
        echo "generated $1"
      fi
    }
    install -d -m 0711 ${sl.stateDir}
    install -d -m 0700 ${sl.secretsDir} ${sl.runtimeDir}

    ${lib.optionalString (cfg.redis.createLocally && cfg.redis.passwordFile == null) ''
      generate ${d.redisPasswordFile}
    ''}
    ${lib.optionalString (cfg.secrets.pageTokenSecretFile == null) ''
      generate ${d.pageTokenSecretFile}
    ''}

    # Signing keys: <kid>.key.pem (0600) and public/<kid>.pub.pem (0644) per directory. The
    # directories are 0711, so every service can reach public/ but not list the private keys.
    umask 022
    install -d -m 0755 ${keys}
    install -d -m 0711 ${keys}/jwt ${keys}/services ${keys}/audit
    ${lib.optionalString cfg.signingKeys.generate ''
      if ! compgen -G '${keys}/jwt/*.key.pem' > /dev/null; then
        ${sentinelExe} admin keygen ${keys}/jwt
      fi
      for service in ${lib.concatStringsSep " " sl.serviceNames}; do
        if [ ! -e "${keys}/services/$service.key.pem" ]; then
          ${sentinelExe} admin keygen ${keys}/services --kid "$service"
        fi
      done
      if [ ! -e '${keys}/audit/${d.auditKeyName}' ]; then
        ${sentinelExe} admin keygen ${keys}/audit --kid '${cfg.signingKeys.auditKeyId}'
      fi
    ''}
    install -d -m 0755 ${keys}/jwt/public ${keys}/services/public ${keys}/audit/public
    # setgid: keys the worker makes stay in the group, so the scheduler can read them.
    install -d -m 2770 -o root -g ${sl.dataKeysGroup} ${cfg.dataKeys.directory}
    find ${keys} -path '*/public/*.pub.pem' -exec chmod 0644 {} +
    find ${keys} -name '*.key.pem' -not -path '*/public/*' -exec chmod 0600 {} +
    # The user service reads its signing keys itself (rotation without a restart); the other
    # private keys stay root's and reach their service as a credential.
    chown -R ${sl.userOf "user"}:${sl.group} ${keys}/jwt

    # Connection URLs with passwords, composed here so no unit needs the raw password files.
    umask 077
    urlencode() { ${jq} -rn --arg v "$1" '$v | @uri'; }
    secret() { urlencode "$(tr -d '\n' < "$1")"; }
    ${
      let
        r = cfg.redis;
        scheme = if r.tls then "rediss" else "redis";
        auth = if d.redisPasswordFile != null then '':$(secret ${lib.escapeShellArg (toString d.redisPasswordFile)})@'' else "";
      in
      lib.optionalString d.hasRedis ''
        printf '%s' "${scheme}://${auth}${sl.hostPort r.host r.port}/${toString r.database}" > ${sl.runtimeDir}/redis-url.tmp
        mv ${sl.runtimeDir}/redis-url.tmp ${sl.runtimeDir}/redis-url
      ''
    }
    ${
      let
        db = cfg.database;
        query = lib.optionalString (db.parameters != { }) (
          "?" + lib.concatStringsSep "&" (lib.mapAttrsToList (k: v: "${k}=${v}") db.parameters)
        );
        url =
          role: file:
          "postgresql+asyncpg://${role}:$(secret ${lib.escapeShellArg (toString file)})@${
            sl.hostPort (toString db.host) db.port
          }/${db.name}${query}";
      in
      lib.optionalString (!db.createLocally) ''
        printf '%s' "${url db.user db.passwordFile}" > ${sl.runtimeDir}/database_url.tmp
        printf '%s' "${url db.ownerUser db.ownerPasswordFile}" > ${sl.runtimeDir}/database_owner_url.tmp
        mv ${sl.runtimeDir}/database_url.tmp ${sl.runtimeDir}/database_url
        mv ${sl.runtimeDir}/database_owner_url.tmp ${sl.runtimeDir}/database_owner_url
      ''
    }
  '';
in
{
  imports = [
    # The rate-limit service is gone: Envoy enforces the address tier, the services count the others.
    (lib.mkRemovedOptionModule [ "services" "sentinel" "ratelimit" ] ''
      There is no rate-limit service any more: Envoy enforces the address tier with local token
      buckets and the services count the tenant and principal tiers in Redis, both configured by
      services.sentinel.gateway.rateLimits.
    '')
  ];

  options.services.sentinel = {
    enable = mkEnableOption "Sentinel, the multi-tenant gRPC platform (services, job worker, edge)";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ../nix/package.nix { };
      defaultText = literalExpression "pkgs.callPackage ./nix/package.nix { }";
      description = "The `sentinel` package (`nix/package.nix`; the flake's modules default to its own build).";
    };

    listenAddress = mkOption {
      type = types.str;
      default = "127.0.0.1";
      description = ''
        Address the services and the worker listen on (gRPC and metrics). Peers and Envoy dial
        it; a wildcard is dialled on loopback.
      '';
    };

    instancePortStep = mkOption {
      type = types.ints.positive;
      default = 100;
      description = "Port distance between instances of a service (as `sentinel up --instances`).";
    };

    services = lib.genAttrs sl.serviceNames serviceOption;

    worker = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Run the job consumer with the periodic scheduler (`sentinel worker`).";
      };
      metricsPort = mkOption {
        type = types.port;
        default = sl.defaultPorts.worker.metricsPort;
        description = "The worker's `/metrics` port.";
      };
    };

    database = {
      createLocally = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Run PostgreSQL on this host (`services.postgresql`) with the owner and service roles,
          reached over the Unix socket with peer authentication (no passwords). When false,
          connect to `host` with the password files.
        '';
      };
      host = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "db.internal.example";
        description = "Host of a remote PostgreSQL server (`createLocally = false`).";
      };
      socketDir = mkOption {
        type = types.str;
        default = "/run/postgresql";
        description = "Unix socket directory of the local server.";
      };
      port = mkOption {
        type = types.port;
        default = if cfg.database.createLocally then config.services.postgresql.settings.port else 5432;
        defaultText = literalExpression ''
          if createLocally then config.services.postgresql.settings.port else 5432
        '';
        description = "PostgreSQL port.";
      };
      name = mkOption {
        type = types.str;
        default = "sentinel";
        description = "Database name.";
      };
      user = mkOption {
        type = types.str;
        default = "sentinel_app";
        description = "The service role: LOGIN, no superuser, no BYPASSRLS, owns nothing (row-level security applies).";
      };
      ownerUser = mkOption {
        type = types.str;
        default = "sentinel_owner";
        description = "The owner role: owns the database and the schema, runs migrations only.";
      };
      passwordFile = secretFileOption "Password of the service role (remote database).";
      ownerPasswordFile = secretFileOption "Password of the owner role, used only by migrations (remote database).";
      parameters = mkOption {
        type = types.attrsOf types.str;
        default = { };
        example = {
          ssl = "verify-full";
        };
        description = "Query parameters of the remote database URL (asyncpg connection arguments).";
      };
    };

    redis = {
      createLocally = mkOption {
        type = types.bool;
        default = true;
        description = "Run Redis on this host (`services.redis.servers.sentinel`, password required).";
      };
      host = mkOption {
        type = types.nullOr types.str;
        default = "127.0.0.1";
        description = "Redis host (for a local server, the address it binds). `null`: no Redis at all.";
      };
      port = mkOption {
        type = types.port;
        default = 6379;
        description = "Redis port.";
      };
      database = mkOption {
        type = types.ints.unsigned;
        default = 0;
        description = "Redis database number.";
      };
      tls = mkOption {
        type = types.bool;
        default = false;
        description = "Connect with TLS (`rediss://`; remote servers).";
      };
      passwordFile = secretFileOption ''
        Redis password. For a local server, `null` makes sentinel-setup.service generate one in
        `${sl.secretsDir}/redis-password`; for a remote one, `null` means no password.
      '';
    };

    secrets.pageTokenSecretFile = secretFileOption ''
      HMAC key of page tokens (32 bytes or more). `null`: generated once in
      `${sl.secretsDir}/page-token-secret`.
    '';

    secretFiles = mkOption {
      type = types.attrsOf types.path;
      default = { };
      example = literalExpression ''
        {
          NOTIFY_SMTP_PASSWORD = "/run/secrets/smtp-password";
          NOTIFY_SLACK_WEBHOOK_URL = "/run/secrets/slack-webhook";
        }
      '';
      description = ''
        Further settings read from files, by setting name: every process loads each file as a
        credential and gets `SENTINEL_<NAME>_FILE` pointing at it. Paths outside the Nix store.
      '';
    };

    dataKeys.directory = mkOption {
      type = types.path;
      default = "${sl.stateDir}/data-keys";
      description = ''
        Per-tenant data keys (`<tenant-id>.key`): job results (exports) and the confidential input
        of a job not yet finished (a user import's CSV) are sealed with them, and the tenant purge
        destroys them (docs/offboarding.md). Group `${sl.dataKeysGroup}` (the worker and the
        scheduler write). Keep it out of the database's backups: a backup holds only ciphertext,
        which a destroyed key makes unreadable.
      '';
    };

    signingKeys = {
      directory = mkOption {
        type = types.path;
        default = "${sl.stateDir}/keys";
        description = ''
          Signing keys: `jwt/` (access tokens; `<kid>.key.pem`, `public/<kid>.pub.pem`), `services/`
          (each service's identity key `<name>.key.pem`) and `audit/` (checkpoint key). Rotate JWT keys
          with `sentinel admin keygen <directory>/jwt` (README, Operations).
        '';
      };
      generate = mkOption {
        type = types.bool;
        default = true;
        description = "Create missing keys at boot (sentinel-setup.service); existing keys are never replaced.";
      };
      auditKeyId = mkOption {
        type = types.strMatching "[A-Za-z0-9_-]+";
        default = "audit-1";
        description = ''
          Key id of the audit service's checkpoint key (`audit/<id>.key.pem`; checkpoints carry it).
          A key of a new id is created when missing (`generate`). Not a service name: the audit
          service's identity key is `audit.key.pem`.
        '';
      };
    };

    bootstrapAdmin = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Ensure the platform administrator after migrating (`sentinel admin bootstrap`).";
      };
      email = mkOption {
        type = types.str;
        default = "admin@sentinel.local";
        description = "The platform administrator's e-mail (log in to tenant `platform`).";
      };
      passwordFile = secretFileOption ''
        The administrator's password; the account accepts it after every start of
        sentinel-migrate.service. `null`: a random password is generated when the account is
        created and written to `/var/lib/sentinel-migrate/bootstrap-admin` (root and the migrate user only).
      '';
    };

    settings = mkOption {
      type = types.attrsOf jsonType;
      default = { };
      example = literalExpression ''
        {
          LOG_LEVEL = "DEBUG";
          JOB_WORKER_THREADS = 4;
          PERIODIC_SCHEDULES = { slo_report = "0 8 * * *"; };
        }
      '';
      description = ''
        Further `SENTINEL_<NAME>` settings for every process (README, Configuration), without the
        prefix. Booleans become true/false, lists and sets JSON. Not for secrets: see `secretFiles`.
      '';
    };

    units = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = ''
        Every long-running or set-up systemd unit the Sentinel modules run, each module adding its
        own (the platform's, then observability's and host security's when enabled): what a
        deployment check waits for. Set by the modules; not meant to be set by hand.
      '';
    };

    scrapeConfigs = mkOption {
      type = types.listOf jsonType;
      readOnly = true;
      default =
        let
          job = name: targets: {
            job_name = name;
            static_configs = [ { inherit targets; } ];
          };
        in
        # Only what runs here: a service on another host is that host's Prometheus's to scrape.
        map (s: job "sentinel-${s}" (map (i: i.metricsAddress) (d.instancesOf s))) (
          builtins.filter (s: cfg.services.${s}.enable) sl.serviceNames
        )
        ++ lib.optional cfg.worker.enable (job "sentinel-worker" [ d.workerMetricsAddress ])
        ++ lib.optional (cfg.gateway.enable or false) (
          job "envoy" [ (sl.hostPort (sl.dialHost cfg.gateway.adminAddress) cfg.gateway.adminPort) ]
          // {
            metrics_path = "/stats/prometheus";
          }
        );
      defaultText = literalExpression "[ { job_name = \"sentinel-tenant\"; static_configs = [ ... ]; } ... ]";
      description = ''
        Prometheus scrape jobs for every Sentinel process and Envoy's admin endpoint, named like
        `observability/prometheus.yml` (read-only): `services.prometheus.scrapeConfigs = config.services.sentinel.scrapeConfigs;`.
      '';
    };
  };

  config = mkIf cfg.enable {
    assertions =
      map (s: {
        assertion = cfg.services.${s}.instances >= 1;
        message = "services.sentinel.services.${s}.instances must be at least 1 (it is ${toString cfg.services.${s}.instances}).";
      }) sl.serviceNames
      ++ map (s: {
        assertion = cfg.services.${s}.enable || cfg.services.${s}.address != null;
        message = "services.sentinel.services.${s}.enable is off: set services.sentinel.services.${s}.address to the host:port where it runs (this host's services and Envoy call it there).";
      }) sl.serviceNames
      ++ map (s: {
        assertion = !(cfg.services.${s}.enable && cfg.services.${s}.address != null);
        message = "services.sentinel.services.${s}.address is for a ${s} service on another host; with services.sentinel.services.${s}.enable on, this host runs it: unset one of them.";
      }) sl.serviceNames
      ++ [
        {
          assertion = cfg.database.createLocally || cfg.database.host != null;
          message = "services.sentinel.database.createLocally = false needs services.sentinel.database.host (the remote PostgreSQL server).";
        }
        {
          assertion =
            cfg.database.createLocally || (cfg.database.passwordFile != null && cfg.database.ownerPasswordFile != null);
          message = "services.sentinel.database.createLocally = false needs services.sentinel.database.passwordFile (service role) and services.sentinel.database.ownerPasswordFile (owner role, migrations): a remote database has no peer authentication.";
        }
        {
          assertion = !cfg.redis.createLocally || cfg.redis.host != null;
          message = "services.sentinel.redis.createLocally needs services.sentinel.redis.host (the address the local Redis binds).";
        }
        {
          assertion = cfg.redis.createLocally -> !cfg.redis.tls;
          message = "services.sentinel.redis.tls is for remote servers: the local Redis (services.redis.servers.sentinel) listens without TLS.";
        }
        {
          assertion = d.hasRedis || !cfg.worker.enable;
          message = "services.sentinel.worker.enable needs Redis (the job queue): set services.sentinel.redis.createLocally = true or services.sentinel.redis.host.";
        }
        {
          assertion = !builtins.elem cfg.signingKeys.auditKeyId sl.serviceNames;
          message = "services.sentinel.signingKeys.auditKeyId must not be a service name (${cfg.signingKeys.auditKeyId}.key.pem is that service's identity key); the default is \"audit-1\".";
        }
        {
          assertion = collisions == { };
          message = "services.sentinel: port clash: ${
            lib.concatStringsSep "; " (
              lib.mapAttrsToList (
                port: ls: "${port} is used by ${lib.concatMapStringsSep " and " (l: l.what) ls}"
              ) collisions
            )
          }.";
        }
        {
          assertion = builtins.all (n: !(builtins.elem n reservedSettings)) (builtins.attrNames cfg.settings);
          message = "services.sentinel.settings must not hold ${
            lib.concatStringsSep ", " (builtins.filter (n: builtins.elem n reservedSettings) (builtins.attrNames cfg.settings))
          }: secrets go in services.sentinel.secretFiles (or the dedicated *File options), and the module sets the key paths itself.";
        }
      ]
      ++ lib.mapAttrsToList (name: value: {
        assertion = !sl.inStore value;
        message = "services.sentinel.${name} must be a path outside the Nix store (a string such as \"/run/secrets/...\", not ./file): the store is world-readable.";
      }) secretPaths;

    warnings =
      lib.optional (cfg.database.createLocally && (cfg.database.passwordFile != null || cfg.database.ownerPasswordFile != null))
        "services.sentinel.database.passwordFile/ownerPasswordFile are ignored with a local database (peer authentication over the Unix socket).";

    # `sentinel` for operators: admin keygen, audit verify, gateway check (README, Operations).
    environment.systemPackages = [ cfg.package ];

    users.groups.${sl.group} = { };
    users.groups.${sl.dataKeysGroup} = { };
    users.users = lib.genAttrs (map sl.userOf sl.accounts) (name: {
      isSystemUser = true;
      group = sl.group;
      extraGroups = lib.optional (lib.elem name (map sl.userOf sl.dataKeyAccounts)) sl.dataKeysGroup;
      description = "Sentinel (${lib.removePrefix "sentinel-" name})";
    });

    services.sentinel.units = d.units;

    # `systemctl restart sentinel.target` restarts every Sentinel unit (they are partOf it).
    systemd.targets.sentinel = {
      description = "Sentinel";
      wantedBy = [ "multi-user.target" ];
      wants = d.units; # the platform's own units; observability and auditd stand on their own
    };

    # Generated secrets, signing keys, composed URLs. Every Sentinel unit requires it.
    systemd.services.sentinel-setup = {
      description = "Sentinel secrets and signing keys";
      wantedBy = [ "sentinel.target" ];
      before = [ "sentinel.target" ];
      partOf = [ "sentinel.target" ];
      path = [
        pkgs.coreutils
        pkgs.findutils
      ];
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        ExecStart = setupScript;
        # Root: it reads the operator's secret files and hands the JWT keys to the user service.
        UMask = "0077";
        PrivateTmp = true;
        PrivateNetwork = true;
        NoNewPrivileges = true;
        ProtectHome = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectControlGroups = true;
        RestrictAddressFamilies = [ "AF_UNIX" ];
        SystemCallArchitectures = "native";
      };
    };
  };
}
