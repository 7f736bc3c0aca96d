"""Service identity: how one Sentinel service proves itself to another (TENANT_SCOPE_INTERNAL).

Each service holds its own Ed25519 key (``SENTINEL_SERVICE_KEY_FILE``, ``<name>.key.pem``)
and every service trusts the public halves in ``SENTINEL_SERVICE_PUBLIC_KEYS_DIR``
(``<name>.pub.pem``). A service token is a short-lived JWT whose ``kid`` is ``service-<name>``;
the verifier accepts it only as that one service (``sub = service:<name>``, role ``service``)
and only with the internal audience. So a stolen user-signing key cannot mint service tokens,
one service's key cannot impersonate another, and Envoy (whose JWKS holds user keys only)
refuses every service token at the edge.
"""

from __future__ import annotations

import functools
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sentinel.platform.auth import ALGORITHM, PLATFORM_TENANT_ID, TOKEN_LEEWAY_SECONDS, Principal, load_public_keys
from sentinel.platform.errors import Unauthenticated

KID_PREFIX = "service-"
AUDIENCE = "sentinel-internal"
TOKEN_TTL_SECONDS = 300


@functools.lru_cache(maxsize=4096)  # asked on every call; decoding the JWS was ~7 % of a GetUser
def is_service_token(token: str) -> bool:
    try:
        return str(jwt.get_unverified_header(token).get("kid", "")).startswith(KID_PREFIX)
    except jwt.PyJWTError:
        return False


class ServiceTokens:
    """Mints this service's token, re-signed shortly before it expires."""

    def __init__(self, name: str, key: Ed25519PrivateKey, *, issuer: str) -> None:
        self.name = name
        self._key = key
        self._issuer = issuer
        self._token = ""
        self._expires = 0.0

    @classmethod
    def from_file(cls, path: Path, *, issuer: str) -> ServiceTokens:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: not an Ed25519 private key")
        return cls(path.name.removesuffix(".key.pem"), key, issuer=issuer)

    def token(self) -> str:
        now = time.time()
        if now > self._expires - TOKEN_TTL_SECONDS / 3:
            issued = int(now)
            claims: dict[str, Any] = {
                "iss": self._issuer, "aud": AUDIENCE, "sub": f"service:{self.name}",
                "tid": str(PLATFORM_TENANT_ID), "role": "service", "iat": issued, "nbf": issued,
                "exp": issued + TOKEN_TTL_SECONDS, "jti": uuid.uuid4().hex,
            }
            self._token = jwt.encode(claims, self._key, algorithm=ALGORITHM,
                                     headers={"kid": KID_PREFIX + self.name})
            self._expires = issued + TOKEN_TTL_SECONDS
        return self._token

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token()}"),)


class ServiceVerifier:
    """Accepts a service token only as the service its key belongs to."""

    def __init__(self, keys: dict[str, Ed25519PublicKey], *, issuer: str) -> None:
        self._keys = keys
        self._issuer = issuer

    @classmethod
    def from_directory(cls, directory: Path, *, issuer: str) -> ServiceVerifier:
        """``<name>.pub.pem`` files, one per service."""
        return cls(load_public_keys(directory), issuer=issuer)

    def verify(self, token: str) -> Principal:
        invalid = Unauthenticated("the service token is invalid", reason="TOKEN_INVALID")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise invalid from None
        kid = str(header.get("kid", ""))
        name = kid.removeprefix(KID_PREFIX)
        key = self._keys.get(name) if kid.startswith(KID_PREFIX) else None
        if key is None or header.get("alg") != ALGORITHM:
            raise invalid
        try:
            claims = jwt.decode(token, key=key, algorithms=[ALGORITHM], issuer=self._issuer, audience=AUDIENCE,
                                leeway=TOKEN_LEEWAY_SECONDS,
                                options={"require": ["exp", "iat", "sub", "role", "jti"]})
        except jwt.PyJWTError:
            raise invalid from None
        # The key names the service: its token may claim nothing else.
        if claims.get("sub") != f"service:{name}" or claims.get("role") != "service":
            raise invalid
        return Principal(subject=f"service:{name}", tenant_id=PLATFORM_TENANT_ID, role="service",
                         token_id=str(claims["jti"]), kind="service")
