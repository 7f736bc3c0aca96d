"""Regenerate the protobuf/gRPC Python modules from ``proto/``.

Run with ``python -m sentinel.protogen`` (or ``make proto``). The output is committed under
``services/sentinel/<svc>/v1/`` and ``tests/unit/test_proto_sync.py`` fails when it is stale.
Needs ``grpcio-tools`` (a development dependency).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO / "proto"
OUT_ROOT = REPO / "services"


def proto_files(root: Path = PROTO_ROOT) -> list[Path]:
    return sorted(root.glob("sentinel/**/*.proto"))


def include_paths() -> list[str]:
    import google.api  # googleapis-common-protos ships annotations.proto and http.proto
    import grpc_tools

    grpc_tools_protos = Path(grpc_tools.__file__).parent / "_proto"
    googleapis = Path(google.api.__file__).parents[1].parent
    return [str(PROTO_ROOT), str(googleapis), str(grpc_tools_protos)]


def generate(out_root: Path = OUT_ROOT) -> None:
    from grpc_tools import protoc

    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = ["protoc", *(f"-I{p}" for p in include_paths())]
    args += [f"--python_out={out_root}", f"--grpc_python_out={out_root}"]
    # Typed stubs for messages and gRPC stubs/servicers (mypy-protobuf), when it is installed.
    bindir = Path(sys.executable).parent
    plugins = {name: bindir / f"protoc-gen-{name}" for name in ("mypy", "mypy_grpc")}
    if all(p.exists() for p in plugins.values()):
        args += [f"--plugin=protoc-gen-{n}={p}" for n, p in plugins.items()]
        args += [f"--mypy_out={out_root}", f"--mypy_grpc_out={out_root}"]
    else:
        args += [f"--pyi_out={out_root}"]
    args += files
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for package_dir in {(out_root / f).parent for f in files}:
        # Make each generated directory a regular package so mypy and hatch see it.
        for parent in [package_dir, package_dir.parent]:
            init = parent / "__init__.py"
            if not init.exists():
                init.write_text("")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=OUT_ROOT)
    ns = parser.parse_args(argv)
    generate(ns.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
