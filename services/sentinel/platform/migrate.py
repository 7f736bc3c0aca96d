"""Apply Alembic migrations programmatically (``sentinel migrate``)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"


def alembic_config(owner_url: str, *, app_role: str = "sentinel_app") -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", owner_url.replace("%", "%%"))
    cfg.attributes["app_role"] = app_role
    return cfg


def upgrade(owner_url: str, *, app_role: str = "sentinel_app", revision: str = "head") -> None:
    command.upgrade(alembic_config(owner_url, app_role=app_role), revision)


def downgrade(owner_url: str, *, revision: str, app_role: str = "sentinel_app") -> None:
    command.downgrade(alembic_config(owner_url, app_role=app_role), revision)


def app_role() -> str:
    """The service role the migration grants to (``sentinel_app`` unless configured)."""
    from alembic import context

    role = str(context.config.attributes.get("app_role", "sentinel_app"))
    if not role.replace("_", "").isalnum():
        raise ValueError(f"invalid role name {role!r}")
    return role


def execute_script(sql: str) -> None:
    """Run a multi-statement SQL script inside a migration, in its transaction.

    asyncpg prepares each statement, and a prepared statement holds one command, so the
    script goes through the driver's simple-query path on the migration's own connection.
    """
    from alembic import op
    from sqlalchemy.util import await_only

    raw = op.get_bind().connection.driver_connection
    assert raw is not None, "migrations need a live connection"
    await_only(raw.execute(sql))
