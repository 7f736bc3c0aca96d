"""Token-signing keys on disk: ``<kid>.key.pem`` (private, 0600) and ``public/<kid>.pub.pem``.

Rotation: generate a new key and hand its public half to every service first (they accept
every key in the directory); the user service signs with it once it has been published for
the activation delay (``RotatingSigner``); delete the old pair after the longest token
lifetime has passed.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def new_kid() -> str:
    return f"key-{dt.datetime.now(dt.UTC):%Y%m%d}-{secrets.token_hex(3)}"


def generate_signing_key(directory: Path, *, kid: str | None = None) -> str:
    kid = kid or new_kid()
    if not kid.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"invalid key id {kid!r}")
    key = Ed25519PrivateKey.generate()
    (directory / "public").mkdir(parents=True, exist_ok=True)
    private = directory / f"{kid}.key.pem"
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    (directory / "public" / f"{kid}.pub.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return kid
