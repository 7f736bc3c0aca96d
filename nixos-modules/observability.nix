# Observability on the host: Prometheus (the read-only services.sentinel.scrapeConfigs plus the node
# exporter, the committed alert and recording rules in alerts/generated/), the node exporter with
# its textfile directory (where host-security's units write), Loki (observability/loki.json,
# 30-day retention), Grafana Alloy (observability/config.alloy: the journal to Loki) and Grafana
# (dashboards/ with their provisioning files; the admin password and the secret key as
# `$__file{...}` from files outside the store). All generated files are the committed ones, taken
# from this flake's source, so `sentinel up` and NixOS run the same rules and dashboards.
{
  config,
  lib,
  ...
}:
let
  inherit (lib) mkOption types;

  cfg = config.services.sentinel;
  obs = cfg.observability;
  sl = import ./lib.nix { inherit lib; };

  ruleFiles = map (f: ../alerts/generated + "/${f}") [
    "host.rules.yaml"
    "service.rules.yaml"
    "slo-alerts.rules.yaml"
    "slo-recording.rules.yaml"
  ];

  # Only the dashboards' JSON (not README.md or provisioning/) as Grafana's file provider.
  dashboards = builtins.path {
    path = ../dashboards;
    name = "sentinel-dashboards";
    filter = path: type: type == "regular" && lib.hasSuffix ".json" path && dirOf path == toString ../dashboards;
  };

  nodeAddress = sl.hostPort "127.0.0.1" obs.nodeExporterPort;

  secretPaths = {
    "observability.grafana.adminPasswordFile" = obs.grafana.adminPasswordFile;
    "observability.grafana.secretKeyFile" = obs.grafana.secretKeyFile;
  };
in
{
  imports = [ ./sentinel.nix ];

  options.services.sentinel.observability = {
    enable = lib.mkEnableOption "Prometheus, the node exporter, Loki, Alloy and Grafana for Sentinel";
    retention = mkOption {
      type = types.str;
      default = "90d";
      description = "How long Prometheus keeps samples (`services.prometheus.retentionTime`).";
    };
    nodeExporterPort = mkOption {
      type = types.port;
      default = 9100;
      description = "Port of the node exporter (scraped as job `node`).";
    };
    textfileDirectory = mkOption {
      type = types.str;
      default = "/var/lib/prometheus-node-exporter-text-files";
      description = ''
        The node exporter's textfile collector directory; the host-security units (watchdog,
        process collector) write their `.prom` files here.
      '';
    };
    loki.enable = mkOption {
      type = types.bool;
      default = true;
      description = "Run Loki (`services.loki`, observability/loki.json: filesystem storage, 30-day retention).";
    };
    alloy.enable = mkOption {
      type = types.bool;
      default = true;
      description = "Run Grafana Alloy (`services.alloy`, observability/config.alloy): the journal to Loki.";
    };
    grafana = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Run Grafana with the Prometheus and Loki datasources and Sentinel's dashboards.";
      };
      adminPasswordFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = "/run/secrets/grafana-admin-password";
        description = ''
          File with the password of Grafana's `admin` user, outside the Nix store and readable by the
          `grafana` user; given to Grafana as `$__file{...}`. Required with `grafana.enable`.
        '';
      };
      secretKeyFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = "/run/secrets/grafana-secret-key";
        description = ''
          File with Grafana's `security.secret_key` (signs and encrypts; current nixpkgs refuses a
          missing key), outside the store, readable by `grafana`. Required with `grafana.enable`.
        '';
      };
    };
  };

  config = lib.mkIf (cfg.enable && obs.enable) (
    lib.mkMerge [
      {
        assertions = [
          {
            assertion = obs.grafana.enable -> obs.grafana.adminPasswordFile != null;
            message = "services.sentinel.observability.grafana.enable needs services.sentinel.observability.grafana.adminPasswordFile (a file outside the Nix store with Grafana's admin password), or set grafana.enable = false.";
          }
          {
            assertion = obs.grafana.enable -> obs.grafana.secretKeyFile != null;
            message = "services.sentinel.observability.grafana.enable needs services.sentinel.observability.grafana.secretKeyFile (a file outside the Nix store with Grafana's secret key), or set grafana.enable = false.";
          }
          {
            assertion = obs.alloy.enable -> obs.loki.enable;
            message = "services.sentinel.observability.alloy.enable ships the journal to the local Loki: enable services.sentinel.observability.loki too.";
          }
        ]
        ++ lib.mapAttrsToList (name: value: {
          assertion = !sl.inStore value;
          message = "services.sentinel.${name} must be a path outside the Nix store (a string such as \"/run/secrets/...\", not ./file): the store is world-readable.";
        }) (lib.filterAttrs (_: v: v != null) secretPaths);

        # Unit names as nixpkgs declares them (prometheus.nix, exporters.nix, loki.nix, alloy.nix,
        # grafana.nix).
        services.sentinel.units = [
          "prometheus.service"
          "prometheus-node-exporter.service"
        ]
        ++ lib.optional obs.loki.enable "loki.service"
        ++ lib.optional obs.alloy.enable "alloy.service"
        ++ lib.optional obs.grafana.enable "grafana.service";

        services.prometheus = {
          enable = true;
          retentionTime = obs.retention;
          scrapeConfigs = cfg.scrapeConfigs ++ [
            {
              job_name = "node";
              static_configs = [ { targets = [ nodeAddress ]; } ];
            }
          ];
          inherit ruleFiles;
        };

        services.prometheus.exporters.node = {
          enable = true;
          port = obs.nodeExporterPort;
          listenAddress = "127.0.0.1";
          enabledCollectors = [
            "systemd"
            "textfile"
          ];
          extraFlags = [ "--collector.textfile.directory=${obs.textfileDirectory}" ];
        };
      }
      (lib.mkIf obs.loki.enable {
        services.loki = {
          enable = true;
          configuration = builtins.fromJSON (builtins.readFile ../observability/loki.json);
        };
      })
      (lib.mkIf obs.alloy.enable {
        services.alloy.enable = true;
        # The module reads every *.alloy file in its configPath (/etc/alloy).
        environment.etc."alloy/config.alloy".source = ../observability/config.alloy;
      })
      (lib.mkIf obs.grafana.enable {
        services.grafana = {
          enable = true;
          settings.security = {
            admin_password = "$__file{${toString obs.grafana.adminPasswordFile}}";
            secret_key = "$__file{${toString obs.grafana.secretKeyFile}}";
          };
          provision = {
            enable = true;
            # Datasources with the uids the dashboards refer to (sentinel-prometheus, sentinel-loki).
            datasources.path = ../dashboards/provisioning/datasources.yaml;
            dashboards.settings = {
              apiVersion = 1;
              providers = [
                {
                  name = "sentinel";
                  orgId = 1;
                  folder = "Sentinel";
                  folderUid = "sentinel";
                  type = "file";
                  disableDeletion = true;
                  allowUiUpdates = false;
                  updateIntervalSeconds = 60;
                  options.path = dashboards;
                }
              ];
            };
          };
        };
      })
    ]
  );
}
