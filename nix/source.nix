# The repository as build input: everything tracked, minus environments, runtime state and caches.
# (A flake only sees git-tracked files anyway; this also keeps `nix build` of a dirty tree and
# non-flake imports clean.)
{ lib }:
let
  root = ../.;

  # Excluded wherever they appear.
  excludedNames = [
    ".venv"
    ".sentinel"
    ".direnv"
    "__pycache__"
    ".pytest_cache"
    ".mypy_cache"
    ".ruff_cache"
    ".hypothesis"
  ];

  # Excluded only at the top level of the repository.
  excludedTopLevel = [
    ".tmp"
    "dist"
    "build"
  ];

  filter =
    path: type:
    let
      base = baseNameOf path;
      rel = lib.removePrefix (toString root + "/") (toString path);
    in
    !(builtins.elem base excludedNames)
    && !(builtins.elem rel excludedTopLevel)
    && !(lib.hasSuffix ".pyc" base)
    && !(lib.hasSuffix ".egg-info" base)
    && !(lib.hasSuffix ".pb" base);
in
lib.cleanSourceWith {
  name = "sentinel-source";
  src = root;
  # cleanSourceFilter drops .git, editor backups and `result*` symlinks.
  filter = path: type: lib.cleanSourceFilter path type && filter path type;
}
