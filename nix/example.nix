# A single host running all of Sentinel: PostgreSQL and Redis on the host, the four services, the
# job worker, the rate-limit service and Envoy on port 8000. Every secret (Redis password, page-token
# key, signing keys, the administrator's password) is generated on the host at first boot.
# Used by nixosConfigurations.example (with stub boot and file-system settings) and by the VM test.
{
  services.sentinel = {
    enable = true;
    database.createLocally = true;
    redis.createLocally = true;
    gateway.openFirewall = true;
  };

  system.stateVersion = "26.05";
}
