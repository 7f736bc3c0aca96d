"""Importing users with their existing password hashes (``sentinel admin import-users``).

For moving accounts from the old stack: a CSV with the header ``email,display_name,role,
password_hash``, where the hash is bcrypt (``$2a$``/``$2b$``/``$2y$``) or argon2id. Nobody has to
reset a password: the imported hash verifies at the next login and is replaced by argon2id
with the current parameters. The whole file is checked first and imported in one
transaction: one bad row, a duplicate or a plan limit exceeded imports nothing.
"""

from __future__ import annotations

import csv
import io
import re
import uuid
from dataclasses import dataclass

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from sentinel.platform import db
from sentinel.platform.config import Settings
from sentinel.platform.errors import FieldViolation
from sentinel.platform.ids import uuid7
from sentinel.platform.limits import enforce_plan_limit
from sentinel.platform.validation import email as check_email
from sentinel.user.models import User

COLUMNS = ("email", "display_name", "role", "password_hash")
ROLES = ("viewer", "member", "admin", "owner")
HASH = re.compile(r"^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$"
                  r"|^\$argon2id\$v=19\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+$")
MAX_ROWS = 100_000
_RESOLVE = text("SELECT id, state FROM sentinel_resolve_tenant(:slug)")


class ImportRefused(Exception):
    """The file cannot be imported; ``problems`` says where and why (nothing was written)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems[:20]))
        self.problems = problems


@dataclass(frozen=True)
class Row:
    email: str
    display_name: str
    role: str
    password_hash: str


def parse(data: str) -> list[Row]:
    reader = csv.DictReader(io.StringIO(data))
    if tuple(reader.fieldnames or ()) != COLUMNS:
        raise ImportRefused([f"the header must be {','.join(COLUMNS)}, not {','.join(reader.fieldnames or [])}"])
    rows, problems, seen = [], [], set()
    for number, record in enumerate(reader, start=2):
        if number - 1 > MAX_ROWS:
            raise ImportRefused([f"at most {MAX_ROWS} users per file"])
        violations: list[FieldViolation] = []
        mail = (record.get("email") or "").strip()
        check_email("email", mail, violations)
        role = (record.get("role") or "member").strip().lower()
        if role not in ROLES:
            violations.append(FieldViolation("role", f"must be one of {', '.join(ROLES)}"))
        name = (record.get("display_name") or "").strip()
        if len(name) > 200:
            violations.append(FieldViolation("display_name", "at most 200 characters"))
        hashed = (record.get("password_hash") or "").strip()
        if not HASH.match(hashed):
            violations.append(FieldViolation("password_hash", "must be a bcrypt or argon2id hash"))
        if mail.lower() in seen:
            violations.append(FieldViolation("email", "appears twice in the file"))
        seen.add(mail.lower())
        problems += [f"line {number}: {v.field} {v.description}" for v in violations]
        rows.append(Row(mail, name, role, hashed))
    if problems:
        raise ImportRefused(problems)
    if not rows:
        raise ImportRefused(["the file has no users"])
    return rows


async def import_users(settings: Settings, tenant_slug: str, data: str) -> int:
    """Import every row of ``data`` into the tenant, or nothing. Returns the number imported."""
    rows = parse(data)
    async with db.unit_of_work(tenant_id=None, platform=False) as session:
        tenant = (await session.execute(_RESOLVE, {"slug": tenant_slug})).first()
    if tenant is None:
        raise ImportRefused([f"no tenant with slug '{tenant_slug}'"])
    if tenant.state != "active":
        raise ImportRefused([f"tenant '{tenant_slug}' is {tenant.state.replace('_', ' ')}"])
    async with db.unit_of_work(tenant_id=tenant.id, platform=False) as session:
        return await insert_rows(session, settings, tenant.id, rows)


async def insert_rows(session: AsyncSession, settings: Settings, tenant_id: uuid.UUID, rows: list[Row]) -> int:
    """Add ``rows`` as users in the session's (tenant-bound) transaction, or refuse them all."""
    existing = set(await session.scalars(select(func.lower(User.email)).where(
        func.lower(User.email).in_([r.email.lower() for r in rows]))))
    if existing:
        raise ImportRefused([f"{e}: already a user of the tenant" for e in sorted(existing)])
    await enforce_plan_limit(session, settings.plan_max_users, resource="users", adding=len(rows),
                             count=select(func.count()).select_from(User), reason="PLAN_USER_LIMIT")
    session.add_all(User(id=uuid7(), tenant_id=tenant_id, email=r.email, display_name=r.display_name,
                         role=r.role, state="active", password_hash=r.password_hash, version=1) for r in rows)
    return len(rows)
