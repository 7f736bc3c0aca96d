# Host security: Linux audit with Sentinel's rule sets (sentinel.host.rules), auditd, and the two
# host agents, sentinel-watchdog (auditd health, the loaded rules, per-key event counts) and
# sentinel-procmem (top processes by memory and CPU), both writing node exporter textfiles into
# services.sentinel.observability.textfileDirectory.
#
# The rules come from the same Python data as `sentinel host install-audit-rules` on Debian: the
# module runs `sentinel host render-rules --platform nixos --format json` at build time (with the
# store paths of auditd and kmod, which the exe exclusion and the kmod watches must name), as
# gateway.nix does for Envoy, and reads the list back (import from derivation) into
# `security.audit.rules`. NixOS's audit module writes -D, -b (backlogLimit), -f (failureMode) and -e
# itself; the rendered list leaves them out. The units' hardening repeats
# sentinel.host.units.WATCHDOG_HARDENING / COLLECTOR_HARDENING (the tests compare them).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption types;

  cfg = config.services.sentinel;
  hs = cfg.hostSecurity;
  textfileDir = cfg.observability.textfileDirectory;
  sentinel = lib.getExe' cfg.package "sentinel";
  systemctl = "${pkgs.systemd}/bin/systemctl";

  # sentinel.host.rules.EXTRA_SETS
  extraSets = [
    "etc-change"
    "shadow-access"
    "passwd-access"
    "tmp-exec"
    "kmod-change"
  ];
  extraArgs = lib.concatMapStringsSep " " (e: "--extra ${e}") hs.extras;

  rendered = pkgs.runCommand "sentinel-audit-rules" { } ''
    ${sentinel} host render-rules --platform nixos --format json \
      --auditd-exe ${pkgs.audit}/bin/auditd --kmod-bin ${pkgs.kmod}/bin ${extraArgs}${
        lib.concatMapStrings (u: " --quiet-uid ${toString u}") hs.quietUids
      } > "$out"
  '';
  rules = builtins.fromJSON (builtins.unsafeDiscardStringContext (builtins.readFile rendered));

  # sentinel.host.units._COMMON
  common = {
    NoNewPrivileges = "yes";
    ProtectSystem = "strict";
    ProtectHome = "yes";
    PrivateTmp = "yes";
    PrivateDevices = "yes";
    ProtectKernelTunables = "yes";
    ProtectKernelModules = "yes";
    ProtectKernelLogs = "yes";
    ProtectControlGroups = "yes";
    ProtectClock = "yes";
    ProtectHostname = "yes";
    RestrictNamespaces = "yes";
    RestrictRealtime = "yes";
    RestrictSUIDSGID = "yes";
    LockPersonality = "yes";
    MemoryDenyWriteExecute = "yes";
    SystemCallArchitectures = "native";
    UMask = "0022"; # the node exporter (another user) reads the .prom files
  };
  unit = {
    Type = "simple";
    Restart = "on-failure";
    RestartSec = "10s";
  };

  watchdogArgs = lib.escapeShellArgs (
    [
      "--textfile-dir"
      textfileDir
      "--start-command"
      "${systemctl} start auditd.service"
      "--restart-command"
      "${systemctl} restart auditd.service"
      "--reload-command"
      "${systemctl} restart ${hs.auditRulesUnit}"
      "--list-rules-command"
      "${pkgs.audit}/bin/auditctl -l"
    ]
    ++ lib.concatMap (e: [
      "--extra"
      e
    ]) hs.extras
  );
in
{
  imports = [
    ./sentinel.nix
    ./observability.nix # services.sentinel.observability.textfileDirectory
  ];

  options.services.sentinel.hostSecurity = {
    enable = lib.mkEnableOption "Sentinel's audit rules, auditd, the audit watchdog and the process collector";
    extras = mkOption {
      type = types.listOf (types.enum extraSets);
      default = [ ];
      example = [
        "etc-change"
        "kmod-change"
      ];
      description = "Extra rule sets on top of the base sets (`sentinel host render-rules --extra`); docs/host-security.md.";
    };
    quietUids = mkOption {
      type = types.listOf types.ints.unsigned;
      default = [ ];
      description = "Service accounts whose execs stay out of the exec-service key (`--quiet-uid`).";
    };
    auditRulesUnit = mkOption {
      type = types.str;
      default = "audit-rules-nixos.service";
      description = "The unit NixOS loads `security.audit.rules` with (`audit-rules.service` on older channels); the watchdog restarts it to reload the rules.";
    };
    collector = {
      top = mkOption {
        type = types.ints.positive;
        default = 10;
        description = "Processes reported by memory, and by CPU.";
      };
      interval = mkOption {
        type = types.ints.positive;
        default = 30;
        description = "Seconds between collections.";
      };
    };
    rendered = mkOption {
      type = types.package;
      readOnly = true;
      default = rendered;
      defaultText = lib.literalMD "the derivation whose output is the rules as a JSON list";
      description = "`sentinel host render-rules --platform nixos --format json` for these options (read-only).";
    };
  };

  config = lib.mkIf (cfg.enable && hs.enable) {
    services.sentinel.units = [
      "auditd.service"
      "sentinel-watchdog.service"
      "sentinel-procmem.service"
    ];

    security.auditd.enable = true;
    security.audit = {
      enable = true;
      inherit rules;
      backlogLimit = 8192; # sentinel.host.rules.BACKLOG_LIMIT
      failureMode = "printk"; # FAILURE_MODE 1: never panic a server for audit
    };

    # Root-owned and world-readable: the agents (root) write, the node exporter reads.
    systemd.tmpfiles.rules = [ "d ${textfileDir} 0755 root root -" ];

    systemd.services.sentinel-watchdog = {
      description = "Sentinel audit watchdog (auditd health, audit rules, per-key event counts)";
      after = [
        "auditd.service"
        "systemd-journald.service"
      ];
      wantedBy = [ "multi-user.target" ];
      path = [ pkgs.systemd ]; # journalctl
      restartTriggers = [ rendered ];
      serviceConfig = unit // common // {
        ExecStart = "${sentinel} watchdog ${watchdogArgs}";
        User = "root";
        CapabilityBoundingSet = "CAP_AUDIT_CONTROL CAP_AUDIT_READ CAP_KILL";
        RestrictAddressFamilies = "AF_UNIX AF_NETLINK"; # systemd/journald sockets, netlink audit
        SystemCallFilter = "@system-service";
        StateDirectory = "sentinel-watchdog";
        # No /etc/audit: NixOS reloads the rules by restarting its unit, not with augenrules.
        ReadWritePaths = [ textfileDir ];
      };
    };

    systemd.services.sentinel-procmem = {
      description = "Sentinel process-memory collector (top processes by memory and CPU, node exporter textfile)";
      after = [ "local-fs.target" ];
      wantedBy = [ "multi-user.target" ];
      serviceConfig = unit // common // {
        ExecStart = "${sentinel} host collect-processes --textfile-dir ${textfileDir} --top ${toString hs.collector.top} --interval ${toString hs.collector.interval}";
        User = "root";
        CapabilityBoundingSet = "";
        AmbientCapabilities = "";
        PrivateNetwork = "yes";
        PrivateUsers = "no"; # must see every process's /proc entry as it is
        RestrictAddressFamilies = "AF_UNIX";
        SystemCallFilter = "@system-service";
        SystemCallErrorNumber = "EPERM";
        ReadWritePaths = [ textfileDir ];
      };
    };
  };
}
