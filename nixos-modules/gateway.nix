# The edge: Envoy (NixOS `services.envoy`) configured by the same generator as `sentinel up`
# (sentinel.gateway.envoy), so the filters, routes, JWT rules and the address tier's token buckets
# always match the contracts the package was built from.
#
# How the config reaches services.envoy: the NixOS envoy module has no "config file" option; it
# takes `settings` (an attribute set), writes it as JSON and checks it with `envoy --mode validate`
# at build time (`requireValidConfig`). So the generator runs at build time, in a derivation
# (`sentinel gateway render --config FILE.json --format json`, with the options below as a
# GatewayConfig), which also writes the descriptor set and the API docs next to it in the store
# (public material only: no secret is ever an input). The module then reads that JSON back
# (import from derivation) into `services.envoy.settings`. The upstream module stays in charge:
# its unit, its package option and its build-time validation work as documented, and
# `services.envoy.settings` shows exactly what Envoy runs. The price is that evaluating the system
# builds the `sentinel` package first (IFD; allowed by default in Nix, refused by
# `--option allow-import-from-derivation false`). Overriding the unit's ExecStart to point at a
# rendered file instead would leave `services.envoy.settings` empty and skip its validation.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    mkOption
    optional
    optionals
    types
    ;

  cfg = config.services.sentinel;
  gw = cfg.gateway;
  sl = import ./lib.nix { inherit lib; };
  d = sl.derive cfg;
  jsonType = (pkgs.formats.json { }).type;

  tls = gw.tls.certFile != null && gw.tls.keyFile != null;
  # Envoy runs with DynamicUser: it gets the TLS files as credentials, at a path the rendered
  # config can name (systemd's credentials directory of envoy.service).
  credentialsDir = "/run/credentials/envoy.service";

  # sentinel.gateway.envoy.GatewayConfig as JSON. placeholder "out" is the render derivation's own
  # output path, filled in by Nix when it builds.
  gatewayConfig = {
    upstreams = lib.genAttrs sl.serviceNames d.upstreamsOf;
    descriptor_set_path = "${placeholder "out"}/sentinel.pb";
    docs_dir = if gw.docs then "${placeholder "out"}/docs" else null;
    listen_host = gw.listenAddress;
    listen_port = gw.port;
    admin_host = gw.adminAddress;
    admin_port = gw.adminPort;
    jwt_issuer = cfg.settings.JWT_ISSUER or "sentinel";
    jwt_audience = cfg.settings.JWT_AUDIENCE or "sentinel-api";
    jwks_uri = gw.jwksUri;
    cors_allowed_origins = gw.cors.allowedOrigins;
    cors_allow_credentials = gw.cors.allowCredentials;
    cors_max_age_seconds = gw.cors.maxAgeSeconds;
    access_log_path = gw.accessLogPath;
    tls_cert_file = if tls then "${credentialsDir}/tls-cert" else null;
    tls_key_file = if tls then "${credentialsDir}/tls-key" else null;
    tls_port = gw.tls.port;
    # The SENTINEL_RATE_LIMITS overrides ({ }: the defaults), whose address tier Envoy enforces;
    # null: no address limits at the edge.
    rate_limits = if d.rateLimitsEnabled then d.rateLimits else null;
  };

  rendered =
    pkgs.runCommand "sentinel-gateway"
      {
        gatewayConfig = builtins.toJSON gatewayConfig;
        passAsFile = [ "gatewayConfig" ];
      }
      ''
        mkdir -p "$out"
        ${lib.getExe' cfg.package "sentinel"} gateway render --config "$gatewayConfigPath" --format json \
          --output "$out/envoy.json" --write-descriptor-set${
            lib.optionalString gw.docs " --write-docs --docs-template ${../gateway/docs/index.html}"
          }
      '';

  # builtins.fromJSON refuses a string with context, and the file names its own store path (the
  # descriptor set, the docs). Drop the context to parse it, then give every string that names the
  # output its context back: Envoy's config then depends on the files it loads, so they are in the
  # system closure and in the sandbox of the upstream module's `envoy --mode validate`.
  settings =
    let
      out = builtins.unsafeDiscardStringContext rendered.outPath;
      restore =
        value:
        if builtins.isString value then
          (if lib.hasInfix out value then builtins.replaceStrings [ out ] [ "${rendered}" ] value else value)
        else if builtins.isList value then
          map restore value
        else if builtins.isAttrs value then
          lib.mapAttrs (_: restore) value
        else
          value;
    in
    restore (builtins.fromJSON (builtins.unsafeDiscardStringContext (builtins.readFile "${rendered}/envoy.json")));

  secretPaths = {
    "gateway.tls.certFile" = gw.tls.certFile;
    "gateway.tls.keyFile" = gw.tls.keyFile;
  };
in
{
  imports = [ ./sentinel.nix ];

  options.services.sentinel.gateway = {
    enable = mkOption {
      type = types.bool;
      default = true;
      description = "Run the Envoy edge (`services.envoy`): REST and gRPC on one port, JWT checks, rate limits.";
    };
    listenAddress = mkOption {
      type = types.str;
      default = "0.0.0.0";
      description = "Address of the public listener (and the HTTPS one).";
    };
    port = mkOption {
      type = types.port;
      default = 8000;
      description = "Port of REST/JSON and native gRPC; with TLS it only redirects to `tls.port`.";
    };
    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open `port` (and `tls.port`) in the firewall.";
    };
    adminAddress = mkOption {
      type = types.str;
      default = "127.0.0.1";
      description = "Address of Envoy's admin interface (keep it private: it can change Envoy's state).";
    };
    adminPort = mkOption {
      type = types.port;
      default = 9901;
      description = "Port of Envoy's admin interface (`/ready`, `/stats/prometheus`).";
    };
    tls = {
      certFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = "/var/lib/acme/api.example.com/fullchain.pem";
        description = ''
          PEM certificate chain. With `keyFile`: HTTPS on `tls.port`, `port` redirects, HSTS. Outside
          the Nix store; Envoy gets it as a credential at start.
        '';
      };
      keyFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = "/var/lib/acme/api.example.com/key.pem";
        description = "PEM private key of `certFile` (outside the Nix store; loaded as a credential).";
      };
      port = mkOption {
        type = types.port;
        default = 8443;
        description = "HTTPS port.";
      };
    };
    cors = {
      allowedOrigins = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "https://app.example.com" ];
        description = "Browser origins allowed to call the API (exact; `*` for any, without credentials).";
      };
      allowCredentials = mkOption {
        type = types.bool;
        default = false;
        description = "Send Access-Control-Allow-Credentials (cookies; bearer tokens do not need it).";
      };
      maxAgeSeconds = mkOption {
        type = types.ints.unsigned;
        default = 600;
        description = "How long browsers cache a preflight answer.";
      };
    };
    rateLimits = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Rate limits (README, The edge). The address tier (per client IP) is enforced by Envoy with
          local token buckets, per Envoy instance: two gateways each allow the full rate. The tenant
          and principal tiers are counted by the services in Redis (`SENTINEL_RATE_LIMITS_ENABLED`),
          so they hold across instances and hosts; the services count them even where this host
          runs no gateway. Off: neither tier is enforced.
        '';
      };
      limits = mkOption {
        type = jsonType;
        default = { };
        example = {
          tenant.free.write = "300/minute";
        };
        description = ''
          Overrides merged over the default limits (README, The edge): given to every service as
          `SENTINEL_RATE_LIMITS` (JSON; a bad key stops its start with a message) and to the
          generator as the gateway config's `rate_limits` (a bad key fails the render, naming it).
        '';
      };
    };
    jwksUri = mkOption {
      type = types.str;
      default = "";
      description = "Where Envoy fetches the signing keys; empty: from its own listener (`/.well-known/jwks.json`).";
    };
    accessLogPath = mkOption {
      type = types.str;
      default = "/dev/stdout";
      description = "Envoy's JSON access log; `/dev/stdout` goes to the journal (`/var/log/envoy/` is writable too).";
    };
    docs = mkOption {
      type = types.bool;
      default = true;
      description = "Serve the OpenAPI document at `/openapi.json` and the API docs at `/docs`.";
    };
    rendered = mkOption {
      type = types.package;
      readOnly = true;
      default = rendered;
      defaultText = lib.literalMD "the derivation with `envoy.json`, `sentinel.pb` and `docs/`";
      description = "The generator's output (read-only): the Envoy config, the descriptor set and the docs.";
    };
  };

  config = lib.mkMerge [
    # The services count the tenant and principal tiers on every host that runs one, edge or not.
    (lib.mkIf cfg.enable {
      assertions = [
        {
          assertion = (d.rateLimitsEnabled && d.instances != [ ]) -> d.hasRedis;
          message = "services.sentinel.gateway.rateLimits.enable needs Redis (the services count the tenant and principal tiers there): set services.sentinel.redis.createLocally = true or services.sentinel.redis.host, or disable the rate limits.";
        }
      ];
    })

    (lib.mkIf (cfg.enable && gw.enable) {
      assertions = [
        {
          assertion = (gw.tls.certFile == null) == (gw.tls.keyFile == null);
          message = "services.sentinel.gateway.tls.certFile and services.sentinel.gateway.tls.keyFile go together: set both (HTTPS on tls.port) or neither.";
        }
        {
          assertion = tls -> gw.tls.port != gw.port;
          message = "services.sentinel.gateway.tls.port must differ from services.sentinel.gateway.port (${toString gw.port}), which redirects to it.";
        }
        {
          assertion = !(gw.cors.allowCredentials && builtins.elem "*" gw.cors.allowedOrigins);
          message = "services.sentinel.gateway.cors.allowCredentials cannot be combined with the origin \"*\" (browsers refuse it).";
        }
      ]
      ++ lib.mapAttrsToList (name: value: {
        assertion = !sl.inStore value;
        message = "services.sentinel.${name} must be a path outside the Nix store (a string such as \"/run/secrets/...\", not ./file): the store is world-readable.";
      }) secretPaths;

      services.envoy = {
        enable = true;
        # The upstream static build, as `nix run`/`nix develop` use; pkgs.envoy builds with Bazel.
        package = lib.mkDefault pkgs.envoy-bin;
        inherit settings;
        # The TLS files exist only at runtime (credentials), so the build cannot load them.
        requireValidConfig = lib.mkIf tls (lib.mkDefault false);
      };

      systemd.services.envoy = {
        restartTriggers = [ rendered ];
        serviceConfig = {
          LoadCredential = optionals tls [
            "tls-cert:${toString gw.tls.certFile}"
            "tls-key:${toString gw.tls.keyFile}"
          ];
          # The upstream unit says Restart=no; the edge should come back after a crash.
          Restart = lib.mkOverride 90 "on-failure";
          RestartSec = 2;
        };
      };

      networking.firewall.allowedTCPPorts = optionals gw.openFirewall ([ gw.port ] ++ optional tls gw.tls.port);
    })
  ];
}
