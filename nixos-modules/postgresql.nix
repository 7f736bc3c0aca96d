# The local PostgreSQL (services.database.createLocally): the database, the owner role that runs
# migrations and the service role under row-level security, as `sentinel up` creates them
# (services/sentinel/devstack/stack.py, Stack._ensure_roles). Both roles log in over the Unix socket
# with peer authentication: each Sentinel system user is mapped to its role in pg_ident.conf, so
# there are no database passwords on this host.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.sentinel;
  sl = import ./lib.nix { inherit lib; };
  db = cfg.database;

  # LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS (and no replication), like _ensure_roles.
  roleClauses = {
    login = true;
    superuser = false;
    createdb = false;
    createrole = false;
    bypassrls = false;
    replication = false;
  };

  # Which system user may log in as which role (map "sentinel" in pg_ident.conf).
  identLines =
    [ "sentinel ${sl.userOf "migrate"} ${db.ownerUser}" ]
    # `sentinel admin bootstrap` runs in the migrate unit and writes as the service role.
    ++ map (account: "sentinel ${sl.userOf account} ${db.user}") sl.accounts;

  q = name: ''"${name}"'';
  # Run by postgresql-setup.service (as postgres, after ensureUsers): the database owned by the
  # owner role, nobody else may connect or create objects in it; the service role owns nothing.
  setupSql = ''
    psql -v ON_ERROR_STOP=1 -d postgres <<'EOF'
    SELECT 'CREATE DATABASE ${q db.name} OWNER ${q db.ownerUser}'
      WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '${db.name}') \gexec
    ALTER DATABASE ${q db.name} OWNER TO ${q db.ownerUser};
    REVOKE ALL ON DATABASE ${q db.name} FROM PUBLIC;
    GRANT CONNECT ON DATABASE ${q db.name} TO ${q db.user};
    EOF
    psql -v ON_ERROR_STOP=1 -d ${lib.escapeShellArg db.name} <<'EOF'
    ALTER SCHEMA public OWNER TO ${q db.ownerUser};
    REVOKE CREATE ON SCHEMA public FROM PUBLIC;
    EOF
  '';

  processes = builtins.length (sl.derive cfg).instances + 2; # + worker, migrate
in
{
  imports = [ ./sentinel.nix ];

  config = lib.mkIf (cfg.enable && db.createLocally) {
    assertions = [
      {
        assertion = builtins.all (n: builtins.match "[a-z_][a-z0-9_]*" n != null) [
          db.name
          db.user
          db.ownerUser
        ];
        message = "services.sentinel.database.name, .user and .ownerUser must be lower-case SQL identifiers ([a-z_][a-z0-9_]*).";
      }
    ];

    services.postgresql = {
      enable = true;
      # Pinned: a new major version needs pg_upgrade, never a silent stateVersion bump. This beats
      # the module's stateVersion default (mkDefault); a plain definition of yours wins.
      package = lib.mkOverride 900 pkgs.postgresql_17;
      ensureUsers = map (name: {
        inherit name;
        ensureClauses = roleClauses;
      }) [
        db.ownerUser
        db.user
      ];
      identMap = lib.concatMapStrings (line: line + "\n") identLines;
      # Above the module's defaults (local all all peer, ...), so these rows decide for our roles.
      authentication = ''
        local ${db.name} ${db.ownerUser},${db.user} peer map=sentinel
      '';
      # Each process holds up to 15 connections (pool 10 + overflow 5).
      settings.max_connections = lib.mkDefault (lib.max 100 (15 * processes + 20));
    };

    systemd.services.postgresql-setup.script = lib.mkAfter setupSql;
  };
}
