"""Property tests on token parsing: whatever arrives in ``authorization``, the kernel answers
with a clean UNAUTHENTICATED (or a principal for a genuine token), never another error."""

from __future__ import annotations

import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from sentinel.platform.auth import Principal, TokenSigner, TokenVerifier, bearer_token
from sentinel.platform.errors import Unauthenticated

KEY = Ed25519PrivateKey.generate()
SIGNER = TokenSigner("k1", KEY, issuer="sentinel", audience="sentinel-api")
TENANT = uuid.uuid4()


def verifier() -> TokenVerifier:
    return TokenVerifier({"k1": KEY.public_key()}, issuer="sentinel", audience="sentinel-api")


@given(st.text(max_size=500))
def test_any_text_is_refused_cleanly(text: str) -> None:
    with pytest.raises(Unauthenticated):
        verifier().verify(text)


jwt_like = st.lists(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=",
                            max_size=120), min_size=1, max_size=5).map(".".join)


@given(jwt_like)
def test_jwt_shaped_garbage_is_refused_cleanly(text: str) -> None:
    with pytest.raises(Unauthenticated):
        verifier().verify(text)


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=400), st.integers(min_value=0, max_value=255))
def test_a_genuine_token_with_any_byte_changed_is_refused(position: int, value: int) -> None:
    token = SIGNER.sign(Principal(str(uuid.uuid4()), TENANT, "member", session_id="s"), ttl_seconds=60)
    position %= len(token)
    changed = token[:position] + chr(value % 128) + token[position + 1:]
    v = verifier()
    if changed == token:
        assert v.verify(changed).tenant_id == TENANT
        return
    try:
        principal = v.verify(changed)
    except Unauthenticated:
        return
    # Base64url has spare bits in a segment's last character: such a change may decode to the
    # very same bytes, and then (only then) the same principal comes back.
    assert principal == v.verify(token)


@given(st.text(max_size=200))
def test_authorization_header_parsing_never_crashes(value: str) -> None:
    try:
        token = bearer_token([("authorization", value)])
    except Unauthenticated:
        return
    assert token is not None and token == token.strip() and token
    assert value.partition(" ")[0].lower() == "bearer"
