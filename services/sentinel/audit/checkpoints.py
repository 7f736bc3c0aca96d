"""Signed checkpoints: the audit service's Ed25519 signature over a tenant's chain head.

A checkpoint says "at ``create_time`` the chain of ``tenant_id`` ended at ``sequence`` with
``hash``". Whoever holds the public key can check it, so rewriting the chain from some point on
(recomputing every later hash) no longer verifies: the signed head does not match. The signed
bytes are the compact, sorted-key JSON of those four fields (``create_time`` in RFC 3339 UTC with
microseconds); the signature is base64.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import text

from sentinel.audit import chain, store
from sentinel.platform import db
from sentinel.platform.auth import PLATFORM_TENANT_ID

log = logging.getLogger("sentinel.audit.checkpoints")
_TENANTS = text("SELECT id FROM tenants ORDER BY id")
_LAST = text("SELECT max(sequence) FROM audit_checkpoints WHERE tenant_id = sentinel_tenant_id()")
_INSERT = text("INSERT INTO audit_checkpoints (tenant_id, sequence, hash, create_time, key_id, signature) "
               "VALUES (:tenant_id, :sequence, :hash, :create_time, :key_id, :signature) ON CONFLICT DO NOTHING")
_LIST = text("SELECT tenant_id, sequence, hash, create_time, key_id, signature FROM audit_checkpoints "
             "WHERE tenant_id = sentinel_tenant_id() ORDER BY sequence")


def signed_bytes(cp: Mapping[str, Any]) -> bytes:
    when = cp["create_time"]
    body = {"tenant_id": str(cp["tenant_id"]), "sequence": int(cp["sequence"]), "hash": str(cp["hash"]),
            "create_time": chain.rfc3339(when) if isinstance(when, dt.datetime) else str(when)}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


class CheckpointSigner:
    def __init__(self, key_id: str, key: Ed25519PrivateKey) -> None:
        self.key_id = key_id
        self._key = key

    @classmethod
    def from_file(cls, path: Path) -> CheckpointSigner:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: not an Ed25519 private key")
        return cls(path.name.removesuffix(".key.pem"), key)

    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    def sign(self, tenant_id: uuid.UUID, sequence: int, head_hash: str) -> dict[str, Any]:
        cp: dict[str, Any] = {"tenant_id": str(tenant_id), "sequence": sequence, "hash": head_hash,
                              "create_time": dt.datetime.now(dt.UTC), "key_id": self.key_id}
        cp["signature"] = base64.b64encode(self._key.sign(signed_bytes(cp))).decode()
        return cp


def load_public_key(path: Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an Ed25519 public key")
    return key


def authentic(cp: Mapping[str, Any], key: Ed25519PublicKey) -> bool:
    try:
        key.verify(base64.b64decode(str(cp["signature"])), signed_bytes(cp))
    except (InvalidSignature, ValueError, KeyError):
        return False
    return True


def trusted_heads(checkpoints: Iterable[Mapping[str, Any]], key: Ed25519PublicKey | None) -> dict[int, str]:
    """sequence → hash of the checkpoints whose signature holds (all of them without a key: unchecked)."""
    return {int(cp["sequence"]): str(cp["hash"]) for cp in checkpoints if key is None or authentic(cp, key)}


async def checkpoint_all(signer: CheckpointSigner) -> int:
    """Sign the head of every tenant whose chain grew since its last checkpoint. Returns how many."""
    async with db.unit_of_work(tenant_id=PLATFORM_TENANT_ID, platform=True) as session:
        tenants = list(await session.scalars(_TENANTS))
    made = 0
    for tenant_id in tenants:
        async with db.unit_of_work(tenant_id=tenant_id, platform=False) as session:
            sequence, head_hash = await store.head(session)
            last = await session.scalar(_LAST)
            if sequence == 0 or (last is not None and int(last) >= sequence):
                continue
            cp = signer.sign(tenant_id, sequence, head_hash)
            await session.execute(_INSERT, dict(cp, tenant_id=tenant_id))
            made += 1
    return made


async def list_for(tenant_id: uuid.UUID) -> list[dict[str, Any]]:
    async with db.unit_of_work(tenant_id=tenant_id, platform=False) as session:
        return [dict(r._mapping, tenant_id=str(r.tenant_id)) for r in await session.execute(_LIST)]
