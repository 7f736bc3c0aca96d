"""Opaque credentials that name their tenant: API keys (``snt_``) and invitation tokens (``sti_``).

A credential is a short prefix followed by the URL-safe base64 of 60 bytes: tenant id (16),
record id (16), random secret (24) and a CRC-32 of those 56 (4). The tenant inside makes the
lookup an ordinary tenant-bound query under RLS; the checksum turns typos and truncated copies
into a clear "malformed" without a database round trip (it is not a security measure: the
secret is). Only the SHA-256 of the secret is stored: 192 random bits need no slow hash.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass

from sentinel.platform.errors import Unauthenticated

_SECRET_BYTES = 24
_RAW_BYTES = 16 + 16 + _SECRET_BYTES + 4
ENCODED_LENGTH = len(base64.urlsafe_b64encode(bytes(_RAW_BYTES)))


@dataclass(frozen=True, slots=True)
class Parsed:
    tenant_id: uuid.UUID
    record_id: uuid.UUID
    secret_hash: bytes


def hash_secret(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


def generate(prefix: str, tenant_id: uuid.UUID, record_id: uuid.UUID) -> tuple[str, bytes]:
    """A new credential's text (shown once) and the hash to store."""
    secret = secrets.token_bytes(_SECRET_BYTES)
    body = tenant_id.bytes + record_id.bytes + secret
    raw = body + binascii.crc32(body).to_bytes(4, "big")
    return prefix + base64.urlsafe_b64encode(raw).decode(), hash_secret(secret)


def parse(text: str, *, prefix: str, what: str, reason: str) -> Parsed:
    """Split a credential; anything that is not a well-formed one is UNAUTHENTICATED(reason)."""
    malformed = Unauthenticated(f"the {what} is malformed; copy all of it ({prefix}..., "
                                f"{len(prefix) + ENCODED_LENGTH} characters)", reason=reason)
    if len(text) != len(prefix) + ENCODED_LENGTH or not text.startswith(prefix):
        raise malformed
    try:
        raw = base64.urlsafe_b64decode(text[len(prefix):].encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise malformed from None
    body, crc = raw[:-4], raw[-4:]
    if len(raw) != _RAW_BYTES or not hmac.compare_digest(binascii.crc32(body).to_bytes(4, "big"), crc):
        raise malformed
    return Parsed(uuid.UUID(bytes=body[:16]), uuid.UUID(bytes=body[16:32]), hash_secret(body[32:]))
