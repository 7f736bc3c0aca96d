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
    { config, pkgs, ... }:
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

      # Scrapes what the module says exists; the observability module will do the same.
      services.prometheus = {
        enable = true;
        globalConfig.scrape_interval = "2s";
        inherit (config.services.sentinel) scrapeConfigs;
      };

      environment.systemPackages = [
        pkgs.curl
        pkgs.jq
      ];
      virtualisation.memorySize = 4096;
      virtualisation.cores = 2;
    };

  testScript =
    { nodes, ... }:
    let
      cfg = nodes.machine.services.sentinel;
      targets = builtins.concatMap (job: builtins.concatMap (c: c.targets) job.static_configs) cfg.scrapeConfigs;
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
          machine.wait_for_unit("prometheus.service")
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

      with subtest("Prometheus scrapes every Sentinel process and Envoy"):
          machine.wait_until_succeeds(
              "curl -sf http://127.0.0.1:9090/api/v1/targets"
              f" | jq -e '[.data.activeTargets[] | select(.health == \"up\")] | length == {TARGETS}'",
              timeout=120)
    '';
}
