# A single host running all of Sentinel: PostgreSQL and Redis on the host, the four services, the
# job worker, the rate-limit service and Envoy on port 8000; Prometheus (with the node exporter),
# Loki, Alloy and Grafana; auditd with Sentinel's rules, the audit watchdog and the process
# collector. Every secret (Redis password, page-token key, signing keys, the administrator's
# password, Grafana's) is generated on the host at first boot, never in the Nix store.
# Used by nixosConfigurations.example (with stub boot and file-system settings) and by the VM test.
{ pkgs, ... }:
let
  grafanaSecrets = "/var/lib/sentinel-example";
in
{
  services.sentinel = {
    enable = true;
    database.createLocally = true;
    redis.createLocally = true;
    gateway.openFirewall = true;
    observability = {
      enable = true;
      grafana = {
        adminPasswordFile = "${grafanaSecrets}/grafana-admin-password";
        secretKeyFile = "${grafanaSecrets}/grafana-secret-key";
      };
    };
    hostSecurity.enable = true;
  };

  # Example only: Grafana's two secrets, random, made once on the host before Grafana starts.
  # A real deployment gives the paths of files from agenix, sops-nix or its own secret store.
  systemd.services.sentinel-example-secrets = {
    description = "Grafana secrets of the Sentinel example host";
    wantedBy = [ "grafana.service" ];
    before = [ "grafana.service" ];
    path = [ pkgs.coreutils ];
    serviceConfig = {
      Type = "oneshot";
      RemainAfterExit = true;
      UMask = "0077";
    };
    script = ''
      install -d -m 0750 -o root -g grafana ${grafanaSecrets}
      for name in grafana-admin-password grafana-secret-key; do
        file=${grafanaSecrets}/$name
        if [ ! -s "$file" ]; then
          head -c 32 /dev/urandom | base64 | tr -d '\n=+/' > "$file.new"
          mv "$file.new" "$file"
        fi
        chown root:grafana "$file"
        chmod 0440 "$file"
      done
    '';
  };

  system.stateVersion = "26.05";
}
