"""Per-tenant data keys: what a tenant's sealed data is encrypted with, and what the purge destroys.

Each tenant gets a random 256-bit AES-GCM key the first time something of it is sealed, in
``<SENTINEL_DATA_KEY_DIR>/<tenant-id>.key`` (0640, in a directory only its group enters). The
keys live on the host, **not in Postgres**: a database dump or backup holds only ciphertext, so
once the purge has destroyed the key (overwritten, unlinked, directory synced), every copy of the
tenant's sealed data is unreadable, backups included (crypto-shredding). The key directory must
therefore not be backed up together with the database (docs/offboarding.md).

A sealed blob is ``b"SK1" || 12-byte nonce || ciphertext+tag``; the associated data binds it to
its tenant and record (``tenant/<id>/job-result/<id>``), so a blob copied onto another row or
tenant does not open.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sentinel.platform.config import Settings

MAGIC = b"SK1"
NONCE_BYTES = 12
KEY_BYTES = 32


class DataKeyError(Exception):
    """A sealed blob cannot be opened: its key is gone, or it was altered or moved."""


class DataKeyDestroyed(DataKeyError):
    pass


@dataclass(frozen=True)
class Destroyed:
    """What the purge records (never the key itself)."""

    fingerprint: str  # sha256 of the key, first 32 hex digits: names the key in a receipt ("" if none)
    destroyed: bool  # False: the tenant never had a key (it sealed nothing)


def fingerprint(key: bytes) -> str:
    return hashlib.sha256(b"sentinel data key\0" + key).hexdigest()[:32]


def associated_data(tenant_id: uuid.UUID, kind: str, record_id: uuid.UUID | str) -> bytes:
    return f"tenant/{tenant_id}/{kind}/{record_id}".encode()


class DataKeyStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, tenant_id: uuid.UUID, suffix: str = ".key") -> Path:
        return self.directory / f"{uuid.UUID(str(tenant_id))}{suffix}"  # normalised: no path tricks

    def destroyed(self, tenant_id: uuid.UUID) -> bool:
        return self._path(tenant_id, ".destroyed").exists()

    def _read(self, tenant_id: uuid.UUID) -> bytes | None:
        try:
            key = self._path(tenant_id).read_bytes()
        except FileNotFoundError:
            return None
        if len(key) != KEY_BYTES:
            raise DataKeyError(f"data key of tenant {tenant_id} is damaged ({len(key)} bytes)")
        return key

    def key_for(self, tenant_id: uuid.UUID) -> bytes:
        """The tenant's key, created on first use (two processes racing both get the winner's)."""
        if (key := self._read(tenant_id)) is not None:
            return key
        if self.destroyed(tenant_id):  # a late job of a purged tenant must not start a new key
            raise DataKeyDestroyed(f"the data key of tenant {tenant_id} was destroyed")
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path, key = self._path(tenant_id), secrets.token_bytes(KEY_BYTES)
        partial = path.with_suffix(f".{secrets.token_hex(4)}.tmp")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            # Group-readable whatever the umask: the directory's group (NixOS: sentinel-data-keys,
            # the worker and the scheduler) decides who else reads it; the dev stack's is 0700.
            os.fchmod(fd, 0o640)
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(partial, path)  # atomic, and fails if another process was first
        except FileExistsError:
            pass
        finally:
            partial.unlink()
        _sync_directory(self.directory)
        if self.destroyed(tenant_id):  # destroyed while we were making it
            _erase(self._path(tenant_id))
            _sync_directory(self.directory)
            raise DataKeyDestroyed(f"the data key of tenant {tenant_id} was destroyed")
        winner = self._read(tenant_id)
        assert winner is not None
        return winner

    def seal(self, tenant_id: uuid.UUID, plaintext: bytes, aad: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return MAGIC + nonce + AESGCM(self.key_for(tenant_id)).encrypt(nonce, plaintext, aad)

    def open(self, tenant_id: uuid.UUID, sealed: bytes, aad: bytes) -> bytes:
        if not sealed.startswith(MAGIC) or len(sealed) < len(MAGIC) + NONCE_BYTES + 16:
            raise DataKeyError("not a sealed blob")
        key = self._read(tenant_id)
        if key is None:
            raise DataKeyDestroyed(f"the data key of tenant {tenant_id} no longer exists")
        nonce, body = sealed[len(MAGIC):len(MAGIC) + NONCE_BYTES], sealed[len(MAGIC) + NONCE_BYTES:]
        try:
            return AESGCM(key).decrypt(nonce, body, aad)
        except InvalidTag:
            raise DataKeyError("the sealed blob does not open with its tenant's key (altered or moved)") from None

    def destroy(self, tenant_id: uuid.UUID) -> Destroyed:
        """Overwrite and remove the tenant's key. First a ``.destroyed`` marker holding its
        fingerprint is written: it stops a new key being made, and a repeated call (a purge
        resumed after a crash) reports the same key."""
        path, marker = self._path(tenant_id), self._path(tenant_id, ".destroyed")
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            earlier = marker.read_text().strip()
        except FileNotFoundError:
            earlier = ""
        key = self._read(tenant_id)
        print_ = fingerprint(key) if key is not None else earlier
        partial = marker.with_suffix(f".{secrets.token_hex(4)}.tmp")
        partial.write_text(print_ + "\n")
        os.replace(partial, marker)
        if key is not None:
            _erase(path)
        _sync_directory(self.directory)
        return Destroyed(fingerprint=print_, destroyed=bool(print_))


def _erase(path: Path) -> None:
    """Overwrite the key's bytes in place (the filesystem may keep old blocks; the key never
    leaves this host), then remove the file."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        return  # another purge worker was as quick
    try:
        os.write(fd, b"\0" * KEY_BYTES)
        os.fsync(fd)
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def store_for(settings: Settings) -> DataKeyStore | None:
    return DataKeyStore(settings.data_key_dir) if settings.data_key_dir else None


async def seal_record(settings: Settings, tenant_id: uuid.UUID, kind: str, record_id: uuid.UUID,
                      plaintext: bytes) -> tuple[bytes, bool]:
    """``(stored bytes, sealed?)``: sealed with the tenant's key when a key directory is set."""
    store = store_for(settings)
    if store is None:
        return plaintext, False
    aad = associated_data(tenant_id, kind, record_id)
    return await asyncio.to_thread(store.seal, tenant_id, plaintext, aad), True


async def open_record(settings: Settings, tenant_id: uuid.UUID, kind: str, record_id: uuid.UUID,
                      stored: bytes, sealed: bool) -> bytes:
    if not sealed:
        return stored
    store = store_for(settings)
    if store is None:
        raise DataKeyError("this record is sealed but SENTINEL_DATA_KEY_DIR is not set")
    return await asyncio.to_thread(store.open, tenant_id, stored, associated_data(tenant_id, kind, record_id))
