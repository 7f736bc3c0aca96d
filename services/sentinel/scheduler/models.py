"""The ``jobs``, ``job_results`` and ``periodic_runs`` tables (migrations 0011, 0012, 0014)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import Boolean, DateTime, Integer, LargeBinary, String, func
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from sentinel.platform.models import Base


class JobRow(Base):
    __tablename__ = "jobs"

    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))
    state: Mapped[str] = mapped_column(String(20), default="pending")
    #: What the job was asked, as shown and audited: a confidential parameter only described.
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    #: The confidential parameters (JSON), sealed with the tenant's data key when ``input_sealed``;
    #: NULL once the job has finished (a CHECK of the table).
    input: Mapped[bytes | None] = mapped_column(LargeBinary)
    input_sealed: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    timeout_seconds: Mapped[int] = mapped_column(Integer, default=600)
    progress_percent: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(String, default="")
    summary: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    creator_id: Mapped[str] = mapped_column(String, default="")
    create_time: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    update_time: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    start_time: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    end_time: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    next_attempt_time: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    version: Mapped[int] = mapped_column(Integer, default=1)


class JobResultRow(Base):
    __tablename__ = "job_results"

    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    content_type: Mapped[str] = mapped_column(String(100))
    content: Mapped[bytes] = mapped_column(LargeBinary)
    # Sealed with the tenant's data key (sentinel.platform.datakeys); the purge destroys the key.
    sealed: Mapped[bool] = mapped_column(Boolean, default=False)
    create_time: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class PeriodicRunRow(Base):
    __tablename__ = "periodic_runs"

    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    slot: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    manual: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str] = mapped_column(String(20), default="running")
    start_time: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    end_time: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str] = mapped_column(String, default="")
    result: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
