"""Per-tenant data keys: sealing binds a blob to its tenant and record, destruction is final."""

from __future__ import annotations

import os
import stat
import threading
import uuid
from pathlib import Path

import pytest
from sentinel.platform import datakeys
from sentinel.platform.datakeys import DataKeyDestroyed, DataKeyError, DataKeyStore

A, B = uuid.uuid4(), uuid.uuid4()


def aad(tenant: uuid.UUID, record: str = "r1") -> bytes:
    return datakeys.associated_data(tenant, "job-result", record)


def test_a_sealed_blob_opens_only_for_its_tenant_and_record(tmp_path: Path) -> None:
    store = DataKeyStore(tmp_path / "keys")
    blob = store.seal(A, b"users: alice@example.com", aad(A))
    assert b"alice" not in blob and blob.startswith(datakeys.MAGIC)
    assert store.open(A, blob, aad(A)) == b"users: alice@example.com"
    with pytest.raises(DataKeyError, match="altered or moved"):
        store.open(A, blob, aad(A, "r2"))  # copied onto another record
    store.seal(B, b"x", aad(B))
    with pytest.raises(DataKeyError, match="altered or moved"):
        store.open(B, blob, aad(A))  # B's key does not open A's blob
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(DataKeyError, match="altered or moved"):
        store.open(A, tampered, aad(A))
    with pytest.raises(DataKeyError, match="not a sealed blob"):
        store.open(A, b"plain text", aad(A))


def test_keys_are_files_only_the_directory_s_group_reads_one_per_tenant(tmp_path: Path) -> None:
    store = DataKeyStore(tmp_path / "keys")
    store.seal(A, b"x", aad(A))
    key = tmp_path / "keys" / f"{A}.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o640 and len(key.read_bytes()) == datakeys.KEY_BYTES
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert store.key_for(A) == key.read_bytes()  # stable
    assert store.key_for(B) != store.key_for(A)
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == sorted([f"{A}.key", f"{B}.key"])


def test_destroying_the_key_makes_every_copy_unreadable_and_stops_a_new_key(tmp_path: Path) -> None:
    store = DataKeyStore(tmp_path / "keys")
    backup = store.seal(A, b"the export", aad(A))  # e.g. in a database backup
    key = store.key_for(A)
    gone = store.destroy(A)
    assert gone.destroyed and gone.fingerprint == datakeys.fingerprint(key) and len(gone.fingerprint) == 32
    assert not (tmp_path / "keys" / f"{A}.key").exists() and store.destroyed(A)
    with pytest.raises(DataKeyDestroyed):
        store.open(A, backup, aad(A))
    with pytest.raises(DataKeyDestroyed):  # a late job of the purged tenant seals nothing
        store.seal(A, b"late", aad(A))
    assert not (tmp_path / "keys" / f"{A}.key").exists()
    # A resumed purge reports the same key; other tenants are untouched.
    assert store.destroy(A) == gone
    store.seal(B, b"b", aad(B))


def test_a_tenant_that_never_sealed_anything_has_no_key_to_destroy(tmp_path: Path) -> None:
    gone = DataKeyStore(tmp_path / "keys").destroy(A)
    assert (gone.destroyed, gone.fingerprint) == (False, "")


def test_racing_processes_agree_on_one_key(tmp_path: Path) -> None:
    keys: list[bytes] = []
    barrier = threading.Barrier(8)

    def make() -> None:
        barrier.wait()
        keys.append(DataKeyStore(tmp_path / "keys").key_for(A))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1 and len(keys) == 8
    assert [p.name for p in (tmp_path / "keys").iterdir()] == [f"{A}.key"]  # no temporary files left


def test_a_damaged_key_is_an_error_not_a_new_key(tmp_path: Path) -> None:
    store = DataKeyStore(tmp_path / "keys")
    blob = store.seal(A, b"x", aad(A))
    path = tmp_path / "keys" / f"{A}.key"
    os.truncate(path, 5)
    with pytest.raises(DataKeyError, match="damaged"):
        store.open(A, blob, aad(A))
    with pytest.raises(DataKeyError, match="damaged"):
        store.key_for(A)
