"""JWT signing/verification (EdDSA with kid), bearer parsing, principals and JWKs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sentinel.platform import auth, keys
from sentinel.platform.auth import (
    PLATFORM_TENANT_ID,
    Principal,
    TokenSigner,
    TokenVerifier,
    bearer_token,
    load_public_keys,
    public_jwk,
)
from sentinel.platform.errors import Unauthenticated

ISS, AUD = "sentinel-test", "sentinel-api-test"
TENANT = uuid.UUID("0190f6b4-8a5e-7c3d-9f1a-2b3c4d5e6f70")
USER = "0190f6b4-8a5e-7c3d-9f1a-000000000001"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(obj: dict[str, Any]) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


@pytest.fixture(scope="module")
def private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def signer(private_key: Ed25519PrivateKey) -> TokenSigner:
    return TokenSigner("k1", private_key, issuer=ISS, audience=AUD)


@pytest.fixture
def verifier(signer: TokenSigner) -> TokenVerifier:
    # Function scope: the verifier caches verified tokens.
    return TokenVerifier({"k1": signer.public_key()}, issuer=ISS, audience=AUD)


def principal(**kw: Any) -> Principal:
    base: dict[str, Any] = {"subject": USER, "tenant_id": TENANT, "role": "admin", "session_id": "s-1"}
    base.update(kw)
    return Principal(**base)


def claims(**kw: Any) -> dict[str, Any]:
    now = int(time.time())
    out: dict[str, Any] = {"iss": ISS, "aud": AUD, "sub": USER, "tid": str(TENANT), "role": "admin",
                           "iat": now, "nbf": now, "exp": now + 300, "jti": "j-1", "use": "access"}
    out.update(kw)
    return {k: v for k, v in out.items() if v is not None}


def encode(private_key: Ed25519PrivateKey, payload: dict[str, Any], kid: str = "k1") -> str:
    return jwt.encode(payload, private_key, algorithm="EdDSA", headers={"kid": kid})


def reason_of(verifier: TokenVerifier, token: str, **kw: Any) -> str:
    with pytest.raises(Unauthenticated) as info:
        verifier.verify(token, **kw)
    return info.value.reason


# --------------------------------------------------------------------------- valid tokens


def test_valid_token_gives_principal(signer: TokenSigner, verifier: TokenVerifier) -> None:
    token = signer.sign(principal(token_id="tok-1"), ttl_seconds=60)
    got = verifier.verify(token)
    assert got == Principal(subject=USER, tenant_id=TENANT, role="admin", session_id="s-1", token_id="tok-1")
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "EdDSA"
    assert header["kid"] == "k1"


def test_signer_sets_standard_claims(signer: TokenSigner) -> None:
    token = signer.sign(principal(session_id=""), ttl_seconds=120, use="refresh", extra={"x": 1})
    payload = jwt.decode(token, options={"verify_signature": False})
    assert payload["iss"] == ISS
    assert payload["aud"] == AUD
    assert payload["tid"] == str(TENANT)
    assert payload["use"] == "refresh"
    assert payload["x"] == 1
    assert payload["exp"] - payload["iat"] == 120
    assert "sid" not in payload
    assert len(payload["jti"]) == 32  # a fresh uuid4 hex when the principal has none


def test_jti_is_unique_per_token(signer: TokenSigner) -> None:
    a = jwt.decode(signer.sign(principal(), ttl_seconds=60), options={"verify_signature": False})
    b = jwt.decode(signer.sign(principal(), ttl_seconds=60), options={"verify_signature": False})
    assert a["jti"] != b["jti"]


def test_verifier_accepts_any_known_kid(private_key: Ed25519PrivateKey) -> None:
    new = Ed25519PrivateKey.generate()
    verifier = TokenVerifier({"old": private_key.public_key(), "new": new.public_key()}, issuer=ISS, audience=AUD)
    assert verifier.verify(encode(private_key, claims(), kid="old")).subject == USER
    assert verifier.verify(encode(new, claims(), kid="new")).subject == USER
    # ...but each kid only with its own key.
    assert reason_of(verifier, encode(new, claims(jti="other"), kid="old")) == "TOKEN_INVALID"


def test_small_clock_skew_is_tolerated(private_key: Ed25519PrivateKey, verifier: TokenVerifier) -> None:
    now = int(time.time())
    assert verifier.verify(encode(private_key, claims(exp=now - 2))).subject == USER


# --------------------------------------------------------------------------- rejected tokens


def test_expired_token(signer: TokenSigner, verifier: TokenVerifier) -> None:
    token = signer.sign(principal(), ttl_seconds=-60)
    assert reason_of(verifier, token) == "TOKEN_EXPIRED"


def test_not_yet_valid_token(private_key: Ed25519PrivateKey, verifier: TokenVerifier) -> None:
    now = int(time.time())
    token = encode(private_key, claims(nbf=now + 600, iat=now + 600, exp=now + 900))
    assert reason_of(verifier, token) == "TOKEN_INVALID"


def test_wrong_key_same_kid(verifier: TokenVerifier) -> None:
    token = encode(Ed25519PrivateKey.generate(), claims())
    assert reason_of(verifier, token) == "TOKEN_INVALID"


def test_unknown_kid(private_key: Ed25519PrivateKey, verifier: TokenVerifier) -> None:
    assert reason_of(verifier, encode(private_key, claims(), kid="k2")) == "TOKEN_INVALID"


def test_missing_kid(private_key: Ed25519PrivateKey, verifier: TokenVerifier) -> None:
    token = jwt.encode(claims(), private_key, algorithm="EdDSA")
    assert reason_of(verifier, token) == "TOKEN_INVALID"


def test_alg_none_is_rejected(verifier: TokenVerifier) -> None:
    token = f"{b64json({'alg': 'none', 'typ': 'JWT', 'kid': 'k1'})}.{b64json(claims())}."
    assert reason_of(verifier, token) == "TOKEN_INVALID"
    # Also with the alg spelled oddly, and with a bogus signature part.
    token = f"{b64json({'alg': 'None', 'kid': 'k1'})}.{b64json(claims())}.AAAA"
    assert reason_of(verifier, token) in {"TOKEN_INVALID", "TOKEN_MALFORMED"}


def test_hs256_with_public_key_as_secret_is_rejected(signer: TokenSigner, verifier: TokenVerifier) -> None:
    public = signer.public_key()
    for secret in (
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
    ):
        signing_input = f"{b64json({'alg': 'HS256', 'typ': 'JWT', 'kid': 'k1'})}.{b64json(claims())}"
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        assert reason_of(verifier, f"{signing_input}.{b64url(mac)}") == "TOKEN_INVALID"


def test_tampered_payload_is_rejected(signer: TokenSigner, verifier: TokenVerifier) -> None:
    header, _, sig = signer.sign(principal(), ttl_seconds=60).split(".")
    forged = f"{header}.{b64json(claims(role='platform_admin', tid=str(PLATFORM_TENANT_ID)))}.{sig}"
    assert reason_of(verifier, forged) == "TOKEN_INVALID"


@pytest.mark.parametrize("token", ["", "garbage", "a.b", "a.b.c", "!!!.???.###"])
def test_malformed_token(verifier: TokenVerifier, token: str) -> None:
    assert reason_of(verifier, token) in {"TOKEN_MALFORMED", "TOKEN_INVALID"}


def test_garbage_header_is_malformed(verifier: TokenVerifier) -> None:
    assert reason_of(verifier, "not-a-jwt") == "TOKEN_MALFORMED"


@pytest.mark.parametrize("change", [{"iss": "someone-else"}, {"aud": "other-api"}, {"iss": None}, {"aud": None}])
def test_wrong_issuer_or_audience(private_key: Ed25519PrivateKey, verifier: TokenVerifier,
                                  change: dict[str, Any]) -> None:
    assert reason_of(verifier, encode(private_key, claims(**change))) == "TOKEN_INVALID"


def test_other_issuers_signer_is_rejected(private_key: Ed25519PrivateKey, verifier: TokenVerifier) -> None:
    other = TokenSigner("k1", private_key, issuer=ISS, audience="another-audience")
    assert reason_of(verifier, other.sign(principal(), ttl_seconds=60)) == "TOKEN_INVALID"


def test_refresh_token_cannot_be_used_as_access(signer: TokenSigner, verifier: TokenVerifier) -> None:
    refresh = signer.sign(principal(), ttl_seconds=60, use="refresh")
    assert verifier.verify(refresh, use="refresh").subject == USER
    assert reason_of(verifier, refresh) == "TOKEN_INVALID"
    access = signer.sign(principal(), ttl_seconds=60)
    assert reason_of(verifier, access, use="refresh") == "TOKEN_INVALID"


def test_cache_does_not_leak_between_uses(signer: TokenSigner, verifier: TokenVerifier) -> None:
    refresh = signer.sign(principal(), ttl_seconds=60, use="refresh")
    verifier.verify(refresh, use="refresh")  # now cached for use=refresh
    assert reason_of(verifier, refresh) == "TOKEN_INVALID"


def test_cached_token_expires(private_key: Ed25519PrivateKey, verifier: TokenVerifier,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    now = time.time()
    token = encode(private_key, claims(exp=int(now) + 30))
    assert verifier.verify(token).subject == USER
    monkeypatch.setattr(time, "time", lambda: now + 3600)  # jwt and the cache both read time.time
    assert reason_of(verifier, token) == "TOKEN_EXPIRED"


@pytest.mark.parametrize("missing", ["exp", "iat", "sub", "tid", "role", "jti"])
def test_missing_required_claim(private_key: Ed25519PrivateKey, verifier: TokenVerifier, missing: str) -> None:
    assert reason_of(verifier, encode(private_key, claims(**{missing: None}))) == "TOKEN_INVALID"


def test_tenant_claim_must_be_uuid(private_key: Ed25519PrivateKey, verifier: TokenVerifier) -> None:
    assert reason_of(verifier, encode(private_key, claims(tid="acme"))) == "TOKEN_INVALID"


def test_unauthenticated_code() -> None:
    import grpc

    assert Unauthenticated("x").code is grpc.StatusCode.UNAUTHENTICATED


# --------------------------------------------------------------------------- bearer_token


def test_bearer_token_absent() -> None:
    assert bearer_token([]) is None
    assert bearer_token([("x-request-id", "r"), ("authorization-extra", "Bearer x")]) is None


@pytest.mark.parametrize("value", ["Bearer abc", "bearer abc", "BEARER  abc ", b"Bearer abc"])
def test_bearer_token_present(value: str | bytes) -> None:
    assert bearer_token([("authorization", value)]) == "abc"


@pytest.mark.parametrize("value", ["Basic dXNlcjpwdw==", "Bearer ", "Bearer", "Bearer    ", "abc", "Token abc"])
def test_bearer_token_bad_scheme(value: str) -> None:
    with pytest.raises(Unauthenticated) as info:
        bearer_token([("authorization", value)])
    assert info.value.reason == "TOKEN_MALFORMED"


# --------------------------------------------------------------------------- Principal


def test_principal_permissions() -> None:
    viewer = principal(role="viewer")
    assert viewer.can("users.read")
    assert not viewer.can("users.write")
    assert principal(role="admin").can("users.write")
    assert not principal(role="admin").can("tenants.create")
    assert not principal(role="nonsense").can("users.read")
    assert principal(role="service").can("audit.append")
    assert not principal(role="owner").can("audit.append")


def test_roles_are_ordered_and_cumulative() -> None:
    ordered = sorted(auth.RANK, key=auth.RANK.__getitem__)
    assert ordered == ["viewer", "member", "admin", "owner", "platform_admin"]
    for lower, higher in itertools.pairwise(ordered):
        assert auth.PERMISSIONS[lower] <= auth.PERMISSIONS[higher], (lower, higher)
    assert set(auth.ROLE_NAMES.values()) == set(auth.RANK)


def test_platform_admin_only_in_platform_tenant() -> None:
    assert principal(role="platform_admin", tenant_id=PLATFORM_TENANT_ID).is_platform_admin
    assert not principal(role="platform_admin", tenant_id=TENANT).is_platform_admin
    assert not principal(role="owner", tenant_id=PLATFORM_TENANT_ID).is_platform_admin


def test_principal_user_id_and_service() -> None:
    assert principal().user_id == uuid.UUID(USER)
    svc = principal(subject="service:user", role="service")
    assert svc.user_id is None
    assert svc.is_service
    assert not principal().is_service


# --------------------------------------------------------------------------- keys and JWKs


def test_public_jwk_shape(private_key: Ed25519PrivateKey) -> None:
    jwk = public_jwk("k1", private_key.public_key())
    assert set(jwk) == {"kty", "crv", "x", "kid", "alg", "use"}
    assert (jwk["kty"], jwk["crv"], jwk["kid"], jwk["alg"], jwk["use"]) == ("OKP", "Ed25519", "k1", "EdDSA", "sig")
    assert "=" not in jwk["x"]
    raw = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
    assert len(raw) == 32
    assert raw == private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_public_jwk_verifies_tokens(signer: TokenSigner) -> None:
    jwk = public_jwk(signer.kid, signer.public_key())
    key = jwt.PyJWK(jwk)
    payload = jwt.decode(signer.sign(principal(), ttl_seconds=60), key, algorithms=["EdDSA"], audience=AUD)
    assert payload["sub"] == USER


def _pub_pem(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_load_public_keys(tmp_path: Path) -> None:
    a, b = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    (tmp_path / "key-a.pub.pem").write_bytes(_pub_pem(a.public_key()))
    (tmp_path / "key-b.pub.pem").write_bytes(_pub_pem(b.public_key()))
    (tmp_path / "README.txt").write_text("ignored")
    loaded = load_public_keys(tmp_path)
    assert sorted(loaded) == ["key-a", "key-b"]
    assert _pub_pem(loaded["key-b"]) == _pub_pem(b.public_key())


def test_load_public_keys_rejects_non_ed25519(tmp_path: Path) -> None:
    (tmp_path / "good.pub.pem").write_bytes(_pub_pem(Ed25519PrivateKey.generate().public_key()))
    (tmp_path / "ec.pub.pem").write_bytes(_pub_pem(ec.generate_private_key(ec.SECP256R1()).public_key()))
    with pytest.raises(ValueError, match="not an Ed25519"):
        load_public_keys(tmp_path)


def test_load_public_keys_rejects_empty_dir(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no"):
        load_public_keys(tmp_path)
    (tmp_path / "k.key.pem").write_text("private keys do not count")
    with pytest.raises(ValueError):
        load_public_keys(tmp_path)


def test_generated_key_files_round_trip(tmp_path: Path) -> None:
    kid = keys.generate_signing_key(tmp_path, kid="key-test-1")
    assert kid == "key-test-1"
    assert (tmp_path / f"{kid}.key.pem").stat().st_mode & 0o077 == 0
    signer = TokenSigner.from_file(tmp_path / f"{kid}.key.pem", issuer=ISS, audience=AUD)
    assert signer.kid == kid
    verifier = TokenVerifier(load_public_keys(tmp_path / "public"), issuer=ISS, audience=AUD)
    assert verifier.verify(signer.sign(principal(), ttl_seconds=60)).tenant_id == TENANT


def test_signer_from_file_rejects_non_ed25519(tmp_path: Path) -> None:
    path = tmp_path / "ec.key.pem"
    path.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(ValueError, match="not an Ed25519"):
        TokenSigner.from_file(path, issuer=ISS, audience=AUD)


def test_key_rotation_without_restart(tmp_path: Path) -> None:
    import shutil

    from sentinel.platform.keys import generate_signing_key

    live, staging = tmp_path / "live", tmp_path / "staging"
    old_kid, new_kid = generate_signing_key(live, kid="old"), generate_signing_key(staging, kid="new")
    verifier = TokenVerifier.from_directory(live / "public", issuer=ISS, audience=AUD, reload_seconds=0.05)
    old = TokenSigner.from_file(live / f"{old_kid}.key.pem", issuer=ISS, audience=AUD)
    new = TokenSigner.from_file(staging / f"{new_kid}.key.pem", issuer=ISS, audience=AUD)
    who = Principal("u", uuid.uuid4(), "member", session_id="s")
    old_token, new_token = old.sign(who, ttl_seconds=60), new.sign(who, ttl_seconds=60)
    assert verifier.verify(old_token).subject == "u"
    with pytest.raises(Unauthenticated):
        verifier.verify(new_token)  # not distributed yet

    # Step 1: distribute the new public key; it is accepted and published, the old one still works.
    shutil.copy(staging / "public" / f"{new_kid}.pub.pem", live / "public")
    time.sleep(0.06)
    assert set(verifier.keys) == {"old", "new"}
    assert verifier.verify(new_token).subject == "u"
    assert verifier.verify(old_token).subject == "u"

    # Step 3 (after the old tokens expired): remove the old key; it stops verifying, even cached.
    (live / "public" / f"{old_kid}.pub.pem").unlink()
    time.sleep(0.06)
    with pytest.raises(Unauthenticated):
        verifier.verify(old_token)
    assert set(verifier.keys) == {"new"}

    # A broken directory (all keys gone) keeps the last good set rather than refusing everyone.
    (live / "public" / f"{new_kid}.pub.pem").unlink()
    time.sleep(0.06)
    assert verifier.verify(new_token).subject == "u"
