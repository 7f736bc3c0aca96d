# Helpers shared by the Sentinel NixOS modules (not a module itself): names, instances, ports,
# addresses, secret and credential paths, all derived from `config.services.sentinel`.
{ lib }:
let
  inherit (lib)
    concatMap
    elem
    genList
    hasInfix
    hasPrefix
    isPath
    optional
    toUpper
    ;
in
rec {
  # The four gRPC services, in the generator's cluster order (sentinel.gateway.envoy.BACKENDS).
  serviceNames = [
    "tenant"
    "user"
    "audit"
    "scheduler"
  ];

  # Dev-stack ports of the first instance (sentinel.platform.config.DEFAULT_PORTS).
  defaultPorts = {
    tenant = {
      port = 50051;
      metricsPort = 9101;
    };
    user = {
      port = 50052;
      metricsPort = 9102;
    };
    audit = {
      port = 50053;
      metricsPort = 9103;
    };
    scheduler = {
      port = 50054;
      metricsPort = 9104;
    };
    worker.metricsPort = 9105;
  };

  # Every process runs as its own static system user in the group `sentinel`.
  accounts = serviceNames ++ [
    "worker"
    "migrate"
  ];
  userOf = account: "sentinel-${account}";
  group = "sentinel";
  # Who holds the per-tenant data keys: the worker seals results and destroys keys, the scheduler
  # service opens results for download.
  dataKeysGroup = "sentinel-data-keys";
  dataKeyAccounts = [
    "scheduler"
    "worker"
  ];

  # Instance n of a service, as `sentinel up` names it: `user`, `user-2`, `user-3`, ...
  instanceName = service: n: if n == 1 then service else "${service}-${toString n}";

  # Where state lives that the module creates at runtime (never in the Nix store).
  stateDir = "/var/lib/sentinel";
  secretsDir = "${stateDir}/secrets";
  # Secrets composed at boot by sentinel-setup.service (URLs with passwords), root only.
  runtimeDir = "/run/sentinel";

  # A loopback address for a wildcard listen address (what peers and Envoy dial).
  dialHost =
    host:
    if elem host [
      ""
      "0.0.0.0"
    ] then
      "127.0.0.1"
    else if host == "::" then
      "::1"
    else
      host;
  hostPort = host: port: (if hasInfix ":" host then "[${host}]" else host) + ":${toString port}";

  # A secret given as a file must stay out of the Nix store: a Nix path literal (./secret) would be
  # copied there the moment it is interpolated, and anything under the store directory already is.
  inStore = value: value != null && (isPath value || hasPrefix builtins.storeDir (toString value));

  # Environment variable of a setting read from a credential file.
  fileVar = setting: "SENTINEL_${toUpper setting}_FILE";

  # A `services.sentinel.settings` value as the config loader reads it: booleans as true/false,
  # numbers as digits, lists and attribute sets as JSON (pydantic parses them).
  settingValue =
    value:
    if builtins.isBool value then
      lib.boolToString value
    else if builtins.isString value then
      value
    else if builtins.isInt value || builtins.isFloat value then
      toString value
    else
      builtins.toJSON value;

  derive =
    cfg:
    let
      db = cfg.database;
      localDb = db.createLocally;
      redisLocal = cfg.redis.createLocally;

      instancesOf =
        service:
        let
          s = cfg.services.${service};
        in
        genList (
          i:
          let
            n = i + 1;
            step = cfg.instancePortStep * i;
            name = instanceName service n;
          in
          {
            inherit name service;
            index = n;
            unit = "sentinel-${name}";
            account = service;
            port = s.port + step;
            metricsPort = s.metricsPort + step;
            address = hostPort (dialHost cfg.listenAddress) (s.port + step);
            metricsAddress = hostPort (dialHost cfg.listenAddress) (s.metricsPort + step);
          }
        ) (if s.enable then lib.max 0 s.instances else 0);
    in
    rec {
      inherit instancesOf;
      instances = concatMap instancesOf serviceNames;
      # Peers call a service's first instance; only Envoy balances over all of them. A service
      # another host runs (enable = false) is called at its `address`.
      peerAddress =
        service:
        if cfg.services.${service}.enable then
          (builtins.head (instancesOf service)).address
        else
          toString cfg.services.${service}.address; # null: an assertion says what to set
      upstreamsOf =
        service:
        if cfg.services.${service}.enable then
          map (i: i.address) (instancesOf service)
        else
          lib.optional (cfg.services.${service}.address != null) cfg.services.${service}.address;

      # The rate-limit options come from gateway.nix (services.sentinel.gateway.rateLimits); without
      # it the services keep their own defaults (counting on, the default limits). The services count
      # the tenant and principal tiers whether or not this host runs the edge.
      rateLimitsEnabled = cfg.gateway.rateLimits.enable or true;
      rateLimits = cfg.gateway.rateLimits.limits or { };
      workerMetricsAddress = hostPort (dialHost cfg.listenAddress) cfg.worker.metricsPort;

      hasRedis = redisLocal || cfg.redis.host != null;

      # Files sentinel-setup.service creates when no path is configured (0600, root).
      redisPasswordFile =
        if cfg.redis.passwordFile != null then
          cfg.redis.passwordFile
        else if redisLocal then
          "${secretsDir}/redis-password"
        else
          null;
      pageTokenSecretFile =
        if cfg.secrets.pageTokenSecretFile != null then
          cfg.secrets.pageTokenSecretFile
        else
          "${secretsDir}/page-token-secret";

      # Local database: peer authentication over the Unix socket, so the URLs hold no secret and go
      # in the environment. Remote: sentinel-setup.service composes them with the passwords into
      # ${runtimeDir}, and the units load them as credentials.
      localUrl =
        role:
        "postgresql+asyncpg://${role}@/${db.name}?host=${db.socketDir}&port=${toString db.port}";
      databaseUrlEnv =
        setting: role:
        if localDb then
          { "SENTINEL_${toUpper setting}" = localUrl role; }
        else
          { ${fileVar setting} = "${setting}"; };
      databaseCredentials =
        setting: lib.optional (!localDb) "${setting}:${runtimeDir}/${setting}";

      keysDir = cfg.signingKeys.directory;
      auditKeyName = "${cfg.signingKeys.auditKeyId}.key.pem";

      # Credentials every process loads (systemd LoadCredential=, read by PID 1 as root), and the
      # environment that points the config loader at them: relative *_FILE paths resolve under
      # $CREDENTIALS_DIRECTORY. Paths that are not *_FILE settings use systemd's %d specifier.
      commonCredentials =
        optional hasRedis "redis-url:${runtimeDir}/redis-url"
        ++ [ "page-token-secret:${pageTokenSecretFile}" ]
        ++ databaseCredentials "database_url"
      ++ lib.mapAttrsToList (setting: path: "${lib.toLower setting}:${toString path}") cfg.secretFiles;
      commonEnvironment =
        lib.optionalAttrs hasRedis { SENTINEL_REDIS_URL_FILE = "redis-url"; }
        // {
          SENTINEL_PAGE_TOKEN_SECRET_FILE = "page-token-secret";
          SENTINEL_JWT_PUBLIC_KEYS_DIR = "${keysDir}/jwt/public";
          SENTINEL_SERVICE_PUBLIC_KEYS_DIR = "${keysDir}/services/public";
          SENTINEL_GRPC_HOST = cfg.listenAddress;
          SENTINEL_METRICS_HOST = cfg.listenAddress;
        }
        // databaseUrlEnv "database_url" db.user
        // lib.listToAttrs (map (s: lib.nameValuePair "SENTINEL_${toUpper s}_ADDR" (peerAddress s)) serviceNames)
        // lib.mapAttrs' (setting: _: lib.nameValuePair (fileVar setting) (lib.toLower setting)) cfg.secretFiles
        // settingsEnvironment;
      settingsEnvironment = lib.mapAttrs' (
        name: value: lib.nameValuePair "SENTINEL_${name}" (settingValue value)
      ) cfg.settings;

      # Every unit the module runs, for `wants` of sentinel.target, tests and the observability slice.
      units = [
        "sentinel-setup.service"
        "sentinel-migrate.service"
      ]
      ++ map (i: "${i.unit}.service") instances
      ++ optional cfg.worker.enable "sentinel-worker.service";
    };
}
