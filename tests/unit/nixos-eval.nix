# Evaluate nixos-modules/ with lib.evalModules against the stubs (nixos-stubs.nix) and one
# scenario module; return plain data for tests/unit/test_nixos_modules.py.
{
  libPath,
  repo,
  scenario,
  # see nixos-stubs.nix; with "sentinel-gateway" also read services.envoy.settings, with
  # "sentinel-audit-rules" security.audit.rules (import from derivation)
  renderDirs ? { },
}:
let
  lib = import libPath;
  stubs = import ./nixos-stubs.nix { inherit lib renderDirs; };
  eval = lib.evalModules {
    modules = [
      stubs.module
      (repo + "/nixos-modules")
      { _module.args.pkgs = stubs.pkgs; }
      scenario
    ];
  };
  inherit (eval) config;

  # Derivations as their name (and the text or command they were made from), recursively.
  plain =
    v:
    if lib.isDerivation v then
      {
        drv = v.name;
      }
      // lib.optionalAttrs (v ? text) { inherit (v) text; }
      // lib.optionalAttrs (v ? env) { inherit (v) env script; }
      // lib.optionalAttrs (v ? calledWith) { inherit (v) calledWith; }
    else if builtins.isAttrs v then
      lib.mapAttrs (_: plain) v
    else if builtins.isList v then
      map plain v
    else if builtins.isFunction v then
      "<function>"
    else
      v;

  orNull =
    v:
    let
      r = builtins.tryEval v;
    in
    if r.success then r.value else null;

  unit = u: {
    inherit (u)
      description
      wantedBy
      requiredBy
      after
      before
      requires
      wants
      partOf
      bindsTo
      environment
      path
      script
      restartTriggers
      serviceConfig
      ;
    startLimitBurst = orNull u.startLimitBurst;
    startLimitIntervalSec = orNull u.startLimitIntervalSec;
  };

  failed = map (a: a.message) (builtins.filter (a: !a.assertion) config.assertions);
  pg = config.services.postgresql;
in
{
  assertions = failed;
  inherit (config) warnings;
  # What Nix replaces with the output path when it builds a derivation (e.g. the gateway render).
  outPlaceholder = builtins.placeholder "out";
}
// lib.optionalAttrs (failed == [ ]) (plain {
  services = lib.mapAttrs (_: unit) config.systemd.services;
  targets = lib.mapAttrs (_: t: { inherit (t) description wantedBy wants requires; }) config.systemd.targets;
  users = lib.mapAttrs (_: u: { inherit (u) isSystemUser group extraGroups description; }) config.users.users;
  groups = builtins.attrNames config.users.groups;
  firewall = config.networking.firewall.allowedTCPPorts;
  systemPackages = config.environment.systemPackages;
  postgresql = {
    inherit (pg)
      enable
      ensureDatabases
      ensureUsers
      identMap
      authentication
      ;
    package = if pg.enable then pg.package else null;
    settings = if pg.enable then pg.settings else null;
  };
  redis = lib.mapAttrs (_: s: {
    inherit (s)
      enable
      bind
      port
      requirePass
      requirePassFile
      appendOnly
      ;
  }) config.services.redis.servers;
  envoy = {
    inherit (config.services.envoy) enable package requireValidConfig;
    settings = if renderDirs ? "sentinel-gateway" then config.services.envoy.settings else null;
  };
  prometheus = {
    inherit (config.services.prometheus) enable retentionTime scrapeConfigs;
    ruleFiles = map toString config.services.prometheus.ruleFiles;
    node = config.services.prometheus.exporters.node;
  };
  loki = { inherit (config.services.loki) enable configuration configFile; };
  alloy = {
    inherit (config.services.alloy) enable configPath;
    etc = lib.mapAttrs (_: e: toString e.source) (lib.filterAttrs (n: _: lib.hasPrefix "alloy/" n) config.environment.etc);
  };
  grafana = {
    inherit (config.services.grafana) enable;
    security = config.services.grafana.settings.security;
    provision = {
      inherit (config.services.grafana.provision) enable;
      datasources = lib.mapNullable toString config.services.grafana.provision.datasources.path;
      dashboards =
        let
          d = config.services.grafana.provision.dashboards.settings;
        in
        if d == null then null else map (p: p // { options = p.options // { path = toString p.options.path; }; }) d.providers;
    };
  };
  audit = {
    auditd = config.security.auditd.enable;
    inherit (config.security.audit) enable backlogLimit failureMode;
    rules = if renderDirs ? "sentinel-audit-rules" then config.security.audit.rules else null;
  };
  tmpfiles = config.systemd.tmpfiles.rules;
  sentinel = {
    inherit (config.services.sentinel) units scrapeConfigs package;
    rendered = if config.services.sentinel.gateway.enable then config.services.sentinel.gateway.rendered else null;
    auditRules = config.services.sentinel.hostSecurity.rendered;
  };
})
