"""Signing-key rotation without restarts: a new kid is published for a while before any token
carries it, then signing switches to it; verifiers that know both keys accept both."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import jwt
import pytest
from sentinel.platform.auth import Principal, RotatingSigner, TokenVerifier
from sentinel.platform.keys import generate_signing_key

ACTIVATION = 300.0


def age(directory: Path, kid: str, seconds: float) -> None:
    """Pretend the public key was published ``seconds`` ago."""
    then = time.time() - seconds
    os.utime(directory / "public" / f"{kid}.pub.pem", (then, then))


def kid_of(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def signer(directory: Path) -> RotatingSigner:
    return RotatingSigner(directory, directory / "public", issuer="sentinel", audience="sentinel-api",
                          activation_seconds=ACTIVATION, reload_seconds=0)


P = Principal(str(uuid.uuid4()), uuid.uuid4(), "member", session_id="s")


def test_a_new_key_signs_only_after_its_activation_delay(tmp_path: Path) -> None:
    old = generate_signing_key(tmp_path, kid="key-old")
    age(tmp_path, old, 10 * ACTIVATION)
    s = signer(tmp_path)
    before = s.sign(P, ttl_seconds=60)
    assert kid_of(before) == "key-old"

    new = generate_signing_key(tmp_path, kid="key-new")  # published now
    assert kid_of(s.sign(P, ttl_seconds=60)) == "key-old"  # not yet: verifiers may not know it
    verifier = TokenVerifier.from_directory(tmp_path / "public", issuer="sentinel", audience="sentinel-api")
    assert set(verifier.keys) == {"key-old", "key-new"}  # but it is already published

    age(tmp_path, new, ACTIVATION + 1)
    token = s.sign(P, ttl_seconds=60)
    assert kid_of(token) == "key-new"
    assert verifier.verify(token).subject == P.subject
    assert verifier.verify(before).subject == P.subject  # tokens of the old key still verify


def test_a_fresh_install_signs_with_its_only_key_at_once(tmp_path: Path) -> None:
    generate_signing_key(tmp_path, kid="key-first")
    assert kid_of(signer(tmp_path).sign(P, ttl_seconds=60)) == "key-first"


def test_a_private_key_without_its_public_half_never_signs(tmp_path: Path) -> None:
    old = generate_signing_key(tmp_path, kid="key-old")
    age(tmp_path, old, 10 * ACTIVATION)
    generate_signing_key(tmp_path, kid="key-unpublished")
    (tmp_path / "public" / "key-unpublished.pub.pem").unlink()
    assert kid_of(signer(tmp_path).sign(P, ttl_seconds=60)) == "key-old"
    (tmp_path / "public" / "key-old.pub.pem").unlink()
    with pytest.raises(ValueError, match="public key"):
        signer(tmp_path)
