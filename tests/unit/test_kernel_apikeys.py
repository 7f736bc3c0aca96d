"""API key format: generated keys parse back; anything else is a clean UNAUTHENTICATED."""

from __future__ import annotations

import base64
import uuid

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sentinel.platform import apikeys
from sentinel.platform.auth import PERMISSIONS, SESSION_SELF, Principal
from sentinel.platform.errors import Unauthenticated

uuids = st.uuids()


@given(uuids, uuids)
def test_generated_keys_parse_back(tenant_id: uuid.UUID, key_id: uuid.UUID) -> None:
    key, secret_hash = apikeys.generate(tenant_id, key_id)
    assert key.startswith("snt_") and len(key) == apikeys.KEY_LENGTH
    parsed = apikeys.parse(key)
    assert (parsed.tenant_id, parsed.record_id, parsed.secret_hash) == (tenant_id, key_id, secret_hash)
    assert len(secret_hash) == 32
    assert apikeys.display_prefix(key) == key[:12]


def test_two_keys_never_share_a_secret() -> None:
    t, k = uuid.uuid4(), uuid.uuid4()
    assert len({apikeys.generate(t, k)[1] for _ in range(100)}) == 100


def refused(key: str) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as err:
        apikeys.parse(key)
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED and err.value.reason == "API_KEY_MALFORMED"
    return err.value


@given(st.text(max_size=200))
def test_arbitrary_text_is_refused_cleanly(text: str) -> None:
    refused(text)  # never a crash, never a different error


@given(uuids, uuids, st.integers(min_value=4, max_value=apikeys.KEY_LENGTH - 1), st.characters(
    codec="ascii", categories=["L", "N"]))
def test_any_single_character_change_is_caught(tenant_id: uuid.UUID, key_id: uuid.UUID, position: int,
                                               replacement: str) -> None:
    key, _ = apikeys.generate(tenant_id, key_id)
    changed = key[:position] + replacement + key[position + 1:]
    if changed != key:
        # Either the base64 no longer decodes or the CRC-32 no longer matches: a typo never
        # reaches the database and never authenticates as someone else's key id.
        try:
            parsed = apikeys.parse(changed)
        except Unauthenticated:
            return
        # Base64 has spare bits in the last character; a change there may decode identically.
        assert parsed == apikeys.parse(key)


def test_truncated_padded_and_foreign_prefixes_are_refused() -> None:
    key, _ = apikeys.generate(uuid.uuid4(), uuid.uuid4())
    assert "copy all of it" in refused(key[:-1]).message
    refused(key + "A")
    refused("sk_" + key[3:])
    refused("SNT_" + key[4:])
    raw = bytearray(base64.urlsafe_b64decode(key[4:]))
    raw[-1] ^= 0xFF  # checksum
    refused("snt_" + base64.urlsafe_b64encode(bytes(raw)).decode())


def test_scopes_narrow_a_role_and_never_exceed_it() -> None:
    member = Principal("sa", uuid.uuid4(), "member", kind="service_account", scopes=frozenset({"users.read"}))
    assert member.can("users.read") and not member.can("tenants.read")
    # A scope the role lacks grants nothing, even if it slipped into the key.
    sneaky = Principal("sa", uuid.uuid4(), "viewer", kind="service_account", scopes=frozenset({"users.write"}))
    assert not sneaky.can("users.write")
    assert member.user_id is None  # a service account is not a user
    assert apikeys.grantable_scopes("admin") == PERMISSIONS["admin"] - {SESSION_SELF}
    assert SESSION_SELF not in apikeys.grantable_scopes("viewer")
