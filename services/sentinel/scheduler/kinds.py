"""What each kind of on-demand job accepts and does.

A kind validates its parameters when the job is created (a bad job is refused with
INVALID_ARGUMENT, never queued) and runs inside the one transaction, bound to the job's
tenant, that also stores its result and marks it SUCCEEDED: a job's effect (users imported,
a result stored) is committed together with its success or not at all, so a job retried after
a crash never applies twice. Jobs run in the worker with the platform's own database access,
under RLS like every request: a job reads and writes its tenant only.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from sentinel.platform import auditlog
from sentinel.platform.config import Settings
from sentinel.platform.errors import FieldViolation, InvalidArgument


class JobFailed(Exception):
    """The job cannot succeed however often it is tried (bad input): FAILED, not retried."""


@dataclass(frozen=True)
class Output:
    content: bytes
    content_type: str
    #: A few figures shown on the job (``summary``) and recorded in the audit event.
    summary: dict[str, Any]


@dataclass(frozen=True)
class Context:
    tenant_id: uuid.UUID
    job_id: uuid.UUID
    params: Mapping[str, Any]
    settings: Settings
    attempt: int = 1

    async def progress(self, percent: int) -> None:
        """Show how far the job is (0-99; 100 comes with SUCCEEDED). Written in its own short
        transaction, so readers see it while the job's own transaction is still open."""
        from sentinel.platform import db

        async with db.unit_of_work(tenant_id=self.tenant_id, platform=False) as session:
            await session.execute(_PROGRESS, {"id": self.job_id, "attempt": self.attempt,
                                              "percent": max(0, min(int(percent), 99))})


_PROGRESS = text("UPDATE jobs SET progress_percent = :percent, update_time = now() "
                 "WHERE id = :id AND state = 'running' AND attempts = :attempt")


Run = Callable[[Context, AsyncSession], Awaitable[Output]]


@dataclass(frozen=True)
class Kind:
    name: str
    #: Allowed parameters and whether each is required.
    params: Mapping[str, bool]
    run: Run
    check: Callable[[Mapping[str, Any]], list[FieldViolation]] = lambda params: []
    #: Confidential parameters (a CSV of password hashes): kept out of ``jobs.params``, of the API
    #: and of the audit trail, stored sealed in ``jobs.input`` until the job ends.
    sealed: frozenset[str] = frozenset()


def describe(name: str, value: Any) -> str:
    """What is shown of a confidential parameter: its size, never its content."""
    size = len(value.encode()) if isinstance(value, str) else len(json.dumps(value).encode())
    return f"[{name}, {size} bytes]"


def split_input(kind: Kind | None, params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(shown, confidential)``: the parameters with each confidential one described, and those
    alone. A kind nobody knows (a refused request) has every parameter treated as confidential."""
    secret = {k: v for k, v in params.items() if kind is None or k in kind.sealed}
    return {k: describe(k, v) if k in secret else v for k, v in params.items()}, secret


def validate(kind: Kind, params: Mapping[str, Any]) -> dict[str, Any]:
    violations = [FieldViolation(f"params.{k}", "unknown parameter") for k in params if k not in kind.params]
    violations += [FieldViolation(f"params.{k}", "is required") for k, required in kind.params.items()
                   if required and k not in params]
    violations += kind.check(params)
    if violations:
        raise InvalidArgument(f"invalid parameters for a {kind.name} job: {violations[0].field} "
                              f"{violations[0].description}", violations)
    return dict(params)


# --------------------------------------------------------------------------- audit export


async def audit_export(ctx: Context, session: AsyncSession) -> Output:
    """The tenant's whole chain with its checkpoints, as ``sentinel audit export`` writes it:
    ``sentinel audit verify`` checks the downloaded file offline."""
    from sentinel.audit import ndjson, store

    total = max((await store.head(session))[0], 1)
    lines: list[str] = []
    size, shown = 0, 0
    async for text_line in ndjson.export_lines(ctx.tenant_id):
        size += len(text_line)
        done = len(lines) * 100 // total
        if done >= shown + 10:  # every tenth of the chain
            shown = done
            await ctx.progress(done)
        if size > ctx.settings.job_max_result_bytes:
            raise JobFailed(f"the export is larger than {ctx.settings.job_max_result_bytes} bytes "
                            "(SENTINEL_JOB_MAX_RESULT_BYTES); ask an operator for `sentinel audit export`")
        lines.append(text_line)
    events = sum(1 for x in lines if not x.startswith('{"checkpoint"'))
    return Output("".join(lines).encode(), "application/x-ndjson",
                  {"events": events, "checkpoints": len(lines) - events})


# --------------------------------------------------------------------------- tenant export


async def tenant_export(ctx: Context, session: AsyncSession) -> Output:
    """Everything the tenant owns, as one JSON document, without any secret (no password hashes,
    key hashes or invitation tokens)."""
    from sentinel.tenant.models import Tenant
    from sentinel.user.models import ApiKey, Invitation, ServiceAccount, User

    def plain(row: Any, *, leave_out: tuple[str, ...] = ()) -> dict[str, Any]:
        out = {}
        for column in row.__table__.columns:
            if column.name in leave_out:
                continue
            value = getattr(row, column.key)
            out[column.name] = value.isoformat() if hasattr(value, "isoformat") else (
                str(value) if isinstance(value, uuid.UUID) else value)
        return out

    tenant = await session.get(Tenant, ctx.tenant_id)
    assert tenant is not None  # RLS-bound to the job's own tenant, which exists
    document = {
        "tenant": plain(tenant),
        "users": [plain(u, leave_out=("password_hash",)) for u in await session.scalars(
            select(User).order_by(User.create_time, User.id))],
        "service_accounts": [plain(a) for a in await session.scalars(
            select(ServiceAccount).order_by(ServiceAccount.create_time, ServiceAccount.id))],
        "api_keys": [plain(k, leave_out=("secret_hash",)) for k in await session.scalars(
            select(ApiKey).order_by(ApiKey.create_time, ApiKey.id))],
        "invitations": [plain(i, leave_out=("token_hash",)) for i in await session.scalars(
            select(Invitation).order_by(Invitation.create_time, Invitation.id))],
    }
    content = json.dumps(document, indent=1, sort_keys=True).encode()
    if len(content) > ctx.settings.job_max_result_bytes:
        raise JobFailed(f"the export is larger than {ctx.settings.job_max_result_bytes} bytes")
    return Output(content, "application/json", {key: len(value) for key, value in document.items()
                                                if isinstance(value, list)})


# --------------------------------------------------------------------------- user import

MAX_CSV_BYTES = 5 * 1024 * 1024


def _check_csv(params: Mapping[str, Any]) -> list[FieldViolation]:
    from sentinel.user.importer import ImportRefused, parse

    data = params.get("csv")
    if not isinstance(data, str) or not data.strip():
        return [FieldViolation("params.csv", "must be the CSV text")]
    if len(data.encode()) > MAX_CSV_BYTES:
        return [FieldViolation("params.csv", f"at most {MAX_CSV_BYTES} bytes")]
    try:
        parse(data)
    except ImportRefused as e:
        return [FieldViolation("params.csv", p) for p in e.problems[:20]]
    return []


async def user_import(ctx: Context, session: AsyncSession) -> Output:
    """Users from a CSV (``email,display_name,role,password_hash``, as ``sentinel admin
    import-users``): all of them in the job's transaction, or none."""
    from sentinel.user.importer import ImportRefused, insert_rows, parse

    try:
        rows = parse(str(ctx.params["csv"]))
        await ctx.progress(10)
        imported = await insert_rows(session, ctx.settings, ctx.tenant_id, rows)
    except ImportRefused as e:
        raise JobFailed("; ".join(e.problems[:5])) from None
    report = {"imported": imported}
    return Output(json.dumps(report).encode(), "application/json", report)


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("audit_export", {}, audit_export),
    Kind("tenant_export", {}, tenant_export),
    Kind("user_import", {"csv": True}, user_import, _check_csv, sealed=frozenset({"csv"})),
)}


def _audited_create_job(request: dict[str, Any]) -> dict[str, Any]:
    """A CreateJob request as its audit events record it (refusals included): confidential
    parameters described, not copied into the tenant's permanent chain."""
    name = str(request.get("kind", "")).removeprefix("JOB_KIND_").lower()
    params = request.get("params")
    if isinstance(params, dict):
        request = {**request, "params": split_input(KINDS.get(name), params)[0]}
    return request


auditlog.DESCRIBE_REQUEST["sentinel.scheduler.v1.CreateJobRequest"] = _audited_create_job
