# checks.<system>.vm: the example host (nix/example.nix) in a NixOS VM, driven over REST through
# Envoy. Run with `nix build .#checks.x86_64-linux.vm -L` (needs KVM; see docs/nix.md).
{
  sentinelModules,
  sentinel,
}:
let
  # Test only: a password known to the test script. The file lands in the Nix store, which is
  # exactly what a real deployment must not do (give a path from agenix, sops-nix, ...).
  adminPassword = "vm test administrator password";
  ownerPassword = "a long owner password";
in
{
  name = "sentinel";

  nodes.machine =
    { pkgs, ... }:
    {
      imports = [
        sentinelModules
        ./example.nix
      ];

      services.sentinel = {
        package = sentinel;
        bootstrapAdmin.passwordFile = "/etc/sentinel-test/admin-password";
      };
      environment.etc."sentinel-test/admin-password".text = adminPassword;

      # The example's Prometheus (observability module), scraping faster for the test.
      services.prometheus.globalConfig.scrape_interval = "2s";

      environment.systemPackages = [
        pkgs.curl
        pkgs.jq
        pkgs.audit # auditctl for the checks (security.auditd runs auditd, it does not install the tools)
      ];
      virtualisation.memorySize = 4096;
      virtualisation.cores = 2;
    };

  testScript =
    { nodes, ... }:
    let
      cfg = nodes.machine.services.sentinel;
      # Every job Prometheus has: Sentinel's processes and Envoy, plus the node exporter.
      targets = builtins.concatMap (
        job: builtins.concatMap (c: c.targets) job.static_configs
      ) nodes.machine.services.prometheus.scrapeConfigs;
      textfiles = cfg.observability.textfileDirectory;
    in
    ''
      import json
      import shlex

      UNITS = json.loads(${builtins.toJSON (builtins.toJSON cfg.units)})
      TARGETS = ${toString (builtins.length targets)}
      BASE = "http://127.0.0.1:${toString cfg.gateway.port}"


      def api(method, path, body=None, token=None):
          """One REST call through Envoy: (HTTP status, JSON body or None)."""
          cmd = f"curl -s -X {method} -w '\\n%{{http_code}}' {BASE}{path}"
          if token:
              cmd += " -H " + shlex.quote(f"authorization: Bearer {token}")
          if body is not None:
              cmd += " -H 'content-type: application/json' -d " + shlex.quote(json.dumps(body))
          out = machine.succeed(cmd)
          text, _, status = out.rpartition("\n")
          return int(status), (json.loads(text) if text.strip() else None)


      def login(tenant, email, password):
          status, body = api("POST", "/api/v1/auth/login", {"tenant": tenant, "email": email, "password": password})
          assert status == 200, (status, body)
          return body["access_token"]


      machine.start()

      with subtest("every unit comes up, in order"):
          machine.wait_for_unit("postgresql.target")
          machine.wait_for_unit("redis-sentinel.service")
          for unit in UNITS:
              machine.wait_for_unit(unit)
          machine.wait_for_unit("envoy.service")
          machine.wait_for_open_port(${toString cfg.gateway.port})
          machine.wait_until_succeeds(f"curl -sf {BASE}/api/v1/health", timeout=120)
          # sentinel-migrate ran after the database existed, the services after it.
          machine.succeed("systemctl show -p ActiveState sentinel-migrate.service | grep -q =active")

      with subtest("secrets are credentials, not environment"):
          redis_password = machine.succeed("cat /var/lib/sentinel/secrets/redis-password").strip()
          env = machine.succeed("systemctl show -p Environment sentinel-user.service")
          assert redis_password not in env, "the Redis password is in a unit's environment"
          assert "SENTINEL_REDIS_URL_FILE=redis-url" in env, env
          # Private keys: root's (loaded as credentials), or the user service's (JWT); public keys readable.
          modes = machine.succeed("stat -c '%U %a %n' /var/lib/sentinel/keys/services/user.key.pem"
                                  " /var/lib/sentinel/keys/jwt/*.key.pem")
          assert modes.split()[0:2] == ["root", "600"], modes
          assert all(line.split()[:2] == ["sentinel-user", "600"] for line in modes.splitlines()[1:]), modes
          machine.fail("runuser -u sentinel-tenant -- ls /var/lib/sentinel/keys/jwt")
          machine.fail("runuser -u sentinel-tenant -- cat /var/lib/sentinel/keys/services/user.key.pem")
          machine.succeed("runuser -u sentinel-tenant -- cat /var/lib/sentinel/keys/jwt/public/*.pub.pem")

      with subtest("log in as the platform administrator through Envoy"):
          admin = login("platform", "${cfg.bootstrapAdmin.email}", "${adminPassword}")
          # Envoy fetches the signing keys from the user service in the background: wait for them.
          machine.wait_until_succeeds(
              f"curl -sf {BASE}/api/v1/users/me -H " + shlex.quote(f"authorization: Bearer {admin}"), timeout=60)

      with subtest("create tenants and users, read them back"):
          tenants, owners = {}, {}
          for slug in ("acme", "globex"):
              status, body = api("POST", "/api/v1/tenants", {"slug": slug, "display_name": slug.title()}, admin)
              assert status == 200, (status, body)
              tenants[slug] = body["tenant"]["id"]
              status, body = api("POST", "/api/v1/users", {
                  "tenant_id": tenants[slug], "email": f"owner@{slug}.example",
                  "password": "${ownerPassword}", "role": "ROLE_OWNER"}, admin)
              assert status == 200, (status, body)
              owners[slug] = body["user"]["id"]
          status, body = api("GET", f"/api/v1/tenants/{tenants['acme']}", token=admin)
          assert status == 200 and body["tenant"]["slug"] == "acme", (status, body)
          acme = login("acme", "owner@acme.example", "${ownerPassword}")
          status, body = api("GET", f"/api/v1/users/{owners['acme']}", token=acme)
          assert status == 200 and body["user"]["email"] == "owner@acme.example", (status, body)
          status, body = api("GET", "/api/v1/users/me", token=acme)
          assert status == 200 and body["user"]["tenant_id"] == tenants["acme"], (status, body)

      with subtest("another tenant's tenant and user do not exist for acme's owner"):
          status, body = api("GET", f"/api/v1/tenants/{tenants['globex']}", token=acme)
          assert status == 404, (status, body)
          status, body = api("GET", f"/api/v1/users/{owners['globex']}", token=acme)
          assert status == 404, (status, body)
          status, body = api("GET", "/api/v1/tenants", token=acme)
          assert [t["slug"] for t in body["tenants"]] == ["acme"], (status, body)

      with subtest("Prometheus scrapes every Sentinel process, Envoy and the node exporter"):
          machine.wait_until_succeeds(
              "curl -sf http://127.0.0.1:9090/api/v1/targets"
              f" | jq -e '[.data.activeTargets[] | select(.health == \"up\")] | length == {TARGETS}'",
              timeout=120)

      with subtest("Prometheus loaded the committed alerting and recording rules"):
          machine.succeed("curl -sf http://127.0.0.1:9090/api/v1/rules"
                          " | jq -e '[.data.groups[].rules[] | select(.name == \"SentinelAuditdDown\")] | length == 1'")

      with subtest("the service logs reach Loki through Alloy"):
          machine.wait_until_succeeds("curl -sf http://127.0.0.1:3100/ready", timeout=120)
          machine.wait_until_succeeds(
              "curl -sfG http://127.0.0.1:3100/loki/api/v1/query_range"
              " --data-urlencode 'query={unit=\"sentinel-user.service\"}' --data-urlencode 'limit=5'"
              " | jq -e '.data.result | length > 0'", timeout=120)

      with subtest("Grafana has its admin password from the file and the provisioned dashboards"):
          machine.wait_for_open_port(3000)
          password = machine.succeed("cat /var/lib/sentinel-example/grafana-admin-password").strip()
          auth = shlex.quote(f"admin:{password}")
          machine.wait_until_succeeds(
              f"curl -sf -u {auth} 'http://127.0.0.1:3000/api/search?folderUIDs=sentinel'"
              " | jq -e 'length >= 1'", timeout=120)
          machine.fail("curl -sf -u admin:admin http://127.0.0.1:3000/api/search")

      with subtest("auditd runs Sentinel's rules; the watchdog and the collector report"):
          machine.succeed("auditctl -s | grep -q 'enabled 1'")
          machine.succeed("auditctl -l | grep -q 'key=exec-watchdog'")
          machine.wait_until_succeeds("test -s ${textfiles}/sentinel_watchdog.prom", timeout=120)
          machine.wait_until_succeeds("test -s ${textfiles}/sentinel_process_memory.prom", timeout=120)
          machine.wait_until_succeeds(
              "curl -sf http://127.0.0.1:9100/metrics | grep -q '^sentinel_watchdog_auditd_up 1'", timeout=120)
          machine.wait_until_succeeds(
              "curl -sf http://127.0.0.1:9100/metrics | grep -q '^sentinel_process_resident_memory_bytes'", timeout=120)
    '';
}
