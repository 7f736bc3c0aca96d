"""Bootstrap: make sure a platform administrator exists (``sentinel admin bootstrap``)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sqlalchemy import func, select, update

from sentinel.platform import db
from sentinel.platform.auth import PLATFORM_TENANT_ID
from sentinel.platform.config import Settings
from sentinel.platform.ids import uuid7
from sentinel.user.models import User
from sentinel.user.passwords import Passwords

DEFAULT_EMAIL = "admin@sentinel.local"


@dataclass(frozen=True, slots=True)
class BootstrapResult:
    email: str
    created: bool
    #: Set only when the password was generated here; shown once, never stored in clear.
    password: str | None = None

    def describe(self) -> str:
        if self.password:
            return (f"platform admin {self.email} created with generated password: {self.password}\n"
                    "  (shown once; log in to tenant 'platform' and change it)")
        state = "created" if self.created else "exists"
        return f"platform admin {self.email} {state}"


async def ensure_platform_admin(settings: Settings, email: str | None, password: str | None) -> BootstrapResult:
    """Create the platform admin if missing.

    With an explicit e-mail and password, that account exists afterwards and accepts that
    password. With neither, an existing platform admin is left alone; if there is none, one
    is created with a random password that is returned for printing once.
    """
    passwords = Passwords(settings)
    db.init(settings)
    try:
        async with db.unit_of_work(tenant_id=PLATFORM_TENANT_ID, platform=False) as session:
            if email:
                row = await session.scalar(select(User).where(func.lower(User.email) == email.lower()))
            else:
                row = await session.scalar(select(User).where(User.role == "platform_admin")
                                           .order_by(User.create_time).limit(1))
            if row is not None:
                if password and not await passwords.verify(row.password_hash, password):
                    await session.execute(update(User).where(User.id == row.id).values(
                        password_hash=await passwords.hash(password), version=User.version + 1,
                        update_time=func.now()))
                return BootstrapResult(row.email, created=False)
            generated = None if password else secrets.token_urlsafe(18)
            session.add(User(id=uuid7(), tenant_id=PLATFORM_TENANT_ID, email=email or DEFAULT_EMAIL,
                             display_name="Platform administrator", role="platform_admin", state="active",
                             password_hash=await passwords.hash(password or generated or ""), version=1))
            return BootstrapResult(email or DEFAULT_EMAIL, created=True, password=generated)
    finally:
        await db.dispose()
