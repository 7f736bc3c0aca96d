"""Principals, roles and permissions, and JWT signing/verification (EdDSA, ``kid`` rotation).

Every service verifies tokens itself (defence in depth behind Envoy's ``jwt_authn``).
"""

from __future__ import annotations

import base64
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sentinel.common.v1 import common_pb2
from sentinel.platform.errors import Unauthenticated

ALGORITHM = "EdDSA"
log = logging.getLogger("sentinel.auth")
#: The reserved tenant that holds platform administrators (created by the first migration).
PLATFORM_TENANT_ID = uuid.UUID("00000000-0000-7000-8000-000000000001")
PLATFORM_TENANT_SLUG = "platform"

ROLE_NAMES: dict[int, str] = {
    common_pb2.ROLE_VIEWER: "viewer",
    common_pb2.ROLE_MEMBER: "member",
    common_pb2.ROLE_ADMIN: "admin",
    common_pb2.ROLE_OWNER: "owner",
    common_pb2.ROLE_PLATFORM_ADMIN: "platform_admin",
}
ROLE_BY_NAME = {v: k for k, v in ROLE_NAMES.items()}

#: Held by every human role: read and end one's own session (WhoAmI, Logout). Service
#: principals do not hold it; they have no session and no "self" to describe.
SESSION_SELF = "session.self"
#: Clock skew tolerated when checking a token's times.
TOKEN_LEEWAY_SECONDS = 5
_READ = {SESSION_SELF, "tenants.read", "users.read"}
_MANAGE_USERS = _READ | {"users.write", "users.delete", "audit.read", "jobs.read", "jobs.write",
                         "service_accounts.read", "service_accounts.write"}
#: Role → permissions. Ranks order roles for "cannot grant above your own".
PERMISSIONS: dict[str, frozenset[str]] = {
    "viewer": frozenset(_READ),
    "member": frozenset(_READ | {"jobs.read"}),
    "admin": frozenset(_MANAGE_USERS),
    "owner": frozenset(_MANAGE_USERS | {"tenants.write", "audit.export"}),
    "platform_admin": frozenset(
        _MANAGE_USERS
        | {"tenants.write", "tenants.create", "tenants.delete", "tenants.suspend", "audit.export", "jobs.admin"}
    ),
    # Other Sentinel services calling internal RPCs.
    "service": frozenset({"audit.append", "tenants.read"}),
}
RANK = {"viewer": 1, "member": 2, "admin": 3, "owner": 4, "platform_admin": 5}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as proven by a verified token."""

    subject: str  # user id, service account id, or "service:<name>"
    tenant_id: uuid.UUID
    role: str
    session_id: str = ""  # for API keys: the key id (revoked through the same feed)
    token_id: str = ""
    kind: str = "user"  # user | service_account | service
    #: API keys: the permissions the key carries (within its account's role). None: the role's.
    scopes: frozenset[str] | None = None

    @property
    def is_platform_admin(self) -> bool:
        return self.role == "platform_admin" and self.tenant_id == PLATFORM_TENANT_ID

    @property
    def is_service(self) -> bool:
        return self.role == "service"

    def can(self, permission: str) -> bool:
        if self.scopes is not None and permission not in self.scopes:
            return False
        return permission in PERMISSIONS.get(self.role, frozenset())

    @property
    def user_id(self) -> uuid.UUID | None:
        if self.kind != "user":
            return None
        try:
            return uuid.UUID(self.subject)
        except ValueError:
            return None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(kid: str, key: Ed25519PublicKey) -> dict[str, str]:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw), "kid": kid, "alg": ALGORITHM, "use": "sig"}


def load_public_keys(directory: Path) -> dict[str, Ed25519PublicKey]:
    """Load ``<kid>.pub.pem`` files. Old keys stay here until their tokens have expired."""
    keys: dict[str, Ed25519PublicKey] = {}
    for path in sorted(directory.glob("*.pub.pem")):
        key = serialization.load_pem_public_key(path.read_bytes())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{path}: not an Ed25519 public key")
        keys[path.name.removesuffix(".pub.pem")] = key
    if not keys:
        raise ValueError(f"no *.pub.pem keys in {directory}")
    return keys


class TokenVerifier:
    """Verifies access tokens: signature by a known ``kid``, issuer, audience, expiry.

    Verified tokens are cached until they expire (bounded LRU): a client sends the same token
    on every call, and an Ed25519 verification costs more than the rest of a cached read.
    """

    CACHE_SIZE = 4096

    def __init__(self, keys: dict[str, Ed25519PublicKey], *, issuer: str, audience: str,
                 leeway_seconds: int = TOKEN_LEEWAY_SECONDS, directory: Path | None = None,
                 reload_seconds: float = 10.0) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_seconds
        self._cache: OrderedDict[tuple[str, str], tuple[Principal, float]] = OrderedDict()
        # Key rotation without restarts: the directory is read again every reload_seconds, so a
        # new public key is accepted (and published in the JWKS) and a removed one refused.
        self._directory = directory
        self._reload_seconds = reload_seconds
        self._loaded_at = time.monotonic()

    @classmethod
    def from_directory(cls, directory: Path, **kw: Any) -> TokenVerifier:
        return cls(load_public_keys(directory), directory=directory, **kw)

    def reload_if_due(self) -> None:
        if self._directory is None or time.monotonic() - self._loaded_at < self._reload_seconds:
            return
        self._loaded_at = time.monotonic()
        try:
            keys = load_public_keys(self._directory)
        except (OSError, ValueError) as e:  # a half-copied or emptied directory: keep the old keys
            log.error("public keys not reloaded", extra={"error": str(e)})
            return
        if keys.keys() != self._keys.keys():
            log.info("public keys reloaded", extra={"kids": sorted(keys)})
            # A removed key must stop verifying at once, cached tokens included.
            if set(self._keys) - set(keys):
                self._cache.clear()
        self._keys = keys

    @property
    def keys(self) -> dict[str, Ed25519PublicKey]:
        self.reload_if_due()
        return dict(self._keys)

    def verify(self, token: str, *, use: str = "access") -> Principal:
        self.reload_if_due()  # a clock check per call; the directory is read every reload_seconds
        key = (token, use)
        hit = self._cache.get(key)
        if hit is not None:
            if hit[1] + self._leeway < time.time():
                del self._cache[key]
                raise Unauthenticated("the bearer token has expired; log in or refresh", reason="TOKEN_EXPIRED")
            self._cache.move_to_end(key)
            return hit[0]
        principal, expires = self._verify(token, use)
        self._cache[key] = (principal, expires)
        if len(self._cache) > self.CACHE_SIZE:
            self._cache.popitem(last=False)
        return principal

    def _verify(self, token: str, use: str) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("the bearer token is malformed", reason="TOKEN_MALFORMED") from None
        key = self._keys.get(str(header.get("kid", "")))
        # Only EdDSA is accepted: "none", HS256-with-public-key and other confusions fail here.
        if key is None or header.get("alg") != ALGORITHM:
            raise Unauthenticated("the bearer token is not signed by a Sentinel key", reason="TOKEN_INVALID")
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key=key, algorithms=[ALGORITHM], issuer=self._issuer, audience=self._audience,
                leeway=self._leeway, options={"require": ["exp", "iat", "sub", "tid", "role", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the bearer token has expired; log in or refresh",
                                  reason="TOKEN_EXPIRED") from None
        except jwt.PyJWTError:
            raise Unauthenticated("the bearer token is invalid", reason="TOKEN_INVALID") from None
        if claims.get("use", "access") != use:
            raise Unauthenticated("this token cannot be used here", reason="TOKEN_INVALID")
        if claims["role"] == "service":  # only a service's own key (service_identity) grants that role
            raise Unauthenticated("the bearer token is invalid", reason="TOKEN_INVALID")
        try:
            tenant_id = uuid.UUID(str(claims["tid"]))
        except ValueError:
            raise Unauthenticated("the bearer token is invalid", reason="TOKEN_INVALID") from None
        principal = Principal(subject=str(claims["sub"]), tenant_id=tenant_id, role=str(claims["role"]),
                              session_id=str(claims.get("sid", "")), token_id=str(claims["jti"]))
        return principal, float(claims["exp"])


class TokenSigner:
    """Signs tokens with the active Ed25519 key; its ``kid`` is the key file's stem."""

    def __init__(self, kid: str, key: Ed25519PrivateKey, *, issuer: str, audience: str) -> None:
        self.kid = kid
        self._key = key
        self._issuer = issuer
        self._audience = audience

    @classmethod
    def from_file(cls, path: Path, *, issuer: str, audience: str) -> TokenSigner:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: not an Ed25519 private key")
        return cls(path.name.removesuffix(".key.pem"), key, issuer=issuer, audience=audience)

    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    def sign(self, principal: Principal, *, ttl_seconds: int, use: str = "access",
             extra: dict[str, Any] | None = None) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self._issuer, "aud": self._audience, "sub": principal.subject,
            "tid": str(principal.tenant_id), "role": principal.role, "iat": now, "nbf": now,
            "exp": now + ttl_seconds, "jti": principal.token_id or uuid.uuid4().hex, "use": use,
        }
        if principal.session_id:
            claims["sid"] = principal.session_id
        claims.update(extra or {})
        return jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"kid": self.kid})


class RotatingSigner:
    """Signs with the newest key of a directory that every verifier has had long enough.

    ``directory`` holds ``<kid>.key.pem`` files. A key becomes active once its public key has
    been in ``public_dir`` for ``activation_seconds`` (the file's modification time), which must
    cover every service's key reload and Envoy's JWKS cache: a new kid is published before any
    token carries it, and signing switches to it without a restart. Until some key is that
    old (a fresh install) the oldest key signs.
    """

    def __init__(self, directory: Path, public_dir: Path, *, issuer: str, audience: str,
                 activation_seconds: float, reload_seconds: float = 10.0) -> None:
        self._directory = directory
        self._public_dir = public_dir
        self._issuer = issuer
        self._audience = audience
        self._activation = activation_seconds
        self._reload_seconds = reload_seconds
        self._signer: TokenSigner | None = None
        self._checked_at = -float("inf")
        self.current()  # fail at start-up, not at the first login, when no key is usable

    def _choose(self) -> Path:
        published: dict[Path, float] = {}
        for path in self._directory.glob("*.key.pem"):
            public = self._public_dir / f"{path.name.removesuffix('.key.pem')}.pub.pem"
            if public.exists():
                published[path] = public.stat().st_mtime
        if not published:
            raise ValueError(f"no *.key.pem in {self._directory} with its public key in {self._public_dir}")
        ready = [p for p, t in published.items() if time.time() - t >= self._activation]
        if ready:
            return max(ready, key=lambda p: (published[p], p.name))
        return min(published, key=lambda p: (published[p], p.name))

    def current(self) -> TokenSigner:
        if self._signer is None or time.monotonic() - self._checked_at >= self._reload_seconds:
            self._checked_at = time.monotonic()
            try:
                path = self._choose()
            except (OSError, ValueError):
                if self._signer is None:
                    raise
                log.exception("signing keys not re-read; keeping the current key")
                return self._signer
            if self._signer is None or path.name != f"{self._signer.kid}.key.pem":
                self._signer = TokenSigner.from_file(path, issuer=self._issuer, audience=self._audience)
                log.info("signing with key", extra={"kid": self._signer.kid})
        return self._signer

    @property
    def kid(self) -> str:
        return self.current().kid

    def sign(self, principal: Principal, *, ttl_seconds: int, use: str = "access",
             extra: dict[str, Any] | None = None) -> str:
        return self.current().sign(principal, ttl_seconds=ttl_seconds, use=use, extra=extra)


def bearer_token(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    """The token from ``authorization: Bearer <token>``, or None when absent."""
    for key, value in metadata:
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("the authorization header must be 'Bearer <token>'",
                                      reason="TOKEN_MALFORMED")
            return token.strip()
    return None
