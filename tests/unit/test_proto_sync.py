"""The committed protobuf/gRPC modules under ``services/`` match what ``proto/`` generates."""

from __future__ import annotations

from pathlib import Path

import pytest
from sentinel import protogen

HINT = "generated code is stale: run `make proto` and commit the result"


def _generated(root: Path) -> dict[str, bytes]:
    """Relative path → bytes of every generated module below ``root/sentinel``."""
    out: dict[str, bytes] = {}
    for path in sorted((root / "sentinel").rglob("*")):
        name = path.name
        if path.is_file() and (name.endswith(("_pb2.py", "_pb2_grpc.py")) or name.endswith(".pyi")):
            out[path.relative_to(root).as_posix()] = path.read_bytes()
    return out


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("protogen")
    protogen.generate(out_root=out)
    files = _generated(out)
    assert files, "protogen.generate produced no files"
    return files


@pytest.fixture(scope="module")
def committed() -> dict[str, bytes]:
    return _generated(protogen.OUT_ROOT)


def test_every_proto_has_generated_modules(fresh: dict[str, bytes]) -> None:
    for proto in protogen.proto_files():
        stem = proto.relative_to(protogen.PROTO_ROOT).with_suffix("").as_posix()
        for suffix in ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi"):
            assert stem + suffix in fresh, f"{stem}{suffix} not generated"


def test_generated_files_are_committed_and_identical(fresh: dict[str, bytes],
                                                     committed: dict[str, bytes]) -> None:
    missing = sorted(set(fresh) - set(committed))
    assert not missing, f"{HINT}; missing: {missing}"
    stale = sorted(rel for rel, data in fresh.items() if committed[rel] != data)
    assert not stale, f"{HINT}; differs: {stale}"


def test_no_committed_generated_file_without_source_proto(fresh: dict[str, bytes],
                                                          committed: dict[str, bytes]) -> None:
    orphans = sorted(set(committed) - set(fresh))
    assert not orphans, f"{HINT}; generated files without a source proto (delete them): {orphans}"


def test_out_root_is_the_services_directory() -> None:
    # The comparison above is only meaningful against the tree the package imports from.
    import sentinel.common.v1.common_pb2 as common_pb2

    assert Path(common_pb2.__file__).resolve().is_relative_to(protogen.OUT_ROOT / "sentinel")
