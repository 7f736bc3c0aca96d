"""Bad input gets a clear 4xx, never a 5xx or a stack trace, and changes nothing."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def admin(admin_headers: dict[str, str]) -> dict[str, str]:
    """The platform administrator's headers (conftest's ``admin_headers``), by a shorter name."""
    return admin_headers


def snapshot(http: httpx.Client, admin: dict[str, str]) -> str:
    tenants = http.get("/api/v1/tenants", params={"page_size": 1000}, headers=admin).json()["tenants"]
    users = http.get("/api/v1/users", params={"page_size": 1000}, headers=admin).json()["users"]
    return json.dumps([sorted((t["id"], t["etag"]) for t in tenants), sorted((u["id"], u["etag"]) for u in users)])


def assert_clear_4xx(r: httpx.Response, status: int | set[int]) -> dict[str, Any]:
    expected = {status} if isinstance(status, int) else status
    assert r.status_code in expected, f"{r.status_code}: {r.text}"
    assert "Traceback" not in r.text and "File \"" not in r.text
    try:
        body: dict[str, Any] = r.json()
    except json.JSONDecodeError:
        pytest.fail(f"error body is not JSON: {r.text!r}")
    assert body.get("message"), body
    return body


BAD_TENANT_BODIES = [
    pytest.param(b'{"slug": "ok-slug", "display_name": ', id="malformed-json"),
    pytest.param(b'["not", "an", "object"]', id="json-array"),
    pytest.param(json.dumps({"slug": 12345, "display_name": "x"}).encode(), id="wrong-type-number"),
    pytest.param(json.dumps({"slug": "ok-slug", "display_name": {"nested": 1}}).encode(), id="wrong-type-object"),
    pytest.param(json.dumps({"slug": "ok-slug", "display_name": "x", "is_admin": True}).encode(),
                 id="unknown-field"),
    pytest.param(json.dumps({"slug": "ok-slug", "display_name": "x" * 10_000}).encode(), id="oversize-field"),
    pytest.param(json.dumps({"slug": "a'; DROP TABLE tenants;--", "display_name": "x"}).encode(),
                 id="sql-in-slug"),
    pytest.param(json.dumps({"slug": "", "display_name": ""}).encode(), id="missing-required"),
    pytest.param(json.dumps({"slug": "ok-slug", "display_name": "x", "plan": "TENANT_PLAN_GOLD"}).encode(),
                 id="unknown-enum"),
    pytest.param(json.dumps({"slug": "ok-slug", "display_name": "tab\there"}).encode(), id="control-char"),
]


@pytest.mark.parametrize("body", BAD_TENANT_BODIES)
def test_bad_create_tenant_bodies(http: httpx.Client, admin: dict[str, str], body: bytes) -> None:
    before = snapshot(http, admin)
    r = http.post("/api/v1/tenants", content=body, headers={**admin, "content-type": "application/json"})
    assert_clear_4xx(r, 400)
    assert snapshot(http, admin) == before


def test_field_violations_name_every_bad_field(http: httpx.Client, admin: dict[str, str]) -> None:
    r = http.post("/api/v1/tenants", json={"slug": "A!", "display_name": ""}, headers=admin)
    body = assert_clear_4xx(r, 400)
    violations = [v for d in body.get("details", []) for v in d.get("field_violations", d.get("fieldViolations", []))]
    assert {v["field"] for v in violations} == {"slug", "display_name"}


def test_sql_metacharacters_are_just_text(http: httpx.Client, admin: dict[str, str]) -> None:
    name = "Robert'); DROP TABLE users;-- \\ % _ $$"
    r = http.post("/api/v1/tenants", json={"slug": f"bobby-{uuid.uuid4().hex[:6]}", "display_name": name},
                  headers=admin)
    assert r.status_code == 200 and r.json()["tenant"]["display_name"] == name
    tid = r.json()["tenant"]["id"]
    assert http.get(f"/api/v1/tenants/{tid}", headers=admin).json()["tenant"]["display_name"] == name
    assert http.get("/api/v1/users", headers=admin).status_code == 200  # the table is still there


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "1", "' OR 1=1 --", "00000000000000000000000000000000",
                                    "{00000000-0000-0000-0000-000000000000}"])
def test_invalid_uuids(http: httpx.Client, admin: dict[str, str], bad_id: str) -> None:
    for method, path in (("GET", "/api/v1/tenants/{}"), ("GET", "/api/v1/users/{}"),
                         ("DELETE", "/api/v1/users/{}"), ("PATCH", "/api/v1/users/{}")):
        kwargs: dict[str, Any] = {"json": {"display_name": "x"}} if method == "PATCH" else {}
        r = http.request(method, path.format(bad_id), headers=admin, **kwargs)
        body = assert_clear_4xx(r, {400, 404})
        if r.status_code == 400:
            assert "UUID" in body["message"]


def test_unknown_query_parameter_and_bad_page_size(http: httpx.Client, admin: dict[str, str]) -> None:
    assert_clear_4xx(http.get("/api/v1/users", params={"is_admin": "true"}, headers=admin), 400)
    assert_clear_4xx(http.get("/api/v1/users", params={"page_size": "-5"}, headers=admin), 400)
    assert_clear_4xx(http.get("/api/v1/users", params={"page_size": "lots"}, headers=admin), 400)


def test_oversize_body_is_refused(http: httpx.Client, admin: dict[str, str]) -> None:
    before = snapshot(http, admin)
    big = json.dumps({"slug": "big-body", "display_name": "x" * (3 * 1024 * 1024)})
    r = http.post("/api/v1/tenants", content=big, headers={**admin, "content-type": "application/json"})
    assert r.status_code in (400, 413), r.status_code
    assert snapshot(http, admin) == before


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def forged_tokens(real: str) -> dict[str, str]:
    header = jwt.get_unverified_header(real)
    claims = jwt.decode(real, options={"verify_signature": False})
    now = int(time.time())
    other_key = Ed25519PrivateKey.generate()
    escalated = {**claims, "role": "platform_admin", "tid": "00000000-0000-7000-8000-000000000001"}
    head, _body, sig = real.split(".")
    return {
        "alg-none": f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': header['kid']})}.{_b64(escalated)}.",
        "wrong-key": jwt.encode(escalated, other_key, algorithm="EdDSA", headers={"kid": header["kid"]}),
        "expired": jwt.encode({**claims, "exp": now - 3600, "iat": now - 7200}, other_key, algorithm="EdDSA",
                              headers={"kid": header["kid"]}),
        "tampered-claims": f"{head}.{_b64(escalated)}.{sig}",
        "hs256": jwt.encode(escalated, "secret-guess", algorithm="HS256", headers={"kid": header["kid"]}),
        "garbage": "not.a.jwt",
    }


@pytest.mark.parametrize("kind", ["alg-none", "wrong-key", "expired", "tampered-claims", "hs256", "garbage"])
def test_forged_tokens_are_refused(http: httpx.Client, admin: dict[str, str], kind: str) -> None:
    token = forged_tokens(admin["authorization"].split()[1])[kind]
    before = snapshot(http, admin)
    for method, path, body in (("GET", "/api/v1/users", None), ("GET", "/api/v1/tenants", None),
                               ("POST", "/api/v1/tenants", {"slug": "forged-x", "display_name": "x"})):
        r = http.request(method, path, json=body, headers={"authorization": f"Bearer {token}"})
        assert_clear_4xx(r, 401)
    assert snapshot(http, admin) == before


async def test_forged_tokens_are_refused_by_services_directly(stack: Any, http: httpx.Client,
                                                               admin: dict[str, str]) -> None:
    """Defence in depth: a direct gRPC caller (no Envoy) meets the same verification."""
    import grpc
    from sentinel.user.v1 import user_service_pb2 as usp
    from sentinel.user.v1 import user_service_pb2_grpc as usg

    async with grpc.aio.insecure_channel(stack.service_target("user")) as channel:
        stub = usg.UserServiceStub(channel)
        for kind, token in forged_tokens(admin["authorization"].split()[1]).items():
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ListUsers(usp.ListUsersRequest(), metadata=(("authorization", f"Bearer {token}"),))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, kind


def test_the_edge_refuses_a_token_once_it_expires_though_it_verified_it_before(
        stack: Any, http: httpx.Client, admin: dict[str, str]) -> None:
    """Envoy caches verified tokens (jwt_cache_config): the cache must not outlive the expiry."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    real = admin["authorization"].split()[1]
    kid = jwt.get_unverified_header(real)["kid"]
    key = load_pem_private_key((stack.keys_dir / f"{kid}.key.pem").read_bytes(), password=None)
    claims = jwt.decode(real, options={"verify_signature": False})
    now = int(time.time())
    short = jwt.encode({**claims, "iat": now, "exp": now + 2}, key, algorithm="EdDSA", headers={"kid": kid})
    headers = {"authorization": f"Bearer {short}"}
    assert http.get("/api/v1/users/me", headers=headers).status_code == 200  # verified, now cached
    time.sleep(2 + 5 + 1.5)  # past the expiry and the edge's 5 s clock skew
    r = http.get("/api/v1/users/me", headers=headers)
    assert r.status_code == 401, r.text
    assert r.json()["message"] == "Jwt is expired"  # refused by Envoy, not only by the service
