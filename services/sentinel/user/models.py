"""The ``users``, ``sessions``, ``service_accounts``, ``api_keys`` and ``invitations`` tables."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import DateTime, Integer, LargeBinary, String, Text, func
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.orm import Mapped, mapped_column

from sentinel.platform.models import Base


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    # References tenants(id) ON DELETE CASCADE in the database (migration 0001).
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID)
    email: Mapped[str] = mapped_column(String(320))
    display_name: Mapped[str] = mapped_column(String(200), default="")
    role: Mapped[str] = mapped_column(String(20))
    state: Mapped[str] = mapped_column(String(20), default="active")
    password_hash: Mapped[str] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer, default=1)
    create_time: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    update_time: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_login_time: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # Set with state 'locked' after repeated failed logins; the next login after it unlocks.
    locked_until: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class Session(Base):
    """A login: the refresh token's current hash and its revocation state."""

    __tablename__ = "sessions"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID)
    user_id: Mapped[uuid.UUID] = mapped_column(UUID)
    refresh_token_hash: Mapped[str] = mapped_column(Text)
    # The hash before the last rotation: presented again within the grace period it is a
    # client's concurrent or retried refresh, not a stolen copy.
    previous_refresh_token_hash: Mapped[str | None] = mapped_column(Text)
    create_time: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_refresh_time: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expire_time: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    revoke_time: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    source_ip: Mapped[str] = mapped_column(Text, default="")
    user_agent: Mapped[str] = mapped_column(Text, default="")


class ServiceAccount(Base):
    __tablename__ = "service_accounts"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID)
    display_name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))
    version: Mapped[int] = mapped_column(Integer, default=1)
    create_time: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID)
    service_account_id: Mapped[uuid.UUID] = mapped_column(UUID)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    prefix: Mapped[str] = mapped_column(String(20))
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary)
    scopes: Mapped[list[str]] = mapped_column(ARRAY(Text))
    create_time: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expire_time: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_time: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    revoke_time: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class Invitation(Base):
    __tablename__ = "invitations"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID)
    email: Mapped[str] = mapped_column(String(320))
    role: Mapped[str] = mapped_column(String(20))
    state: Mapped[str] = mapped_column(String(20), default="pending")
    token_hash: Mapped[bytes] = mapped_column(LargeBinary)
    inviter_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
    create_time: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expire_time: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    accept_time: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    user_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
