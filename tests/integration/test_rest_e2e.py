"""The REST flow of the README, end to end through Envoy (transcoding, JWT at the edge)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.integration

OWNER_PASSWORD = "owner password 123"


def test_health_is_public_and_reports_every_service(http: httpx.Client) -> None:
    r = http.get("/api/v1/health")
    assert r.status_code == 200
    body = r.json()
    names = {c["name"]: c for c in body["components"]}
    assert {"service:tenant", "service:user", "service:audit", "service:scheduler", "database"} <= set(names)
    assert names["database"]["status"] == "SERVING_STATUS_SERVING"
    for service in ("tenant", "user", "audit", "scheduler"):
        assert names[f"service:{service}"]["status"] == "SERVING_STATUS_SERVING", names


def test_login_shape_and_generic_failure(http: httpx.Client, stack: Any) -> None:
    r = http.post("/api/v1/auth/login", json={"tenant": "platform", "email": stack.admin_email,
                                              "password": stack.admin_password})
    body = r.json()
    assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer" and int(body["expires_in"]) == 600
    wrong = http.post("/api/v1/auth/login", json={"tenant": "platform", "email": stack.admin_email,
                                                  "password": "not the password"})
    unknown = http.post("/api/v1/auth/login", json={"tenant": "platform", "email": "ghost@example.com",
                                                    "password": "not the password"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert wrong.json()["code"] == 16


def test_jwks_published(http: httpx.Client, admin_headers: dict[str, str]) -> None:
    keys = http.get("/.well-known/jwks.json").json()["keys"]
    assert keys and all(k["kty"] == "OKP" and k["crv"] == "Ed25519" and k["alg"] == "EdDSA" for k in keys)
    import jwt

    kid = jwt.get_unverified_header(admin_headers["authorization"].split()[1])["kid"]
    assert kid in {k["kid"] for k in keys}


def test_tenant_and_user_lifecycle(http: httpx.Client, admin_headers: dict[str, str]) -> None:
    slug = f"acme-{uuid.uuid4().hex[:6]}"
    r = http.post("/api/v1/tenants", json={"slug": slug, "display_name": "Acme Inc"}, headers=admin_headers)
    assert r.status_code == 200, r.text
    tenant = r.json()["tenant"]  # responses wrap the resource: {"tenant": {...}}
    assert tenant["slug"] == slug and tenant["state"] == "TENANT_STATE_ACTIVE" and "create_time" in tenant
    tid = tenant["id"]

    assert http.post("/api/v1/tenants", json={"slug": slug, "display_name": "again"},
                     headers=admin_headers).status_code == 409
    listed = http.get("/api/v1/tenants", params={"page_size": 1000}, headers=admin_headers).json()
    assert tid in {t["id"] for t in listed["tenants"]} and "next_page_token" in listed
    assert http.get(f"/api/v1/tenants/{tid}", headers=admin_headers).json()["tenant"]["display_name"] == "Acme Inc"

    patched = http.patch(f"/api/v1/tenants/{tid}", json={"display_name": "Acme Corp", "etag": tenant["etag"]},
                         headers=admin_headers)
    assert patched.status_code == 200 and patched.json()["tenant"]["display_name"] == "Acme Corp"
    stale = http.patch(f"/api/v1/tenants/{tid}", json={"display_name": "Stale", "etag": tenant["etag"]},
                       headers=admin_headers)
    assert stale.status_code == 409 and stale.json()["code"] == 10  # ABORTED
    put = http.put(f"/api/v1/tenants/{tid}", json={"display_name": "Acme Put"}, headers=admin_headers)
    assert put.status_code == 200 and put.json()["tenant"]["display_name"] == "Acme Put"

    owner = http.post("/api/v1/users", json={"tenant_id": tid, "email": f"owner@{slug}.example.com",
                                             "password": OWNER_PASSWORD, "role": "ROLE_OWNER"},
                      headers=admin_headers)
    assert owner.status_code == 200, owner.text
    assert owner.json()["user"]["tenant_id"] == tid and "password" not in owner.text

    login = http.post("/api/v1/auth/login", json={"tenant": slug, "email": f"owner@{slug}.example.com",
                                                  "password": OWNER_PASSWORD})
    owner_headers = {"authorization": f"Bearer {login.json()['access_token']}"}
    member = http.post("/api/v1/users", json={"email": f"m@{slug}.example.com", "password": OWNER_PASSWORD,
                                              "display_name": "Member"}, headers=owner_headers)
    assert member.status_code == 200 and member.json()["user"]["role"] == "ROLE_MEMBER"
    mid = member.json()["user"]["id"]
    users = http.get("/api/v1/users", headers=owner_headers).json()["users"]
    assert {u["id"] for u in users} == {owner.json()["user"]["id"], mid}
    assert http.patch(f"/api/v1/users/{mid}", json={"display_name": "Renamed"},
                      headers=owner_headers).json()["user"]["display_name"] == "Renamed"
    # Owners manage users but not tenants.
    assert http.post("/api/v1/tenants", json={"slug": f"x-{slug}", "display_name": "x"},
                     headers=owner_headers).status_code == 403
    assert http.delete(f"/api/v1/users/{mid}", headers=owner_headers).status_code == 200
    gone = http.get(f"/api/v1/users/{mid}", headers=owner_headers)
    assert gone.status_code == 404 and gone.json()["code"] == 5 and mid in gone.json()["message"]

    # DELETE starts the grace period (issue 2): the tenant is pending deletion and its users are out.
    assert http.delete(f"/api/v1/tenants/{tid}", headers=admin_headers).status_code == 200
    pending = http.get(f"/api/v1/tenants/{tid}", headers=admin_headers).json()["tenant"]
    assert pending["state"] == "TENANT_STATE_PENDING_DELETION" and pending["purge_time"] > pending["delete_time"]
    refused = http.get("/api/v1/users", headers=owner_headers)
    assert refused.status_code == 400 and "pending deletion" in refused.json()["message"], refused.text


def test_pagination_walks_every_row_once(http: httpx.Client, admin_headers: dict[str, str]) -> None:
    slug = f"pages-{uuid.uuid4().hex[:6]}"
    tid = http.post("/api/v1/tenants", json={"slug": slug, "display_name": "Pages"},
                    headers=admin_headers).json()["tenant"]["id"]
    created = set()
    for i in range(7):
        r = http.post("/api/v1/users", json={"tenant_id": tid, "email": f"u{i}@{slug}.example.com",
                                             "password": OWNER_PASSWORD}, headers=admin_headers)
        created.add(r.json()["user"]["id"])
    seen: list[str] = []
    token = ""
    for _ in range(10):
        page = http.get("/api/v1/users", params={"tenant_id": tid, "page_size": 3, "page_token": token},
                        headers=admin_headers).json()
        seen += [u["id"] for u in page["users"]]
        token = page["next_page_token"]
        if not token:
            break
    assert sorted(seen) == sorted(created) and len(seen) == len(set(seen))
    tampered = http.get("/api/v1/users", params={"tenant_id": tid, "page_token": "x" + token[1:] if token else "xx"},
                        headers=admin_headers)
    assert tampered.status_code == 400


def test_idempotency_key_replays_first_response(http: httpx.Client, admin_headers: dict[str, str]) -> None:
    slug = f"idem-{uuid.uuid4().hex[:6]}"
    key = uuid.uuid4().hex
    headers = {**admin_headers, "idempotency-key": key}
    first = http.post("/api/v1/tenants", json={"slug": slug, "display_name": "Idem"}, headers=headers)
    again = http.post("/api/v1/tenants", json={"slug": slug, "display_name": "Idem"}, headers=headers)
    assert first.status_code == again.status_code == 200 and first.json() == again.json()
    other = http.post("/api/v1/tenants", json={"slug": slug + "x", "display_name": "Other"}, headers=headers)
    assert other.status_code == 409 and other.json()["code"] == 10


def test_requests_without_valid_token_are_refused_at_the_edge(http: httpx.Client) -> None:
    r = http.get("/api/v1/users")
    assert r.status_code == 401 and r.json()["code"] == 16
    assert "server" not in {k.lower() for k in r.headers if r.headers[k] == "envoy"}
    assert r.headers.get("x-request-id")


def test_users_me_is_the_caller(http: httpx.Client, admin_headers: dict[str, str]) -> None:
    me = http.get("/api/v1/users/me", headers=admin_headers)
    assert me.status_code == 200, me.text
    user = me.json()["user"]
    assert user["role"] == "ROLE_PLATFORM_ADMIN" and "password" not in me.text
    # The literal path wins over /users/{id}: the same user by id.
    assert http.get(f"/api/v1/users/{user['id']}", headers=admin_headers).json()["user"] == user
    assert http.get("/api/v1/users/me").status_code == 401
