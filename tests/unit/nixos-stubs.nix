# Stand-ins for NixOS and nixpkgs, for evaluating nixos-modules/ with lib.evalModules alone
# (tests/unit/test_nixos_modules.py). `module` declares exactly the upstream options the Sentinel
# modules set or read, with the types of the nixpkgs sources they were copied from, plus the bits of
# those modules' own config that ours must merge with (marked "upstream config"). `pkgs` is a fake
# package set whose derivations are attribute sets recording their arguments.
#
# Sources (NixOS/nixpkgs, read mid-2026):
#   nixos/lib/systemd-unit-options.nix      unitOption, common unit and service options
#   nixos/lib/systemd-lib.nix               unitNameType, checkUnitConfig/assertValueOneOf
#   nixos/modules/misc/assertions.nix       assertions, warnings
#   nixos/modules/config/users-groups.nix   users.users, users.groups (+ two of its assertions)
#   nixos/modules/config/system-path.nix    environment.systemPackages
#   nixos/modules/services/networking/firewall.nix     networking.firewall.allowedTCPPorts
#   nixos/modules/services/databases/postgresql.nix    services.postgresql.*
#   nixos/modules/services/databases/redis.nix         services.redis.servers.<name>.*
#   nixos/modules/services/networking/envoy.nix        services.envoy.*
#   pkgs/pkgs-lib/formats.nix                          formats.json type
#   nixos/modules/system/etc/etc.nix                   environment.etc.<name>.{source,text,mode}
#   nixos/modules/services/monitoring/prometheus/default.nix   services.prometheus.* (scrape_config:
#                                                      job_name required; the other keys freeform here)
#   nixos/modules/services/monitoring/prometheus/exporters.nix, exporters/node.nix
#   nixos/modules/services/monitoring/loki.nix         services.loki.*
#   nixos/modules/services/monitoring/alloy.nix        services.alloy.*
#   nixos/modules/services/monitoring/grafana.nix      services.grafana.{settings,provision}
#   nixos/modules/security/auditd.nix                  security.auditd.enable (+ its audit.enable default)
#   nixos/modules/security/audit.nix                   security.audit.{enable,rules,backlogLimit,failureMode}
#   nixos/modules/system/boot/systemd/tmpfiles.nix     systemd.tmpfiles.rules
#   nixos/modules/misc/version.nix                     system.stateVersion
{
  lib,
  # name -> directory: runCommand derivations of these names "build" to that directory, so a test
  # can stand in the real output of a build step (the gateway render) for import-from-derivation.
  renderDirs ? { },
}:
let
  inherit (lib) mkOption types;

  storePath = name: "${builtins.storeDir}/00000000000000000000000000000000-${name}";
  drv =
    name: extra:
    {
      type = "derivation";
      inherit name;
      pname = name;
      outPath = storePath name;
      meta = { };
    }
    // extra;

  jsonValue =
    types.nullOr (
      types.oneOf [
        types.bool
        types.int
        types.float
        types.str
        types.path
        (types.attrsOf jsonValue)
        (types.listOf jsonValue)
      ]
    )
    // {
      description = "JSON value";
    };

  pkgs =
    lib.genAttrs [
      "postgresql_16"
      "postgresql_17"
      "envoy"
      "envoy-bin"
      "grpc-health-probe"
      "curl"
      "audit"
      "kmod"
      "systemd"
      "jq"
      "coreutils"
      "findutils"
      "redis"
    ] (n: drv n { })
    // {
      sentinel = drv "sentinel" { meta.mainProgram = "sentinel"; };
      # The module's default package; the stub records what it was asked to build.
      callPackage = fn: args: pkgs.sentinel // { calledWith = toString fn; };
      formats.json =
        { }:
        {
          type = jsonValue;
          generate = name: value: drv name { inherit value; };
        };
      writeShellScript = name: text: drv name { inherit text; };
      writeText = name: text: drv name { inherit text; };
      runCommand =
        name: env: script:
        drv name (
          {
            inherit env script;
          }
          // lib.optionalAttrs (renderDirs ? ${name}) { outPath = renderDirs.${name}; }
        );
    };

  # nixos/lib/systemd-lib.nix
  unitNameType = types.strMatching "[a-zA-Z0-9@%:_.\\-]+[.](service|socket|device|mount|automount|swap|target|path|timer|scope|slice)";
  assertValueOneOf =
    name: values: group: attr:
    lib.optional (
      attr ? ${name} && !lib.elem attr.${name} values
    ) "Systemd ${group} field `${name}' cannot have value `${toString attr.${name}}'.";
  checkUnitConfig =
    group: checks: attrs:
    let
      defs = lib.mapAttrs (
        _: v:
        if v._type or "" == "override" then
          v.content
        else if v._type or "" == "if" then
          v.content
        else
          v
      ) attrs;
      errors = lib.concatMap (c: c group defs) checks;
    in
    if errors == [ ] then true else builtins.trace (lib.concatStringsSep "\n" errors) false;

  # nixos/lib/systemd-unit-options.nix
  checkService = checkUnitConfig "Service" [
    (assertValueOneOf "Type" [
      "exec"
      "simple"
      "forking"
      "oneshot"
      "dbus"
      "notify"
      "notify-reload"
      "idle"
    ])
    (assertValueOneOf "Restart" [
      "no"
      "on-success"
      "on-failure"
      "on-abnormal"
      "on-abort"
      "always"
    ])
  ];
  unitOption = lib.mkOptionType {
    name = "systemd option";
    merge =
      loc: defs:
      let
        defs' = lib.filterOverrides defs;
      in
      if lib.any (def: lib.isList def.value) defs' then
        lib.concatMap (def: lib.toList def.value) defs'
      else
        lib.mergeEqualOption loc defs';
  };
  unitList =
    mkOption {
      default = [ ];
      type = types.listOf unitNameType;
    };
  commonUnitOptions = {
    options = {
      enable = mkOption {
        default = true;
        type = types.bool;
      };
      description = mkOption {
        default = "";
        type = types.singleLineStr;
      };
      documentation = mkOption {
        default = [ ];
        type = types.listOf types.str;
      };
      requires = unitList;
      wants = unitList;
      upholds = unitList;
      after = unitList;
      before = unitList;
      bindsTo = unitList;
      partOf = unitList;
      conflicts = unitList;
      requisite = unitList;
      requiredBy = unitList;
      upheldBy = unitList;
      wantedBy = unitList;
      aliases = unitList;
      onFailure = unitList;
      onSuccess = unitList;
      unitConfig = mkOption {
        default = { };
        type = types.attrsOf unitOption;
      };
      startLimitBurst = mkOption { type = types.int; };
      startLimitIntervalSec = mkOption { type = types.int; };
      restartTriggers = mkOption {
        default = [ ];
        type = types.listOf types.unspecified;
      };
      reloadTriggers = mkOption {
        default = [ ];
        type = types.listOf unitOption;
      };
    };
  };
  serviceOptions = {
    options = {
      environment = mkOption {
        default = { };
        type =
          with types;
          attrsOf (
            nullOr (oneOf [
              str
              path
              package
            ])
          );
      };
      path = mkOption {
        default = [ ];
        type =
          with types;
          listOf (oneOf [
            package
            str
          ]);
      };
      serviceConfig = mkOption {
        default = { };
        type = types.addCheck (types.attrsOf unitOption) checkService;
      };
      script = mkOption {
        type = types.lines;
        default = "";
      };
      scriptArgs = mkOption {
        type = types.str;
        default = "";
      };
      preStart = mkOption {
        type = types.lines;
        default = "";
      };
      postStart = mkOption {
        type = types.lines;
        default = "";
      };
      preStop = mkOption {
        type = types.lines;
        default = "";
      };
      postStop = mkOption {
        type = types.lines;
        default = "";
      };
      restartIfChanged = mkOption {
        type = types.bool;
        default = true;
      };
      stopIfChanged = mkOption {
        type = types.bool;
        default = true;
      };
      startAt = mkOption {
        type = with types; either str (listOf str);
        default = [ ];
      };
    };
  };

  # nixos/modules/config/users-groups.nix
  userOpts =
    { name, ... }:
    {
      options = {
        enable = mkOption {
          type = types.bool;
          default = true;
        };
        name = mkOption {
          type = types.passwdEntry types.str;
          default = name;
        };
        description = mkOption {
          type = types.passwdEntry types.str;
          default = "";
        };
        uid = mkOption {
          type = with types; nullOr int;
          default = null;
        };
        isSystemUser = mkOption {
          type = types.bool;
          default = false;
        };
        isNormalUser = mkOption {
          type = types.bool;
          default = false;
        };
        group = mkOption {
          type = types.str;
          default = "";
        };
        extraGroups = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        home = mkOption {
          type = types.passwdEntry types.path;
          default = "/var/empty";
        };
        createHome = mkOption {
          type = types.bool;
          default = false;
        };
      };
    };
  groupOpts =
    { name, ... }:
    {
      options = {
        name = mkOption {
          type = types.passwdEntry types.str;
          default = name;
        };
        gid = mkOption {
          type = with types; nullOr int;
          default = null;
        };
        members = mkOption {
          type = with types; listOf (passwdEntry str);
          default = [ ];
        };
      };
    };

  # nixos/modules/services/databases/postgresql.nix
  nullOrBool = mkOption {
    type = types.nullOr types.bool;
    default = null;
  };
  postgresqlOptions = {
    enable = lib.mkEnableOption "PostgreSQL Server";
    package = mkOption { type = types.package; };
    ensureDatabases = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    ensureUsers = mkOption {
      default = [ ];
      type = types.listOf (
        types.submodule {
          options = {
            name = mkOption { type = types.str; };
            ensureDBOwnership = mkOption {
              type = types.bool;
              default = false;
            };
            ensureClauses = mkOption {
              default = { };
              type = types.submodule {
                options = {
                  superuser = nullOrBool;
                  createrole = nullOrBool;
                  createdb = nullOrBool;
                  "inherit" = nullOrBool;
                  login = nullOrBool;
                  replication = nullOrBool;
                  bypassrls = nullOrBool;
                };
              };
            };
          };
        }
      );
    };
    authentication = mkOption {
      type = types.lines;
      default = "";
    };
    identMap = mkOption {
      type = types.lines;
      default = "";
    };
    initialScript = mkOption {
      type = types.nullOr types.path;
      default = null;
    };
    enableTCPIP = mkOption {
      type = types.bool;
      default = false;
    };
    settings = mkOption {
      default = { };
      type = types.submodule {
        freeformType = types.attrsOf (
          types.oneOf [
            types.bool
            types.float
            types.int
            types.str
          ]
        );
        options = {
          shared_preload_libraries = mkOption {
            type = types.nullOr (types.coercedTo (types.listOf types.str) (lib.concatStringsSep ",") types.commas);
            default = null;
          };
          log_line_prefix = mkOption {
            type = types.str;
            default = "[%p] ";
          };
          port = mkOption {
            type = types.port;
            default = 5432;
          };
        };
      };
    };
  };

  # nixos/modules/services/databases/redis.nix (the options of a server the modules touch)
  redisServer =
    { name, config, ... }:
    {
      options = {
        enable = lib.mkEnableOption "Redis server";
        appendOnly = mkOption {
          type = types.bool;
          default = false;
        };
        bind = mkOption {
          type = with types; nullOr str;
          default = "127.0.0.1";
        };
        openFirewall = mkOption {
          type = types.bool;
          default = false;
        };
        port = mkOption {
          type = types.port;
          default = if name == "" then 6379 else 0;
        };
        requirePass = mkOption {
          type = with types; nullOr str;
          default = null;
        };
        requirePassFile = mkOption {
          type = with types; nullOr path;
          default = null;
        };
        settings = mkOption {
          default = { };
          type =
            with types;
            attrsOf (oneOf [
              bool
              int
              str
              (listOf str)
            ]);
        };
        unixSocket = mkOption {
          type = with types; nullOr path;
          default = "/run/${redisName name}/redis.sock";
        };
        user = mkOption {
          type = types.str;
          default = redisName name;
        };
        group = mkOption {
          type = types.str;
          default = config.user;
        };
      };
    };
  redisName = name: "redis" + lib.optionalString (name != "") ("-" + name);

  module =
    { config, ... }:
    let
      pg = config.services.postgresql;
      envoy = config.services.envoy;
      enabledRedis = lib.filterAttrs (_: s: s.enable) config.services.redis.servers;
    in
    {
      options = {
        assertions = mkOption {
          type = types.listOf types.unspecified;
          internal = true;
          default = [ ];
        };
        warnings = mkOption {
          type = types.listOf types.str;
          internal = true;
          default = [ ];
        };
        users.users = mkOption {
          default = { };
          type = types.attrsOf (types.submodule userOpts);
        };
        users.groups = mkOption {
          default = { };
          type = types.attrsOf (types.submodule groupOpts);
        };
        # nixos/modules/config/system-path.nix
        environment.systemPackages = mkOption {
          type = types.listOf types.package;
          default = [ ];
        };
        networking.firewall.allowedTCPPorts = mkOption {
          type = types.listOf types.port;
          default = [ ];
          apply = ports: lib.unique (builtins.sort builtins.lessThan ports);
        };
        systemd.services = mkOption {
          default = { };
          type = types.attrsOf (
            types.submodule [
              commonUnitOptions
              serviceOptions
            ]
          );
        };
        systemd.targets = mkOption {
          default = { };
          type = types.attrsOf (types.submodule [ commonUnitOptions ]);
        };
        services.postgresql = postgresqlOptions;
        services.redis.servers = mkOption {
          default = { };
          type = types.attrsOf (types.submodule redisServer);
        };
        security.auditd.enable = lib.mkEnableOption "the Linux Audit daemon";
        security.audit = {
          enable = mkOption {
            type = types.enum [
              false
              true
              "lock"
            ];
            default = false;
          };
          failureMode = mkOption {
            type = types.enum [
              "silent"
              "printk"
              "panic"
            ];
            default = "printk";
          };
          backlogLimit = mkOption {
            type = types.int;
            default = 1024;
          };
          rateLimit = mkOption {
            type = types.int;
            default = 0;
          };
          rules = mkOption {
            type = types.listOf types.str;
            default = [ ];
          };
        };
        systemd.tmpfiles.rules = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        # nixos/modules/system/etc/etc.nix
        environment.etc = mkOption {
          default = { };
          type = types.attrsOf (
            types.submodule (
              { name, ... }:
              {
                options = {
                  enable = mkOption {
                    type = types.bool;
                    default = true;
                  };
                  target = mkOption {
                    type = types.str;
                    default = name;
                  };
                  text = mkOption {
                    type = types.nullOr types.lines;
                    default = null;
                  };
                  source = mkOption { type = types.path; };
                  mode = mkOption {
                    type = types.str;
                    default = "symlink";
                  };
                };
              }
            )
          );
        };
        services.prometheus = {
          enable = lib.mkEnableOption "Prometheus monitoring daemon";
          retentionTime = mkOption {
            type = types.nullOr types.str;
            default = null;
          };
          scrapeConfigs = mkOption {
            type = types.listOf (
              types.submodule {
                freeformType = types.attrsOf jsonValue;
                options.job_name = mkOption { type = types.str; };
              }
            );
            default = [ ];
          };
          ruleFiles = mkOption {
            type = types.listOf types.path;
            default = [ ];
          };
          exporters.node = {
            enable = lib.mkEnableOption "the prometheus node exporter";
            port = mkOption {
              type = types.port;
              default = 9100;
            };
            listenAddress = mkOption {
              type = types.str;
              default = "0.0.0.0";
            };
            extraFlags = mkOption {
              type = types.listOf types.str;
              default = [ ];
            };
            enabledCollectors = mkOption {
              type = types.listOf types.str;
              default = [ ];
            };
            disabledCollectors = mkOption {
              type = types.listOf types.str;
              default = [ ];
            };
          };
        };
        services.loki = {
          enable = lib.mkEnableOption "loki";
          dataDir = mkOption {
            type = types.path;
            default = "/var/lib/loki";
          };
          configuration = mkOption {
            type = jsonValue;
            default = { };
          };
          configFile = mkOption {
            type = types.nullOr types.path;
            default = null;
          };
        };
        services.alloy = {
          enable = lib.mkEnableOption "Grafana Alloy";
          configPath = mkOption {
            type = types.path;
            default = "/etc/alloy";
          };
          extraFlags = mkOption {
            type = types.listOf types.str;
            default = [ ];
          };
        };
        services.grafana = {
          enable = lib.mkEnableOption "grafana";
          settings = mkOption {
            default = { };
            type = types.submodule {
              freeformType = types.attrsOf (types.attrsOf jsonValue); # settingsFormatIni.type
              options.security = {
                admin_user = mkOption {
                  type = types.str;
                  default = "admin";
                };
                admin_password = mkOption {
                  type = types.str;
                  default = "admin";
                };
                secret_key = mkOption {
                  type = types.nullOr types.str;
                  default = null;
                };
              };
            };
          };
          provision = {
            enable = lib.mkEnableOption "provision";
            datasources.path = mkOption {
              type = types.nullOr types.path;
              default = null;
            };
            datasources.settings = mkOption {
              type = types.nullOr (types.attrsOf jsonValue);
              default = null;
            };
            dashboards.path = mkOption {
              type = types.nullOr types.path;
              default = null;
            };
            dashboards.settings = mkOption {
              default = null;
              type = types.nullOr (
                types.submodule {
                  options.apiVersion = mkOption {
                    type = types.int;
                    default = 1;
                  };
                  options.providers = mkOption {
                    default = [ ];
                    type = types.listOf (
                      types.submodule {
                        freeformType = types.attrsOf jsonValue; # YAML
                        options = {
                          name = mkOption {
                            type = types.str;
                            default = "default";
                          };
                          type = mkOption {
                            type = types.str;
                            default = "file";
                          };
                          options.path = mkOption { type = types.path; };
                        };
                      }
                    );
                  };
                }
              );
            };
          };
        };
        # nixos/modules/misc/version.nix (set by nix/example.nix)
        system.stateVersion = mkOption {
          type = types.str;
        };

        services.envoy = {
          enable = lib.mkEnableOption "Envoy reverse proxy";
          package = mkOption {
            type = types.package;
            default = pkgs.envoy;
          };
          requireValidConfig = mkOption {
            type = types.bool;
            default = true;
          };
          settings = mkOption {
            type = jsonValue;
            default = { };
          };
        };
      };

      config = lib.mkMerge [
        # upstream config: users-groups.nix's checks of every user
        {
          assertions = lib.concatLists (
            lib.mapAttrsToList (name: u: [
              {
                assertion = u.isSystemUser != u.isNormalUser;
                message = "Exactly one of users.users.${name}.isSystemUser and users.users.${name}.isNormalUser must be set.";
              }
              {
                assertion = u.group != "";
                message = "users.users.${name}.group is unset.";
              }
            ]) config.users.users
          );
        }
        # upstream config: postgresql.nix
        (lib.mkIf pg.enable {
          assertions = map (u: {
            assertion = u.ensureDBOwnership -> lib.elem u.name pg.ensureDatabases;
            message = "ensureDBOwnership without the database: ${u.name}";
          }) pg.ensureUsers;
          services.postgresql.package = lib.mkDefault pkgs.postgresql_16; # the stateVersion default
          services.postgresql.authentication = lib.mkMerge [
            (lib.mkBefore "# Generated file; do not edit!")
            (lib.mkAfter ''
              # default value of services.postgresql.authentication
              local all postgres         peer map=postgres
              local all all              peer
              host  all all 127.0.0.1/32 md5
              host  all all ::1/128      md5
            '')
          ];
          services.postgresql.identMap = lib.mkAfter ''
            postgres postgres postgres
          '';
          systemd.targets.postgresql = {
            description = "PostgreSQL";
            wantedBy = [ "multi-user.target" ];
            requires = [
              "postgresql.service"
              "postgresql-setup.service"
            ];
          };
          systemd.services.postgresql = {
            description = "PostgreSQL Server";
            after = [ "network.target" ];
            wants = [ "postgresql.target" ];
            partOf = [ "postgresql.target" ];
            serviceConfig = {
              User = "postgres";
              Type = "notify";
              RuntimeDirectory = "postgresql";
            };
          };
          systemd.services.postgresql-setup = {
            description = "PostgreSQL Setup Scripts";
            requires = [ "postgresql.service" ];
            after = [ "postgresql.service" ];
            serviceConfig = {
              User = "postgres";
              Group = "postgres";
              Type = "oneshot";
              RemainAfterExit = true;
            };
            environment.PGPORT = toString pg.settings.port;
            script = "# upstream: wait for the server, initialScript, ensureDatabases, ensureUsers";
          };
        })
        # upstream config: redis.nix
        {
          assertions = lib.mapAttrsToList (name: s: {
            assertion = s.requirePass != null -> s.requirePassFile == null;
            message = "You can only set one of services.redis.servers.${name}.requirePass or services.redis.servers.${name}.requirePassFile";
          }) enabledRedis;
          systemd.services = lib.mapAttrs' (
            name: s:
            lib.nameValuePair (redisName name) {
              description = "Redis Server - ${redisName name}";
              after = [ "network.target" ];
              wantedBy = [ "multi-user.target" ];
              serviceConfig = {
                Type = "notify";
                User = s.user;
                ExecStartPre = "+prep-conf (requirepass from ${toString s.requirePassFile})";
              };
            }
          ) enabledRedis;
        }
        # upstream config: auditd.nix
        (lib.mkIf config.security.auditd.enable {
          security.audit.enable = lib.mkDefault true;
        })
        # upstream config: envoy.nix
        (lib.mkIf envoy.enable {
          systemd.services.envoy = {
            description = "Envoy reverse proxy";
            after = [ "network-online.target" ];
            requires = [ "network-online.target" ];
            wantedBy = [ "multi-user.target" ];
            serviceConfig = {
              ExecStart = "${envoy.package}/bin/envoy -c validate-envoy-conf";
              DynamicUser = true;
              Restart = "no";
              CapabilityBoundingSet = [ "CAP_NET_BIND_SERVICE" ];
              ProtectSystem = "strict";
            };
          };
        })
      ];
    };
in
{
  inherit module pkgs;
}
