"""Schemathesis against the running stack, through Envoy, from the ``/openapi.json`` Envoy serves.

A bounded, deterministic run (Hypothesis ``derandomize``, no shrinking, no example database):
every GET operation plus the writes that cannot change the shared session stack (random ids
name nothing, or random credentials are refused), as the platform administrator; then the
operations with ids again with a well-formed id that names nothing (so the other parameters reach
the lookup instead of the "not a UUID" check), and a few reads with ids that exist (so single
resources are validated too). Each response must not be a 5xx, must have a documented status and
content type, and its body must match the documented schema (``response_schema_conformance``).

Not fuzzed, on purpose: ``Login`` (failed logins are counted per client IP: a few dozen would
lock 127.0.0.1 out for every later test), ``Logout`` and ``ChangePassword`` (they end or change
the admin's session), and the creations (tenants, users, service accounts, keys, invitations,
jobs), which would leave random records in the stack the other integration tests share.

Two adaptations of the document, for schemathesis only: its path templating is Python's
``str.format``, which reads ``{tenant.id}`` as attribute access, so dotted path parameters are
renamed (``{tenant__id}``: the URL it sends is the same); and the security schemes are dropped
so that it sends the admin's bearer token instead of generating credentials of its own.

The bugs the fuzzing found (NUL characters reaching Postgres, update masks the audit log could
not print: 500s) are fixed; the tests at the end pin each of them.
"""

from __future__ import annotations

import collections
import copy
import re
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import requests
import schemathesis
import schemathesis.checks
from hypothesis import HealthCheck, Phase, given, settings
from sentinel.gateway import openapi

pytestmark = pytest.mark.integration

#: Writes that change nothing here: every id is random (so nothing is found), or the secret is.
SAFE_WRITES = (
    "AuthService_RefreshToken",
    "InvitationService_AcceptInvitation",
    "InvitationService_ResendInvitation",
    "InvitationService_RevokeInvitation",
    "TenantService_UpdateTenant",
    "TenantService_UpdateTenant_PUT",
    "TenantService_DeleteTenant",
    "TenantService_SuspendTenant",
    "TenantService_ResumeTenant",
    "TenantService_RestoreTenant",
    "UserService_UpdateUser",
    "UserService_UpdateUser_PUT",
    "UserService_DeleteUser",
    "UserService_RevokeUserSessions",
    "ServiceAccountService_DeleteServiceAccount",
    "ServiceAccountService_RevokeApiKey",
    "SchedulerService_CancelJob",
    "SchedulerService_RunPeriodicJob",
)
READ_EXAMPLES = 40
WRITE_EXAMPLES = 15
ABSENT_ID_EXAMPLES = 10
REAL_RESOURCE_EXAMPLES = 8
#: A well-formed id that names nothing: random strings are mostly refused as "not a UUID" (400),
#: this one gets past validation to the lookup (404), with the other parameters fuzzed.
ABSENT_ID = "5f0c8a4e-9a3b-4c1d-8e2f-6b7a9d0c1e23"
BUDGET_SECONDS = 60.0


@pytest.fixture(scope="module")
def served(http: httpx.Client) -> dict[str, Any]:
    r = http.get("/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
    doc: dict[str, Any] = r.json()
    assert doc == openapi.document()  # what the stack wrote at start is what the code generates
    return doc


def for_schemathesis(doc: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    paths = {}
    for path, item in out["paths"].items():
        for op in item.values():
            op.pop("security", None)
            for p in op.get("parameters", []):
                if p["in"] == "path":
                    p["name"] = p["name"].replace(".", "__")
        paths[re.sub(r"\{([^}]+)\}", lambda m: "{" + m.group(1).replace(".", "__") + "}", path)] = item
    out["paths"] = paths
    out.pop("security", None)
    out["components"].pop("securitySchemes", None)
    return out


# --------------------------------------------------------------------------- the run


@dataclass
class Report:
    examples: collections.Counter[str] = field(default_factory=collections.Counter)
    statuses: dict[str, collections.Counter[int]] = field(default_factory=lambda: collections.defaultdict(
        collections.Counter))
    failures: dict[str, list[str]] = field(default_factory=lambda: collections.defaultdict(list))

    def summary(self) -> str:
        lines = [f"{label}: {dict(sorted(s.items()))}" for label, s in sorted(self.statuses.items())]
        return "\n".join(lines)


def _checks() -> list[Any]:
    schemathesis.checks.load_all_checks()
    c = schemathesis.checks
    return [c.not_a_server_error, c.status_code_conformance, c.content_type_conformance,  # type: ignore[attr-defined]
            c.response_headers_conformance, c.response_schema_conformance]  # type: ignore[attr-defined]


def _fuzz(op: Any, examples: int, base_url: str, headers: dict[str, str], report: Report,
          path_parameters: dict[str, str] | None = None, tag: str = "") -> None:
    label = f"{op.method.upper()} {op.path}" + (f" ({tag})" if tag else "")
    checks = _checks()
    strategy = op.as_strategy(path_parameters=path_parameters) if path_parameters else op.as_strategy()

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case: Any) -> None:
        report.examples[label] += 1
        try:
            response = case.call_and_validate(base_url=base_url, headers=headers, checks=checks, timeout=15)
        except (schemathesis.errors.FailureGroup, AssertionError, requests.RequestException) as exc:
            curl = case.as_curl_command(headers={"authorization": "Bearer $TOKEN"})
            report.failures[label].append(f"{curl}\n{str(exc)[:1200]}")
        else:
            report.statuses[label][response.status_code] += 1

    run()


def _operations(schema: Any) -> dict[str, Any]:
    ops = {}
    for result in schema.get_all_operations():
        op = result.ok()  # a document schemathesis cannot load is a failure of this test
        ops[op.definition.raw["operationId"]] = op
    return ops


def test_schemathesis_finds_no_server_errors_or_schema_violations(
        stack: Any, http: httpx.Client, served: dict[str, Any], admin_headers: dict[str, str]) -> None:
    started = time.monotonic()
    schema = schemathesis.openapi.from_dict(for_schemathesis(served))
    ops = _operations(schema)
    report = Report()
    reads = [op_id for op_id, op in ops.items() if op.method.upper() == "GET"]
    missing = sorted(set(SAFE_WRITES) - set(ops))
    assert not missing, missing
    for op_id in reads:
        _fuzz(ops[op_id], READ_EXAMPLES, stack.rest_url, admin_headers, report)
    for op_id in SAFE_WRITES:
        _fuzz(ops[op_id], WRITE_EXAMPLES, stack.rest_url, admin_headers, report)
    for op_id in [*reads, *SAFE_WRITES]:
        op = ops[op_id]
        names = [p.name for p in op.path_parameters]
        if names and op_id != "SchedulerService_RunPeriodicJob":  # its {name} is no id
            _fuzz(op, ABSENT_ID_EXAMPLES, stack.rest_url, admin_headers, report,
                  path_parameters=dict.fromkeys(names, ABSENT_ID), tag="absent id")

    # Real resources: the same reads with ids that exist, so 200 bodies of single resources are
    # validated too (random ids only ever give 400/404).
    me = http.get("/api/v1/auth/whoami", headers=admin_headers).json()
    events = http.get("/api/v1/audit/events", params={"page_size": 1}, headers=admin_headers).json()["events"]
    real = {"TenantService_GetTenant": {"id": me["tenant_id"]}, "UserService_GetUser": {"id": me["user_id"]}}
    if events:
        real["AuditService_GetAuditEvent"] = {"id": events[0]["id"]}
    for op_id, params in real.items():
        _fuzz(ops[op_id], REAL_RESOURCE_EXAMPLES, stack.rest_url, admin_headers, report, path_parameters=params,
              tag="real ids")
    assert any(200 in s for label, s in report.statuses.items() if label.endswith("(real ids)")), report.summary()

    elapsed = time.monotonic() - started
    total = sum(report.examples.values())
    operations = {label.split(" (")[0] for label in report.examples}
    print(f"\nschemathesis: {len(operations)} operations ({len(report.examples)} runs), {total} examples, "
          f"{elapsed:.1f}s\n{report.summary()}")
    failures = [f"== {label}\n" + "\n\n".join(fs[:3]) for label, fs in report.failures.items()]
    assert not failures, "\n\n".join(failures)
    assert len(reads) >= 20 and total >= 500, report.summary()
    assert elapsed < BUDGET_SECONDS, f"the fuzzing took {elapsed:.1f}s"


# --------------------------------------------------------------------------- bugs the fuzzing found (fixed)


def test_a_nul_in_an_audit_filter_is_400(http: httpx.Client, admin_headers: dict[str, str]) -> None:
    for path in ("/api/v1/audit/events", "/api/v1/audit/events:export"):
        r = http.get(path, params={"filter.action": "a\x00"}, headers=admin_headers)
        assert r.status_code == 400, (path, r.status_code, r.text)


def test_a_nul_in_request_id_is_400(http: httpx.Client, admin_headers: dict[str, str]) -> None:
    r = http.post(f"/api/v1/jobs/{ABSENT_ID}:cancel", json={"request_id": "a\x00"}, headers=admin_headers)
    assert r.status_code == 400, (r.status_code, r.text)


def test_any_update_mask_path_is_400_not_500(http: httpx.Client, admin_headers: dict[str, str]) -> None:
    for path in ("/api/v1/users/x", "/api/v1/tenants/x"):
        r = http.patch(path, params={"update_mask": "a_1"}, json={}, headers=admin_headers)
        assert r.status_code == 400, (path, r.status_code, r.text)


def test_a_nul_in_the_login_email_is_400(http: httpx.Client) -> None:
    r = http.post("/api/v1/auth/login", json={"tenant": "platform", "email": "a\x00@b.example", "password": "x"})
    assert r.status_code in (400, 401), (r.status_code, r.text)
