"""The ``tenants`` table."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import DateTime, Integer, String, func
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from sentinel.platform.models import Base


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    plan: Mapped[str] = mapped_column(String(20), default="free")
    state: Mapped[str] = mapped_column(String(20), default="active")
    version: Mapped[int] = mapped_column(Integer, default=1)
    create_time: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    update_time: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    suspension_reason: Mapped[str] = mapped_column(String(500), default="")
    delete_time: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    purge_time: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    purge_complete_time: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    audit_retention_days: Mapped[int] = mapped_column(Integer, default=365)
